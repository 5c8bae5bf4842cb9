"""What makes a stored run of Exercise 5 reusable: its key, which bonus.experiment looks up in
the store (bonus.store). A key holds

- the run's settings (assignment2.Config and settings.Extras, or the teacher's), its stage,
  seed and sizes;
- the data: a fingerprint of the raw images and labels it trains, validates and tests on, as
  loaded (uint8: the same bytes on every machine);
- what the code computes: the probe, a fingerprint of the numbers that the run's own path
  (wide.student, teacher.fit, teacher.teacher_logits) gives on a small fixed problem.

Why a probe and not the source. A key that hashed the source of everything a run calls made
every edit a new run: a statement added to assignment2.train, which changes no number, left 0 of
44 stored runs found, so known repetitions were left alone rather than retrain hours. Whether a
stored run is still what the code would make is a question about numbers, so the key asks the
code: the run's own function runs on 64 random images with the run's own settings at a tiny
size (m=6, 8 principal directions, batches of 8, 10 steps; the teacher at width 2 for 2 epochs)
in float64, and what it returns (the record's accuracies and losses, the class probabilities
of the probe's validation images, the teacher's scores of its views) is rounded to 8
significant digits and hashed. Hence:

- a change that keeps the numbers (a statement added, a function moved between modules, a
  rename) keeps every key;
- a change of what a run computes (an update rule, the augmentation, softmax, the distillation
  targets, the teacher's training) moves the probe's numbers far beyond 8 digits, and changes
  the keys of the runs that compute it, and only theirs; nobody bumps a version;
- another machine gives the same keys: its BLAS rounds float64 products differently by about
  1e-16 relative, which 10 steps do not raise anywhere near the 8th digit (a number would have
  to land within ~1e-14 of a rounding boundary). The teacher's probe (batch norm over batches
  of 8, a learning rate of 1) raises a relative 1e-15 in its images to 4e-11 in its numbers
  and 1e-13 to 2e-10, which flipped its 8th digit between an Intel Xeon and an AMD EPYC; so
  its numbers and its scores are kept to 5 digits, where a change of its training (a learning
  rate 0.9 times as large) still moves them in the 2nd.

What the probe cannot see is what shows only at full size (a chunk boundary past 64 images, a
float32 effect): the tests hold those. The probe costs about 2 s once per process (the
principal directions of its images) and a fraction of a second per distinct setting.
"""
from dataclasses import asdict, replace

import numpy as np

import assignment2 as a
from bonus import augment, distil, store, wide

PROBE_SEED = 20261207  # the probe's images, labels, initialisation and draws
PROBE_SIZES = (64, 16, 16)  # its training, validation and test images
PROBE_K = 8  # principal directions at most
DIGITS = 8  # significant digits of the probe's numbers that the key holds ...
TEACHER_DIGITS = 5  # ... and of the teacher's, whose training raises rounding errors more


def probe_splits() -> tuple:
    """The probe's (train, val, test): random uint8 images and labels, normalised as the
    experiment normalises its data, in float64."""
    rng = np.random.default_rng(PROBE_SEED)
    raw = [a.Split(rng.integers(0, 256, (a.D, n), dtype=np.uint8), rng.integers(0, a.K, n))
           for n in PROBE_SIZES]
    return tuple(a.normalise(*raw, dtype="float64"))


def digest(*numbers, digits: int = DIGITS) -> str:
    """16 hex digits of numbers (arrays, lists, scalars) at `digits` significant digits."""
    flat = np.concatenate([np.ravel(np.asarray(v, np.float64)) for v in numbers])
    return store.short_hash(" ".join(f"{v:.{digits - 1}e}" for v in flat))


def record_numbers(rec: dict) -> list:
    """The accuracies and losses of a record and of its history, in a fixed order; clocks
    left out."""
    flat = store.flatten(rec)
    return [np.nan if v is None else v for k, v in sorted(flat.items())
            if k.rsplit("/", 1)[-1].endswith(("acc", "loss", "cost", "acc_mirror"))
            for v in (v if isinstance(v, list) else [v])]


def quiet(line: str) -> None:
    """The probe's runs print nothing."""


class Probes:
    """The probe fingerprints, each computed once per distinct setting."""

    def __init__(self):
        self.done, self.splits, self.basis, self.teachers = {}, None, None, {}

    def once(self, what: str, settings: dict, compute) -> str:
        key = store.key_text({"what": what, **settings})
        if key not in self.done:
            if self.splits is None:
                self.splits = probe_splits()
                XT = np.ascontiguousarray(self.splits[0].X.T)  # (n, D)
                self.basis = augment.pca_basis(XT, PROBE_K, mirror=True)  # (D, k)
            self.done[key] = compute()
        return self.done[key]

    def student(self, cfg: a.Config, x, teach=None) -> str:
        """The fingerprint of wide.student with cfg, x and the targets of teach (distil
        .Distillation) at the probe's size."""
        settings = asdict(cfg) | asdict(x) | ({"teach": teach.key} if teach else {})
        return self.once("student", settings, lambda: self.student_numbers(cfg, x, teach))

    def student_numbers(self, cfg, x, teach) -> str:
        small = replace(cfg, m=6, n_batch=8, n_s=5, evals_per_cycle=1, dtype="float64")
        x = replace(x, pca=min(x.pca, PROBE_K))
        rng = np.random.default_rng(PROBE_SEED)
        like = teach.probe(self.splits[0].n, rng) if teach else None
        params, rec = wide.student(self.splits, small, x, rng, self.basis, teach=like, log=quiet)
        P = a.forward(self.splits[1].X, params)[0] if params else []  # (K, n_val)
        return digest(record_numbers(rec), P)

    def teacher(self, tc) -> str:
        """The fingerprint of teacher.fit with tc at the probe's size."""
        return self.once("teacher", asdict(tc), lambda: self.teacher_net(tc)[1])

    def teacher_net(self, tc) -> tuple:
        """(the probe's teacher network for tc, the fingerprint of what made it)."""
        from bonus import teacher  # torch: only where a teacher is asked for
        small = replace(tc, width=2, epochs=2, batch=8, dtype="float64")
        if small not in self.teachers:
            state, rec = teacher.fit(self.splits, small, PROBE_SEED, log=quiet)
            net = teacher.load_net(state, small)
            S = teacher.scores(net, np.ascontiguousarray(self.splits[1].X.T))  # (n_val, K)
            self.teachers[small] = net, digest(record_numbers(rec), a.softmax(S.T),
                                               digits=TEACHER_DIGITS)
        return self.teachers[small]

    def scores(self, tc, x, views: int, grid: int = 0) -> str:
        """The fingerprint of the teacher's scores of `views` views an image, drawn by
        distil.target_views for x's mirroring and moves, or with grid those of
        distil.grid_views."""
        def compute():
            from bonus import teacher
            net, made = self.teacher_net(tc)
            tr = self.splits[0]
            chosen = (np.broadcast_to(distil.grid_views(x, grid), (tr.n, views, 3)) if grid
                      else distil.target_views(tr.n, views, x, np.random.default_rng(PROBE_SEED)))
            return store.short_hash(made + digest(teacher.teacher_logits(
                net, tr.X, chosen, x.shift), digits=TEACHER_DIGITS))
        return self.once("scores", asdict(tc) | {"views": views, "flip": x.flip,
                                                 "shift": x.shift} | (
            {"grid": grid} if grid else {}), compute)
