"""The steps of Exercise 5, each a function of an experiment.Experiment that returns its
results: the recipe (run_recipe), its ablation (explore) and the distillation from a
convolutional teacher (run_distil), with what they share: the final networks made of a
stage's runs, and the search split that chooses settings without the final validation images.
"""
import math
from dataclasses import asdict

import numpy as np

import assignment2 as a
from bonus import outputs
from bonus.augment import (
    concatenate,
    measure,
    pca_variance_kept,
    view_accuracies,
    views,
)
from bonus.experiment import Experiment
from bonus.settings import ablation, epochs_of, parts, recipe


def run_recipe(ex: Experiment) -> dict:
    """The recipe's networks, then the networks made of them: bonus/results/recipe.json."""
    e, splits = ex.e, ex.splits(1000 if not ex.limit else 200)
    tr, va, _ = splits
    cfg, x = recipe(e, tr.n)
    kept = pca_variance_kept(np.ascontiguousarray(tr.X.T), ex.basis(x.pca)) if x.pca else 1.0
    ex.log(f"the top {x.pca} principal directions hold {100 * kept:.2f}% of the variance")
    res = final_networks(ex, "recipe", cfg, x, splits)
    outputs.plot_minutes(list(res["runs"].values())[:e.members], list(res["combined"].values()),
                         ex.out_dir / "figures" / "bonus_minutes.png")
    raw = a.load_batch(ex.data_dir / "data_batch_1").X[:, :8].T
    outputs.plot_augmentation(raw, ex.out_dir / "figures" / "augmentation.png", x.shift)
    return {**ex.source, "n_train": tr.n, "n_val": va.n, "pca_variance_kept": kept,
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


def search_splits(ex: Experiment) -> tuple:
    """The splits that choose settings without the final runs' validation images: 45,000 /
    5,000 (quick mode: 2,000 / 500), their training images the first of the final runs'."""
    return ex.splits(5000 if not ex.limit else 500)


def explore(ex: Experiment, train: bool = True) -> dict:
    """The ablation on 45,000 / 5,000, validation only: every row's first seed, then every row's
    next, so that each row has a number early and an error bar later; the results file is
    written again after every run, so the runs done can be read while the rest train. On the
    recipe's runs: the test-time views, and the networks made of them. train=False: the results
    of the runs the store holds, training none."""
    splits = search_splits(ex)
    tr, va, _ = splits
    rows = ablation(ex.e, tr.n)
    cfg, x, _ = rows["recipe"]
    res = {**ex.source, "n_train": tr.n, "n_val": va.n, "epochs": ex.e.epochs,
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
            res["gains"] = gains(res["rows"], parts(ex.e))
            outputs.save(ex.results, "explore", res, outputs.format_explore)
            outputs.plot_ablation(res, ex.out_dir / "figures" / "ablation.png")
    res["views"] = [{"seed": t["seed"], "val_acc_views": t["val_acc_views"]} for t in recipe_runs]
    kept = [t for t in recipe_runs  # weights stay on the machine that made them
            if ex.weights_file(t["key"]).is_file()]
    res["combined"] = [{"k": k, "seeds": [t["seed"] for t in kept[:k]],
                        "val_acc_views": view_accuracies(va, concatenate(
                            [ex.weights(t) for t in kept[:k]]), views(ex.e.shift))}
                       for k in range(2, len(kept) + 1)]
    outputs.save(ex.results, "explore", res, outputs.format_explore)
    return res


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


def gains(rows: dict, named: dict) -> list:
    """What each part of the recipe brings, largest first: minus the difference of the row that
    takes it away (named: settings.parts), with that difference's standard error, at the budget
    of the recipe row it is measured against."""
    out = [{"part": named[n], "row": n, "epochs": rows[r["against"]]["epochs"], "gain": -r["diff"],
            "se": r["se"]} for n, r in rows.items() if n in named and r["diff"] is not None]
    return sorted(out, key=lambda g: -g["gain"])


def clean(trial: dict) -> dict:
    """A trial without its key, for the results files."""
    return {k: v for k, v in trial.items() if k != "key"}
