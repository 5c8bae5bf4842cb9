"""DD2424 Assignment 2, Exercise 5: a stronger two-layer network, on assignment2.py's network.

    python3 bonus.py --data-dir DIR            # the recipe, 4 networks: about 55 minutes on 2 cores
    python3 bonus.py explore --data-dir DIR    # its ablation on 45,000 / 5,000: about 6 hours
    python3 bonus.py distil --data-dir DIR     # from a convolutional teacher: about 2 hours
    python3 bonus.py --quick                   # tiny sizes, a smoke test in seconds

The mechanisms (mechanisms.py): augmentation (mirroring and translations), dropout, W1 trained in
the top principal directions of the images, Nesterov momentum and Adam, test-time views, and
networks made of networks, plugged into assignment2.train through its hooks.

The recipe (one hidden layer of m units, W1 in the top principal directions, mirroring and
shifts, Adam with eta falling linearly to 0) is trained `members` times with consecutive seeds;
averaging k networks' scores is one wider network, and validation picks how many and how the
network looks at an image (plain, with its mirror image, or with moved copies too). The next
seeds repeat that choice. Every finished run goes to bonus.jsonl under the key of all that made
it (harness.py), its weights to models/; a rerun reuses them, and a run cut short resumes.

distil: the same network trained on the scores of a convolutional teacher (teacher.py, torch)
for views of the training images, against the recipe's runs on the labels alone.
"""

import os
import signal

if __name__ == "__main__":  # first: until main() takes over, a signal during the imports is quiet
    for _signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signal, lambda s, _: (os.write(2, b"\ninterrupted\n"), os._exit(128 + s)))

import argparse
import json
import math
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

import assignment2 as a
import harness
import mechanisms as mech
from mechanisms import (
    Extras,
    augment_source,
    augmented_batch,
    concatenate,
    measure,
    pca_basis,
    pca_variance_kept,
    projected_crops,
    train_network,
    view_accuracies,
    view_accuracy,
    views,
)

HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Exercise5:
    """The recipe and the experiment's sizes; QUICK shrinks them for smoke tests."""
    m: int = 4096  # hidden units of one network
    pca: int = 512  # W1 is trained in the top pca principal directions of the training images
    lam: float = 6.25e-5  # L2 penalty of eq. 7: the ablation's best row at 140 epochs ...
    ablation_lam: float = 2.5e-4  # ... of the recipe the ablation measured (torch's wd 5e-4)
    eta: float = 2e-3  # Adam's step size, falling linearly to 0 ...
    epochs: int = 140  # ... over this many epochs ...
    batch: int = 400  # ... of batches of this many images (eta 1e-3 at 100: eta ~ sqrt(batch))
    shift: int = 3  # every image mirrored with probability 1/2 and moved by up to 3 pixels
    points: int = 15  # evaluation points on each curve
    members: int = 2  # the final network: up to this many runs, hidden units side by side
    seeds: int = 2  # ... all made again with the next seeds: members * seeds runs
    nesterov_eta: float = 0.04  # the ablation: Nesterov momentum 0.9 instead of Adam
    cyclic_eta: float = 0.15  # ... or the cyclic SGD of eqs. 14-15, eta_max ...
    cycles: int = 3  # ... over this many cycles
    ablation_seeds: int = 2  # runs of every ablation row (the recipe's: one more)
    ablation_epochs: int = 70  # the budget of the ablation's rows; three again at epochs
    views: int = 8  # distillation: the teacher scores this many views of every training image
    distil_grid: tuple = ((1.0, 1.0, False), (1.0, 0.5, False),
                          (3.0, 0.5, False))  # (T, alpha, per view) tried at epochs ...
    distil_refine: tuple = ((0.25, 140),)  # ... then the best: (lam x, epochs)


QUICK = Exercise5(m=40, pca=16, epochs=2, batch=100, points=2, cycles=1, ablation_epochs=1,
                  views=3, distil_grid=((1.0, 1.0, False), (2.0, 0.5, True)),
                  distil_refine=((0.25, 2), (1.0, 1)))


def recipe(e: Exercise5, n_train: int, epochs: int | None = None) -> tuple:
    """One network of the recipe on n_train images, (Config, Extras); epochs: the budget, if
    not e.epochs."""
    per_epoch = n_train // e.batch
    cfg = a.Config(m=e.m, lam=e.lam, eta_max=e.eta, n_s=(epochs or e.epochs) * per_epoch // 2,
                   n_cycles=1, n_batch=e.batch, evals_per_cycle=e.points, eval_train=False)
    return cfg, Extras(optimizer="adam", shift=e.shift, pca=e.pca)


