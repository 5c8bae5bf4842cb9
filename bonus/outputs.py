"""Exercise 5's tables and figures: the results files for people (bonus/results/*.txt, each
beside its .json) and the figures (figures/bonus_minutes.png, ablation.png, augmentation.png).
"""
import json
from pathlib import Path

import numpy as np

import assignment2 as a
from bonus.augment import augment_source, augmented_batch


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


def data_line(res: dict) -> str:
    official = res.get("data_official")
    return f"data {res.get('data')}: " + ("the official CIFAR-10 (MD5 of every batch checked)"
                                           if official else "not the official CIFAR-10 files")


def format_recipe(res: dict) -> str:
    """recipe.txt: the recipe's numbers for people."""
    pct, r = a.pct, res["recipe"]
    out = [f"Exercise 5: the recipe, {res['n_train']} training / {res['n_val']} validation images",
           data_line(res),
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


def pts(x, sign=False) -> str:
    """A fraction in points, with its sign if sign; "-" for none."""
    return "-" if x is None else f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"


def ablation_table(res: dict) -> list:
    """The lines of an ablation (steps.summary's rows): mean +- spread over each row's seeds and
    its difference to the row it is measured against +- a standard error, in points."""
    w = max([34] + [len(n) for n in res["rows"]])
    out = [f"standard error of a difference from the spread of one run, pooled over the rows: "
           f"{pts(res.get('pooled_std'))} points ({res.get('pooled_dof', 0)} degrees of freedom)",
           "", f"{'row':<{w}} {'epochs':>6} {'runs':>4} {'mean':>6} {'+-std':>6} {'diff':>6} "
           f"{'+-se':>5} {'min/run':>7}"]
    for name, r in res["rows"].items():
        minutes = np.mean([t.get("seconds", 0) for t in r["runs"]]) / 60
        out.append(f"{name:<{w}} {r['epochs']:>6g} {len(r['val_acc']):>4} {pts(r['mean']):>6} "
                   f"{pts(r['std']):>6} {pts(r['diff'], True):>6} {pts(r['se']):>5} "
                   f"{minutes:>7.1f}")
    return out


def format_explore(res: dict) -> str:
    """explore.txt: the ablation, a row per change, mean +- spread over its seeds and
    the difference to its recipe row +- a standard error, in points of validation accuracy."""
    out = [f"Exercise 5's ablation: {res['n_train']} training / {res['n_val']} validation images, "
           f"one change per row; validation accuracy (%) over the seeds of each row",
           data_line(res), *ablation_table(res)]
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


def levers(res: dict) -> list:
    """distil.txt's lines on what the student learns from: how far each target lies from the
    view trained on, and the ablation of the levers."""
    pct, out = a.pct, []
    c = res["consistency"]
    out += ["", f"how far each target lies from the teacher's scores of the view trained on "
            f"(every view of {c['images']} images scored): mean KL(view || target), and how "
            f"often the most likely class is the same:"]
    out += [f"  {k}: KL {r['kl']:.3f}, same class {pct(r['same_class'])}"
            for k, r in c["targets"].items()]
    g, ab = res["grid_scores"], res["ablation"]
    out += [f"per-view targets: the nearest of {g['key']['views']} scored views (moves every "
            f"{g['key']['grid']} px), scored in {g['seconds'] / 60:.1f} minutes", "",
            "the ablation on the same split, validation accuracy (%); the squared error's "
            "alpha chosen on one run each: " + ", ".join(
                f"{r['alpha']:g} {pts(r['val_acc'])}" for r in ab["logit_search"].values()),
            *ablation_table(ab), f"chosen for the final networks: {ab['chosen']}"]
    return out


def format_distil(res: dict) -> str:
    """distil.txt: the teacher, the settings tried, the distilled and the labels' runs."""
    pct, t = a.pct, res["teacher"]
    out = [f"Exercise 5: the recipe's network trained on a convolutional teacher's scores, "
           f"{res['n_train']} training / {res['n_val']} validation images",
           data_line(res),
           f"teacher: width {t['width']}, {t['epochs']} epochs; val acc {pct(t['val_acc'])} "
           f"(epoch {t['epoch']}), test acc {pct(t['test_acc'])}, {t['seconds'] / 60:.1f} "
           f"minutes; its scores of {res['scores']['key']['views']} views of every training "
           f"image: {res['scores']['seconds'] / 60:.1f} minutes", "",
           f"settings on {res['search_n_train']} training / {res['search_n_val']} validation "
           f"images, one run each (chosen: {res['chosen']}):"]
    out += [f"  {name}: val acc {pct(r['val_acc'])}, {r['seconds'] / 60:.1f} minutes"
            for name, r in res["search"].items()]
    out += levers(res)
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


def save(folder: Path, step: str, res: dict, fmt) -> None:
    """<step>.json and <step>.txt in folder, each written whole."""
    a.write_atomic(folder / f"{step}.json", json.dumps(res, indent=1) + "\n")
    a.write_atomic(folder / f"{step}.txt", fmt(res))
