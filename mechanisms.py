"""DD2424 Assignment 2, Exercise 5's mechanisms, on assignment2.py's network: what one network
of bonus.py is trained and evaluated with.

- Augmentation: mirroring and translations, one gather per batch (augment_source); with W1 in
  the principal subspace, a gather of the crops' projections, computed once (projected_crops).
- Dropout (in assignment2.forward / backward) and W1 trained in the top principal directions of
  the images and their mirror images (pca_basis).
- Update rules: SGD, Nesterov momentum and Adam, each its textbook equation applied blockwise.
- train_network: one network through assignment2.train's hooks (get_batch: where a batch comes
  from; step: how the parameters are updated; on_eval: the run saves its progress at each
  evaluation point and resumes from it). A teacher (distillation) plugs in through `teach`.
- Test-time views and networks made of networks (concatenate).

It knows one network; bonus.py runs the experiments: which networks, on which data, kept where.
"""

import functools
import math
import os
from dataclasses import dataclass

import numpy as np

import assignment2 as a
import harness

# --------------------------------------------------------------------------------------------------
# Settings

@dataclass(frozen=True)
class Extras:
    """Exercise 5's settings of one network, beside its assignment2.Config."""
    optimizer: str = "adam"  # sgd (eqs. 10-11), nesterov, adam
    schedule: str = "linear"  # eta_max falling linearly to 0, or cyclic (eqs. 14-15)
    flip: bool = True  # mirror each training image left-right with probability 1/2
    shift: int = 3  # and move it by tx, ty in [-shift, shift] pixels, edges repeated
    pca: int = 512  # train W1 in the top pca principal directions (0: all of pixel space)
    p_drop: float = 0.0  # probability of dropping a hidden unit in training (inverted dropout)
    momentum: float = 0.9  # Nesterov momentum
    beta1: float = 0.9  # Adam's decay of the first moment
    beta2: float = 0.999  # Adam's decay of the second moment
    eps: float = 1e-8  # Adam's guard against division by zero


def check_extras(x: Extras) -> None:
    bad = [f"{k}={getattr(x, k)!r}" for k, ok in (
        ("optimizer", x.optimizer in ("sgd", "nesterov", "adam")),
        ("schedule", x.schedule in ("linear", "cyclic")), ("shift", 0 <= x.shift <= 8),
        ("pca", 0 <= x.pca <= a.D), ("p_drop", 0 <= x.p_drop < 1),
        ("momentum", 0 <= x.momentum < 1), ("beta1", 0 <= x.beta1 < 1),
        ("beta2", 0 <= x.beta2 < 1), ("eps", x.eps > 0)) if not ok]
    if bad:
        raise a.ConfigError("invalid Exercise 5 settings: " + ", ".join(bad))


# --------------------------------------------------------------------------------------------------
# Augmentation, dropout and the principal subspace

def mirror_images(X: np.ndarray) -> np.ndarray:
    """Every image (column) of X (D, n) mirrored left-right."""
    return X.reshape(3, 32, 32, -1)[:, :, ::-1].reshape(a.D, -1)  # (D, n)


def augment_source(XT: np.ndarray, flip: bool, shift: int) -> np.ndarray:
    """The images XT (n, D) laid out once for augmentation: each (3, 32, 32) image padded by
    shift pixels that repeat its edge, stacked with its mirror image when flip, viewed as all its
    (32, 32) crops: (1 + flip, n, 3, 2 shift + 1, 2 shift + 1, 32, 32). Storing the mirror
    images makes a batch one gather, at half the cost of flipping after it."""
    from numpy.lib.stride_tricks import sliding_window_view
    n, s = XT.shape[0], shift
    X = XT.reshape(n, 3, 32, 32)
    out = np.empty((1 + flip, n, 3, 32 + 2 * s, 32 + 2 * s), XT.dtype)  # np.pad: twice as slow
    p = out[0]
    p[:, :, s:s + 32, s:s + 32] = X
    p[:, :, :s, s:s + 32] = X[:, :, :1]  # top rows repeat the first row, ...
    p[:, :, s + 32:, s:s + 32] = X[:, :, -1:]  # ... bottom rows the last
    p[:, :, :, :s] = p[:, :, :, s:s + 1]  # then the columns, corners included
    p[:, :, :, s + 32:] = p[:, :, :, s + 31:s + 32]
    if flip:
        out[1] = p[..., ::-1]
    return sliding_window_view(out, (32, 32), axis=(3, 4))


