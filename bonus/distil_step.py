"""The distillation step of Exercise 5 (python3 -m bonus distil): the recipe's network trained
on a convolutional teacher's scores (bonus.distil). The teacher (bonus.teacher) is trained once
and scores two sets of views of every training image: e.views random ones, whose mean is one
kind of target, and a grid of moves every e.grid pixels (both mirror images), whose nearest
view to the one the student trains on is the other (per view: teacher and student see nearly
the same image, Beyer et al. 2022). On 45,000 / 5,000 a search picks the temperature, weight
and lam of the mean targets, and an ablation measures the levers of what the student learns
from (settings.distil_rows) over seeds, with the labels-only runs of the same budgets beside;
the best row's setting makes the final networks, as the recipe's are made.
"""
import time
import zipfile
from dataclasses import asdict, replace

import numpy as np

import assignment2 as a
from bonus import distil, settings, store
from bonus.augment import view_count
from bonus.experiment import Experiment
from bonus.settings import epochs_of, recipe
from bonus.steps import clean, final_networks, search_splits, summary


def run_distil(ex: Experiment) -> dict:
    """The teacher, its scores, the search, the ablation and the final networks: distil.json.
    The final networks' validation images are the last 1,000; the teacher trained on the
    other 49,000, the search and the ablation chose on 5,000 of them it has seen (their
    students never see those images, nor the teacher's scores of them)."""
    e, n_val = ex.e, 1000 if not ex.limit else 200
    tr = ex.splits(n_val)[0]
    cfg, x = recipe(e, tr.n)
    net, teacher, tc = teacher_trial(ex)
    means, grid = teacher_scores(ex, net, teacher, tc, x, e.views), teacher_scores(
        ex, net, teacher, tc, x, grid=e.grid)
    agreement = view_consistency(ex, net, x, means)
    st = Students(ex, x, means, grid)
    search, (n_search, n_search_val) = distil_search(ex, st)
    chosen = max(search, key=lambda k: search[k]["val_acc"] or 0)
    abl = distil_ablation(ex, st, search[chosen])
    splits = ex.splits(n_val)
    final_cfg, d = st.setup(abl["rows"][abl["chosen"]]["setting"], splits[0].n)
    res = final_networks(ex, "distil", final_cfg, x, splits, teach=d)
    seconds = (teacher["seconds"] + means[2]["seconds"] + grid[2]["seconds"]
               + agreement["seconds"] + sum(st.spent.values()))
    return {**ex.source, "n_train": splits[0].n, "n_val": splits[1].n,
            "recipe": asdict(cfg) | asdict(x), "student": asdict(final_cfg),
            "epochs": epochs_of(final_cfg, splits[0].n), "setting": d.key | {"scores": None},
            "gradcheck": distil.distillation_gradcheck(np.random.default_rng(ex.seed)),
            "members": e.members, "teacher": clean(teacher) | asdict(tc),
            "scores": means[2] | {"views_there_are": view_count(x)}, "grid_scores": grid[2],
            "consistency": agreement, "search": search, "search_n_train": n_search,
            "search_n_val": n_search_val, "chosen": chosen, "ablation": abl,
            **res, **labels_beside(ex, cfg, x, res, seconds)}


