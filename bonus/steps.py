"""The steps of Exercise 5, each a function of an experiment.Experiment that returns its
results: the recipe (run_recipe), its ablation (explore) and the distillation from a
convolutional teacher (run_distil), with what they share: the final networks made of a
stage's runs, and the search split that chooses settings without the final validation images.
"""
import math
import time
import zipfile
from dataclasses import asdict, replace

import numpy as np

import assignment2 as a
from bonus import distil, outputs, store
from bonus.augment import (
    concatenate,
    measure,
    pca_variance_kept,
    view_accuracies,
    view_count,
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


def run_distil(ex: Experiment) -> dict:
    """The recipe's network trained on a convolutional teacher's scores: distil.json. The
    teacher (bonus.teacher) trains on the recipe's training images, validation picks its epoch;
    it scores e.views views of every training image; a student of each setting of distil_search
    is measured on validation, and the best setting's members * seeds students are tested and
    combined as the recipe's runs. Beside them: the recipe's runs on the labels alone."""
    tch = teacher_module()
    e, n_val = ex.e, 1000 if not ex.limit else 200
    tr = ex.splits(n_val)[0]
    cfg, x = recipe(e, tr.n)
    tc = tch.QUICK_TEACHER if ex.limit else tch.TeacherConfig()
    net, teacher = teacher_trial(ex, tc)
    target_views, scores, scored = teacher_scores(ex, net, teacher, tc, x)

    def student(s: dict, n: int):
        """(Config, Distillation) of a setting s (T, alpha, per_view, lam, epochs) for the first
        n training images: every split's training images are the first of the five batches."""
        return (replace(recipe(e, n, s["epochs"])[0], lam=s["lam"]), distil.Distillation(
            target_views[:n], scores[:n], x, s["T"], s["alpha"], s["per_view"], scored["key"]))
    search, (n_search, n_search_val) = distil_search(ex, student, x)
    chosen = max(search, key=lambda k: search[k]["val_acc"] or 0)
    splits = ex.splits(n_val)
    final_cfg, d = student(search[chosen], splits[0].n)
    res = final_networks(ex, "distil", final_cfg, x, splits, teach=d)
    seconds = teacher["seconds"] + scored["seconds"] + sum(t["seconds"] for t in search.values())
    return {**ex.source, "n_train": splits[0].n, "n_val": splits[1].n,
            "recipe": asdict(cfg) | asdict(x),
            "student": asdict(final_cfg), "epochs": epochs_of(final_cfg, splits[0].n),
            "gradcheck": distil.distillation_gradcheck(np.random.default_rng(ex.seed)),
            "members": e.members, "teacher": clean(teacher) | asdict(tc),
            "scores": scored | {"views_there_are": view_count(x)}, "search": search,
            "search_n_train": n_search, "search_n_val": n_search_val, "chosen": chosen,
            **res, **labels_beside(ex, cfg, x, res, seconds)}


def labels_beside(ex: Experiment, cfg, x, res: dict, seconds: float) -> dict:
    """The recipe's runs on the labels alone with the distilled runs' seeds (trained here if
    the store does not hold them), the gain of distillation over them, and the step's training
    time: the distilled runs' and the seconds before them (teacher, scores, search)."""
    labels = [clean(ex.trial("recipe", f"seed {s}", cfg, x, s, weights=False))
              for s in range(ex.seed, ex.seed + ex.e.members * ex.e.seeds)]
    return {"labels_only": {t["name"]: t for t in labels}, "labels_epochs": ex.e.epochs,
            "gain": distil.gain([t["test_acc"] for t in res["runs"].values()],
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


def teacher_module():
    """bonus.teacher, which needs torch: a clear error where torch is not installed."""
    try:
        from bonus import teacher
    except ImportError as e:
        raise a.DataError(f"python3 -m bonus distil trains its teacher with torch ({e}); "
                          f"install it with `pip install -r requirements.txt`") from None
    return teacher


def teacher_trial(ex: Experiment, tc) -> tuple:
    """The teacher network of the experiment's data and its record: the store's, or trained
    (resuming a run cut short), the test set seen once by the epoch validation picked."""
    tch = teacher_module()
    key = ex.key("teacher", ex.seed, asdict(tc), ex.probes.teacher(tc))
    rec = ex.stored(key, "teacher", lambda progress: tch.fit(ex.data[0], tc, ex.seed, progress,
                                                             ex.log))
    with np.load(ex.weights_file(key)) as f:
        return tch.load_net({k: f[k] for k in f.files}, tc), rec


def teacher_scores(ex: Experiment, net, teacher: dict, tc, x) -> tuple:
    """(views (n, V, 3), the teacher's scores of them (n, V, K), their key and seconds): e.views
    views of every training image, the plain one first (distil.target_views), scored once (in
    chunks, resumable) and kept in bonus/models/ under the key of the teacher, the views and
    their probe."""
    tch, tr, V = teacher_module(), ex.data[0][0], ex.e.views
    key = {"teacher": store.run_name(teacher["key"]), "views": V, "flip": x.flip,
           "shift": x.shift, "seed": ex.seed, "probe": ex.probes.scores(tc, x, V)}
    path = ex.weights_file(key, "scores-")
    if kept := stored_scores(path, (tr.n, V), ex.log):
        return (*kept[:2], {"key": key, "seconds": kept[2]})
    views_ = distil.target_views(tr.n, V, x, np.random.default_rng([ex.seed, 19]))
    progress = path.with_suffix(".progress.npz")
    scores, seconds = score_views(lambda i, j: tch.teacher_logits(
        net, tr.X[:, i:j], views_[i:j], x.shift), (tr.n, V), (progress, key), ex.log)
    ex.log(f"the teacher scored {V} views of {tr.n} images in {seconds:.0f} s")
    with a.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, views=views_, scores=scores, seconds=np.array(seconds))
    progress.unlink(missing_ok=True)
    return views_, scores, {"key": key, "seconds": seconds}


def stored_scores(path, shape: tuple, log) -> tuple | None:
    """(views, scores, seconds) of a scores file of `shape` (n, V), else None; a damaged one is
    set aside."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as f:
            views_, scores, seconds = f["views"], f["scores"], float(f["seconds"])
        if views_.shape != (*shape, 3) or scores.shape != (*shape, a.K):
            raise ValueError("its arrays do not fit the training images")
        log(f"the teacher's scores of {shape[1]} views an image: kept from {path.name}")
        return views_, scores, seconds
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        store.set_aside(path, f"not a readable file of scores ({e}); scoring again", log)
        return None


def score_views(score, shape: tuple, progress: tuple, log, chunk: int = 500,
                every: float = 60.0) -> tuple:
    """The teacher's scores (n, V, K) float16 of the views of n images, score(i, j) giving those
    of images i..j-1, in chunks; progress = (path, key): the scores so far saved there every
    `every` seconds, so that scoring cut short goes on from there. (scores, seconds)."""
    (n, V), (path, key) = shape, progress
    out = np.empty((n, V, a.K), np.float16)  # (n, V, K)
    saved = store.load_progress(path, key, {"scores": out}, lambda m, z: None if type(
        m.get("done")) is int and 0 < m["done"] <= n else "its count is not plausible", log)
    done, seconds = (saved[0]["done"], saved[0]["seconds"]) if saved else (0, 0.0)
    if saved:
        out[:done] = saved[1]["scores"][:done]
        log(f"the teacher's scores: resumed after {done} of {n} images from {path.name}")
    last = time.perf_counter()
    for i in range(done, n, chunk):
        t0 = time.perf_counter()
        out[i:i + chunk] = score(i, min(n, i + chunk))
        seconds, done = seconds + time.perf_counter() - t0, min(n, i + chunk)
        if time.perf_counter() - last > every and done < n:
            store.save_progress(path, key, {"done": done, "seconds": seconds}, {"scores": out})
            log(f"the teacher scored {done}/{n} images, {V} views each | {seconds:.0f} s, "
                f"{seconds / done * (n - done):.0f} s left")
            last = time.perf_counter()
    return out, round(seconds, 1)
