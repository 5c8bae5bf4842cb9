"""Exercise 5's update rules, one signature: rule(params, grads, state, eta, t, lam, x), in
place. grads holds the loss gradient (eqs. 12-13 without the penalty); each rule adds the L2
term 2 lam W of eq. 12. Each rule is its textbook equation, applied by a kernel to blocks of
each array that stay in the cache, the blocks of a wide array split among threads (numpy's
element-wise functions release the GIL): one pass over memory instead of one per operation, on
every core.
"""
import functools
import math
import os

import numpy as np

import assignment2 as a
from bonus.settings import Extras


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
