"""One output folder of Exercise 5 and the runs it keeps: its data, the principal directions
and projected crops of its training images, and every run (students and the teacher) through
one path: found in the store under its key (bonus.keys), or trained, resuming a run cut short,
then its weights and its record saved and its progress file removed.

Layout under the output folder: bonus/results/ holds the results files, runs.jsonl, the
records of the finished runs, and the teacher's weights (in git); bonus/models/ the students'
weights, the teacher's scores and the progress files (not in git); figures/ the figures.
"""
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

import assignment2 as a
from bonus import augment, store, wide
from bonus.keys import Probes

RESULTS = Path("bonus") / "results"
MODELS = Path("bonus") / "models"
TESTED = ("recipe", "distil")  # the stages whose networks see the test set, once each


def trial_problem(t: dict) -> str | None:
    """None for a run record this program could have written."""
    accs = [v for k, v in t.items() if k.endswith("_acc")]
    if not isinstance(t.get("diverged"), bool) or not isinstance(t.get("seed"), int):
        return "not a trial record"
    if not t["diverged"] and not all(store.is_fraction(v) for v in accs):
        return "an accuracy outside [0, 1]"
    return None


class Experiment:
    """The data, the stored runs and the trials of one output folder."""

    def __init__(self, data_dir: Path, out_dir: Path, seed: int, e, limit: int | None = None,
                 log=print):
        """e: settings.Exercise5, the recipe and sizes; limit: at most this many training
        images (quick mode)."""
        self.data_dir, self.out_dir, self.seed, self.log = data_dir, out_dir, seed, log
        self.e, self.limit, self.probes = e, limit, Probes()
        self.results, self.models = out_dir / RESULTS, out_dir / MODELS
        self.trials = store.Trials(self.results / "runs.jsonl", trial_problem, log)
        self.data = None  # ((train, val, test), their fingerprint), set by splits()
        self.source, other = a.data_source(data_dir)  # the files: official or not, in results
        log(a.source_line(data_dir, other))
        self.cache = {}  # the bases of the splits, and the projected crops of the last trial

    def splits(self, n_val: int) -> tuple:
        """Normalised (train, val, test): the last n_val of the five batches validate. They are
        the data of the trials from now on, named by the fingerprint of their raw bytes."""
        self.data, self.cache = None, {}
        five = a.concat([a.load_batch(self.data_dir / f) for f in a.CIFAR_FILES[:5]])
        raw = (*a.split_last(a.head(five, self.limit and self.limit + n_val), n_val),
               a.load_batch(self.data_dir / "test_batch"))
        splits = tuple(a.normalise(*raw))
        self.data = (splits, store.arrays_fingerprint(*[v for s in raw for v in (s.X, s.y)]))
        return splits

    def basis(self, k: int) -> np.ndarray | None:
        """The top k principal directions of the training images and their mirror images (D, k),
        made once per k; None for k = 0."""
        if k and ("basis", k) not in self.cache:
            tr = self.data[0][0]
            self.cache["basis", k] = augment.pca_basis(np.ascontiguousarray(tr.X.T), k, True)
        return self.cache.get(("basis", k))

    def crops(self, x) -> np.ndarray | None:
        """projected_crops for x's directions and shifts; only the last ones are kept (GBs)."""
        if not (x.pca and (x.flip or x.shift)):
            return None
        if ("crops", x.pca, x.shift) not in self.cache:
            for key in [k for k in self.cache if k[0] == "crops"]:
                del self.cache[key]
            t0, tr = time.perf_counter(), self.data[0][0]
            self.cache["crops", x.pca, x.shift] = augment.projected_crops(
                np.ascontiguousarray(tr.X.T), self.basis(x.pca), x.shift)
            self.log(f"projected the crops of {tr.n} images into {x.pca} directions in "
                     f"{time.perf_counter() - t0:.0f} s")
        return self.cache["crops", x.pca, x.shift]

    def key(self, stage: str, seed: int, settings: dict, probe: str) -> dict:
        """What a run of the experiment's data is: its stage, seed, sizes and settings, the
        data's fingerprint and its code's probe (bonus.keys)."""
        (tr, va, _), data = self.data
        return {"stage": stage, "seed": seed, "n_train": tr.n, "n_val": va.n, **settings,
                "data": data, "probe": probe}

    def stored(self, key: dict, label: str, fit, weights: bool = True) -> dict | None:
        """The record of the run `key`, with a "name" (label): the store's, where it is there
        (and its weights too, if weights), else fit(progress) -> (arrays or None, record)
        trained, resuming from progress = (path, key), and kept; None when fit is None."""
        hit = self.trials.get(key)
        if hit is not None and (not weights or self.weights_file(key).is_file()):
            self.log(f"{label}: kept from {self.trials.path.name}, val acc {hit['val_acc']}")
            return hit | {"name": label}
        if fit is None:
            return None
        progress = self.models / f"{store.run_name(key)}.progress.npz"
        arrays, rec = fit((progress, key))
        if arrays is not None:
            with a.atomic_path(self.weights_file(key)) as tmp, open(tmp, "wb") as f:
                np.savez(f, **arrays)
        rec = rec | {"name": label, "key": key}
        self.trials.add(rec)
        progress.unlink(missing_ok=True)  # the run is in the store now
        return rec

    def weights_file(self, key: dict, kind: str = "") -> Path:
        """The one name of the weights (or, with kind, another file) of the run `key`. The
        teacher's weights are results (bonus/results/, in git, 4.5 MB): a new checkout holds
        no bonus/models/, and without them every session would train the teacher again (an
        hour) and its students would learn from teachers that differ by machine."""
        if key.get("stage") == "teacher" and not kind:
            return self.results / f"teacher-{store.run_name(key)}.npz"
        return self.models / f"{kind}{store.run_name(key)}.npz"

    def trial(self, stage: str, label: str, cfg, x, seed: int, train: bool = True, teach=None,
              weights: bool = True) -> dict | None:
        """A student network (wide.student) trained on the experiment's data: the store's
        record, or trained, or None when train is False. Every network of a stage with the
        same seed draws from the same random stream. Networks of the TESTED stages are tested
        (and their weights kept to be combined); the others are measured on validation only.
        teach: a teacher's targets (distil.Distillation), whose key joins the run's.
        weights=False: the record of a tested network suffices (its weights may be on another
        machine)."""
        settings = asdict(cfg) | asdict(x) | ({"teacher": teach.key} if teach else {})
        key = self.key(stage, seed, settings, self.probes.student(cfg, x, teach))
        tested = stage in TESTED

        def fit(progress):
            rng = np.random.default_rng([seed, 16 if stage == "recipe" else 17])
            params, rec = wide.student(
                self.data[0], cfg, x, rng, self.basis(x.pca), self.crops(x), teach, progress,
                tested, log=lambda s: self.log(f"{label}: {s}"))
            return params, rec | {"seed": seed}
        return self.stored(key, label, fit if train else None, weights and tested)

    def weights(self, trial: dict) -> dict:
        with np.load(self.weights_file(trial["key"])) as f:
            return {k: f[k] for k in ("W1", "b1", "W2", "b2")}