def ablation(e: Exercise5, n_train: int) -> dict:
    """One change per row: {name: (Config, Extras, the row it is measured against)}. The rows
    train for e.ablation_epochs against the recipe at that budget; then the recipe and three
    of the rows again at its own budget, e.epochs, to see whether the ordering holds there."""
    e = replace(e, lam=e.ablation_lam)  # the rows as planned, before lam was chosen from them

    def at(epochs, scale=1.0):
        return recipe(e, n_train, round(epochs * scale))

    cfg, x = at(e.ablation_epochs)
    total, per_100 = 2 * cfg.n_s, n_train // 100  # update steps; steps of an epoch at batch 100
    cyclic = replace(cfg, eta_max=e.cyclic_eta, n_s=total // (2 * e.cycles), n_cycles=e.cycles,
                     evals_per_cycle=max(1, e.points // e.cycles))
    base = f"recipe, {e.ablation_epochs} epochs"
    lam4, lam16 = f"lam / 4 ({e.lam / 4:g})", f"lam / 16 ({e.lam / 16:g})"
    rows = {base: (cfg, x),
            "no augmentation": (cfg, replace(x, flip=False, shift=0)),
            lam4: (replace(cfg, lam=e.lam / 4), x),
            f"lam x 4 ({e.lam * 4:g})": (replace(cfg, lam=e.lam * 4), x),
            lam16: (replace(cfg, lam=e.lam / 16), x),
            "dropout 0.3": (cfg, replace(x, p_drop=0.3)),
            "Nesterov momentum, not Adam": (replace(cfg, eta_max=e.nesterov_eta),
                                            replace(x, optimizer="nesterov")),
            "cyclic SGD (eqs. 14-15), not Adam": (cyclic, replace(x, optimizer="sgd",
                                                                  schedule="cyclic")),
            "mirroring only": (cfg, replace(x, shift=0)),
            f"shifts only (+-{e.shift} px)": (cfg, replace(x, flip=False)),
            "batch 100 (eta / 2)": (replace(cfg, n_batch=100, eta_max=e.eta / 2,
                                            n_s=e.ablation_epochs * per_100 // 2), x),
            f"m={e.m // 2}": (replace(cfg, m=e.m // 2), x),
            f"m={e.m * 2}": (replace(cfg, m=e.m * 2), x),
            **({f"{e.pca // 2} directions": (cfg, replace(x, pca=e.pca // 2)),
                f"{e.pca * 3 // 2} directions": (cfg, replace(x, pca=e.pca * 3 // 2))}
               if e.pca else {}),
            f"{round(e.ablation_epochs / 2)} epochs": (at(e.ablation_epochs, 0.5)[0], x),
            f"{round(e.ablation_epochs * 1.5)} epochs": (at(e.ablation_epochs, 1.5)[0], x)}
    out = {name: (c, y, base) for name, (c, y) in rows.items()}
    full = recipe(e, n_train)
    out["recipe"] = (*full, "recipe")
    for name in ("no augmentation", lam4, lam16):
        c, y, _ = out[name]
        out[f"{name}, {e.epochs} epochs"] = (replace(full[0], lam=c.lam), y, "recipe")
    return out


# --------------------------------------------------------------------------------------------------
# The experiment

class Experiment:
    """One output folder of Exercise 5: its data, its principal directions and projected crops,
    its trials file, its weights. Its methods are what a trial runs: the code fingerprint in
    every trial's key follows them."""

    def __init__(self, data_dir: Path, out_dir: Path, seed: int, e: Exercise5,
                 limit: int | None = None, log=print):
        """e: the recipe and sizes; limit: at most this many training images (quick mode)."""
        self.data_dir, self.out_dir, self.seed, self.log = data_dir, out_dir, seed, log
        self.e, self.limit = e, limit
        self.code = harness.code_fingerprint(Experiment)
        self.trials = harness.Trials(out_dir / "bonus.jsonl", trial_problem, log)
        self.data = None  # ((train, val, test), their fingerprint), set by splits()
        self.cache = {}  # the bases of the splits, and the projected crops of the last trial

    def splits(self, n_val: int) -> tuple:
        """Normalised (train, val, test): the last n_val of the five batches validate. They are
        the data of the trials from now on."""
        self.data, self.cache = None, {}
        five = a.concat([a.load_batch(self.data_dir / f) for f in a.CIFAR_FILES[:5]])
        tr, va = a.split_last(a.head(five, self.limit and self.limit + n_val), n_val)
        tr, va, te = a.normalise(tr, va, a.load_batch(self.data_dir / "test_batch"))
        self.data = ((tr, va, te), harness.arrays_fingerprint(tr.X, tr.y, va.X, va.y, te.X, te.y))
        return tr, va, te

    def basis(self, k: int) -> np.ndarray | None:
        """The top k principal directions of the training images and their mirror images (D, k),
        made once per k; None for k = 0."""
        if k and ("basis", k) not in self.cache:
            tr = self.data[0][0]
            self.cache["basis", k] = pca_basis(np.ascontiguousarray(tr.X.T), k, mirror=True)
        return self.cache.get(("basis", k))

    def crops(self, x: Extras) -> np.ndarray | None:
        """projected_crops for x's directions and shifts; only the last ones are kept (GBs)."""
        if not (x.pca and (x.flip or x.shift)):
            return None
        if ("crops", x.pca, x.shift) not in self.cache:
            for key in [k for k in self.cache if k[0] == "crops"]:
                del self.cache[key]
            t0, tr = time.perf_counter(), self.data[0][0]
            self.cache["crops", x.pca, x.shift] = projected_crops(
                np.ascontiguousarray(tr.X.T), self.basis(x.pca), x.shift)
            self.log(f"projected the crops of {tr.n} images into {x.pca} directions in "
                     f"{time.perf_counter() - t0:.0f} s")
        return self.cache["crops", x.pca, x.shift]

    def trial(self, stage: str, label: str, cfg, x, seed: int, train: bool = True, teach=None,
              weights: bool = True):
        """A network trained on the experiment's data, as a record with its weights in models/:
        reused when one with the same key is there, else trained (resuming a run cut short), or
        None when train is False. Every network of a stage with the same seed draws from the
        same random stream. Networks of the TESTED stages are tested (and kept to be combined);
        the others are measured on validation only. teach: the targets come from a teacher
        (mechanisms.hooks), whose key (teach.key) joins the trial's. weights=False: the record
        of a tested network suffices (its weights may be on another machine)."""
        (tr, va, te), data = self.data
        key = {"stage": stage, "seed": seed, "n_train": tr.n, "n_val": va.n,
               **asdict(cfg), **asdict(x), "code": self.code, "data": data,
               **({"teacher": teach.key} if teach is not None else {})}
        name, tested = trial_name({"key": key}), stage in TESTED
        path = self.weights_file(name)
        hit = self.trials.get(key)
        if hit is not None and (path.is_file() or not (tested and weights)):
            self.log(f"{label}: kept from bonus.jsonl, val acc {hit['val_acc']}")
            return hit | {"name": label}
        if not train:
            return None
        rng = np.random.default_rng([seed, 16 if stage == "recipe" else 17])
        progress = (self.out_dir / f"bonus.{name}.progress.npz", key)
        try:
            params, hist = train_network(tr, va, cfg, x, rng, self.basis(x.pca), progress,
                                         log=lambda s: self.log(f"{label}: {s}"),
                                         crops=self.crops(x), teach=teach)
        except a.Diverged as e:
            self.log(f"{label}: {e}")
            params, hist = None, None
        rec = record_trial(label, seed, cfg, x, params, hist, va, te if tested else None)
        if params is not None:
            with a.atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, **params)
        self.trials.add(rec | {"key": key})
        progress[0].unlink(missing_ok=True)  # the trial is in bonus.jsonl now
        return rec | {"key": key}

    def weights_file(self, name: str) -> Path:
        """Where the weights of the trial named `name` (trial_name) are kept."""
        return self.out_dir / "models" / f"{name}.npz"

    def weights(self, trial: dict) -> dict:
        with np.load(self.weights_file(trial_name(trial))) as f:
            return {k: f[k] for k in ("W1", "b1", "W2", "b2")}


TESTED = ("recipe", "distil")  # the stages whose networks see the test set, once each


def trial_name(trial: dict) -> str:
    """The 16 hex digits that name a trial's files: the hash of its key."""
    return harness.short_hash(harness.key_text(trial["key"]))


def record_trial(label: str, seed: int, cfg, x, params, hist, va, te) -> dict:
    """What is kept of a trained network: its curves and accuracies, plain and mirrored (the
    test set seen once per evaluation); without a test set (the ablation), the validation
    accuracy with each of the test-time views."""
    if params is None:
        return {"name": label, "seed": seed, "lam": cfg.lam, "diverged": True, "val_acc": None}
    mirrored = views(0)["mirrored"]
    rec = {"name": label, "seed": seed, "lam": cfg.lam, "diverged": False,
           "val_acc": hist["val_acc"][-1], "best_val_acc": max(hist["val_acc"]),
           "train_acc": hist["train_acc"][-1],
           "val_acc_mirror": view_accuracy(va, params, mirrored)}
    if te is not None:  # the ablation (te None) never looks at the test set
        rec |= {"test_acc": a.evaluate(te.X, te.y, params, cfg.lam)["acc"],
                "test_acc_mirror": view_accuracy(te, params, mirrored)}
    else:
        rec["val_acc_views"] = view_accuracies(va, params, views(x.shift))
    return rec | {"seconds": hist["seconds"][-1], "history": hist}


def trial_problem(t: dict) -> str | None:
    """None for a trial record this program could have written."""
    accs = [v for k, v in t.items() if k.endswith("_acc")]
    if not isinstance(t.get("diverged"), bool) or not isinstance(t.get("seed"), int):
        return "not a trial record"
    if not t["diverged"] and not all(harness.is_fraction(v) for v in accs):
        return "an accuracy outside [0, 1]"
    return None


def run_recipe(ex: Experiment) -> dict:
    """The recipe's networks, then the networks made of them: results_bonus.json."""
    e, splits = ex.e, ex.splits(1000 if not ex.limit else 200)
    tr, va, _ = splits
    cfg, x = recipe(e, tr.n)
    kept = pca_variance_kept(np.ascontiguousarray(tr.X.T), ex.basis(x.pca)) if x.pca else 1.0
    ex.log(f"the top {x.pca} principal directions hold {100 * kept:.2f}% of the variance")
    res = final_networks(ex, "recipe", cfg, x, splits)
    plot_minutes(list(res["runs"].values())[:e.members], list(res["combined"].values()),
                 ex.out_dir / "figures" / "bonus_minutes.png")
    raw = a.load_batch(ex.data_dir / "data_batch_1").X[:, :8].T
    plot_augmentation(raw, ex.out_dir / "figures" / "augmentation.png", x.shift)
    return {"n_train": tr.n, "n_val": va.n, "pca_variance_kept": kept,
            "recipe": asdict(cfg) | asdict(x), "epochs": e.epochs, "members": e.members} | res


def final_networks(ex: Experiment, stage: str, cfg, x, splits: tuple, teach=None) -> dict:
    """members * seeds runs of (cfg, x) with consecutive seeds, tested; the networks made of the
    first 1..members runs, of which validation picks one and its evaluation (the fast recipe is
    the first run alone); that choice made again with the next seeds' runs."""
    e = ex.e
    runs = [ex.trial(stage, f"seed {s}", cfg, x, s, teach=teach)
            for s in range(ex.seed, ex.seed + e.members * e.seeds)]
    if any(t["diverged"] for t in runs):
        raise a.Diverged(f"a run of the {stage} diverged")
    groups = [runs[g * e.members:(g + 1) * e.members] for g in range(e.seeds)]
    first = [combined(ex, groups[0][:k], splits, cfg.m, x.shift) for k in range(1, e.members + 1)]
    final = max(first, key=lambda t: t["val_acc_views"][t["evaluation"]])
    again = [combined(ex, g[:final["k"]], splits, cfg.m, x.shift, final["evaluation"])
             for g in groups[1:]]
    return {"views": list(views(x.shift)), "runs": {t["name"]: clean(t) for t in runs},
            "combined": {t["name"]: t for t in first}, "fast": first[0], "final": final,
            "final_seeds": [final] + again,
            "train_seconds": round(sum(t["seconds"] for t in runs), 1)}


def combined(ex: Experiment, runs: list, splits: tuple, m: int, shift: int,
             evaluation: str | None = None) -> dict:
    """The network made of the trained runs, measured; one run is itself. With evaluation:
    tested with that one (validation chose it for another network)."""
    params, k, seeds = concatenate([ex.weights(t) for t in runs]), len(runs), [
        t["seed"] for t in runs]
    name = (f"1 network (seed {seeds[0]})" if k == 1 else
            f"{k} networks (seeds {', '.join(map(str, seeds))}) as one of m={k * m}")
    res = {"name": name, "k": k, "m": k * m, "seeds": seeds,
           "seconds": round(sum(t["seconds"] for t in runs), 1)}
    res |= measure(params, splits, shift, evaluation)
    ex.log(f"{name}: val acc " + ", ".join(f"{v} {acc:.4f}" for v, acc in
                                           res["val_acc_views"].items())
           + f"; test acc {res['test_acc_chosen']:.4f} ({res['evaluation']})")
    return res


def run_distil(ex: Experiment) -> dict:
    """The recipe's network trained on a convolutional teacher's scores: results_distil.json.
    The teacher (teacher.py) trains on the recipe's training images, validation picks its
    epoch; it scores e.views views of every training image; students of the recipe's network
    are trained with each setting of distil_search on validation, and the best one's members *
    seeds students are tested and combined as the recipe's runs. Beside them: the recipe's own
    runs, on the labels alone (trained here if bonus.jsonl does not hold them)."""
    tch = teacher_module()
    e, n_val = ex.e, 1000 if not ex.limit else 200
    tr = ex.splits(n_val)[0]
    cfg, x = recipe(e, tr.n)
    tc = tch.QUICK_TEACHER if ex.limit else tch.TeacherConfig()
    net, teacher = teacher_trial(ex, tc)
    target_views, scores, scored = teacher_scores(ex, net, teacher, x)

    def student(s: dict, n: int):
        """(Config, Distillation) of a setting s (T, alpha, per_view, lam, epochs) for the first
        n training images: every split's training images are the first of the five batches."""
        return (replace(recipe(e, n, s["epochs"])[0], lam=s["lam"]), mech.Distillation(
            target_views[:n], scores[:n], x, s["T"], s["alpha"], s["per_view"], scored["key"]))
    search, (n_search, n_search_val) = distil_search(ex, student, x)
    chosen = max(search, key=lambda k: search[k]["val_acc"] or 0)
    splits = ex.splits(n_val)
    tr, va, _ = splits
    final_cfg, d = student(search[chosen], tr.n)
    res = final_networks(ex, "distil", final_cfg, x, splits, teach=d)
    labels = [clean(ex.trial("recipe", f"seed {s}", cfg, x, s, weights=False))
              for s in range(ex.seed, ex.seed + e.members * e.seeds)]
    seconds = teacher["seconds"] + scored["seconds"] + sum(t["seconds"] for t in search.values())
    return {"n_train": tr.n, "n_val": va.n, "recipe": asdict(cfg) | asdict(x),
            "student": asdict(final_cfg), "epochs": epochs_of(final_cfg, tr.n),
            "gradcheck": mech.distillation_gradcheck(np.random.default_rng(ex.seed)),
            "members": e.members, "teacher": clean(teacher) | asdict(tc),
            "scores": scored | {"views_there_are": mech.view_count(x)},
            "search": search, "search_n_train": n_search, "search_n_val": n_search_val,
            "chosen": chosen, **res,
            "labels_only": {t["name"]: t for t in labels}, "labels_epochs": e.epochs,
            "gain": gain([t["test_acc"] for t in res["runs"].values()],
                         [t["test_acc"] for t in labels]),
            "train_seconds": round(seconds + res["train_seconds"], 1)}


def distil_search(ex: Experiment, student, x) -> tuple:
    """One student per distillation setting on 45,000 / 5,000 (seed ex.seed), whose validation
    resolves about half a point (1,000 images: 1.4): each (T, alpha, per_view) of e.distil_grid
    at the recipe's lam and epochs, then the best of them with each (lam factor, epochs) of
    e.distil_refine. student(setting, n) -> (Config, teach). ({label: setting and its run},
    (training, validation images)). The teacher trained on all 49,000, so it has seen the
    5,000 validation images; the student never sees them, nor the teacher's scores of them."""
    e, search = ex.e, {}
    tr, va, _ = search_splits(ex)

    def run(setting: dict) -> None:
        kind = "a view's scores" if setting["per_view"] else "an image's mean scores"
        label = (f"T={setting['T']:g}, alpha={setting['alpha']:g}, {kind}, "
                 f"lam={setting['lam']:g}, {setting['epochs']} epochs")
        cfg, teach = student(setting, tr.n)
        t = ex.trial("distil-search", label, cfg, x, ex.seed, teach=teach)
        search[label] = setting | clean(t)
    for temperature, alpha, per_view in e.distil_grid:
        run({"T": temperature, "alpha": alpha, "per_view": per_view, "lam": e.lam,
             "epochs": e.epochs})
    best = search[max(search, key=lambda k: search[k]["val_acc"] or 0)]
    for factor, epochs in e.distil_refine:
        run({k: best[k] for k in ("T", "alpha", "per_view")} | {"lam": best["lam"] * factor,
                                                                 "epochs": epochs})
    return search, (tr.n, va.n)


def search_splits(ex: Experiment) -> tuple:
    """The splits that choose settings without the final runs' validation images: 45,000 /
    5,000 (quick mode: 2,000 / 500), their training images the first of the final runs'."""
    return ex.splits(5000 if not ex.limit else 500)


def teacher_module():
    """teacher.py, which needs torch: a clear error where torch is not installed."""
    try:
        import teacher
    except ImportError as e:
        raise a.DataError(f"bonus.py distil trains its teacher with torch ({e}); install it with "
                          f"`pip install -r requirements.txt`") from None
    return teacher


def teacher_trial(ex: Experiment, tc) -> tuple:
    """The teacher network of the experiment's data and its record: kept from bonus.jsonl and
    models/ when its key is there, else trained (resuming a run cut short), the test set seen
    once by the epoch validation picked."""
    tch = teacher_module()
    (tr, va, te), data = ex.data
    key = {"stage": "teacher", "seed": ex.seed, "n_train": tr.n, "n_val": va.n, **asdict(tc),
           "code": harness.code_fingerprint(tch.train_teacher, tch.load_net, tch.accuracy),
           "data": data}
    name = trial_name({"key": key})
    path, hit = ex.weights_file(name), ex.trials.get(key)
    if hit is not None and path.is_file():
        ex.log(f"teacher: kept from bonus.jsonl, val acc {hit['val_acc']}")
        with np.load(path) as f:
            return tch.load_net({k: f[k] for k in f.files}, tc), hit
    progress = (ex.out_dir / f"bonus.{name}.progress.npz", key)
    state, hist = tch.train_teacher(tr, va, tc, ex.seed, progress, ex.log)
    net, best = tch.load_net(state, tc), int(np.argmax(hist["val_acc"]))
    rec = {"name": "teacher", "seed": ex.seed, "diverged": False, "epoch": best + 1,
           "val_acc": hist["val_acc"][best], "test_acc": tch.accuracy(net, te),
           "seconds": hist["seconds"][-1], "history": hist}
    ex.log(f"teacher: val acc {rec['val_acc']:.4f} (epoch {best + 1}), test acc "
           f"{rec['test_acc']:.4f}, {rec['seconds'] / 60:.1f} minutes")
    with a.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **state)
    ex.trials.add(rec | {"key": key})
    progress[0].unlink(missing_ok=True)
    return net, rec | {"key": key}


def teacher_scores(ex: Experiment, net, teacher: dict, x) -> tuple:
    """(views (n, V, 3), the teacher's scores of them (n, V, K), their key and seconds): e.views
    views of every training image, the plain one first (mechanisms.target_views), scored once
    and kept in models/ under the key of the teacher, the views and the code."""
    tch = teacher_module()
    tr = ex.data[0][0]
    key = {"teacher": trial_name(teacher), "views": ex.e.views, "flip": x.flip,
           "shift": x.shift, "seed": ex.seed,
           "code": harness.code_fingerprint(tch.teacher_logits, mech.target_views)}
    path = ex.out_dir / "models" / f"scores-{trial_name({'key': key})}.npz"
    if path.is_file():
        try:
            with np.load(path) as f:
                views_, scores, seconds = f["views"], f["scores"], float(f["seconds"])
            if views_.shape != (tr.n, ex.e.views, 3) or scores.shape != (tr.n, ex.e.views, a.K):
                raise ValueError("its arrays do not fit the training images")
            ex.log(f"the teacher's scores of {ex.e.views} views an image: kept from {path.name}")
            return views_, scores, {"key": key, "seconds": seconds}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            harness.set_aside(path, f"not a readable file of scores ({e}); scoring again", ex.log)
    views_ = mech.target_views(tr.n, ex.e.views, x, np.random.default_rng([ex.seed, 19]))
    t0 = time.perf_counter()
    scores = tch.teacher_logits(net, tr.X, views_, x.shift)
    seconds = round(time.perf_counter() - t0, 1)
    ex.log(f"the teacher scored {ex.e.views} views of {tr.n} images in {seconds:.0f} s")
    with a.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, views=views_, scores=scores, seconds=np.array(seconds))
    return views_, scores, {"key": key, "seconds": seconds}


def gain(distilled: list, labels: list) -> dict:
    """The mean test accuracy of the distilled runs minus that of the labels' runs, with its
    standard error from the two spreads (Welch's: s_d^2 / n_d + s_l^2 / n_l)."""
    se = (math.sqrt(np.var(distilled, ddof=1) / len(distilled) + np.var(labels, ddof=1)
                    / len(labels)) if min(len(distilled), len(labels)) > 1 else None)
    return {"diff": float(np.mean(distilled) - np.mean(labels)), "se": se,
            "distilled_mean": float(np.mean(distilled)), "labels_mean": float(np.mean(labels))}


def explore(ex: Experiment, train: bool = True) -> dict:
    """The ablation on 45,000 / 5,000, validation only: every row's first seed, then every row's
    next, so that each row has a number early and an error bar later; the results file is
    written again after every run, so the runs done can be read while the rest train. On the
    recipe's runs: the test-time views, and the networks made of them. train=False: the results
    of the runs bonus.jsonl holds, training none."""
    splits = search_splits(ex)
    tr, va, _ = splits
    rows = ablation(ex.e, tr.n)
    cfg, x, _ = rows["recipe"]
    res = {"n_train": tr.n, "n_val": va.n, "epochs": ex.e.epochs,
           "ablation_epochs": ex.e.ablation_epochs, "recipe": asdict(cfg) | asdict(x),
           "rows_planned": list(rows), "rows": {}}
    res |= summary(res["rows"])  # what a results file of no runs yet says
    seeds, recipe_runs = range(ex.seed, ex.seed + ex.e.ablation_seeds + 1), []
    for j, seed in enumerate(seeds):
        for label, (cfg, x, against) in rows.items():
            if j == len(seeds) - 1 and against != label:
                continue  # the extra seed is the recipe rows'
            t = ex.trial("explore", label, cfg, x, seed, train)
            if t is None:
                continue
            recipe_runs += [t] if label == "recipe" and not t["diverged"] else []
            row = res["rows"].setdefault(label, {"against": against, "runs": [],
                                                 "epochs": epochs_of(cfg, tr.n)})
            row["runs"].append(clean(t))
            res["rows"] = {n: res["rows"][n] for n in rows if n in res["rows"]}  # as planned
            res |= summary(res["rows"])
            save(ex.out_dir, "explore", res, format_explore)
            plot_ablation(res, ex.out_dir / "figures" / "ablation.png")
    res["views"] = [{"seed": t["seed"], "val_acc_views": t["val_acc_views"]} for t in recipe_runs]
    kept = [t for t in recipe_runs  # weights stay on the machine that made them
            if ex.weights_file(trial_name(t)).is_file()]
    res["combined"] = [{"k": k, "seeds": [t["seed"] for t in kept[:k]],
                        "val_acc_views": view_accuracies(va, concatenate(
                            [ex.weights(t) for t in kept[:k]]), views(ex.e.shift))}
                       for k in range(2, len(kept) + 1)]
    save(ex.out_dir, "explore", res, format_explore)
    return res


def epochs_of(cfg: a.Config, n_train: int) -> float:
    """The budget of a run in epochs of n_train images."""
    return round(2 * cfg.n_s * cfg.n_cycles / (n_train // cfg.n_batch), 2)


def summary(rows: dict) -> dict:
    """Each row's mean and spread of validation accuracy over its seeds, and its difference to
    the recipe row it is measured against, with a standard error from the spread of one run,
    pooled over the rows with two runs or more (the rows differ in their means, not in how
    much one run varies): se = s sqrt(1/n + 1/n_recipe)."""
    accs = {n: [t["val_acc"] for t in r["runs"] if not t["diverged"]] for n, r in rows.items()}
    dof = sum(len(v) - 1 for v in accs.values() if len(v) > 1)
    ss = sum(float(np.sum((np.array(v) - np.mean(v)) ** 2)) for v in accs.values() if len(v) > 1)
    pooled = math.sqrt(ss / dof) if dof else None
    for name, row in rows.items():
        v, ref = accs[name], accs.get(row["against"], [])
        row["val_acc"] = v
        row["mean"] = float(np.mean(v)) if v else None
        row["std"] = float(np.std(v, ddof=1)) if len(v) > 1 else None
        same = name == row["against"] or not v or not ref
        row["diff"] = None if same else row["mean"] - float(np.mean(ref))
        row["se"] = None if same or pooled is None else pooled * math.sqrt(1 / len(v)
                                                                            + 1 / len(ref))
    seconds = sum(t.get("seconds", 0) for r in rows.values() for t in r["runs"])
    return {"pooled_std": pooled, "pooled_dof": dof, "train_seconds": round(seconds, 1)}


def clean(trial: dict) -> dict:
    """A trial without its key, for the results files."""
    return {k: v for k, v in trial.items() if k != "key"}


# --------------------------------------------------------------------------------------------------
# Outputs

def plot_minutes(runs: list, nets: list, path: Path) -> None:
    """Validation accuracy against minutes of training, the runs one after another, and each
    network made of the first k runs at the minutes they took together."""
    fig, ax = a.pyplot().subplots(figsize=(6.4, 3.8))
    start = 0.0
    for t in runs:
        h = t["history"]
        ax.plot((start + np.array(h["seconds"])) / 60, h["val_acc"], "o-", ms=3,
                label=f"one run, {t['name']}")
        start += t["seconds"]
    for t, marker in zip(nets, "sD^v"):
        for view, color, fill in (("plain", "black", None), ("mirrored", "black", "none"),
                                  (t["evaluation"], "tab:red", None)):
            ax.plot(t["seconds"] / 60, t["val_acc_views"][view], marker, color=color, ms=7,
                    mfc=fill, label=f"{t['k']} run(s) as one network, {view}")
    low = min(min(t["history"]["val_acc"][1:] or [0]) for t in runs)  # the untrained point aside
    ax.set(xlabel="minutes of training", ylabel="validation accuracy",
           ylim=(max(0, low - 0.02), None), title="the recipe: validation accuracy against time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    a.save_figure(fig, path)


def plot_ablation(res: dict, path: Path) -> None:
    """Each row's difference in validation accuracy to its recipe row, +- 2 standard errors,
    every seed's run as a dot; the recipe rows at 0 with their runs' spread."""
    rows = list(res["rows"].items())
    fig, ax = a.pyplot().subplots(figsize=(6.4, 0.28 * len(rows) + 1.2))
    for i, (name, r) in enumerate(rows):
        ref = np.mean(res["rows"][r["against"]]["val_acc"] or [np.nan])
        ax.plot(100 * (np.array(r["val_acc"]) - ref), [i] * len(r["val_acc"]), "o", ms=3,
                color="tab:gray")
        if r["diff"] is not None:
            err = 2 * 100 * r["se"] if r["se"] is not None else 0
            ax.errorbar(100 * r["diff"], i, xerr=err, fmt="s", ms=5, color="tab:blue", capsize=3)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="validation accuracy against the recipe row (points; bars: 2 s.e.)",
           title=f"the ablation: {res['n_train']} / {res['n_val']} images, one change per row")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    a.save_figure(fig, path)


def plot_augmentation(XT: np.ndarray, path: Path, shift: int) -> None:
    """Training images (rows of XT, raw pixels) and mirrored and moved versions of them."""
    n, windows = XT.shape[0], augment_source(XT.astype(np.float32), True, shift)
    rows = [("original", 0, 0, 0), ("mirrored", 1, 0, 0), (f"right {shift}", 0, shift, 0),
            (f"left {shift}, down {shift}", 0, -shift, shift),
            (f"mirrored, up {shift}", 1, 0, -shift)]
    fig, axes = a.pyplot().subplots(len(rows), n, figsize=(1.3 * n, 1.45 * len(rows)))
    for r, (label, f, tx, ty) in enumerate(rows):
        batch = augmented_batch(windows, np.arange(n), np.full(n, f), np.full(n, shift - ty),
                                np.full(n, shift - tx))  # (n, D)
        for c in range(n):
            axes[r, c].imshow(batch[c].reshape(3, 32, 32).transpose(1, 2, 0).astype(np.uint8))
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle("augmentation: edge pixels fill the uncovered border")
    fig.tight_layout()
    a.save_figure(fig, path)


def format_bonus(res: dict) -> str:
    """results_bonus.txt: the Exercise 5 numbers for people."""
    pct, r = a.pct, res["recipe"]
    out = [f"Exercise 5: the recipe, {res['n_train']} training / {res['n_val']} validation images",
           f"one network: m={r['m']}, W1 in the top {r['pca']} principal directions "
           f"({100 * res['pca_variance_kept']:.2f}% of the variance), lam={r['lam']:g}, "
           f"{r['optimizer']}, eta {r['eta_max']:g} falling linearly to 0 over {res['epochs']} "
           f"epochs, mirroring and shifts of up to {r['shift']} pixels", "",
           f"{'run':<12} {'val acc':>8} {'test acc':>9} {'minutes':>8}"]
    out += [f"{t['name']:<12} {pct(t['val_acc']):>8} {pct(t['test_acc']):>9} "
            f"{t['seconds'] / 60:>8.1f}" for t in res["runs"].values()]
    out += ["", "validation accuracy with each evaluation:"]
    for t in res["combined"].values():
        out.append(f"  {t['name']}: " + ", ".join(f"{v} {pct(acc)}"
                                                  for v, acc in t["val_acc_views"].items()))
    out += ["", "test accuracy with the evaluation validation picks:"]
    out += [f"  {t['name']}: {pct(t['test_acc_chosen'])} ({t['evaluation']}), "
            f"{t['seconds'] / 60:.1f} minutes" for t in list(res["combined"].values())
            + res["final_seeds"][1:]]
    out += ["", f"fast recipe: {res['fast']['name']}; final network: {res['final']['name']}",
            f"training time of all the runs: {res['train_seconds'] / 60:.1f} minutes"]
    return "\n".join(out) + "\n"


def format_explore(res: dict) -> str:
    """results_explore.txt: the ablation, a row per change, mean +- spread over its seeds and
    the difference to its recipe row +- a standard error, in points of validation accuracy."""
    def pts(x, sign=False):
        return "-" if x is None else f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"
    pooled = res.get("pooled_std")
    out = [f"Exercise 5's ablation: {res['n_train']} training / {res['n_val']} validation images, "
           f"one change per row; validation accuracy (%) over the seeds of each row",
           f"standard error of a difference from the spread of one run, pooled over the rows: "
           f"{pts(pooled)} points ({res.get('pooled_dof', 0)} degrees of freedom)", "",
           f"{'row':<34} {'epochs':>6} {'runs':>4} {'mean':>6} {'+-std':>6} {'diff':>6} "
           f"{'+-se':>5} {'min/run':>7}"]
    for name, r in res["rows"].items():
        minutes = np.mean([t.get("seconds", 0) for t in r["runs"]]) / 60
        out.append(f"{name:<34} {r['epochs']:>6g} {len(r['val_acc']):>4} {pts(r['mean']):>6} "
                   f"{pts(r['std']):>6} {pts(r['diff'], True):>6} {pts(r['se']):>5} "
                   f"{minutes:>7.1f}")
    missing = [n for n in res["rows_planned"] if n not in res["rows"]]
    if missing:
        out += ["", "not run yet: " + ", ".join(missing)]
    for v in res.get("views", []):
        out.append(f"recipe, seed {v['seed']}, with test-time views: " + ", ".join(
            f"{k} {pts(acc)}" for k, acc in v["val_acc_views"].items()))
    for c in res.get("combined", []):
        out.append(f"recipe runs of seeds {c['seeds']} as one network: " + ", ".join(
            f"{k} {pts(acc)}" for k, acc in c["val_acc_views"].items()))
    return "\n".join(out) + "\n"


def format_distil(res: dict) -> str:
    """results_distil.txt: the teacher, the settings tried, the distilled and the labels' runs."""
    pct, t = a.pct, res["teacher"]
    out = [f"Exercise 5: the recipe's network trained on a convolutional teacher's scores, "
           f"{res['n_train']} training / {res['n_val']} validation images",
           f"teacher: width {t['width']}, {t['epochs']} epochs; val acc {pct(t['val_acc'])} "
           f"(epoch {t['epoch']}), test acc {pct(t['test_acc'])}, {t['seconds'] / 60:.1f} "
           f"minutes; its scores of {res['scores']['key']['views']} views of every training "
           f"image: {res['scores']['seconds'] / 60:.1f} minutes", "",
           f"settings on {res['search_n_train']} training / {res['search_n_val']} validation "
           f"images, one run each (chosen: {res['chosen']}):"]
    out += [f"  {name}: val acc {pct(r['val_acc'])}, {r['seconds'] / 60:.1f} minutes"
            for name, r in res["search"].items()]
    out += ["", f"the chosen setting, {res['epochs']:g} epochs, and the recipe's runs on the "
            f"labels ({res['labels_epochs']} epochs):",
            f"{'run':<12} {'distilled val':>13} {'test':>7} {'labels only val':>15} {'test':>7}"]
    for (name, r), lo in zip(res["runs"].items(), res["labels_only"].values()):
        out.append(f"{name:<12} {pct(r['val_acc']):>13} {pct(r['test_acc']):>7} "
                   f"{pct(lo['val_acc']):>15} {pct(lo['test_acc']):>7}")
    g = res["gain"]
    se = "" if g["se"] is None else f" +- {100 * g['se']:.2f}"
    out += ["", f"one run, test acc: distilled {pct(g['distilled_mean'])}, labels only "
            f"{pct(g['labels_mean'])}, gain {100 * g['diff']:+.2f}{se} points (standard error)",
            "test accuracy with the evaluation validation picks:"]
    out += [f"  {n['name']}: {pct(n['test_acc_chosen'])} ({n['evaluation']}), plain "
            f"{pct(n['test_acc'])}" for n in list(res["combined"].values())
            + res["final_seeds"][1:]]
    out += ["", f"final network: {res['final']['name']}; training time of the whole step "
            f"(teacher, scores, students): {res['train_seconds'] / 60:.1f} minutes"]
    return "\n".join(out) + "\n"


def save(out_dir: Path, step: str, res: dict, fmt) -> None:
    """results_<step>.json and .txt, each written whole."""
    a.write_atomic(out_dir / f"results_{step}.json", json.dumps(res, indent=1) + "\n")
    a.write_atomic(out_dir / f"results_{step}.txt", fmt(res))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("step", nargs="?", default="recipe", choices=["recipe", "explore", "distil"])
    p.add_argument("--data-dir", default=None, help="folder of the CIFAR-10 python batches "
                   "(default: $CIFAR10_DIR, else data/cifar-10-batches-py)")
    p.add_argument("--out-dir", help="default: this folder, or runs/bonus-quick/ for --quick")
    p.add_argument("--seed", type=int, default=0, help="the first run's seed (default: 0)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    p.add_argument("--no-training", action="store_true", help="explore: write the results and "
                   "figure of the runs bonus.jsonl holds, training none")
    args, out = p.parse_args(argv), None
    try:
        a.on_signals()
        a.require("matplotlib", *(["torch"] if args.step == "distil" else []))
        a.folder_name("--out-dir", args.out_dir)
        data_dir = a.data_folder(args.data_dir)
        out = Path(args.out_dir or (HERE / "runs" / "bonus-quick" if args.quick else HERE))
        with a.folder_lock(out):
            a.check_out_dir(out)
            for folder in (out, out / "models"):
                a.clean_temporaries(folder)
            ex = Experiment(data_dir, out, args.seed, QUICK if args.quick else Exercise5(),
                            2000 if args.quick else None)
            t0 = time.perf_counter()
            if args.step == "recipe":
                save(out, "bonus", run_recipe(ex), format_bonus)
            elif args.step == "distil":
                save(out, "distil", run_distil(ex), format_distil)
            else:
                explore(ex, train=not args.no_training)
        print(f"done in {time.perf_counter() - t0:.0f} s: {out}")
        return 0
    except (a.DataError, a.ConfigError, a.Diverged, a.StateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(a.os_error(e, out), file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print("\ninterrupted: finished runs are in bonus.jsonl, a run cut short resumes from its "
              "last evaluation point; run the same command again", file=sys.stderr)
        return 143 if isinstance(e, a.Terminated) else 130


if __name__ == "__main__":
    sys.exit(main())
