"""The wide network's training: one network of Exercise 5 through assignment2.train's hooks
(get_batch: where a batch comes from, augmented and projected; step: dropout, the targets and
the update rule; on_eval: the run saves its progress at each evaluation point and resumes from
it), and the record of what it reached. A teacher (bonus.distil) plugs in through `teach`.
"""
import math

import numpy as np

import assignment2 as a
from bonus import store
from bonus.augment import (
    augment_source,
    augmented_batch,
    mirror_signs,
    projected_crops,
    random_views,
    view_accuracies,
    view_accuracy,
    views,
)
from bonus.settings import Extras, check_extras
from bonus.updates import RULES, learning_rate, optimizer_state


def dropout_mask(p: float, shape: tuple, dtype, rng) -> np.ndarray | None:
    """Inverted dropout: each hidden unit of each image kept with probability 1 - p and scaled
    by 1 / (1 - p), so evaluation needs no mask; None without dropout."""
    if not p:
        return None
    dtype = np.dtype(dtype)
    return (rng.random(shape, dtype) < 1 - p) / dtype.type(1 - p)


def hooks(params: dict, XT: np.ndarray, basis, x: Extras, crops=None, teach=None) -> tuple:
    """assignment2.train's step and get_batch for x, and the optimiser state step keeps.
    teach (distillation; W1 in the principal subspace): an object whose draw(idx, rng) gives
    the views (f, oy, ox) of the images idx to train on and what its targets(P, yb, extra)
    needs to turn the network's P into the targets Y of eq. 12's P - Y."""
    state, grads = optimizer_state(params, x.optimizer), {k: np.empty_like(v)
                                                         for k, v in params.items()}

    def step(params, batch, yb, t, cfg, rng):
        Xb, extra = (batch, None) if teach is None else batch  # (d, B), what targets needs
        drop = dropout_mask(x.p_drop, (cfg.m, Xb.shape[1]), cfg.dtype, rng)  # (m, B) or None
        P, H = a.forward(Xb, params, drop)
        Y = yb if teach is None else teach.targets(P, yb, extra)  # labels, or (K, B)
        a.backward(Xb, Y, P, H, params, 0.0, out=grads, drop=drop)  # the rule adds the L2 term
        RULES[x.optimizer](params, grads, state, learning_rate(t, cfg, x), t, cfg.lam, x)

    if basis is not None and (x.flip or x.shift or teach is not None):
        return step, projected_batches(XT, basis, x, crops, teach), state
    if teach is not None:
        raise a.ConfigError("a teacher needs W1 in the principal subspace (pca > 0)")
    if not (x.flip or x.shift):
        return step, None, state
    windows = augment_source(XT, x.flip, x.shift)

    def get_batch(idx, rng):
        f, oy, ox = random_views(x, idx.size, rng)
        return augmented_batch(windows, idx, f, oy, ox).T  # (D, B)
    return step, get_batch, state


def projected_batches(XT: np.ndarray, basis: np.ndarray, x: Extras, crops=None, teach=None):
    """get_batch for W1 in the principal subspace: the same draws and images as the pixel path,
    U^T of each augmented image gathered from crops = projected_crops(XT, basis, x.shift).
    With teach, the views are teach.draw's and the batch is (U^T X, what teach.targets needs)."""
    Z = projected_crops(XT, basis, x.shift) if crops is None else crops  # (side, side, n, k)
    signs = mirror_signs(basis) if x.flip else None  # (k,)

    def get_batch(idx, rng):
        if teach is None:
            (f, oy, ox), extra = random_views(x, idx.size, rng), None
        else:
            f, oy, ox, extra = teach.draw(idx, rng)
        ox = np.where(f == 1, 2 * x.shift - ox, ox)  # the crop of the mirror image at ox
        Zb = Z[oy, ox, idx]  # (B, k)
        if x.flip:
            np.multiply(Zb, signs, out=Zb, where=(f == 1)[:, None])
        return Zb.T if teach is None else (Zb.T, extra)  # (k, B)
    return get_batch


