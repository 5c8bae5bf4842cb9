"""Exercise 5 of DD2424 Assignment 2, the experiment: how far the two-layer network of
assignment2.py gets with its Exercise 5 mechanisms (width, dropout, augmentation, Nesterov momentum,
Adam, W1 in a principal subspace), stated as named configs and run by one driver.

    python assignment2.py bonus          # about two hours on 2 cores; --quick: seconds

Each stage is a dict {name: Config} built from the settings below and from what earlier stages
found (the range test sets eta_max, the wide net's lam comes from its own search, the ablation's
winner is trained wider and longer, validation picks the final model). Every trial is appended to
bonus.jsonl as it finishes, so a rerun resumes; results_bonus.json holds each stage's trials keyed
by name, and report/bonus.typ looks them up by those names. Selection uses validation accuracy only;
each trained network meets the test set once.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

import assignment2 as a
from assignment2 import Config
from report.build import pct
from runfiles import write_atomic


@dataclass(frozen=True)
class Exercise5:
    """The experiment's settings; QUICK shrinks them for smoke tests."""
    m: int = 1000  # hidden units of the wide network
    range_eta: tuple = (1e-5, 0.5)  # eta rises linearly over this range in the range test ...
    range_epochs: int = 2  # ... for this many epochs
    lams: tuple = (1e-4, 1e-3, 1e-2)  # lam tried for the wide network ...
    lam_cycles: int = 2  # ... for this many cycles of n_s = 2 epochs each
    cycles: int = 3  # the ablation's budget: cycles of n_s = 2 epochs per row
    p_drop: float = 0.3  # dropout probability of the hidden units
    shift: int = 3  # translations tx, ty in [-3, 3] pixels, as the spec suggests
    adam_eta: float = 1e-3  # Adam's suggested step size (Kingma and Ba)
    best_m: int = 2000  # the ablation's best row, wider ...
    best_cycles: int = 5  # ... and longer
    pca: int = 512  # principal directions W1 is trained in
    select_m: int = 4000  # hidden units while lam and dropout are chosen ...
    select: tuple = ((1e-5, 0.3), (1e-4, 0.3), (5e-4, 0.3), (1e-4, 0.5))  # ... among (lam, p_drop)
    select_cycles: int = 2  # ... on 45,000 / 5,000 images, cycles of n_s = 2 epochs
    long: tuple = ((4000, 6, 4), (8000, 6, 4))  # long runs: (m, n_s in epochs, cycles)
    seeds: int = 2  # the final settings trained with this many seeds (the run's own and the next)


QUICK = Exercise5(m=30, lams=(1e-4, 1e-2), lam_cycles=1, cycles=1, best_m=40, best_cycles=1, pca=64,
                  select_m=60, select=((1e-4, 0.3), (1e-3, 0.5)), select_cycles=1,
                  long=((60, 1, 1), (80, 1, 1)))


# --------------------------------------------------------------------------------------------------
# The stages as data

def range_test(x: Exercise5, lam: float, per_epoch: int) -> dict:
    """Smith's learning-rate range test: eta rises linearly while validation accuracy is
    recorded."""
    return {"range test": Config(m=x.m, lam=lam, eta_min=x.range_eta[0], eta_max=x.range_eta[1],
                                 n_s=per_epoch * x.range_epochs // 2, schedule="range",
                                 evals_per_cycle=20, eval_train=False)}


def wide_lams(x: Exercise5, eta_max: float, n_s: int) -> dict:
    wide = Config(m=x.m, eta_max=eta_max, n_s=n_s, n_cycles=x.lam_cycles, eval_train=False)
    return {f"lam={lam:g}": replace(wide, lam=lam) for lam in x.lams}