def augmented_batch(windows, idx, f, oy, ox) -> np.ndarray:
    """Images idx, image i mirrored if f[i] and moved down by shift - oy[i] and right by
    shift - ox[i] pixels: (B, D), one gather from windows = augment_source(...)."""
    return windows[f, idx, :, oy, ox].reshape(idx.size, a.D)  # (B, 3, 32, 32) -> (B, D)


def dropout_mask(p: float, shape: tuple, dtype, rng) -> np.ndarray | None:
    """Inverted dropout: each hidden unit of each image kept with probability 1 - p and scaled
    by 1 / (1 - p), so evaluation needs no mask; None without dropout."""
    if not p:
        return None
    dtype = np.dtype(dtype)
    return (rng.random(shape, dtype) < 1 - p) / dtype.type(1 - p)


def pca_basis(XT: np.ndarray, k: int, mirror: bool = False) -> np.ndarray:
    """The k directions of largest variance of the zero-mean images XT (n, d), as orthonormal
    columns, largest first: (d, k). W1 = V U^T with V (m, k) costs about k/d of a full W1.
    mirror (images of D pixels): the directions of the images and their mirror images, each one
    even or odd under mirroring, so that U^T (mirrored x) = mirror_signs(U) * U^T x."""
    C = (XT.T @ XT).astype(np.float64) / XT.shape[0]  # (d, d); normalise() centred every pixel
    if not mirror:
        _, U = np.linalg.eigh(C)  # eigenvalues ascending
        return np.ascontiguousarray(U[:, ::-1][:, :k], dtype=XT.dtype)  # (d, k)
    F = mirror_index()
    p = np.flatnonzero(np.arange(a.D) < F)  # one pixel of each mirror pair, (D/2,)
    q = F[p]
    values, vectors = [], []
    for sign in (1.0, -1.0):  # (e_p + sign e_q) / sqrt 2 span the even (odd) images
        Cs = (C[np.ix_(p, p)] + C[np.ix_(q, q)] + sign * (C[np.ix_(p, q)] + C[np.ix_(q, p)])) / 2
        w, V = np.linalg.eigh(Cs)  # (D/2,), (D/2, D/2)
        U = np.zeros((a.D, p.size))  # (D, D/2)
        U[p], U[q] = V / math.sqrt(2), sign * V / math.sqrt(2)
        values.append(w)
        vectors.append(U)
    top = np.argsort(-np.concatenate(values), kind="stable")[:k]
    return np.ascontiguousarray(np.concatenate(vectors, axis=1)[:, top], dtype=XT.dtype)


def mirror_index() -> np.ndarray:
    """Where each pixel of a (3, 32, 32) image goes when it is mirrored left-right: (D,)."""
    return np.arange(a.D).reshape(3, 32, 32)[:, :, ::-1].ravel()


def mirror_signs(basis: np.ndarray) -> np.ndarray:
    """+1 for each even direction of basis (D, k), -1 for each odd one; refused unless every
    direction is one of the two (pca_basis with mirror=True)."""
    mirrored = basis[mirror_index()]  # (D, k)
    signs = np.where(np.sum(mirrored * basis, axis=0) >= 0, 1, -1).astype(basis.dtype)  # (k,)
    if not np.allclose(mirrored, basis * signs, atol=1e-5):
        raise ValueError("the basis is not even or odd under mirroring: use pca_basis(mirror=True)")
    return signs