class Students:
    """The students of one teacher on the experiment's data. A setting s is {T, alpha,
    per_view, lam, epochs[, loss]}: trained on the teacher's mean over its e.views random views
    (per_view False) or on the nearest of its grid views (True); {"labels": True, "epochs":
    E}: the recipe on the labels alone at that budget, the ablation's run of it (stage
    explore, found there when that step made it). spent: the seconds of each distinct run."""

    def __init__(self, ex: Experiment, x, means: tuple, grid: tuple):
        self.ex, self.x, self.means, self.grid, self.spent = ex, x, means, grid, {}

    def setup(self, s: dict, n: int) -> tuple:
        """(Config, Distillation) of the distilled setting s for the first n training images:
        every split's training images are the first of the five batches."""
        views, scores, scored = self.grid if s["per_view"] else self.means
        return (replace(recipe(self.ex.e, n, s["epochs"])[0], lam=s["lam"]),
                distil.Distillation(views[:n], scores[:n], self.x, s["T"], s["alpha"],
                                    s["per_view"], scored["key"], s.get("loss", "softmax")))

    def run(self, s: dict, seed: int) -> dict:
        """The record of setting s with seed on the experiment's splits, trained if need be."""
        n = self.ex.data[0][0].n
        if s.get("labels"):
            cfg = recipe(self.ex.e, n, s["epochs"])[0]
            t = self.ex.trial("explore", f"labels only, {s['epochs']} epochs", cfg, self.x, seed)
        else:
            cfg, teach = self.setup(s, n)
            t = self.ex.trial("distil-search", label(s), cfg, self.x, seed, teach=teach)
        self.spent[store.run_name(t["key"])] = t["seconds"]
        return t


def label(s: dict) -> str:
    kind = "the nearest view's scores" if s["per_view"] else "an image's mean scores"
    loss = ", squared error of logits" if s.get("loss") == "logits" else f", T={s['T']:g}"
    return f"alpha={s['alpha']:g}{loss}, {kind}, lam={s['lam']:g}, {s['epochs']} epochs"


def distil_search(ex: Experiment, st: Students) -> tuple:
    """One student per setting of the mean targets on 45,000 / 5,000 (seed ex.seed), whose
    validation resolves about half a point (1,000 images: 1.4): each (T, alpha, per_view) of
    e.distil_grid at the recipe's lam and epochs, then the best of them with each (lam factor,
    epochs) of e.distil_refine. ({label: setting and its run}, (training, validation images))."""
    e, search = ex.e, {}
    tr, va, _ = search_splits(ex)

    def run(s: dict) -> None:
        search[label(s)] = s | clean(st.run(s, ex.seed))
    for temperature, alpha, per_view in e.distil_grid:
        run({"T": temperature, "alpha": alpha, "per_view": per_view, "lam": e.lam,
             "epochs": e.epochs})
    best = search[max(search, key=lambda k: search[k]["val_acc"] or 0)]
    for factor, epochs in e.distil_refine:
        run({k: best[k] for k in ("T", "alpha", "per_view")} | {"lam": best["lam"] * factor,
                                                                 "epochs": epochs})
    return search, (tr.n, va.n)


def distil_ablation(ex: Experiment, st: Students, best: dict) -> dict:
    """The levers of settings.distil_rows on the search's split, each row e.ablation_seeds
    runs with the pooled standard error (steps.summary): first the squared error's alpha,
    chosen on one run each of e.logit_alphas, then every row's first seed, then every row's
    next, so that a step cut short has a number for every row early. chosen: the distilled
    row of the best mean validation accuracy, the final networks' setting. On the split
    distil_search left the experiment on (reloading it would drop the projected crops)."""
    e = ex.e
    base = {k: best[k] for k in ("T", "alpha", "per_view", "lam", "epochs")}
    logit = {}
    for alpha in e.logit_alphas:
        s = base | {"per_view": True, "loss": "logits", "alpha": alpha}
        logit[label(s)] = s | clean(st.run(s, ex.seed))
    alpha = logit[max(logit, key=lambda k: logit[k]["val_acc"] or 0)]["alpha"]
    planned, rows = settings.distil_rows(e, base, alpha), {}
    for seed in range(ex.seed, ex.seed + e.ablation_seeds):
        for name, (s, against) in planned.items():
            rows.setdefault(name, {"against": against, "setting": s, "runs": [],
                                   "epochs": s["epochs"]})["runs"].append(clean(st.run(s, seed)))
    out = {"rows": rows, "logit_search": logit, "logit_alpha": alpha} | summary(rows)
    distilled = [n for n in rows if not rows[n]["setting"].get("labels")]
    return out | {"chosen": max(distilled, key=lambda n: rows[n]["mean"] or 0)}


