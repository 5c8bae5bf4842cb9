"""Exercise 5's update rules, one signature: rule(params, grads, state, eta, t, lam, x), in
place. grads holds the loss gradient (eqs. 12-13 without the penalty); each rule adds the L2
term 2 lam W of eq. 12 (the biases are not penalised). Each rule is its textbook equation, in
its docstring, computed element by element in one compiled loop over the parameters, split
among the cores (numba): one read of each array and one write of what changes, the least
memory traffic an update can have (Adam: 7 arrays a step). In numpy the same update is a dozen
passes, each a temporary array: 1.5-2 times slower at m=4096, where the update is a third of a
step beside the matrix products.

Every FLUSH_EVERY-th step the loop also sets weights and moments below the smallest normal
number to zero, as a processor's flush-to-zero mode would: weights of units that no image
activates shrink under the penalty into subnormal numbers (30 orders of magnitude below any
weight that counts), and a product with those runs 10 times slower or more on some processors
(measured: 6.5% of W1 after 5,000 steps).
"""
import math

import numba
import numpy as np

import assignment2 as a
from bonus.settings import Extras

FLUSH_EVERY = 8  # steps between two passes that flush subnormal weights and moments to zero
# numba's own thread pool, not OpenMP's: OpenMP's workers spin after a kernel and slow the BLAS
# product that follows (measured at m=4096: 33 ms a step against 27)
numba.config.THREADING_LAYER = "workqueue"


def compiled(kernel):
    """kernel compiled for the CPU, its loop over the elements split among the cores; IEEE
    arithmetic (no fast-math), so that it rounds as numpy's element-wise functions do; cached
    on disk, so that a process compiles it once per machine."""
    return numba.njit(parallel=True, cache=True, fastmath=False)(kernel)


@numba.njit(inline="always")
def flushed(z, tiny):
    return 0.0 if abs(z) < tiny else z


@compiled
def sgd_kernel(w, g, eta, lam2, tiny, flush):
    for i in numba.prange(w.size):
        wi = w[i] - eta * (g[i] + lam2 * w[i])
        w[i] = flushed(wi, tiny) if flush else wi


@compiled
def nesterov_kernel(w, g, v, eta, mu, lam2, tiny, flush):
    for i in numba.prange(w.size):
        gi = g[i] + lam2 * w[i]
        vi = mu * v[i] + gi
        wi = w[i] - eta * (gi + mu * vi)
        v[i], w[i] = (flushed(vi, tiny), flushed(wi, tiny)) if flush else (vi, wi)


@compiled
def adam_kernel(w, g, m, v, b1, b2, step, eps, lam2, tiny, flush):
    for i in numba.prange(w.size):
        gi = g[i] + lam2 * w[i]
        mi = b1 * m[i] + (1 - b1) * gi
        vi = b2 * v[i] + (1 - b2) * gi * gi
        wi = w[i] - step * mi / (math.sqrt(vi) + eps)
        if flush:
            mi, vi, wi = flushed(mi, tiny), flushed(vi, tiny), flushed(wi, tiny)
        m[i], v[i], w[i] = mi, vi, wi


def each(kernel, params: dict, grads: dict, moments: tuple, scalars: tuple, lam: float,
         t: int) -> None:
    """kernel(w, g, *moments, *scalars, 2 lam, tiny, flush) on every parameter as one flat
    array in its memory order, with its gradient and moments laid out alike; lam = 0 for the
    biases (eq. 7 penalises the weights); flush at every FLUSH_EVERY-th step."""
    flush = t % FLUSH_EVERY == 0
    for k, w in params.items():
        order = "F" if w.flags.f_contiguous and not w.flags.c_contiguous else "C"
        g = np.asarray(grads[k], order=order)  # a copy in w's layout if not in it
        flat = [flat_view(z, order) for z in (w, g, *(m[k] for m in moments))]
        typed = [w.dtype.type(c) for c in scalars]  # float32 arithmetic for float32 arrays
        kernel(*flat, *typed, w.dtype.type(2 * lam if k.startswith("W") else 0.0),
               np.finfo(w.dtype).tiny, flush)


def sgd(params, grads, state, eta, t, lam, x) -> None:
    """Eqs. 10-11 with the gradient of eq. 12: W <- W - eta (g + 2 lam W)."""
    each(sgd_kernel, params, grads, (), (eta,), lam, t)


def nesterov(params, grads, state, eta, t, lam, x) -> None:
    """SGD with Nesterov momentum as torch.optim.SGD(nesterov=True): with g <- g + 2 lam W,
    v <- mu v + g, then W <- W - eta (g + mu v)."""
    each(nesterov_kernel, params, grads, (state,), (eta, x.momentum), lam, t)


def adam(params, grads, state, eta, t, lam, x) -> None:
    """Adam (Kingma and Ba, 2015) with g <- g + 2 lam W: m <- b1 m + (1 - b1) g,
    v <- b2 v + (1 - b2) g^2, and W <- W - eta m_hat / (sqrt(v_hat) + eps) with m_hat = m / c1,
    v_hat = v / c2, c = 1 - b^(t+1); computed as W <- W - (eta sqrt(c2) / c1) m / (sqrt(v) +
    eps sqrt(c2)), the same number with two scalars for the bias corrections."""
    b1, b2 = x.beta1, x.beta2
    c1, c2 = 1 - b1 ** (t + 1), 1 - b2 ** (t + 1)
    each(adam_kernel, params, grads, (state["m"], state["v"]),
         (b1, b2, eta * math.sqrt(c2) / c1, x.eps * math.sqrt(c2)), lam, t)


def flat_view(z: np.ndarray, order: str) -> np.ndarray:
    """z as one flat array in memory order ("C" or "F"), a view: updates reach z."""
    flat = z.reshape(-1, order=order)
    if not np.shares_memory(flat, z):
        raise ValueError(f"an array {z.shape} is not contiguous in {order} order like its weights")
    return flat


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