def projected_crops(XT: np.ndarray, basis: np.ndarray, shift: int, chunk: int = 2500):
    """U^T x of every crop that augment_source(XT, False, shift) offers, computed once:
    (2 shift + 1, 2 shift + 1, n, k); a mirrored crop is mirror_signs(U) times one of them. An
    augmented batch is then one gather of k numbers per image instead of D and a product."""
    n, side = XT.shape[0], 2 * shift + 1
    windows = augment_source(XT, False, shift)  # (1, n, 3, side, side, 32, 32)
    Z = np.empty((side, side, n, basis.shape[1]), XT.dtype)  # (side, side, n, k)
    for i in range(0, n, chunk):
        for oy in range(side):
            for ox in range(side):
                crops = windows[0, i:i + chunk, :, oy, ox].reshape(-1, a.D)  # (c, D)
                np.matmul(crops, basis, out=Z[oy, ox, i:i + chunk])
    return Z


def pca_variance_kept(XT: np.ndarray, basis: np.ndarray) -> float:
    """The fraction of the images' pixel variance in the directions basis (d, k)."""
    Z = XT @ basis  # (n, k)
    return float(np.sum(Z.astype(np.float64) ** 2) / np.sum(XT.astype(np.float64) ** 2))


# --------------------------------------------------------------------------------------------------
# Update rules: one signature, rule(params, grads, state, eta, t, lam, x), in place. grads holds
# the loss gradient (eqs. 12-13 without the penalty); each rule adds the L2 term 2 lam W of
# eq. 12. Each rule is its textbook equation, applied by a kernel to blocks of each array that
# stay in the cache, the blocks of a wide array split among threads (numpy's element-wise
# functions release the GIL): one pass over memory instead of one per operation, on every core.
# Measured at m=4096 in 512 directions: alone, Adam's update takes 5-6 ms on two cores against
# 9 ms for whole-array passes; inside a training step, after the products, both take 9-12 ms: the
# update is bound by memory there, and it is amortised by the batch size instead.

def sgd(params, grads, state, eta, t, lam, x) -> None:
    """Eqs. 10-11 with the gradient of eq. 12: W <- W - eta (g + 2 lam W)."""
    def kernel(w, g, tmp, lam2):
        penalise(g, w, lam2, tmp)
        np.multiply(g, eta, out=tmp)
        w -= tmp
    blockwise(kernel, params, grads, lam, t=t)


def nesterov(params, grads, state, eta, t, lam, x) -> None:
    """SGD with Nesterov momentum as torch.optim.SGD(nesterov=True): with g <- g + 2 lam W,
    v <- mu v + g, then W <- W - eta (g + mu v)."""
    mu = x.momentum

    def kernel(w, g, v, tmp, lam2):
        penalise(g, w, lam2, tmp)
        v *= mu
        v += g
        np.multiply(v, mu, out=tmp)
        tmp += g
        tmp *= eta
        w -= tmp
    blockwise(kernel, params, grads, lam, state, t=t)


def adam(params, grads, state, eta, t, lam, x) -> None:
    """Adam (Kingma and Ba, 2015) with g <- g + 2 lam W: m <- b1 m + (1 - b1) g,
    v <- b2 v + (1 - b2) g^2, and W <- W - eta m_hat / (sqrt(v_hat) + eps) with m_hat = m / c1,
    v_hat = v / c2, c = 1 - b^(t+1); computed as W <- W - (eta sqrt(c2) / c1) m / (sqrt(v) +
    eps sqrt(c2)), the same number with two scalars for the bias corrections. Python floats
    throughout: a numpy float64 scalar would run float32 arrays through float64."""
    b1, b2 = x.beta1, x.beta2
    c1, c2 = 1 - b1 ** (t + 1), 1 - b2 ** (t + 1)
    step, eps = eta * math.sqrt(c2) / c1, x.eps * math.sqrt(c2)

    def kernel(w, g, m, v, tmp, lam2):
        penalise(g, w, lam2, tmp)
        m *= b1
        np.multiply(g, 1 - b1, out=tmp)
        m += tmp
        v *= b2
        np.multiply(g, g, out=tmp)
        tmp *= 1 - b2
        v += tmp
        np.sqrt(v, out=tmp)
        tmp += eps
        np.divide(m, tmp, out=tmp)
        tmp *= step
        w -= tmp
    blockwise(kernel, params, grads, lam, state["m"], state["v"], t=t)