def ablation(x: Exercise5, lam50: float, lam_wide: float, eta_max: float, n_s: int) -> dict:
    """One change per row on one budget; the last two rows swap cyclic SGD for another optimiser."""
    base = Config(lam=lam50, n_s=n_s, n_cycles=x.cycles, eval_train=False)
    wide = replace(base, m=x.m, lam=lam_wide, eta_max=eta_max)
    drop = replace(wide, p_drop=x.p_drop)
    flip = replace(drop, flip=True)
    aug = replace(flip, shift=x.shift)
    return {"baseline": base, "width": wide, "dropout": drop, "mirroring": flip,
            "translations": aug,
            # momentum 0.9 takes steps about 1 / (1 - 0.9) times eta: start at eta_max / 10
            "nesterov": replace(aug, optimizer="nesterov", schedule="linear",
                                eta_max=eta_max * (1 - aug.momentum)),
            "adam": replace(aug, optimizer="adam", schedule="linear", eta_max=x.adam_eta)}


def ablation_labels(x: Exercise5) -> dict:
    return {"baseline": "baseline (m=50)", "width": f"+ width (m={x.m})",
            "dropout": f"+ dropout {x.p_drop}", "mirroring": "+ mirroring",
            "translations": f"+ translations (+-{x.shift})", "nesterov": "Nesterov, linear decay",
            "adam": "Adam, linear decay"}


def selection(x: Exercise5, row: Config, n_s: int) -> dict:
    """lam and dropout for a wide net with W1 in the principal subspace, on the search split."""
    big = replace(row, m=x.select_m, pca=x.pca, n_s=n_s, n_cycles=x.select_cycles)
    return {f"lam={lam:g}, p_drop={p:g}": replace(big, lam=lam, p_drop=p) for lam, p in x.select}


def long_runs(x: Exercise5, pick: Config, per_epoch: int) -> dict:
    cfgs = [replace(pick, m=m, n_s=ns * per_epoch, n_cycles=cycles, evals_per_cycle=4)
            for m, ns, cycles in x.long]
    return {f"m={c.m}, top {c.pca} PCs, lam={c.lam:g}, p_drop={c.p_drop:g}, "
            f"{2 * c.n_s * c.n_cycles // per_epoch} epochs": c for c in cfgs}


# --------------------------------------------------------------------------------------------------
# The driver

def stage(ctx, name: str, cfgs: dict, which: str = "final", seed: int | None = None,
          labels: dict | None = None, basis=None, **record) -> dict:
    """Run one stage's trials on the splits `which` (assignment2.run_trials): {name: trial}. Each
    trial's "name" is its label (default: its name); record: what else to keep (a.Stage)."""
    trials = tuple(((labels or {}).get(k, k), cfg) for k, cfg in cfgs.items())
    seed = ctx.seed if seed is None else seed
    done = a.run_trials(a.Stage(name, trials, **record), ctx.data(which), seed,
                        ctx.out_dir / "bonus.jsonl", ctx.log, basis)
    return dict(zip(cfgs, done))


def only(trials: dict) -> dict:
    """The one trial of a one-trial stage."""
    [trial] = trials.values()
    return trial


