"""Exercise 5 of DD2424 Assignment 2, the experiment: how far the two-layer network of
assignment2.py gets with its Exercise 5 mechanisms (width, augmentation, Adam, W1 in a principal
subspace; Nesterov momentum, cyclic SGD and dropout in the ablation), stated as named configs, run
by one driver.

    python assignment2.py bonus      # the recipe, 4 networks: about 80 minutes on 2 cores
    python assignment2.py explore    # the ablation at the recipe's budget on 45,000 / 5,000: hours

The recipe (one hidden layer of m units, W1 trained in the top principal directions, mirroring and
shifts, Adam with a linearly decaying eta, no dropout) is trained `members` times with
consecutive seeds; averaging the logits of k networks is one wider two-layer network (hidden units
concatenated, W2 scaled by 1/k), and validation picks how many to concatenate and how the network
looks at a test image (itself, with its mirror image, or with moved copies too). The same is done
with the next seeds, so the final settings are measured twice. Every trial is appended to
bonus.jsonl as it finishes, so a rerun resumes; results_bonus.json holds the trials keyed by name
and report/bonus.typ looks them up by those names. Each trained network meets the test set once.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

import assignment2 as a
from assignment2 import Config
from report.build import pct
from runfiles import short_hash, write_atomic


@dataclass(frozen=True)
class Exercise5:
    """The recipe and the experiment's sizes; QUICK shrinks them for smoke tests."""
    m: int = 4096  # hidden units of one network
    pca: int = 512  # W1 is trained in the top pca principal directions of the training images
    lam: float = 2.5e-4  # L2 penalty of eq. 7 (torch's weight decay 5e-4 on the weights)
    optimizer: str = "adam"  # Adam (beta1 0.9, beta2 0.999), eta falls linearly from ...
    eta: float = 1e-3  # ... here (Kingma and Ba's suggested step size) to 0 ...
    epochs: int = 140  # ... over this many epochs of batches of 100
    shift: int = 3  # every image mirrored with probability 1/2 and moved by up to 3 pixels
    points: int = 15  # evaluation points on each curve
    members: int = 2  # the final network: up to this many runs, hidden units concatenated
    seeds: int = 2  # ... all made again with the next seeds: members * seeds runs
    cyclic_eta: float = 0.075  # the ablation's cyclic SGD: eta_max (the earlier range test's) ...
    cycles: int = 3  # ... over this many cycles
    nesterov_eta: float = 0.02  # the first recipe, the ablation's baseline: Nesterov momentum 0.9


QUICK = Exercise5(m=40, pca=64, epochs=2, points=2, cycles=1)


# --------------------------------------------------------------------------------------------------
# The stages as data

def recipe(x: Exercise5, per_epoch: int) -> Config:
    """One network of the recipe: per_epoch update steps make an epoch."""
    return Config(m=x.m, lam=x.lam, eta_max=x.eta, n_s=x.epochs * per_epoch // 2, n_cycles=1,
                  optimizer=x.optimizer, schedule="linear", flip=True, shift=x.shift, pca=x.pca,
                  evals_per_cycle=x.points, eval_train=False)


def first_recipe(x: Exercise5, per_epoch: int) -> Config:
    """The recipe as it was before the ablation: SGD with Nesterov momentum 0.9 instead of Adam."""
    return replace(recipe(x, per_epoch), optimizer="nesterov", eta_max=x.nesterov_eta)