def penalise(g, w, lam2, tmp) -> None:
    """g <- g + 2 lam W, the L2 term of eq. 12 (lam2 = 2 lam), tmp as scratch."""
    if lam2:
        np.multiply(w, lam2, out=tmp)
        g += tmp


FLUSH_EVERY = 8  # steps between two flush_subnormal passes of the weights and moments


def blockwise(kernel, params: dict, grads: dict, lam: float, *moments, t: int = 1,
              block: int = 1 << 18, threads: int | None = None) -> None:
    """kernel(w, g, *moments, tmp, 2 lam) on blocks of block elements of every parameter (and
    its gradient and moments, laid out alike), tmp a scratch block; the biases get lam = 0
    (eq. 7 penalises the weights). A parameter of more than 2 blocks is split among threads.
    At every FLUSH_EVERY-th step t, the weights and moments are then flush_subnormal'ed."""
    threads, flush = threads or worker_count(), t % FLUSH_EVERY == 0
    jobs = []
    for k, w in params.items():
        order = "F" if w.flags.f_contiguous and not w.flags.c_contiguous else "C"
        g = np.asarray(grads[k], order=order)  # scratch: a copy in w's layout if not in it
        flat = [flat_view(z, order) for z in (w, g, *(m[k] for m in moments))]
        lam2 = 2 * lam if k.startswith("W") else 0.0
        parts = min(threads, max(1, w.size // (2 * block)))
        edges = [w.size * i // parts for i in range(parts + 1)]
        jobs += [([z[lo:hi] for z in flat], lam2) for lo, hi in zip(edges, edges[1:])]

    def run(job):
        arrays, lam2 = job
        tmp = np.empty(min(block, arrays[0].size), arrays[0].dtype)
        for lo in range(0, arrays[0].size, block):
            hi = min(lo + block, arrays[0].size)
            blocks = [z[lo:hi] for z in arrays]  # w, g, *moments
            kernel(*blocks, tmp[:hi - lo], lam2)
            for z in blocks[:1] + blocks[2:] if flush else ():
                flush_subnormal(z, tmp[:hi - lo])
    if len(jobs) > len(params):
        list(worker_pool(threads).map(run, jobs))
    else:
        for job in jobs:
            run(job)


def flush_subnormal(z: np.ndarray, tmp: np.ndarray) -> None:
    """z <- 0 where |z| is below the smallest normal number, as a processor's flush-to-zero mode
    would: weights of units that no image activates shrink under the penalty into subnormal
    numbers (30 orders of magnitude below any weight that counts), and a product with those
    runs 10 times slower or more on some processors (measured: 6.5% of W1 after 5,000 steps)."""
    np.abs(z, out=tmp)
    np.putmask(z, tmp < np.finfo(z.dtype).tiny, 0)


def flat_view(z: np.ndarray, order: str) -> np.ndarray:
    """z as one flat array in memory order ("C" or "F"), a view: updates reach z."""
    flat = z.reshape(-1, order=order)
    if not np.shares_memory(flat, z):
        raise ValueError(f"an array {z.shape} is not contiguous in {order} order like its weights")
    return flat


def worker_count() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@functools.cache
def worker_pool(threads: int):
    """One pool of threads per size, made when first needed and kept for the process."""
    from concurrent.futures import ThreadPoolExecutor
    return ThreadPoolExecutor(threads, thread_name_prefix="update")


RULES = {"sgd": sgd, "nesterov": nesterov, "adam": adam}


def optimizer_state(params: dict, optimizer: str) -> dict:
    """What a rule carries between steps: nothing, a velocity, or two moments."""
    def zeros():
        return {k: np.zeros_like(v) for k, v in params.items()}
    return {"sgd": dict, "nesterov": zeros, "adam": lambda: {"m": zeros(), "v": zeros()}}[
        optimizer]()


def learning_rate(t: int, cfg: a.Config, x: Extras) -> float:
    """eta at step t: the cyclic rate of eqs. 14-15, or eta_max falling linearly to 0."""
    if x.schedule == "cyclic":
        return a.cyclic_eta(t, cfg.eta_min, cfg.eta_max, cfg.n_s)
    return cfg.eta_max * (1 - t / (2 * cfg.n_s * cfg.n_cycles))


# --------------------------------------------------------------------------------------------------
# One network, through assignment2.train's hooks

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


def random_views(x: Extras, n: int, rng) -> tuple:
    """The augmentation of n images: mirrored or not (f), and where the crop starts (oy, ox in
    [0, 2 shift]), drawn uniformly, one draw per image."""
    f = rng.integers(0, 1 + x.flip, n)  # (n,)
    oy, ox = rng.integers(0, 2 * x.shift + 1, (2, n))  # (n,) each
    return f, oy, ox


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
        f"s/{k}": v for k, v in harness.flatten(state).items()}

    def on_eval(s):
        meta = {"t": s["t"], "seconds": s["hist"]["seconds"][-1], "hist": s["hist"],
                "rng": rng.bit_generator.state}
        harness.save_progress(path, key, meta, arrays | {"perm": s["perm"]})

    like = arrays | {"perm": np.empty(n, np.int64)}
    saved = harness.load_progress(path, key, like, lambda m, z: progress_problem(m, z, rng), log)
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


# --------------------------------------------------------------------------------------------------
# Test-time views and networks made of networks

def views(shift: int) -> dict:
    """The evaluations validation chooses from: an image classified by the mean of its class
    probabilities (eq. 4) over views (mirrored, dy, dx) of it: itself ('plain', eq. 6), with its
    mirror image ('mirrored'), and both moved s pixels up, down, left and right too
    ('mirrored, moved s', 10 forward passes)."""
    out = {"plain": ((0, 0, 0),), "mirrored": ((0, 0, 0), (1, 0, 0))}
    for s in range(1, shift + 1):
        out[f"mirrored, moved {s}"] = tuple(
            (f, dy, dx) for f in (0, 1) for dy, dx in ((0, 0), (-s, 0), (s, 0), (0, -s), (0, s)))
    return out


def view_accuracies(d: a.Split, params: dict, sets: dict, chunk: int = 2500) -> dict:
    """The accuracy on d of each set of views (name: views): an image is classified by the mean
    of P over the views of the set. Each view's P is computed once for all the sets."""
    s = max(max(abs(dy), abs(dx)) for views in sets.values() for _, dy, dx in views)
    correct = dict.fromkeys(sets, 0)
    for i in range(0, d.n, chunk):
        X = d.X[:, i:i + chunk]  # (D, c)
        windows = augment_source(np.ascontiguousarray(X.T), True, s)  # padded as in training
        n, P = X.shape[1], {}
        for v in dict.fromkeys(v for views in sets.values() for v in views):
            f, dy, dx = v
            Xv = augmented_batch(windows, np.arange(n), np.full(n, f), np.full(n, s - dy),
                                 np.full(n, s - dx))  # (c, D)
            P[v] = a.forward(Xv.T, params)[0]  # (K, c)
        for name, views in sets.items():
            mean = sum(P[v] for v in views)  # (K, c); the mean's argmax is the sum's
            correct[name] += int(np.sum(np.argmax(mean, axis=0) == d.y[i:i + chunk]))
    return {name: c / d.n for name, c in correct.items()}


def view_accuracy(d: a.Split, params: dict, views: tuple, chunk: int = 2500) -> float:
    """The accuracy on d when each image is classified by the mean of P over its views."""
    return view_accuracies(d, params, {"": views}, chunk)[""]


def concatenate(nets: list) -> dict:
    """The two-layer network whose scores (eq. 3) are the mean of the nets': hidden units side
    by side, W2 side by side divided by their number, the mean of b2."""
    k = len(nets)
    return {"W1": np.concatenate([p["W1"] for p in nets]),  # (k m, d)
            "b1": np.concatenate([p["b1"] for p in nets]),  # (k m, 1)
            "W2": np.concatenate([p["W2"] for p in nets], axis=1) / k,  # (K, k m)
            "b2": sum(p["b2"] for p in nets) / k}  # (K, 1)


def measure(params: dict, splits: tuple, shift: int, evaluation: str | None = None) -> dict:
    """The validation accuracy with every evaluation of views(shift), and the test accuracy
    with `evaluation`, by default the one validation prefers (the first of equals)."""
    _, va, te = splits
    val = view_accuracies(va, params, views(shift))
    evaluation = evaluation or max(val, key=val.get)
    test = view_accuracies(te, params, {name: views(shift)[name] for name in
                                        dict.fromkeys(("plain", "mirrored", evaluation))})
    return {"val_acc": val["plain"], "val_acc_mirror": val["mirrored"], "test_acc": test["plain"],
            "test_acc_mirror": test["mirrored"], "val_acc_views": val, "evaluation": evaluation,
            "test_acc_chosen": test[evaluation]}


# --------------------------------------------------------------------------------------------------
# Distillation: a teacher's scores as the targets (hooks' teach)

def distillation_targets(P: np.ndarray, Zt: np.ndarray, y: np.ndarray, T: float,
                         alpha: float) -> np.ndarray:
    """The targets Y (K, B) whose P - Y is dL/dS, S the student's scores (eq. 3), for the loss
        L = (1 - alpha) CE(y, P) + alpha T^2 CE(Q_T, P_T)    (Hinton et al., 2015),
    P_T = softmax(S / T) and Q_T = softmax(Zt / T) the student's and the teacher's class
    probabilities at temperature T, Zt (K, B) the teacher's scores. Since dL/dS =
    (1 - alpha)(P - Y_y) + alpha T (P_T - Q_T), Y = (1 - alpha) Y_y + alpha (P - T (P_T - Q_T));
    at T = 1 that is the mixture (1 - alpha) Y_y + alpha Q. P_T = softmax(log P / T)."""
    B = y.size
    Y = np.zeros_like(P)  # (K, B)
    Y[y, np.arange(B)] = 1 - alpha
    if T == 1:
        return Y + alpha * a.softmax(Zt)
    P_T = a.softmax(np.log(np.maximum(P, np.finfo(P.dtype).tiny)) / T)  # (K, B)
    return Y + alpha * (P - T * (P_T - a.softmax(Zt / T)))


def distillation_loss(P: np.ndarray, Zt: np.ndarray, y: np.ndarray, T: float,
                      alpha: float) -> float:
    """L of distillation_targets, averaged over the columns (for the gradient checks)."""
    P_T = a.softmax(np.log(P) / T)  # (K, B)
    Q_T = a.softmax(Zt / T)  # (K, B)
    return float((1 - alpha) * a.cross_entropy(P, y)
                 - alpha * T ** 2 * np.mean(np.sum(Q_T * np.log(P_T), axis=0)))


class Distillation:
    """A teacher's scores as the student's targets, for hooks' teach. scores (n, V, K): the
    teacher's scores of V views (n, V, 3) of (f, oy, ox) of every training image (as
    random_views gives them). per_view: each step trains on one of an image's V views, drawn
    uniformly, against the teacher's scores of that view; else on any view, as random_views
    draws it for x, against the teacher's mean over the V views (softmax averaged, at T = 1).
    T, alpha: distillation_targets'. key: what made the scores; the run's key holds it."""

    def __init__(self, views: np.ndarray, scores: np.ndarray, x: Extras, T: float,
                 alpha: float, per_view: bool, key: dict):
        if not (T > 0 and 0 <= alpha <= 1):
            raise a.ConfigError(f"invalid distillation settings: T={T!r}, alpha={alpha!r}")
        self.views, self.x, self.T, self.alpha, self.per_view = views, x, T, alpha, per_view
        self.scores = (scores if per_view else  # (n, V, K), or the mean: (n, K)
                       np.log(np.mean(a.softmax(scores.astype(np.float32).T), axis=1)).T)
        self.key = {"scores": key, "T": T, "alpha": alpha, "per_view": per_view,
                    "code": harness.code_fingerprint(Distillation)}

    def draw(self, idx: np.ndarray, rng) -> tuple:
        """(f, oy, ox) of the images idx to train on, and the teacher's scores of them (K, B)."""
        if not self.per_view:
            return (*random_views(self.x, idx.size, rng), self.scores[idx].T)
        v = rng.integers(0, self.views.shape[1], idx.size)  # (B,)
        f, oy, ox = self.views[idx, v].T  # (B,) each
        return f, oy, ox, self.scores[idx, v].T  # (K, B)

    def targets(self, P: np.ndarray, y: np.ndarray, Zt: np.ndarray) -> np.ndarray:
        return distillation_targets(P, Zt.astype(P.dtype), y, self.T, self.alpha)


def view_count(x: Extras) -> int:
    """The views of an image that x's mirroring and moves offer, the plain one included."""
    return (1 + x.flip) * (2 * x.shift + 1) ** 2


def target_views(n: int, V: int, x: Extras, rng) -> np.ndarray:
    """V different views (f, oy, ox) of each of n images, the plain one first, the others drawn
    without replacement from all that x's mirroring and moves offer: (n, V, 3) uint8."""
    side, count = 2 * x.shift + 1, view_count(x)
    if not 1 <= V <= count:
        raise a.ConfigError(f"{V} views of each image asked; there are {count}")
    plain = x.shift * side + x.shift  # f = 0, oy = ox = shift
    others = np.argsort(rng.random((n, count)), axis=1)  # (n, count): a random order of views
    others = others[others != plain].reshape(n, count - 1)[:, :V - 1]  # (n, V - 1)
    codes = np.concatenate([np.full((n, 1), plain), others], axis=1)  # (n, V)
    f, r = np.divmod(codes, side * side)
    return np.stack([f, r // side, r % side], axis=2).astype(np.uint8)  # (n, V, 3)


def distillation_grads_torch(X, y, params: dict, Zt, T: float, alpha: float, lam: float) -> dict:
    """The gradients of distillation_targets' loss L plus the penalty of eq. 7, as torch autograd
    computes them from the network written in torch (float64)."""
    import torch
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    S = p["W2"] @ torch.relu(p["W1"] @ torch.tensor(X) + p["b1"]) + p["b2"]  # (K, n), eqs. 1-3
    labels = torch.nn.functional.cross_entropy(S.T, torch.tensor(y))
    Q_T = torch.softmax(torch.tensor(Zt) / T, dim=0)  # (K, n)
    soft = -torch.mean(torch.sum(Q_T * torch.log_softmax(S / T, dim=0), dim=0))
    J = ((1 - alpha) * labels + alpha * T ** 2 * soft
         + lam * (torch.sum(p["W1"] ** 2) + torch.sum(p["W2"] ** 2)))
    J.backward()
    return {k: v.grad.numpy() for k, v in p.items()}


def distillation_gradcheck(rng, settings=((7, 6, 5, 1.0, 1.0, 0.0), (7, 6, 5, 3.0, 0.7, 0.01))):
    """The gradient of the distillation loss (assignment2.backward with distillation_targets)
    against torch autograd and centred finite differences, float64, on random networks, data
    and teacher scores. A setting is (d, n, m, T, alpha, lam)."""
    rows = []
    for d, n, m, T, alpha, lam in settings:
        X, y, Zt = rng.standard_normal((d, n)), rng.integers(0, a.K, n), 3 * rng.standard_normal(
            (a.K, n))
        params = a.init_params(d, m, rng, "float64")
        params["b1"] += 0.1 * rng.standard_normal((m, 1))  # non-zero biases test their gradients
        params["b2"] += 0.1 * rng.standard_normal((a.K, 1))
        P, H = a.forward(X, params)
        ours = a.backward(X, distillation_targets(P, Zt, y, T, alpha), P, H, params, lam)
        torch_g = distillation_grads_torch(X, y, params, Zt, T, alpha, lam)
        num_g = a.grads_numerical(X, y, params, lam, h=1e-5, loss=lambda P: distillation_loss(
            P, Zt, y, T, alpha))
        rows += [{"d": d, "n": n, "m": m, "T": T, "alpha": alpha, "lam": lam, "param": k,
                  "vs_torch": a.rel_error(ours[k], torch_g[k]),
                  "vs_numerical": a.rel_error(ours[k], num_g[k])} for k in params]
    return rows