def train_network(tr: a.Split, va: a.Split, cfg: a.Config, x: Extras, rng, basis=None,
                  progress=None, log=print, crops=None, teach=None) -> tuple:
    """A fresh network trained with Exercise 5's settings x: (params on pixels, history). With
    x.pca, W1 = V U^T is trained as V (m, k) on U^T x, U = basis; ||V|| = ||W1||, so the
    penalty is the same; basis may hold more than x.pca directions (the first ones are used).
    progress = (path, key): save the state at each evaluation point and go on from a saved one.
    crops: projected_crops of tr for this basis and x.shift, when made already. teach: the
    targets come from a teacher (see hooks)."""
    a.check_config(cfg, tr.n)
    check_extras(x)
    if x.pca and (basis is None or basis.shape[1] < x.pca):
        raise a.ConfigError(f"pca={x.pca} needs a basis of at least {x.pca} directions")
    basis = np.ascontiguousarray(basis[:, :x.pca]) if x.pca else None  # (d, k)
    params = a.init_params(tr.X.shape[0], cfg.m, rng, cfg.dtype)
    XT = np.ascontiguousarray(tr.X.T, cfg.dtype)  # (n, D)
    if x.pca:
        params["W1"] = np.asfortranarray(params["W1"] @ basis)  # (m, k)
        tr, va = a.Split((XT @ basis).T, tr.y), a.Split(basis.T @ va.X, va.y)  # (k, n)
    step, get_batch, state = hooks(params, XT, basis, x, crops, teach)
    del XT  # get_batch keeps what it needs
    start, on_eval = (resume(progress, params, state, rng, tr.n, log) if progress else
                      (None, None))
    hist = a.train(params, tr, va, cfg, rng, log, step=step, get_batch=get_batch,
                   on_eval=on_eval, start=start)
    if x.pca:
        params["W1"] = np.asfortranarray(params["W1"] @ basis.T)  # (m, d)
    return params, hist


def resume(progress: tuple, params: dict, state: dict, rng, n: int, log) -> tuple:
    """(start, on_eval) for assignment2.train: the saved state of the run, if any, and a hook
    that saves it at every evaluation point. n: the training images."""
    path, key = progress
    arrays = {f"p/{k}": v for k, v in params.items()} | {
        f"s/{k}": v for k, v in store.flatten(state).items()}

    def on_eval(s):
        meta = {"t": s["t"], "seconds": s["hist"]["seconds"][-1], "hist": s["hist"],
                "rng": rng.bit_generator.state}
        store.save_progress(path, key, meta, arrays | {"perm": s["perm"]})

    like = arrays | {"perm": np.empty(n, np.int64)}
    saved = store.load_progress(path, key, like, lambda m, z: progress_problem(m, z, rng), log)
    if not saved:
        return None, on_eval
    meta, stored = saved
    for k, v in arrays.items():
        v[...] = stored[k]  # in place, keeping each array's memory order
    rng.bit_generator.state = meta["rng"]
    log(f"resumed at step {meta['t']} from {path.name}")
    return {"t": meta["t"], "perm": stored["perm"], "hist": meta["hist"]}, on_eval


def progress_problem(meta: dict, arrays: dict, rng) -> str | None:
    """None for a saved state that resume() can go on from, else what is wrong with it."""
    hist = meta.get("hist")
    if not (type(meta.get("t")) is int and meta["t"] > 0
            and math.isfinite(meta.get("seconds", math.nan))):
        return "its step or seconds are not plausible"
    if not (isinstance(hist, dict) and isinstance(hist.get("seconds"), list) and len(
            {len(v) if isinstance(v, list) else -1 for v in hist.values()}) == 1):
        return "its history is damaged"
    if not np.array_equal(np.sort(arrays["perm"]), np.arange(arrays["perm"].size)):
        return "its order of the images is not a permutation"
    try:
        type(rng.bit_generator)().state = meta["rng"]  # a copy of the generator tries it
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        return f"its random state is damaged ({e!r})"
    return None


def student(splits: tuple, cfg: a.Config, x: Extras, rng, basis=None, crops=None, teach=None,
            progress=None, tested: bool = True, log=print) -> tuple:
    """A network trained on the training images of splits (train_network) and its record
    (record_trial), tested when tested: (params, record), params None when it diverged."""
    tr, va, te = splits
    try:
        params, hist = train_network(tr, va, cfg, x, rng, basis, progress, log, crops, teach)
    except a.Diverged as e:
        log(str(e))
        params, hist = None, None
    return params, record_trial(cfg, x, params, hist, va, te if tested else None)


def record_trial(cfg, x, params, hist, va, te) -> dict:
    """What is kept of a trained network: its curves and accuracies, plain and mirrored (the
    test set seen once per evaluation); without a test set (the ablation), the validation
    accuracy with each of the test-time views."""
    if params is None:
        return {"lam": cfg.lam, "diverged": True, "val_acc": None}
    mirrored = views(0)["mirrored"]
    rec = {"lam": cfg.lam, "diverged": False,
           "val_acc": hist["val_acc"][-1], "best_val_acc": max(hist["val_acc"]),
           "train_acc": hist["train_acc"][-1],
           "val_acc_mirror": view_accuracy(va, params, mirrored)}
    if te is not None:  # the ablation (te None) never looks at the test set
        rec |= {"test_acc": a.evaluate(te.X, te.y, params, cfg.lam)["acc"],
                "test_acc_mirror": view_accuracy(te, params, mirrored)}
    else:
        rec["val_acc_views"] = view_accuracies(va, params, views(x.shift))
    return rec | {"seconds": hist["seconds"][-1], "history": hist}