def ablation(x: Exercise5, per_epoch: int) -> dict:
    """One change per row from the first recipe (Nesterov), each at the recipe's budget (the same
    epochs); its Adam rows made Adam the recipe. A row named ", again" repeats an earlier one at
    another place in the list, so with another random stream (stage_rng: initialisation, batches,
    augmentation): the spread of one row's accuracy. A row named "A + B" makes the changes of rows
    A and B together."""
    base = first_recipe(x, per_epoch)
    total = 2 * base.n_s  # update steps of every row
    adam, small_lam = replace(base, optimizer="adam", eta_max=x.eta), x.lam / 25
    return {"Nesterov": base,
            "cyclic SGD (eqs. 14-15)": replace(base, optimizer="sgd", schedule="cyclic",
                                               eta_max=x.cyclic_eta, n_s=total // (2 * x.cycles),
                                               n_cycles=x.cycles,
                                               evals_per_cycle=max(1, x.points // x.cycles)),
            "Adam": adam,
            f"lam={small_lam:g}": replace(base, lam=small_lam),
            f"lam={x.lam * 4:g}": replace(base, lam=x.lam * 4),
            "Nesterov, again": base,
            "Adam, again": adam,
            f"Adam + lam={small_lam:g}": replace(adam, lam=small_lam),
            "no augmentation": replace(base, shift=0, flip=False),
            "no translations": replace(base, shift=0),
            "dropout 0.3": replace(base, p_drop=0.3),
            f"m={2 * x.m}": replace(base, m=2 * x.m)}


# --------------------------------------------------------------------------------------------------
# Networks made of networks

def concatenate(nets: list[dict]) -> dict:
    """The two-layer network whose scores are the mean of the nets' scores (eq. 3): hidden units
    side by side, W2 and b2 divided by their number. It is one network of sum(m) hidden units."""
    k = len(nets)
    return {"W1": np.concatenate([p["W1"] for p in nets]),  # (k m, d)
            "b1": np.concatenate([p["b1"] for p in nets]),  # (k m, 1)
            "W2": np.concatenate([p["W2"] for p in nets], axis=1) / k,  # (K, k m)
            "b2": sum(p["b2"] for p in nets) / k}  # (K, 1)


def views(shift: int) -> dict:
    """The evaluations validation chooses from: each image classified by the mean of its class
    probabilities (eq. 4) over views (mirrored, dy, dx) of it. 'plain' is the image alone (eq. 6),
    'mirrored' adds its mirror image, 'mirrored, moved s' adds both moved s pixels up, down, left
    and right (the border filled as in training): 10 forward passes."""
    out = {"plain": ((0, 0, 0),), "mirrored": ((0, 0, 0), (1, 0, 0))}
    for s in range(1, shift + 1):
        out[f"mirrored, moved {s}"] = tuple(
            (f, dy, dx) for f in (0, 1) for dy, dx in ((0, 0), (-s, 0), (s, 0), (0, -s), (0, s)))
    return out


def view_probs(X: np.ndarray, params: dict, views: tuple) -> np.ndarray:
    """The mean of P (eq. 4) over the views of every image (column) of X (d, n): (K, n)."""
    s = max(max(abs(dy), abs(dx)) for _, dy, dx in views)
    windows = a.augment_source(np.ascontiguousarray(X.T), True, s)  # as training pads them
    n = X.shape[1]
    idx, P = np.arange(n), np.zeros((a.K, n), X.dtype)  # (K, n)
    for f, dy, dx in views:
        Xv = a.augmented_batch(windows, idx, np.full(n, f), np.full(n, s - dy), np.full(n, s - dx))
        P += a.forward(Xv.T, params)[0]  # Xv (n, d)
    return P / len(views)


def view_accuracy(d: a.Split, params: dict, views: tuple, chunk: int = 2500) -> float:
    """The accuracy on split d when each image is classified by view_probs(), in chunks of images
    to bound memory."""
    correct = sum(int(np.sum(np.argmax(view_probs(d.X[:, i:i + chunk], params, views), axis=0)
                             == d.y[i:i + chunk])) for i in range(0, d.n, chunk))
    return correct / d.n


def measure(params: dict, splits: tuple, lam: float, shift: int,
            evaluation: str | None = None) -> dict:
    """Validation and test accuracy, plain and with mirrored averaging; the validation accuracy of
    every evaluation of views(shift), and the test accuracy with `evaluation`, by default the one
    validation prefers (the first of equals, the simplest: the test set chooses nothing)."""
    _, va, te = splits
    res = {f"{s}_acc{tail}": a.evaluate(d.X, d.y, params, lam, mirror=mirror)["acc"]
           for s, d in (("val", va), ("test", te)) for tail, mirror in (("", False),
                                                                         ("_mirror", True))}
    known = {"plain": "_acc", "mirrored": "_acc_mirror"}  # measured above already

    def accuracy(split: str, d: a.Split, name: str) -> float:
        return (res[split + known[name]] if name in known else
                view_accuracy(d, params, views(shift)[name]))
    res["val_acc_views"] = {n: accuracy("val", va, n) for n in views(shift)}
    evaluation = evaluation or max(res["val_acc_views"], key=res["val_acc_views"].get)
    acc = accuracy("test", te, evaluation)
    return res | {"evaluation": evaluation, "test_acc_chosen": acc}


# --------------------------------------------------------------------------------------------------
# The driver

def stage(ctx, name: str, cfgs: dict, which: str = "final", seed: int | None = None,
          basis=None, **record) -> dict:
    """Run one stage's trials on the splits `which` (assignment2.run_trials): {name: trial};
    record: what else to keep (a.Stage)."""
    seed = ctx.seed if seed is None else seed
    done = a.run_trials(a.Stage(name, tuple(cfgs.items()), **record), ctx.data(which), seed,
                        ctx.out_dir / "bonus.jsonl", ctx.log, basis)
    # a trial's cache key holds its settings, not its label: a cached one takes today's label
    return {label: t | {"name": label} for label, t in zip(cfgs, done)}


def models_dir(out_dir: Path, cfg: Config) -> Path:
    """Where the recipe's runs keep their weights: a folder per recipe, named by a hash of its
    settings, since a.weights_path names a file by stage, trial, seed and size only, and another
    recipe's runs must not overwrite these."""
    settings = json.dumps(asdict(cfg), sort_keys=True)
    return Path(out_dir) / "models" / f"recipe_{short_hash(settings)}"


def run(ctx) -> dict:
    """The recipe's networks, then the networks made of them; returns results_bonus.json."""
    x = QUICK if ctx.plan.quick else Exercise5()
    splits = ctx.data("final")
    tr, va, _ = splits
    cfg = recipe(x, tr.n // Config.n_batch)
    plot_augmentation(ctx.raw(["data_batch_1"]).X[:, :8].T, ctx.figure("augmentation.png"), x.shift)
    basis = ctx.basis("final", x.pca)  # one eigendecomposition for every network
    kept = a.pca_variance_kept(np.ascontiguousarray(tr.X.T), basis)
    ctx.log(f"bonus: the top {x.pca} principal directions hold {100 * kept:.2f}% of the variance")
    models = models_dir(ctx.out_dir, cfg)
    record = dict(test=True, mirror=True, history=True, save_dir=models, verbose=True, basis=basis)
    seeds = range(ctx.seed, ctx.seed + x.members * x.seeds)
    nets = {}
    for s in seeds:
        [trial] = stage(ctx, "bonus_recipe", {f"seed {s}": cfg}, seed=s, **record).values()
        if trial["diverged"]:
            raise a.Diverged(f"the recipe diverged with seed {s}")
        nets[trial["name"]] = trial
    runs = list(nets.values())
    groups = [runs[g * x.members:(g + 1) * x.members] for g in range(x.seeds)]  # by seeds
    # the networks made of the first 1, 2, ..., members runs of the first group
    first = [combined(groups[0][:k], splits, cfg, models, x.shift, log=ctx.log)
             for k in range(1, x.members + 1)]
    # validation picks how many runs and which evaluation; the next seeds repeat that choice
    final = max(first, key=lambda t: t["val_acc_views"][t["evaluation"]])
    again = [combined(g[:final["k"]], splits, cfg, models, x.shift, final["evaluation"], ctx.log)
             for g in groups[1:]]
    plot_minutes(groups[0], first, ctx.figure("bonus_minutes.png"))
    return {"n_train": tr.n, "n_val": va.n, "pca_variance_kept": kept, "recipe": asdict(cfg),
            "epochs": x.epochs, "members": x.members, "views": list(views(x.shift)),
            "runs": {n: clean(t) for n, t in nets.items()},
            "combined": {t["name"]: t for t in first},
            "fast": first[0], "final": final, "final_seeds": [final] + again,
            "train_seconds": round(sum(t["seconds"] for t in nets.values()), 1)}


def combined(runs: list[dict], splits: tuple, cfg: Config, models: Path, shift: int,
             evaluation: str | None = None, log=print) -> dict:
    """The network made of the trained runs (concatenate()), measured; one run is itself. With
    evaluation: tested with that evaluation (validation chose it for another network)."""
    stage_ = a.Stage("bonus_recipe", (), save_dir=models)
    nets = []
    for t in runs:
        with np.load(a.weights_path(stage_, 0, t["seed"], splits[0], cfg)) as f:
            nets.append({k: f[k] for k in ("W1", "b1", "W2", "b2")})
    params, k, seeds = concatenate(nets), len(runs), [t["seed"] for t in runs]
    name = (f"1 network (seed {seeds[0]})" if k == 1 else
            f"{k} networks (seeds {', '.join(map(str, seeds))}) as one of m={k * cfg.m}")
    res = {"name": name, "k": k, "m": k * cfg.m, "seeds": seeds,
           "seconds": round(sum(t["seconds"] for t in runs), 1)}
    res |= measure(params, splits, cfg.lam, shift, evaluation)
    log(f"{name}: val acc " + ", ".join(f"{v} {acc:.4f}" for v, acc in res["val_acc_views"].items())
        + f"; test acc {res['test_acc_chosen']:.4f} ({res['evaluation']})")
    return res


def explore(ctx) -> dict:
    """The ablation of the recipe at its budget on the search split (45,000 / 5,000): validation
    only, no test set. results_explore.json is written again after every row, so the rows done so
    far can be read while the rest train (hours); returns the whole of it."""
    x = QUICK if ctx.plan.quick else Exercise5()
    tr, va, _ = ctx.data("search")
    rows, basis = ablation(x, tr.n // Config.n_batch), ctx.basis("search", x.pca)
    for n in range(1, len(rows) + 1):  # the rows done are read back from bonus.jsonl each time
        done = stage(ctx, "explore", dict(list(rows.items())[:n]), which="search", history=True,
                     verbose=True, basis=basis)
        res = {"n_train": tr.n, "n_val": va.n, "rows_planned": list(rows),
               "rows": {name: clean(t) for name, t in done.items()},
               "train_seconds": round(sum(t["seconds"] for t in done.values()), 1)}
        if n < len(rows):
            save(ctx.out_dir, "explore", res)
    return res


def clean(trial: dict) -> dict:
    """A trial without its cache key, for the results files (its curve stays)."""
    return {k: v for k, v in trial.items() if k != "key"}


# --------------------------------------------------------------------------------------------------
# Outputs

def plot_minutes(runs: list[dict], nets: list[dict], path: Path) -> None:
    """Validation accuracy against minutes of training, the runs drawn one after another as they
    were trained, and each network made of the first k runs at the minutes they took together."""
    plt = a._pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    start = 0.0
    for t in runs:
        h = t["history"]
        ax.plot((start + np.array(h["seconds"])) / 60, h["val_acc"], "o-", ms=3,
                label=f"one run, {t['name']}")
        start += t["seconds"]
    for t, marker in zip(nets, "sD^v"):
        ax.plot(t["seconds"] / 60, t["val_acc"], marker, color="black", ms=7,
                label=f"{t['k']} run(s) as one network")
        ax.plot(t["seconds"] / 60, t["val_acc_mirror"], marker, color="black", ms=7, mfc="none",
                label="... with mirrored averaging")
        ax.plot(t["seconds"] / 60, t["val_acc_views"][t["evaluation"]], marker, color="tab:red",
                ms=7, label=f"... {t['evaluation']} (validation's pick)")
    low = min(min(t["history"]["val_acc"][1:] or [0]) for t in runs)  # the untrained point aside
    ax.set(xlabel="minutes of training", ylabel="validation accuracy",
           ylim=(max(0, low - 0.02), None),
           title="the recipe: validation accuracy against training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    a.save_figure(fig, path)


def plot_augmentation(XT: np.ndarray, path: Path, shift: int) -> None:
    """A grid of training images (rows of XT, raw pixels) and their mirrored and moved versions."""
    plt = a._pyplot()
    n = XT.shape[0]
    windows = a.augment_source(XT.astype(np.float32), True, shift)

    def full(v):
        return np.full(n, v)
    rows = [("original", 0, 0, 0), ("mirrored", 1, 0, 0), (f"right {shift}", 0, shift, 0),
            (f"left {shift}, down {shift}", 0, -shift, shift),
            (f"mirrored, up {shift}", 1, 0, -shift)]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.45 * len(rows)))
    for r, (label, f, tx, ty) in enumerate(rows):
        batch = a.augmented_batch(windows, np.arange(n), full(f), full(shift - ty),
                                  full(shift - tx))  # (n, D)
        for c in range(n):
            axes[r, c].imshow(batch[c].reshape(3, 32, 32).transpose(1, 2, 0).astype(np.uint8))
            axes[r, c].set_xticks([]), axes[r, c].set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle("augmentation: edge pixels fill the uncovered border")
    fig.tight_layout()
    a.save_figure(fig, path)


def format_bonus(res: dict) -> str:
    """results_bonus.txt: the Exercise 5 numbers for people."""
    r = res["recipe"]
    optimizer = "Adam" if r["optimizer"] == "adam" else f"Nesterov momentum {r['momentum']:g}"
    out = [f"Exercise 5: the recipe (training on {res['n_train']} images, validation on "
           f"{res['n_val']}; training times in seconds on this machine)", "",
           f"One network: m={r['m']}, W1 in the top {r['pca']} principal directions "
           f"({100 * res['pca_variance_kept']:.2f}% of the variance), lam={r['lam']:g}, "
           f"{optimizer}, eta {r['eta_max']:g} falling linearly to 0 over "
           f"{res['epochs']} epochs, batches of {r['n_batch']}, mirroring and shifts of up to "
           f"{r['shift']} pixels, no dropout", "",
           f"{'run':<12} {'val acc':>8} {'test acc':>9} {'mirrored val/test':>18} {'time s':>7}"]
    for t in res["runs"].values():
        out.append(f"{t['name']:<12} {pct(t['val_acc']):>8} {pct(t['test_acc']):>9} "
                   f"{pct(t['val_acc_mirror']) + ' / ' + pct(t['test_acc_mirror']):>18} "
                   f"{t['seconds']:>7.0f}")
    out += ["", "Networks made of the first runs, validation accuracy with each evaluation:",
            f"{'network':<44} " + " ".join(f"{v:>{max(8, len(v))}}" for v in res["views"])]
    for t in res["combined"].values():
        out.append(f"{t['name']:<44} " + " ".join(
            f"{pct(t['val_acc_views'][v]):>{max(8, len(v))}}" for v in res["views"]))
    out += ["", f"{'network':<44} {'evaluation (validation picks)':<30} {'test acc':>9} "
            f"{'plain':>7} {'mirrored':>8} {'time s':>7}"]
    for t in list(res["combined"].values()) + res["final_seeds"][1:]:
        out.append(f"{t['name']:<44} {t['evaluation']:<30} {pct(t['test_acc_chosen']):>9} "
                   f"{pct(t['test_acc']):>7} {pct(t['test_acc_mirror']):>8} {t['seconds']:>7.0f}")
    fast, final = res["fast"], res["final"]
    out += ["", f"Fast recipe, {fast['name']}: test accuracy {pct(fast['test_acc_chosen'])} "
            f"({fast['evaluation']} evaluation, as validation prefers), {fast['seconds'] / 60:.1f} "
            "minutes of training",
            f"Final network (validation picks how many runs and the evaluation): {final['name']}: "
            f"test accuracy {pct(final['test_acc_chosen'])} ({final['evaluation']}), "
            f"{final['seconds'] / 60:.1f} minutes of training",
            "The same settings with the next seeds: " + "; ".join(
                f"{t['name']}: {pct(t['test_acc_chosen'])} ({t['evaluation']})"
                for t in res["final_seeds"][1:]),
            "", f"Training time of all the runs above: {res['train_seconds']:.0f} s "
            f"({res['train_seconds'] / 60:.0f} minutes)"]
    return "\n".join(out) + "\n"


def format_explore(res: dict) -> str:
    """results_explore.txt: the ablation at the recipe's budget."""
    out = [f"Exercise 5: the recipe's ablation (training on {res['n_train']} images, validation on "
           f"{res['n_val']}; one change per row; times in seconds on this machine)", "",
           f"{'row':<28} {'val acc':>8} {'time s':>7}"]
    out += [f"{n:<28} {pct(t['val_acc']):>8} {t['seconds']:>7.0f}" for n, t in res["rows"].items()]
    return "\n".join(out + ["", f"Training time: {res['train_seconds']:.0f} s"]) + "\n"


def save(out_dir: Path, step: str, res: dict) -> None:
    """results_<step>.json and .txt (step: bonus or explore), each written whole."""
    text = format_bonus(res) if step == "bonus" else format_explore(res)
    write_atomic(Path(out_dir) / f"results_{step}.json", json.dumps(res, indent=1) + "\n")
    write_atomic(Path(out_dir) / f"results_{step}.txt", text)