def run(ctx) -> dict:
    """Every stage in order; returns what results_bonus.json holds."""
    x = QUICK if ctx.plan.quick else Exercise5()
    tr, va, _ = ctx.data("final")
    per_epoch, lam50 = tr.n // Config.n_batch, ctx.need("final")["lam"]
    n_s = a.search_ns(ctx.plan, tr.n, Config.n_batch)
    plot_augmentation(ctx.raw(["data_batch_1"]).X[:, :8].T, ctx.figure("augmentation.png"), x.shift)

    rt = only(stage(ctx, "bonus_range", range_test(x, lam50, per_epoch), history=True))
    # where validation accuracy peaks; a rate high enough to diverge ends the test early (nan after)
    eta_max = rt["history"]["eta"][int(np.nanargmax(np.array(rt["history"]["val_acc"], float)))]
    plot_range_test(rt["history"], ctx.figure("bonus_range_test.png"), eta_max)
    ctx.log(f"bonus: range test puts eta_max at {eta_max:.4g}")
    lams = stage(ctx, "bonus_lam", wide_lams(x, eta_max, n_s))
    lam_wide = a.top_trials(list(lams.values()), 1)[0]["lam"]

    rows = ablation(x, lam50, lam_wide, eta_max, n_s)
    abl = stage(ctx, "bonus_ablation", rows, labels=ablation_labels(x), test=True)
    winner = a.top_trials(list(abl.values()), 1)[0]
    best_cfg = replace(Config(**winner["cfg"]), m=x.best_m, n_cycles=x.best_cycles)
    best = only(stage(ctx, "bonus_best", {f"{winner['name']}, m={x.best_m}, {x.best_cycles} cycles":
                                          best_cfg}, test=True, verbose=True, history=True))
    if not best["diverged"]:
        a.plot_curves(best["history"], ctx.figure("bonus_best.png"),
                      f"{best['name']}: test accuracy {pct(best['test_acc'])}")

    # Wider and longer for less: W1 trained in the top principal directions. First the ablation's
    # budget with only that changed; then lam and dropout for a wide net chosen on 5,000 validation
    # images, and long runs on 49,000 / 1,000, of which validation picks the final model.
    basis = ctx.basis("final", x.pca)  # one eigendecomposition for every pca trial on this split
    kept = a.pca_variance_kept(np.ascontiguousarray(tr.X.T), basis)
    ctx.log(f"bonus: the top {x.pca} principal directions hold {100 * kept:.2f}% of the variance")
    pca_row = only(stage(ctx, "bonus_pca", {f"+ translations, W1 in top {x.pca} PCs":
                                            replace(rows["translations"], pca=x.pca)},
                         test=True, basis=basis))
    s_tr = ctx.data("search")[0]
    s_ns = a.search_ns(ctx.plan, s_tr.n, Config.n_batch)
    select = stage(ctx, "bonus_select", selection(x, rows["translations"], s_ns), which="search",
                   basis=ctx.basis("search", x.pca))
    pick = Config(**a.top_trials(list(select.values()), 1)[0]["cfg"])
    longs = stage(ctx, "bonus_long", long_runs(x, pick, per_epoch), test=True, history=True,
                  mirror=True, save_dir=ctx.out_dir / "models", verbose=True, basis=basis)
    ok = [t for t in longs.values() if not t["diverged"]]
    if not ok:
        raise a.Diverged("every long run diverged")
    long = max(ok, key=lambda t: max(t["val_acc"], t["val_acc_mirror"]))  # validation picks
    a.plot_curves(long["history"], ctx.figure("bonus_long.png"),
                  f"{long['name']}: test accuracy {pct(long['test_acc'])}, "
                  f"mirrored {pct(long['test_acc_mirror'])}")
    again = [only(stage(ctx, "bonus_long_seed", {f"{long['name']}, seed {s}":
                                                 Config(**long["cfg"])},
                        seed=s, test=True, mirror=True, verbose=True, basis=basis))
             for s in range(ctx.seed + 1, ctx.seed + x.seeds)]
    runs = [long, *again]
    everything = [rt, *lams.values(), *abl.values(), best, pca_row, *select.values(),
                  *longs.values(), *again]
    return {"n_train": tr.n, "n_val": va.n,
            "range_test": {"eta_max": eta_max, "cfg": rt["cfg"], "eta": rt["history"]["eta"],
                           "val_acc": rt["history"]["val_acc"]},
            "wide_lam": clean_all(lams), "lam_wide": lam_wide, "ablation": clean_all(abl),
            "best": clean(best), "pca_variance_kept": kept, "pca_row": clean(pca_row),
            "n_train_select": s_tr.n, "n_val_select": ctx.data("search")[1].n,
            "select": clean_all(select), "longs": clean_all(longs), "long": clean(long),
            "long_seeds": {"seeds": [t["seed"] for t in runs]} | {
                q: [t.get(q) for t in runs]
                for q in ("val_acc", "test_acc", "val_acc_mirror", "test_acc_mirror")},
            "train_seconds": round(sum(t["seconds"] for t in everything), 1)}


def clean(trial: dict) -> dict:
    """A trial without its cache key and curves, for results_bonus.json."""
    return {k: v for k, v in trial.items() if k not in ("key", "history")}


def clean_all(trials: dict) -> dict:
    return {name: clean(t) for name, t in trials.items()}


# --------------------------------------------------------------------------------------------------
# Outputs