def view_consistency(ex: Experiment, net, x, means: tuple) -> dict:
    """How far each kind of target lies from the teacher's scores of the very view a student
    trains on, on the first e.consistency_images training images with every view scored
    (distil.agreement): the plain view's scores, the mean over the e.views random views, and
    the nearest of grids of moves every 2 and 3 pixels."""
    tch, tr = teacher_module(), ex.data[0][0]
    n, every = min(ex.e.consistency_images, tr.n), distil.grid_views(x, 1)  # every: (W, 3)
    t0 = time.perf_counter()
    S = tch.teacher_logits(net, tr.X[:, :n], np.broadcast_to(every, (n, *every.shape)),
                           x.shift)  # (n, W, K)
    codes = [tuple(v) for v in every]
    kinds = {"the plain view": (every[:1], S[:, :1], True),
             f"the mean of {means[0].shape[1]} random views": (means[0][:n], means[1][:n], False)}
    for step in sorted({2, 3, ex.e.grid} - {1}):
        g = distil.grid_views(x, step)
        kinds[f"the nearest of {len(g)} views, moves every {step} px"] = (
            g, S[:, [codes.index(tuple(v)) for v in g]], True)
    out = {name: distil.agreement(every, S, distil.Distillation(
        np.broadcast_to(v, (n, *v.shape[-2:])), s, x, 1.0, 1.0, per, None))
        for name, (v, s, per) in kinds.items()}
    seconds = round(time.perf_counter() - t0, 1)
    ex.log(f"the teacher's scores of every view of {n} images: " + "; ".join(
        f"{k}: KL {r['kl']:.3f}, same class {a.pct(r['same_class'])}" for k, r in out.items()))
    return {"images": n, "views": len(every), "seconds": seconds, "targets": out}


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


def teacher_module():
    """bonus.teacher, which needs torch: a clear error where torch is not installed."""
    try:
        from bonus import teacher
    except ImportError as e:
        raise a.DataError(f"python3 -m bonus distil trains its teacher with torch ({e}); "
                          f"install it with `pip install -r requirements.txt`") from None
    return teacher


def teacher_trial(ex: Experiment) -> tuple:
    """(the teacher network of the experiment's data, its record, its TeacherConfig): the
    store's, or trained (resuming a run cut short), the test set seen once by the epoch
    validation picked."""
    tch = teacher_module()
    tc = tch.QUICK_TEACHER if ex.limit else tch.TeacherConfig()
    key = ex.key("teacher", ex.seed, asdict(tc), ex.probes.teacher(tc))
    rec = ex.stored(key, "teacher", lambda progress: tch.fit(ex.data[0], tc, ex.seed, progress,
                                                             ex.log))
    with np.load(ex.weights_file(key)) as f:
        return tch.load_net({k: f[k] for k in f.files}, tc), rec, tc


def teacher_scores(ex: Experiment, net, teacher: dict, tc, x, V: int = 0,
                   grid: int = 0) -> tuple:
    """(views (n, V, 3), the teacher's scores of them (n, V, K), their key and seconds): V
    views of every training image, the plain one first (distil.target_views), or with grid
    the views of distil.grid_views, scored once (in chunks, resumable) and kept in
    bonus/models/ under the key of the teacher, the views and their probe."""
    tch, tr = teacher_module(), ex.data[0][0]
    chosen = distil.grid_views(x, grid) if grid else None  # (V, 3)
    V = len(chosen) if grid else V
    key = {"teacher": store.run_name(teacher["key"]), "views": V, "flip": x.flip,
           "shift": x.shift, "seed": ex.seed, "probe": ex.probes.scores(tc, x, V, grid)}
    key |= {"grid": grid} if grid else {}  # the random views' scores keep their key
    path = ex.weights_file(key, "scores-")
    if kept := stored_scores(path, (tr.n, V), ex.log):
        return (*kept[:2], {"key": key, "seconds": kept[2]})
    views_ = (np.broadcast_to(chosen, (tr.n, V, 3)) if grid else
              distil.target_views(tr.n, V, x, np.random.default_rng([ex.seed, 19])))
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