def plot_range_test(hist: dict, path: Path, eta_best: float) -> None:
    """Smith's learning-rate range test: validation accuracy while eta rises linearly."""
    plt = a._pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(hist["eta"], hist["val_acc"], "o-", ms=3)
    ax.axvline(eta_best, color="gray", ls="--", label=f"chosen eta_max = {eta_best:.3g}")
    ax.set(xlabel="learning rate eta", ylabel="validation accuracy",
           title="learning-rate range test")
    ax.grid(alpha=0.3)
    ax.legend()
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


def final_test_acc(trial: dict) -> tuple:
    """The test accuracy of a final model with the evaluation that validation prefers: mirrored
    averaging only when it raised the validation accuracy (the test set plays no part)."""
    if trial.get("val_acc_mirror") is not None and trial["val_acc_mirror"] > trial["val_acc"]:
        return trial.get("test_acc_mirror"), ("with mirrored averaging, which raised validation "
                                              "accuracy")
    return trial.get("test_acc"), ("plain evaluation; mirrored averaging did not raise "
                                   "validation accuracy")


def format_bonus(res: dict) -> str:
    """results_bonus.txt: the Exercise 5 numbers for people."""
    rt = res["range_test"]
    out = [f"Exercise 5 (training on {res['n_train']} images, validation on {res['n_val']}; "
           "selection on validation only; training times in seconds on this machine)", "",
           f"Range test: eta from {rt['cfg']['eta_min']:g} to {rt['cfg']['eta_max']:g}, validation "
           f"accuracy peaks at eta = {rt['eta_max']:.4g} (used as eta_max)", "",
           "Wide-network lam: " + ", ".join(f"{t['lam']:g}: {pct(t['val_acc'])}"
                                            for t in res["wide_lam"].values())
           + f" -> lam = {res['lam_wide']:g}", "",
           f"{'ablation (same budget)':<34} {'val acc':>8} {'test acc':>9} {'time s':>8}"]
    for t in [*res["ablation"].values(), res["best"]]:
        out.append(f"{t['name']:<34} {pct(t['val_acc']):>8} {pct(t.get('test_acc')):>9} "
                   f"{t['seconds']:>8.0f}")
    t = res["pca_row"]
    out += ["", f"Same budget as '+ translations', W1 in the top {t['cfg']['pca']} principal "
            f"directions: val {pct(t['val_acc'])}, test {pct(t['test_acc'])}, {t['seconds']:.0f} s",
            "", f"Wide net (m={next(iter(res['select'].values()))['cfg']['m']}) chosen on "
            f"{res['n_train_select']} / {res['n_val_select']} images: "
            + ", ".join(f"{n}: {pct(t['val_acc'])}" for n, t in res["select"].items()), "",
            f"{'long runs':<54} {'val acc':>8} {'test acc':>9} {'mirrored val/test':>18} "
            f"{'time s':>7}"]
    for t in res["longs"].values():
        mirrored = pct(t.get("val_acc_mirror")) + " / " + pct(t.get("test_acc_mirror"))
        out.append(f"{t['name']:<54} {pct(t['val_acc']):>8} {pct(t.get('test_acc')):>9} "
                   f"{mirrored:>18} {t['seconds']:>7.0f}")
    acc, how = final_test_acc(res["long"])
    sd = res["long_seeds"]
    out += ["", f"Final model (highest validation accuracy): {res['long']['name']}: test accuracy "
            f"{pct(acc)} ({how})",
            f"The same settings with seeds {', '.join(map(str, sd['seeds']))}: test "
            f"{', '.join(map(pct, sd['test_acc']))}; mirrored "
            f"{', '.join(map(pct, sd['test_acc_mirror']))}",
            "", f"Training time of all the trials above: {res['train_seconds']:.0f} s "
            f"({res['train_seconds'] / 60:.0f} minutes)"]
    return "\n".join(out) + "\n"


def save(out_dir: Path, res: dict) -> None:
    """results_bonus.json and results_bonus.txt, each written whole."""
    write_atomic(Path(out_dir) / "results_bonus.json", json.dumps(res, indent=1) + "\n")
    write_atomic(Path(out_dir) / "results_bonus.txt", format_bonus(res))
