"""DD2424 Assignment 2: a two-layer network for CIFAR-10, trained with cyclical learning rates.

    python3 assignment2.py --data-dir DIR       # Exercises 1-4 in order, a few minutes
    python3 assignment2.py fine                  # one step (see --help for the list)
    python3 assignment2.py --quick               # tiny sizes, the whole pipeline in seconds

Writes figures/, results.json, results.txt and timings.json to --out-dir. Needs numpy; matplotlib
for the figures and torch (through the spec's torch_gradient_computations.py) for the gradient
check, each imported only when used.

Conventions: X is (d, n), one column per image, Fortran-ordered so that a column is contiguous; y
holds the n labels 0..K-1. Params and grads are dicts with keys W1 (m, d), b1 (m, 1), W2 (K, m),
b2 (K, 1). The penalty is lam * sum(W**2), eq. (7), so its gradient is 2 lam W, eq. (12).
"""

import os
import signal

if __name__ == "__main__":  # first: until main() takes over, a signal during the imports is quiet
    for _signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signal, lambda s, _: (os.write(2, b"\ninterrupted\n"), os._exit(128 + s)))

import argparse
import contextlib
import fcntl
import gc
import hashlib
import importlib.util
import json
import math
import pickle
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

# --------------------------------------------------------------------------------------------------
# Config

K = 10  # classes
D = 32 * 32 * 3  # input dimension of a CIFAR-10 image


@dataclass(frozen=True)
class Config:
    """One training run. The defaults are the spec's Exercise 3 setting (Figure 3)."""
    m: int = 50  # hidden units
    lam: float = 0.01  # L2 penalty, eq. (7)
    eta_min: float = 1e-5  # lowest learning rate of the cycle, eqs. (14-15)
    eta_max: float = 1e-1  # highest learning rate of the cycle
    n_s: int = 500  # half-cycle length, update steps
    n_cycles: int = 1  # full cycles of 2 n_s steps
    n_batch: int = 100  # images per mini-batch
    evals_per_cycle: int = 10  # points on the training curves per cycle
    eval_train: bool = True  # evaluate the training set at every point (else only at the end)
    dtype: str = "float32"  # training precision; gradient checks use float64


class ConfigError(ValueError):
    """Invalid settings, raised before any training starts."""


class Diverged(ArithmeticError):
    """Training produced a non-finite cost."""


def check_config(cfg: Config, n_train: int) -> None:
    """Refuse settings that cannot train, with every problem named."""
    ints = ("m", "n_s", "n_cycles", "n_batch", "evals_per_cycle")
    bad = [f"{k}={getattr(cfg, k)!r} must be a positive integer" for k in ints
           if type(getattr(cfg, k)) is not int or getattr(cfg, k) < 1]
    if not (isinstance(cfg.lam, (int, float)) and 0 <= cfg.lam < math.inf):
        bad.append(f"lam={cfg.lam!r} must be a finite number >= 0")
    if not (isinstance(cfg.eta_max, (int, float)) and 0 < cfg.eta_min <= cfg.eta_max < math.inf):
        bad.append(f"need 0 < eta_min <= eta_max, got {cfg.eta_min!r}, {cfg.eta_max!r}")
    if cfg.dtype not in ("float32", "float64"):
        bad.append(f"dtype={cfg.dtype!r} must be 'float32' or 'float64'")
    if not bad and cfg.n_batch > n_train:
        bad.append(f"n_batch={cfg.n_batch} exceeds the {n_train} training images")
    if bad:
        raise ConfigError("invalid settings: " + "; ".join(bad))


# --------------------------------------------------------------------------------------------------
# Data (Exercise 1)

CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
CIFAR_MD5S = dict(zip(CIFAR_FILES, (  # each batch's published MD5, the sums torchvision checks
    "c99cafc152244af753f735de768cd75f", "d4bba439e000b95fd0a9bffe97cbabec",
    "54ebc095f3ab1f0389bbae665268c751", "634d18415352ddfa80567beed471001a",
    "482c414d41f54cd18b22e5b47cb7c3cb", "40351d587109b95175f43aff81a1287e")))
MAX_BATCH_BYTES = 1 << 28  # an official batch file is 31 MB


class DataError(ValueError):
    """A missing, corrupt or unsafe data file, or data a function cannot use."""


class StateError(Exception):
    """A problem with an output folder or the program's own files."""


@dataclass
class Split:
    """Images and labels of one split: X (d, n), y (n,)."""
    X: np.ndarray
    y: np.ndarray

    @property
    def n(self) -> int:
        return self.X.shape[1]


def load_batch(path: Path) -> Split:
    """One batch file of the official python layout, checked: X uint8 (d, n) Fortran, y (n,)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size > MAX_BATCH_BYTES:
        raise DataError(f"{path}: " + ("file not found" if not path.is_file() else
                        f"{path.stat().st_size:,} bytes is too large for a CIFAR-10 batch"))
    try:
        with open(path, "rb") as f:
            batch = SafeUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DataError(f"{path}: cannot be read ({e.strerror}); check its permissions") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError) as e:
        raise DataError(f"{path}: not a readable CIFAR-10 batch (truncated, corrupt or unsafe): "
                        f"{e}") from None
    data = batch.get(b"data") if isinstance(batch, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == D):
        raise DataError(f"{path}: expected a dict whose b'data' is a uint8 array (n, {D})")
    labels = batch.get(b"labels")  # checked before numpy converts (and expands) it
    flat = (labels.ndim == 1 and labels.dtype.kind in "iu" if isinstance(labels, np.ndarray) else
            isinstance(labels, list) and all(isinstance(v, (int, np.integer))
                                             and not isinstance(v, bool) for v in labels))
    if not flat or len(labels) != data.shape[0]:
        raise DataError(f"{path}: b'labels' must be a flat list of {data.shape[0]} integers")
    try:
        y = np.asarray(labels, np.int64)
    except OverflowError:
        y = np.array([K])  # too large for an integer: outside 0..K-1 all the same
    if y.size and (y.min() < 0 or y.max() >= K):
        raise DataError(f"{path}: labels outside 0..{K - 1}")
    return Split(X=data.T, y=y)  # data.T of a C-ordered (n, d) array is (d, n) Fortran


class SafeUnpickler(pickle.Unpickler):
    """Rebuilds only what a CIFAR batch holds (dicts, lists, bytes, ints, numpy arrays): loading
    any other global could run arbitrary code."""
    NUMPY = {("numpy", "ndarray"), ("numpy", "dtype")} | {
        (f"numpy.{core}.{mod}", name) for core in ("core", "_core") for mod, name in
        (("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer"))}

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):  # how Python 3 pickles bytes at protocol 2
            return _latin1
        if (module, name) in (("__builtin__", "bytes"), ("builtins", "bytes")):  # ... and b""
            return _empty_bytes
        if (module, name) not in self.NUMPY:
            raise pickle.UnpicklingError(f"refused the global {module}.{name}: not in a batch")
        core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core
        owner = np if module == "numpy" else getattr(core, module.rsplit(".", 1)[1])
        return getattr(owner, name)


def _latin1(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args):
    if args:  # bytes(n) would let a tiny file ask for any amount of memory
        raise pickle.UnpicklingError("refused builtins.bytes with arguments")
    return b""


def check_data(X, y=None, d: int | None = None) -> None:
    """Refuse images X (d, n) and labels y (n,) that the network cannot use, naming what was
    given: at the boundary of the functions a notebook calls, never inside the training loop."""
    if not (isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind == "f" and X.size):
        raise DataError(f"X must be a non-empty float array (d, n), one column per image; got "
                        f"{type(X).__name__} {getattr(X, 'shape', '')} {getattr(X, 'dtype', '')}")
    if d is not None and X.shape[0] != d:
        raise DataError(f"X is {X.shape} but the network takes d={d} rows (pixels): X is (d, n), "
                        f"one column per image{'; transposed?' if X.shape[1] == d else ''}")
    if y is None:
        return
    if not (isinstance(y, np.ndarray) and y.ndim == 1 and y.dtype.kind in "iu"):
        raise DataError(f"y must be a 1-D integer array of labels; got {type(y).__name__} "
                        f"{getattr(y, 'shape', '')} {getattr(y, 'dtype', '')}")
    if y.size != X.shape[1] or y.min() < 0 or y.max() >= K:  # y.size == X.shape[1] > 0 first
        span = f" from {y.min()} to {y.max()}" if y.size else ""
        hint = "; is X transposed? It is (d, n)" if y.size == X.shape[0] != X.shape[1] else ""
        raise DataError(f"y must hold one label in 0..{K - 1} per column of X ({X.shape[1]}); got "
                        f"{y.size} labels{span}{hint}")


def concat(parts: list[Split]) -> Split:
    """Several splits as one, in order; X stays Fortran-ordered."""
    return Split(np.concatenate([p.X.T for p in parts]).T, np.concatenate([p.y for p in parts]))


def normalise(train: Split, *others: Split, dtype="float32") -> list[Split]:
    """Zero mean, unit std per pixel with the training split's statistics, for every split."""
    mean = train.X.mean(axis=1, keepdims=True)  # (d, 1), float64
    # (d, 1); 256 pixels at a time, so that the float64 deviations need 92 MB, not 1.1 GB
    std = np.concatenate([train.X[i:i + 256].std(axis=1, keepdims=True) for i in range(0, D, 256)])
    std[std == 0] = 1  # a constant pixel carries no information; avoid 0/0
    out = []
    for s in (train, *others):
        X = s.X.astype(dtype, order="F")  # (d, n)
        X -= mean.astype(dtype)
        X /= std.astype(dtype)
        out.append(Split(X, s.y))
    return out


def head(s: Split, k: int | None) -> Split:
    """The first k images of s (all of them when k is None)."""
    return s if k is None else Split(s.X[:, :k], s.y[:k])


def split_last(s: Split, n_val: int) -> tuple[Split, Split]:
    """Hold out the last n_val images of s for validation."""
    if not 0 < n_val < s.n:
        raise ConfigError(f"cannot hold out {n_val} of {s.n} images for validation")
    return Split(s.X[:, :-n_val], s.y[:-n_val]), Split(s.X[:, -n_val:], s.y[-n_val:])


def load_cifar(data_dir, train_names, n_val: int = 0, val_names=(), dtype="float32") -> list:
    """Normalised train, validation and test splits; validation is the files val_names or the
    last n_val images of the training files."""
    train = concat([load_batch(Path(data_dir) / f) for f in train_names])
    train, val = (split_last(train, n_val) if n_val else
                  (train, concat([load_batch(Path(data_dir) / f) for f in val_names])))
    return normalise(train, val, load_batch(Path(data_dir) / "test_batch"), dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Network: initialisation, forward pass, cost (eqs. 1-8)

def init_params(d: int, m: int, rng: np.random.Generator, dtype="float64") -> dict:
    """W1 ~ N(0, 1/d), W2 ~ N(0, 1/m), zero biases (Exercise 1)."""
    return {
        # Fortran order: the layout its gradient (X G^T)^T comes out in, so updates stream
        "W1": np.asfortranarray(rng.standard_normal((m, d)) / np.sqrt(d), dtype),  # (m, d)
        "b1": np.zeros((m, 1), dtype),  # (m, 1)
        "W2": (rng.standard_normal((K, m)) / np.sqrt(m)).astype(dtype),  # (K, m)
        "b2": np.zeros((K, 1), dtype),  # (K, 1)
    }


def softmax(S: np.ndarray) -> np.ndarray:
    """Eq. (4), column-wise; subtracting the column max keeps exp from overflowing."""
    E = np.exp(S - S.max(axis=0, keepdims=True))  # (K, n)
    return E / E.sum(axis=0, keepdims=True)


def forward(X: np.ndarray, params: dict, drop: np.ndarray | None = None) -> tuple:
    """Eqs. (1-4): P (K, n), and H (m, n) for the backward pass. drop (Exercise 5.1): an
    inverted-dropout mask (m, n) multiplying H in training."""
    S1 = (X.T @ params["W1"].T).T  # (m, n) = W1 X; written so, OpenBLAS picks a faster kernel
    S1 += params["b1"]  # eq. 1
    H = np.maximum(S1, 0, out=S1)  # (m, n), eq. 2
    if drop is not None:
        H *= drop
    S = params["W2"] @ H + params["b2"]  # (K, n), eq. 3
    return softmax(S), H  # eq. 4


def predict(X: np.ndarray, params: dict) -> np.ndarray:
    """Eq. (6): the most probable class of each column."""
    check_data(X, d=params["W1"].shape[1])
    return np.argmax(forward(X, params)[0], axis=0)  # (n,)


def penalty(params: dict, lam: float) -> float:
    """The L2 term of eq. (7), lam * sum of squared weights (biases are not penalised)."""
    return lam * sum(float(np.sum(params[k].astype(np.float64) ** 2)) for k in ("W1", "W2"))


def cross_entropy(P: np.ndarray, y: np.ndarray) -> float:
    """Eq. (8), -log p_y, averaged over the columns of P."""
    p_y = P[y, np.arange(y.size)].astype(np.float64)
    return float(-np.mean(np.log(np.maximum(p_y, np.finfo(P.dtype).tiny))))  # never log(0)


def evaluate(X: np.ndarray, y: np.ndarray, params: dict, lam: float, chunk=10000) -> dict:
    """Loss (eq. 8), cost (eq. 7) and accuracy on a whole split, in chunks to bound memory."""
    check_data(X, y, params["W1"].shape[1])
    loss_sum, correct = 0.0, 0
    for i in range(0, y.size, chunk):
        P, _ = forward(X[:, i:i + chunk], params)  # (K, chunk)
        loss_sum += cross_entropy(P, y[i:i + chunk]) * P.shape[1]
        correct += int(np.sum(np.argmax(P, axis=0) == y[i:i + chunk]))
    loss = loss_sum / y.size
    return {"loss": loss, "cost": loss + penalty(params, lam), "acc": correct / y.size}


# --------------------------------------------------------------------------------------------------
# Gradients and their checks (Exercise 2, eqs. 12-13)

def backward(X, y, P, H, params: dict, lam: float, out: dict | None = None, drop=None) -> dict:
    """Eqs. (12-13): the gradients of the mini-batch cost J. With one-hot Y, dJ/dS = (P - Y)/n;
    labels y index it instead; a (K, n) matrix y is Y as written (targets that are not one-hot,
    Exercise 5's distillation). out: arrays shaped like params to write into; drop: forward()'s
    mask."""
    n = X.shape[1]
    grads = out if out is not None else {k: np.empty_like(v) for k, v in params.items()}
    if np.ndim(y) == 2:
        G = P - y  # (K, n)
    else:
        G = P.copy()  # (K, n)
        G[y, np.arange(n)] -= 1
    G /= n
    np.matmul(G, H.T, out=grads["W2"])  # (K, m)
    np.sum(G, axis=1, keepdims=True, out=grads["b2"])  # (K, 1)
    G = (G.T @ params["W2"]).T  # (m, n) in H's (Fortran) order: the masks below run 2x faster
    G *= H > 0  # the ReLU passes the gradient where it was active
    if drop is not None:
        G *= drop
    np.matmul(X, G.T, out=grads["W1"].T)  # (d, m) view of the (m, d) G X^T: the faster kernel
    np.sum(G, axis=1, keepdims=True, out=grads["b1"])  # (m, 1)
    if lam:
        for k in ("W1", "W2"):
            grads[k] += (2 * lam) * params[k]  # the L2 term of eq. 12
    return grads


def grads_analytic(X, y, params: dict, lam: float, drop=None) -> dict:
    """The gradients of eqs. 12-13 at params: forward() then backward()."""
    P, H = forward(X, params, drop)
    return backward(X, y, P, H, params, lam, drop=drop)


def grads_numerical(X, y, params: dict, lam: float, h=1e-4, drop=None, loss=None) -> dict:
    """Centred finite differences of the cost, one entry at a time (float64, small sizes). y:
    labels, or a (K, n) matrix Y of targets (the loss is then -sum Y log P / n); loss(P), if
    given, is the loss instead (Exercise 5's distillation)."""
    def J():
        P = forward(X, params, drop)[0]  # (K, n)
        data = (loss(P) if loss else cross_entropy(P, y) if np.ndim(y) == 1 else
                float(-np.sum(y * np.log(P)) / P.shape[1]))
        return data + penalty(params, lam)
    grads = {}
    for k, p in params.items():
        grads[k] = g = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + h
            plus = J()
            p[i] = old - h
            g[i] = (plus - J()) / (2 * h)
            p[i] = old
    return grads


def grads_torch(X, y, params: dict, lam: float) -> dict:
    """The gradients PyTorch autograd computes (the spec's torch_gradient_computations.py)."""
    try:
        from torch_gradient_computations import ComputeGradsWithTorch
    except ImportError as e:
        raise DataError(f"the gradient check needs torch and torch_gradient_computations.py "
                        f"beside this file ({e})") from None
    net = {"W": [params["W1"], params["W2"]], "b": [params["b1"], params["b2"]]}
    g = ComputeGradsWithTorch(X, y, net, lam)
    return {"W1": g["W"][0], "b1": g["b"][0], "W2": g["W"][1], "b2": g["b"][1]}


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest element-wise |a - b| / max(1e-8, |a| + |b|), cs231n's gradient-check measure."""
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def gradcheck(rng: np.random.Generator, X=None, y=None, settings=((5, 3, 6, 0.0),)) -> list:
    """Analytic gradients against torch autograd and finite differences, float64. A setting is
    (d, n, m, lam); the data are the first d rows and n columns of X (random if None)."""
    rows = []
    for d, n, m, lam in settings:
        Xs, ys = ((rng.standard_normal((d, n)), rng.integers(0, K, n)) if X is None else
                  (np.asarray(X[:d, :n], np.float64), y[:n]))
        params = init_params(d, m, rng, "float64")
        params["b1"] += 0.1 * rng.standard_normal((m, 1))  # non-zero biases test their gradients
        params["b2"] += 0.1 * rng.standard_normal((K, 1))
        ours = grads_analytic(Xs, ys, params, lam)
        torch_g, num_g = grads_torch(Xs, ys, params, lam), grads_numerical(Xs, ys, params, lam)
        rows += [{"d": d, "n": n, "m": m, "lam": lam, "param": k,
                  "vs_torch": rel_error(ours[k], torch_g[k]),
                  "vs_numerical": rel_error(ours[k], num_g[k])} for k in params]
    return rows


# --------------------------------------------------------------------------------------------------
# Training: mini-batch gradient descent with a cyclical learning rate (Exercise 3, eqs. 10-15)

def cyclic_eta(t: int, eta_min: float, eta_max: float, n_s: int) -> float:
    """The triangular schedule: eta_min at t = 2 l n_s up to eta_max at (2l+1) n_s (eq. 14), and
    back down to eta_min at 2(l+1) n_s (eq. 15)."""
    l, r = divmod(t, 2 * n_s)  # noqa: E741 (l: the spec's cycle index)
    if r <= n_s:
        return eta_min + r / n_s * (eta_max - eta_min)  # eq. 14
    return eta_max - (r - n_s) / n_s * (eta_max - eta_min)  # eq. 15


def sgd_step(params: dict, Xb: np.ndarray, yb: np.ndarray, t: int, cfg: Config, rng) -> None:
    """Update step t of the spec: the gradients of eqs. 12-13 on the batch, then eqs. 10-11 at
    the learning rate eta_t of eqs. 14-15."""
    P, H = forward(Xb, params)
    grads = backward(Xb, yb, P, H, params, cfg.lam)
    eta = cyclic_eta(t, cfg.eta_min, cfg.eta_max, cfg.n_s)
    for k in params:
        params[k] -= eta * grads[k]  # eqs. 10-11


def eval_steps(cfg: Config) -> list:
    """The update steps after which the curves are recorded: 0, then evals_per_cycle evenly
    spaced points per cycle."""
    every = 2 * cfg.n_s / cfg.evals_per_cycle
    points = cfg.evals_per_cycle * cfg.n_cycles
    return sorted({0} | {round(i * every) for i in range(1, points + 1)})


def train(params: dict, train_set: Split, val_set: Split, cfg: Config, rng: np.random.Generator,
          log=print, step=sgd_step, get_batch=None, on_eval=None, start: dict | None = None):
    """Mini-batch gradient descent for 2 n_s n_cycles update steps, reshuffled every epoch (a
    partial last batch is dropped); updates params in place and returns the history of cost,
    loss and accuracy at eval_steps(cfg). Raises Diverged when the cost is not finite. Hooks, for
    Exercise 5: step(params, Xb, yb, t, cfg, rng) makes one update (default: the spec's);
    get_batch(idx, rng) -> (d, B) gives the images idx (default: as stored); on_eval(state) sees
    {"t", "perm", "hist"} after each evaluation point, and start=state goes on from one."""
    check_config(cfg, train_set.n)
    for s in (train_set, val_set):
        check_data(s.X, s.y, params["W1"].shape[1])
    XT = np.ascontiguousarray(train_set.X.T, cfg.dtype)  # (n, d): a batch gather copies rows
    data = (XT, train_set.y, np.asarray(val_set.X, cfg.dtype), val_set.y)
    get_batch = get_batch or (lambda idx, rng: XT[idx].T)  # (d, B), Fortran
    n, B, total, points = train_set.n, cfg.n_batch, 2 * cfg.n_s * cfg.n_cycles, eval_steps(cfg)
    per_epoch = n // B
    state = start or {"t": 0, "perm": None, "hist": {}}
    hist, perm, t0 = state["hist"], state["perm"], time.perf_counter()
    before = hist["seconds"][-1] if hist else 0.0  # seconds trained before a resume
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging run: record() raises
        if state["t"] == 0:
            record(hist, 0, params, data, cfg, log, (before, 0.0))
        for t in range(state["t"], total):
            if t % per_epoch == 0:
                perm = rng.permutation(n)
            idx = perm[(t % per_epoch) * B:(t % per_epoch + 1) * B]
            step(params, get_batch(idx, rng), train_set.y[idx], t, cfg, rng)
            if t + 1 in points:
                now = time.perf_counter() - t0
                left = now / (t + 1 - state["t"]) * (total - t - 1)
                record(hist, t + 1, params, data, cfg, log, (before + now, left))
                if on_eval:
                    on_eval({"t": t + 1, "perm": perm, "hist": hist})
    return hist


def record(hist: dict, t: int, params: dict, data: tuple, cfg: Config, log, clock: tuple):
    """One point of the curves: cost, loss and accuracy on the whole validation set, and on the
    training set unless cfg leaves it to the end; logged with the seconds trained and left."""
    XT, y, Xv, yv = data
    va, total = evaluate(Xv, yv, params, cfg.lam), 2 * cfg.n_s * cfg.n_cycles
    skip = not cfg.eval_train and t != total
    tr = dict.fromkeys(va, math.nan) if skip else evaluate(XT.T, y, params, cfg.lam)
    for q, v in [("step", t), ("seconds", round(clock[0], 2))] + [
            (f"{s}_{q}", None if s == "train" and skip else r[q])
            for s, r in (("train", tr), ("val", va)) for q in ("cost", "loss", "acc")]:
        hist.setdefault(q, []).append(v)
    train = "" if skip else (f"train cost {tr['cost']:.4f}, loss {tr['loss']:.4f}, acc "
                             f"{tr['acc']:.4f} | ")
    log(f"step {t:5d}/{total}: {train}val cost {va['cost']:.4f}, loss {va['loss']:.4f}, acc "
        f"{va['acc']:.4f} | {clock[0]:.0f} s, {clock[1]:.0f} s left")
    if not math.isfinite(va["cost"]) or not (skip or math.isfinite(tr["cost"])):
        raise Diverged(f"training diverged at step {t} (non-finite cost) with {cfg}")


def run(train_set: Split, val_set: Split, cfg: Config, rng: np.random.Generator, log=print,
        **hooks) -> tuple:
    """A fresh network trained on train_set: (params, history). hooks: see train()."""
    check_data(train_set.X, train_set.y)
    check_config(cfg, train_set.n)
    params = init_params(train_set.X.shape[0], cfg.m, rng, cfg.dtype)
    return params, train(params, train_set, val_set, cfg, rng, log, **hooks)


# --------------------------------------------------------------------------------------------------
# Experiments: the spec's runs and the coarse-to-fine search for lam (Exercise 4)

@dataclass(frozen=True)
class Plan:
    """The sizes and settings of every step; quick_plan() shrinks them for smoke tests."""
    fig3: Config = Config()  # Exercise 3: one cycle, n_s = 500, lam = 0.01
    fig4: Config = Config(n_s=800, n_cycles=3, evals_per_cycle=9)  # Exercise 4: three cycles
    overfit: Config = Config(lam=0.0, eta_min=0.05, eta_max=0.05, n_s=1000, n_batch=10)
    overfit_n: int = 100  # training images of the overfitting check (200 epochs above)
    limit: int | None = None  # at most this many training images per step (quick mode)
    n_val_search: int = 5000  # validation images held out of the five batches in the search
    n_val_final: int = 1000  # ... and in the final run
    ns_epochs: int = 2  # n_s = ns_epochs * floor(n / n_batch) in the search and the final run
    coarse_l: tuple = (-5.0, -1.0)  # log10 range of lam of the coarse grid
    coarse_n: int = 8  # grid points
    coarse_cycles: int = 2
    fine_n: int = 10  # random draws of lam in the narrowed range
    fine_cycles: int = 3
    final_cycles: int = 3
    n_seeds: int = 3  # seeds behind the mean and spread of the `seeds` step
    gradcheck: tuple = ((5, 3, 6, 0.0), (5, 3, 6, 0.1), (100, 20, 30, 0.0), (100, 20, 30, 0.05))


def quick_plan() -> Plan:
    """Tiny sizes that run the whole pipeline in seconds: a smoke test, not a result."""
    small = dict(n_s=20, evals_per_cycle=4)
    return Plan(fig3=Config(**small), fig4=Config(**small, n_cycles=2),
                overfit=replace(Plan.overfit, n_s=100), overfit_n=20, limit=2000, n_val_search=500,
                n_val_final=200, ns_epochs=1, coarse_n=3, coarse_cycles=1, fine_n=2, fine_cycles=1,
                final_cycles=1, n_seeds=2, gradcheck=((5, 3, 6, 0.0), (5, 3, 6, 0.1)))


STAGES = ("gradcheck", "overfit", "fig3", "fig4", "coarse", "fine", "final", "fine_lams")


def stage_rng(seed: int, stage: str, trial: int = 0) -> np.random.Generator:
    """An independent random stream for each (seed, stage, trial)."""
    return np.random.default_rng([seed, STAGES.index(stage), trial])


def search(stage: str, lams, base: Config, train_set: Split, val_set: Split, seed: int,
           log=print) -> list:
    """One fresh network per lam, the other settings as in base (the searches of Exercise 4);
    a diverged trial is recorded as such and the search goes on."""
    trials = []
    for i, lam in enumerate(lams):
        cfg, trial = replace(base, lam=float(lam)), {"lam": float(lam), "diverged": False}
        try:
            _, hist = run(train_set, val_set, cfg, stage_rng(seed, stage, i), log=lambda s: None)
            trial |= {q: hist[h][-1] for q, h in (("val_acc", "val_acc"),
                                                    ("train_acc", "train_acc"))}
            trial["best_val_acc"] = max(hist["val_acc"])
        except Diverged:
            trial |= {"diverged": True, "val_acc": None, "train_acc": None, "best_val_acc": None}
        log(f"{stage} {i + 1}/{len(lams)}: lam={lam:.3e} val acc {trial['val_acc']}")
        trials.append(trial | {"cfg": asdict(cfg)})
    return trials


def top_trials(trials: list, k: int = 3) -> list:
    """The k trials of highest final validation accuracy (a diverged one never wins)."""
    return sorted([t for t in trials if not t["diverged"]], key=lambda t: -t["val_acc"])[:k]


def fine_range(coarse: list, plan: Plan) -> tuple:
    """The log10 range of the fine search: one coarse grid step either side of the best lam."""
    if not (best := top_trials(coarse, 1)):
        raise Diverged("every coarse trial diverged; nothing to refine")
    step = (plan.coarse_l[1] - plan.coarse_l[0]) / max(1, plan.coarse_n - 1)
    centre = math.log10(best[0]["lam"])
    return max(plan.coarse_l[0], centre - step), min(plan.coarse_l[1], centre + step)


# --------------------------------------------------------------------------------------------------
# Plots

def pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path) -> None:
    """Write fig as a PNG whole or not at all, then free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    pyplot().close(fig)


def plot_curves(hist: dict, path: Path, title: str) -> None:
    """Cost, loss and accuracy on the training and validation sets against the update step."""
    fig, axes = pyplot().subplots(1, 3, figsize=(10, 3.3))
    for ax, q in zip(axes, ("cost", "loss", "acc")):
        ax.plot(hist["step"], np.array(hist[f"train_{q}"], float), "o-", ms=3, label="training")
        ax.plot(hist["step"], hist[f"val_{q}"], "o-", ms=3, label="validation")
        label = {"acc": "accuracy"}.get(q, q)
        ax.set(xlabel="update step", ylabel=label, title=label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_search(trials: list, path: Path, title: str) -> None:
    """Final (and best) validation accuracy against lam, on a log axis."""
    ok = sorted((t for t in trials if not t["diverged"]), key=lambda t: t["lam"])
    fig, ax = pyplot().subplots(figsize=(6, 3.6))
    ax.semilogx([t["lam"] for t in ok], [t["val_acc"] for t in ok], "o", label="final")
    ax.semilogx([t["lam"] for t in ok], [t["best_val_acc"] for t in ok], "x",
                label="best during training")
    ax.set(xlabel="lambda", ylabel="validation accuracy", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------------
# Files and folders: the data folder, whole files, one writer, runs that never overwrite others

def folder_name(option: str, arg: str | None) -> None:
    """Refuse a folder option that names no folder (empty, spaces, control characters)."""
    if arg is not None and (not arg.strip() or any(c in arg for c in "\n\r\t\0")):
        raise StateError(f"{option} {arg!r}: not a folder name")


def data_folder(arg: str | None) -> Path:
    """The folder of --data-dir arg, else of $CIFAR10_DIR, else data/cifar-10-batches-py beside
    this file, downloaded when missing: checked to hold every batch file."""
    folder_name("--data-dir", arg)
    default = Path(__file__).resolve().parent / "data" / "cifar-10-batches-py"
    data_dir = Path(arg or os.environ.get("CIFAR10_DIR") or default)
    return ensure_data(data_dir, data_dir == default)


def ensure_data(data_dir: Path, may_download: bool, url=CIFAR_URL, md5=CIFAR_MD5) -> Path:
    """data_dir if it holds every batch file; a missing default folder is downloaded first."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir() and may_download:
        download(data_dir, url, md5)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data folder not found; pass --data-dir")
    os.listdir(data_dir)  # a folder we may not read: its OSError, not "missing" files
    if missing := [f for f in CIFAR_FILES if not (data_dir / f).is_file()]:
        raise DataError(f"{data_dir}: missing {', '.join(missing)}")
    return data_dir


def download(dest: Path, url: str, md5: str, chunk: int = 1 << 20) -> None:
    """The official archive, streamed in chunks to a temporary folder beside dest and hashed as
    it comes, with progress on stderr; its six batch files land in dest all together or not at
    all (the folder renamed at the end, after the MD5 check)."""
    import http.client
    import shutil
    import tarfile
    import urllib.request
    todo = f"download {CIFAR_URL} by hand and extract it to {dest.parent}, or pass --data-dir"
    print(f"data: {dest} is missing; downloading {url}", file=sys.stderr)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.part-"))
    try:
        digest, archive = hashlib.md5(), tmp / "archive.tar.gz"
        with urllib.request.urlopen(url, timeout=30) as r, open(archive, "wb") as f:
            show = progress_line(int(r.headers.get("Content-Length") or 0))
            while block := r.read(chunk):
                f.write(block)
                digest.update(block)
                show(f.tell())
            show(f.tell(), end=True)
        if digest.hexdigest() != md5:
            raise DataError(f"{url}: the archive's MD5 is wrong (cut short or changed); {todo}")
        with tarfile.open(archive, mode="r:gz") as tar:
            for name in CIFAR_FILES:  # only these six, each a regular file, by name
                member = tar.getmember(f"cifar-10-batches-py/{name}")
                if not member.isfile():
                    raise DataError(f"{url}: {member.name} is not a regular file; {todo}")
                with tar.extractfile(member) as src, open(tmp / name, "wb") as out:
                    shutil.copyfileobj(src, out)
        archive.unlink()
        tmp.rename(dest)
    except (OSError, http.client.HTTPException, tarfile.TarError, EOFError, KeyError) as e:
        raise DataError(f"{url}: could not download or read the archive ({e}); {todo}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def progress_line(total: int, out=None):
    """show(done, end=False): bytes done (of total, when known) on stderr: one line redrawn in
    place on a terminal, else a line at about every 10% (10 MB when the size is unknown), and
    the last one at the end."""
    out, state = out or sys.stderr, {"mark": 0, "shown": None}

    def show(done: int, end: bool = False) -> None:
        text = f"  {done / 1e6:.1f} MB" + (f" of {total / 1e6:.1f} MB ({100 * done / total:.0f}%)"
                                           if total else "")
        mark = 10 * done // total if total else done // 10_000_000
        if out.isatty():
            out.write("\r" + text + ("\n" if end else ""))
        elif mark > state["mark"] or (end and state["shown"] != done):
            out.write(text + "\n")
            state["shown"] = done
        state["mark"] = mark
        out.flush()
    return show


@contextlib.contextmanager
def atomic_path(path: Path):
    """A temporary path beside path that replaces it when the block succeeds, flushed to disk
    (the file, then the folder's entry) with the umask's permissions; on failure it goes and
    path stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0o22)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_atomic(path: Path, data: str | bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def clean_temporaries(folder: Path) -> None:
    """Remove what writes killed mid-way left in folder (atomic_path's .*.tmp files)."""
    for sub in (folder, folder / "figures", folder / "report"):
        for tmp in sub.glob(".*.tmp") if sub.is_dir() else ():
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def folder_lock(folder: Path):
    """One writer per folder: a second run into it stops at once. The kernel drops the lock
    when its holder exits, however it exits."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".assignment2.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise StateError(f"{folder}: another run (pid {holder}) is writing to this folder; wait "
                         f"for it to end or pass another --out-dir") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def data_source(data_dir: Path) -> tuple[dict, list]:
    """The data of a run from one read of each batch file: {"data": a hash of the files,
    "data_official": whether each file's MD5 is the published one}, and the files whose is not."""
    h, other = hashlib.sha256(), []
    for f in CIFAR_FILES:
        md5 = hashlib.md5((data_dir / f).read_bytes()).hexdigest()  # one hash of 180 MB, not two
        h.update(md5.encode())
        other += [f] if md5 != CIFAR_MD5S[f] else []
    return {"data": h.hexdigest()[:16], "data_official": not other}, other


def source_line(data_dir: Path, other: list) -> str:
    """The line a run starts with: which data it reads (other: data_source's files)."""
    if not other:
        return f"data: {data_dir}: the official CIFAR-10 (every batch's MD5 is the published one)"
    return (f"data: {data_dir}: not the official CIFAR-10 ({', '.join(other)}: MD5 differs "
            f"from the published one); running on it as it is")


def identity(seed: int, quick: bool, dtype: str, data: dict) -> dict:
    """What a run is: seed, sizes, dtype and data (data_source's dict)."""
    return {"seed": seed, "quick": quick, "dtype": dtype, **data}


def run_name(run: dict) -> str:
    return f"{'quick' if run['quick'] else 'full'}-seed{run['seed']}-{run['dtype']}-{run['data']}"


FIGURES = tuple(f"figures/{k}.png" for k in ("fig3", "fig4", "coarse", "fine", "final"))
# a run's outputs, the report built from them included; figures/ holds Exercise 5's too
RUN_OUTPUTS = ("results.json", "results.txt", "timings.json", *FIGURES, "report/report.pdf")


def check_out_dir(folder: Path) -> None:
    """Refuse an output folder this run could not finish in, before anything trains."""
    for name in ("figures", *RUN_OUTPUTS[:-1]):  # what this program writes, not the report
        kind, ok = ("a folder", Path.is_dir) if name == "figures" else ("a file", Path.is_file)
        if (folder / name).exists() and not ok(folder / name):
            raise StateError(f"{folder / name}: not {kind}; move it away or pass another "
                             f"--out-dir")
    with tempfile.TemporaryFile(dir=folder):  # read-only, another user's: an OSError here
        pass


def open_run(folder: Path, run: dict, replace_old: bool) -> dict:
    """The results in folder when they are this run's, else {}. Outputs of another run, or that
    no readable results.json accounts for, stop the program before anything is written, unless
    replace_old moves them all to replaced/ (never deleted)."""
    finish_moves(folder)
    try:
        res = json.loads((folder / "results.json").read_text())
    except (OSError, ValueError):
        res = None
    known = isinstance(res, dict) and all(k in res for k in run)
    if known and all(res[k] == v for k, v in run.items()):
        return res
    there = [n for n in RUN_OUTPUTS if (folder / n).exists()]
    if not there:
        return {}
    what = (f"the results of another run ({run_name(res)})" if known else
            f"outputs ({', '.join(there)}) that no readable results.json accounts for")
    if not replace_old:
        raise StateError(f"{folder} holds {what}; this run is {run_name(run)}. Nothing was "
                         f"changed: pass another --out-dir, or --replace to move them to "
                         f"{folder / 'replaced'}/")
    name = time.strftime("%Y%m%d-%H%M%S-") + (run_name(res) if known else "unknown")
    dest = next(d for i in range(1000) if not (d := folder / "replaced" / f"{name}{i or ''}")
                .exists())  # two replacements in one second go side by side
    dest.mkdir(parents=True)
    (dest / ".moving").touch()  # until every output is there: see finish_moves
    finish_moves(folder)
    print(f"--replace: moved {what} to {dest}", file=sys.stderr)
    return {}


def finish_moves(folder: Path) -> None:
    """Move the outputs of folder into a replaced/ folder marked .moving, then unmark it: an
    interrupted --replace is finished by the next run, so the earlier run ends up whole in one
    place."""
    for mark in sorted(folder.glob("replaced/*/.moving")):
        for name in RUN_OUTPUTS:
            if (folder / name).exists() and not (mark.parent / name).exists():
                (mark.parent / name).parent.mkdir(exist_ok=True)
                os.replace(folder / name, mark.parent / name)
        mark.unlink()


# --------------------------------------------------------------------------------------------------
# The steps of Exercises 1-4, each a function of one shared context

@dataclass
class Context:
    """What every step needs: data, output folder, plan, seed, and the results so far."""
    data_dir: Path
    out_dir: Path
    plan: Plan
    seed: int = 0
    dtype: str = "float32"
    results: dict = field(default_factory=dict)  # computed by this run
    stored: dict = field(default_factory=dict)  # results.json's, of the same run
    log: object = print
    splits: tuple = (None, None)  # the normalised splits last asked for: one set in memory

    def data(self, which: str) -> list:
        """Normalised (train, val, test): 'batch12' is batch 1 / batch 2; 'search' and 'final'
        hold out the last n_val_search / n_val_final images of the five training batches."""
        if self.splits[0] != which:
            self.splits, lim = (None, None), self.plan.limit  # free the last set first, ...
            gc.collect()  # ... even where a cycle (matplotlib makes some) holds a frame with it
            if which == "batch12":
                tr, va = (head(load_batch(self.data_dir / f), lim) for f in CIFAR_FILES[:2])
            else:
                n_val = self.plan.n_val_search if which == "search" else self.plan.n_val_final
                five = concat([load_batch(self.data_dir / f) for f in CIFAR_FILES[:5]])
                tr, va = split_last(head(five, lim and lim + n_val), n_val)
            te = load_batch(self.data_dir / "test_batch")
            self.splits = (which, normalise(tr, va, te, dtype=self.dtype))
        return self.splits[1]

    def need(self, step: str) -> dict:
        """A step's result: this run's, else results.json's if it can be believed, else computed
        now."""
        if step not in self.results:
            problem = stored_problem(self.stored.get(step))
            if problem and step in self.stored:
                self.log(f"warning: results.json: {step} {problem}; computing it again")
            self.results[step] = self.stored[step] if not problem else STEPS[step](self)
        return self.results[step]

    def figure(self, name: str) -> Path:
        return self.out_dir / "figures" / name

    def train_and_test(self, which: str, cfg: Config, rng, name: str, log=None) -> tuple:
        """A fresh network trained on the splits `which`; the test set evaluated once."""
        tr, va, te = self.data(which)
        log = log or (lambda s: self.log(f"{name} {s}"))
        params, hist = run(tr, va, cfg, rng, log=log)
        test_acc = evaluate(te.X, te.y, params, cfg.lam)["acc"]
        self.log(f"{name}: test accuracy {test_acc:.4f}")
        return hist, test_acc


def stored_problem(r) -> str | None:
    """None if r is a step's result that this program could have written, else what is wrong
    with it: each accuracy in [0, 1], each lam >= 0, each cfg a valid Config."""
    def fraction(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1
    if not isinstance(r, dict):
        return "is missing" if r is None else "is not a step result"
    try:
        for t in [r, *r.get("trials", [])]:
            if not ("test_acc" not in t or fraction(t["test_acc"])) or not (
                    "val_acc" not in t or fraction(t["val_acc"]) or t["diverged"] is True):
                return "holds an accuracy outside [0, 1]"
            if "lam" in t and not 0 <= t["lam"] < math.inf:
                return f"holds lam={t['lam']!r}"
            if "cfg" in t:
                check_config(Config(**t["cfg"]), t["cfg"]["n_batch"])
    except (TypeError, KeyError, AttributeError, ValueError) as e:
        return f"cannot be believed ({e})"
    return None


def step_gradcheck(ctx: Context) -> dict:
    """Exercise 2: analytic gradients against torch and finite differences on CIFAR pixels."""
    tr = ctx.data("batch12")[0]
    rows = gradcheck(stage_rng(ctx.seed, "gradcheck"), tr.X, tr.y, ctx.plan.gradcheck)
    for r in rows:
        ctx.log(f"gradcheck d={r['d']} n={r['n']} m={r['m']} lam={r['lam']} {r['param']}: rel "
                f"error vs torch {r['vs_torch']:.2e}, vs finite differences "
                f"{r['vs_numerical']:.2e}")
    return {"rows": rows, "max_vs_torch": max(r["vs_torch"] for r in rows),
            "max_vs_numerical": max(r["vs_numerical"] for r in rows)}


def step_overfit(ctx: Context) -> dict:
    """Exercise 2's sanity check: with lam = 0 the training loss on a few images goes to ~0."""
    tr, n = ctx.data("batch12")[0], ctx.plan.overfit_n
    small, cfg = head(tr, n), replace(ctx.plan.overfit, dtype=ctx.dtype)
    _, hist = run(small, small, cfg, stage_rng(ctx.seed, "overfit"), log=lambda s: None)
    epochs = 2 * cfg.n_s * cfg.n_cycles * cfg.n_batch / n
    ctx.log(f"overfit: {n} images, {epochs:.0f} epochs, lam=0: training loss "
            f"{hist['train_loss'][0]:.3f} -> {hist['train_loss'][-1]:.4f}, accuracy "
            f"{hist['train_acc'][-1]:.3f}")
    return {"n": n, "epochs": epochs, "cfg": asdict(cfg), "loss": hist["train_loss"][-1],
            "acc": hist["train_acc"][-1], "history": hist}


def step_figure(ctx: Context, key: str) -> dict:
    """Figures 3 and 4: batch 1 for training, batch 2 for validation."""
    tr, va, _ = ctx.data("batch12")
    cfg = replace(getattr(ctx.plan, key), dtype=ctx.dtype)
    hist, test_acc = ctx.train_and_test("batch12", cfg, stage_rng(ctx.seed, key), key)
    plot_curves(hist, ctx.figure(f"{key}.png"), f"Figure {key[-1]} replica (lam={cfg.lam}, "
                f"n_s={cfg.n_s}, {cfg.n_cycles} cycle(s)): test accuracy {100 * test_acc:.2f}%")
    return {"cfg": asdict(cfg), "n_train": tr.n, "n_val": va.n, "test_acc": test_acc,
            "history": hist}


def search_step(ctx: Context, stage: str, lams, n_cycles: int, l_range) -> dict:
    """A search over lams on the 'search' splits, its top 3 and its figure."""
    tr, va, _ = ctx.data("search")
    base = Config(n_s=ctx.plan.ns_epochs * (tr.n // Config.n_batch), n_cycles=n_cycles,
                  eval_train=False, dtype=ctx.dtype)
    trials = search(stage, lams, base, tr, va, ctx.seed, ctx.log)
    top3 = top_trials(trials)
    for t in top3:
        ctx.log(f"{stage} top: lam={t['lam']:.4e} val acc {t['val_acc']:.4f}")
    plot_search(trials, ctx.figure(f"{stage}.png"),
                f"{stage} search: {n_cycles} cycles, n_s={base.n_s}")
    return {"l_range": list(l_range), "n_cycles": n_cycles, "n_s": base.n_s, "n_train": tr.n,
            "n_val": va.n, "trials": trials, "top3": top3}


def step_coarse(ctx: Context) -> dict:
    """The coarse search: lam on a uniform log10 grid over the whole plausible range."""
    p = ctx.plan
    return search_step(ctx, "coarse", 10 ** np.linspace(*p.coarse_l, p.coarse_n),
                       p.coarse_cycles, p.coarse_l)


def step_fine(ctx: Context) -> dict:
    """The fine search: random log10 draws around the best coarse lam, for more cycles."""
    lo, hi = fine_range(ctx.need("coarse")["trials"], ctx.plan)
    lams = 10 ** np.sort(stage_rng(ctx.seed, "fine_lams").uniform(lo, hi, ctx.plan.fine_n))
    return search_step(ctx, "fine", lams, ctx.plan.fine_cycles, (lo, hi))


def step_final(ctx: Context) -> dict:
    """The best fine lam (by validation accuracy) on all but n_val_final images; the test set
    is evaluated here, once."""
    if not (best := top_trials(ctx.need("fine")["trials"], 1)):
        raise Diverged("every fine-search trial diverged; no lam to train with")
    tr, va, _ = ctx.data("final")
    cfg = Config(lam=best[0]["lam"], n_s=ctx.plan.ns_epochs * (tr.n // Config.n_batch),
                 n_cycles=ctx.plan.final_cycles, dtype=ctx.dtype)
    hist, test_acc = ctx.train_and_test("final", cfg, stage_rng(ctx.seed, "final"), "final")
    plot_curves(hist, ctx.figure("final.png"), f"Final run (lam={cfg.lam:.2e}, {tr.n} training "
                                               f"images): test accuracy {100 * test_acc:.2f}%")
    return {"lam": cfg.lam, "cfg": asdict(cfg), "n_train": tr.n, "n_val": va.n,
            "test_acc": test_acc, "history": hist}


def step_seeds(ctx: Context) -> dict:
    """Mean and spread of the test accuracies of Figures 3, 4 and the final run over n_seeds
    seeds: this run's and the next ones, same settings (the final run keeps its lam)."""
    out = {}
    for key, which in (("fig3", "batch12"), ("fig4", "batch12"), ("final", "final")):
        base = ctx.need(key)
        seeds, accs = [ctx.seed], [base["test_acc"]]
        for s in range(ctx.seed + 1, ctx.seed + ctx.plan.n_seeds):
            accs.append(ctx.train_and_test(which, Config(**base["cfg"]), stage_rng(s, key),
                                           f"{key} seed {s}", log=lambda m: None)[1])
            seeds.append(s)
        out[key] = {"seeds": seeds, "test_acc": accs, "mean": float(np.mean(accs)),
                    "std": float(np.std(accs, ddof=1))}
        ctx.log(f"seeds {key}: test accuracy {100 * out[key]['mean']:.2f} +- "
                f"{100 * out[key]['std']:.2f}% over seeds {seeds}")
    return out


STEPS = {"gradcheck": step_gradcheck, "overfit": step_overfit,
         "fig3": lambda ctx: step_figure(ctx, "fig3"), "fig4": lambda ctx: step_figure(ctx, "fig4"),
         "coarse": step_coarse, "fine": step_fine, "final": step_final, "seeds": step_seeds}
DEFAULT_STEPS = tuple(STEPS)[:-1]  # seeds runs on request


def pct(acc) -> str:
    return "diverged" if acc is None else f"{100 * acc:.2f}%"


def format_results(res: dict, timings: dict) -> str:
    """results.txt: the numbers of results.json for people."""
    official = "the official CIFAR-10" if res.get("data_official") else "not the official files"
    out = [f"DD2424 Assignment 2 results ({run_name(res)}; data: {official}, MD5 checked)", ""]
    for r in res.get("gradcheck", {}).get("rows", []):
        out.append(f"gradcheck d={r['d']:<4} n={r['n']:<3} m={r['m']:<3} lam={r['lam']:<5} "
                   f"{r['param']}: rel error vs torch {r['vs_torch']:.2e}, vs finite "
                   f"differences {r['vs_numerical']:.2e}")
    if o := res.get("overfit"):
        out.append(f"overfit: {o['n']} images, lam=0, {o['epochs']:.0f} epochs: training loss "
                   f"{o['loss']:.4f}, accuracy {pct(o['acc'])}")
    for key in ("fig3", "fig4", "final"):
        if r := res.get(key):
            c = r["cfg"]
            out.append(f"{key}: lam={c['lam']:.4e}, {c['n_cycles']} cycle(s), n_s={c['n_s']}, "
                       f"{r['n_train']} / {r['n_val']} images: test accuracy {pct(r['test_acc'])}")
    for key in ("coarse", "fine"):
        if r := res.get(key):
            out.append(f"{key} search, log10(lam) in [{r['l_range'][0]:.3f}, "
                       f"{r['l_range'][1]:.3f}], {r['n_cycles']} cycles (* the 3 best):")
            out += [f"  lam={t['lam']:.4e}  val acc {pct(t['val_acc'])} (best "
                    f"{pct(t['best_val_acc'])}){' *' if t in r['top3'] else ''}"
                    for t in sorted(r["trials"], key=lambda t: t["lam"])]
    for key, r in res.get("seeds", {}).items():
        out.append(f"seeds {r['seeds']}, {key}: test accuracy {100 * r['mean']:.2f}% +- "
                   f"{100 * r['std']:.2f} ({', '.join(map(pct, r['test_acc']))})")
    out += ["", "seconds per step on this machine:"]
    return "\n".join(out + [f"  {k:<10} {v:8.1f}" for k, v in timings.items()]) + "\n"


def without_clock(value):
    """value without its curves' wall-clock seconds, so one seed always gives one results.json
    (timings.json has the times)."""
    if isinstance(value, dict):
        return {k: without_clock(v) for k, v in value.items() if k != "seconds"}
    return [without_clock(v) for v in value] if isinstance(value, list) else value


def save_run(out_dir: Path, results: dict, timings: dict) -> None:
    """results.json, timings.json and results.txt, each written whole."""
    write_atomic(out_dir / "results.json", json.dumps(without_clock(results), indent=1) + "\n")
    write_atomic(out_dir / "timings.json", json.dumps(timings, indent=1) + "\n")
    write_atomic(out_dir / "results.txt", format_results(results, timings))


# --------------------------------------------------------------------------------------------------
# main(): the command line

HELP = """steps (the default, all, runs every one but seeds):
  gradcheck  analytic gradients vs torch autograd and finite differences (float64)
  overfit    sanity check: 100 images, lam=0, 200 epochs: the training loss goes to ~0
  fig3       Exercise 3: 1 cycle, n_s=500, lam=0.01 on batch 1 (validation: batch 2)
  fig4       Exercise 4: 3 cycles, n_s=800
  coarse     lam on a log grid over [1e-5, 1e-1], 45,000 / 5,000 images, 2 cycles
  fine       random lam around the best coarse value, 3 cycles
  final      the best lam on 49,000 / 1,000 images, 3 cycles, test accuracy
  seeds      Figures 3, 4 and the final run with 2 more seeds: mean and spread

A step that needs another (fine needs coarse) takes it from results.json of the same run, or
computes it first. A run is its seed, sizes, dtype and data; results.json of another run is never
overwritten: the program stops, or with --replace moves that run to <out-dir>/replaced/."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="DD2424 Assignment 2: a two-layer network on CIFAR-10 with cyclical learning "
                    "rates. Writes figures/, results.json, results.txt and timings.json.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=HELP)
    p.add_argument("step", nargs="?", default="all", choices=["all", *STEPS],
                   help="run one step alone (default: all)")
    p.add_argument("--data-dir", help="folder of the CIFAR-10 python batches (default: "
                   "$CIFAR10_DIR, else data/cifar-10-batches-py beside this file, downloaded "
                   "there if missing)")
    p.add_argument("--out-dir", help="where the outputs go (default: this file's folder for a "
                   "full run, runs/<run>/ beside it for --quick)")
    p.add_argument("--seed", type=int, default=0, help="one seed reproduces every number")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test in seconds")
    p.add_argument("--float64", action="store_true", help="train in float64, not float32")
    p.add_argument("--replace", action="store_true",
                   help="move another run's outputs in --out-dir aside and start afresh")
    return p.parse_args(argv)


def require(*packages: str) -> None:
    """Stop before any work if a package the run needs is missing (find_spec imports nothing)."""
    missing = [name for name in packages if importlib.util.find_spec(name) is None]
    if missing:
        raise DataError(f"{' and '.join(missing)} not installed: pip install -r requirements.txt")


def folders(args) -> tuple[Path, Path, dict]:
    """The data folder (downloaded if it is the default and missing), the output folder and
    the run's identity, all checked before anything is written."""
    if not 0 <= args.seed < 2 ** 32:
        raise ConfigError(f"--seed {args.seed}: must be from 0 to 2**32 - 1")
    home = Path(__file__).resolve().parent
    folder_name("--out-dir", args.out_dir)
    data_dir = data_folder(args.data_dir)
    data, other = data_source(data_dir)
    print(source_line(data_dir, other), flush=True)
    run = identity(args.seed, args.quick, "float64" if args.float64 else "float32", data)
    out = Path(args.out_dir) if args.out_dir else (
        home / "runs" / run_name(run) if args.quick else home)
    if out.exists() and not out.is_dir():
        raise StateError(f"--out-dir {out}: exists and is not a folder")
    real = Path(os.path.realpath(out))  # unlike resolve(), never raises on a link loop
    if Path(os.path.realpath(data_dir)) in (real, *real.parents):
        raise StateError(f"--out-dir {out}: inside the data folder; write elsewhere")
    return data_dir, out, run


def check_sizes(ctx: Context) -> None:
    """Refuse data too small for the plan's splits, before anything is written."""
    p, n = ctx.plan, {f: load_batch(ctx.data_dir / f).n for f in CIFAR_FILES}  # each checked
    first, five = min(n["data_batch_1"], n["data_batch_2"]), sum(n[f] for f in CIFAR_FILES[:5])
    need = max(p.overfit_n, Config.n_batch), max(p.n_val_search, p.n_val_final) + Config.n_batch
    if first < need[0] or five < need[1]:
        raise ConfigError(f"{ctx.data_dir}: too few images: data_batch_1 and 2 need {need[0]} "
                          f"each, the five training batches {need[1]} together (try --quick)")


def run_steps(ctx: Context, steps, run: dict, timings: dict) -> None:
    """Each step in order, every result saved as soon as its step ends."""
    for step in steps:
        print(f"== {step}", flush=True)
        t0 = time.perf_counter()
        ctx.stored.pop(step, None)  # the step asked for runs again
        ctx.need(step)
        timings[step] = round(time.perf_counter() - t0, 2)
        save_run(ctx.out_dir, run | ctx.stored | ctx.results, timings)
        print(f"== {step} took {timings[step]:.1f} s", flush=True)


def main(argv=None) -> int:
    out_dir = None
    try:
        on_signals()
        args = parse_args(argv)
        require("matplotlib", *(["torch"] if args.step in ("all", "gradcheck") else []))
        data_dir, out_dir, run = folders(args)
        plan = quick_plan() if args.quick else Plan()
        ctx = Context(data_dir, out_dir, plan, args.seed, run["dtype"])
        check_sizes(ctx)  # bad data stops the run here, before anything is written
        with folder_lock(out_dir):
            check_out_dir(out_dir)
            clean_temporaries(out_dir)
            ctx.stored = {k: v for k, v in open_run(out_dir, run, args.replace).items()
                          if k in STEPS}
            if args.step == "all":  # computes every default step afresh; seeds stays
                ctx.stored = {k: v for k, v in ctx.stored.items() if k not in DEFAULT_STEPS}
            timings = read_timings(out_dir)
            print(f"run: {run_name(run)}; writing to {out_dir}", flush=True)
            t0 = time.perf_counter()
            run_steps(ctx, DEFAULT_STEPS if args.step == "all" else [args.step], run, timings)
        print(f"done in {time.perf_counter() - t0:.1f} s: {out_dir / 'results.txt'}")
        return 0
    except (DataError, ConfigError, Diverged, StateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(os_error(e, out_dir), file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        where = f" in {out_dir / 'results.json'}" if out_dir else ""
        print(f"\ninterrupted: the steps that finished are saved{where}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C: the steps that finished are kept."""


def on_signals() -> None:
    """Ctrl-C (KeyboardInterrupt) and SIGTERM (Terminated) stop the run where it is; the first
    one only, so that a second cannot interrupt the handling of the first."""
    def stop(signum, frame):
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)
        raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, stop)


def os_error(e: OSError, where=None) -> str:
    """An operating-system fault as one line: the path (else where), what happened, what to do."""
    path = e.filename if e.filename is not None else where
    return (f"error: {path}: {e.strerror or e}; check that it exists, is readable (data) or "
            f"writable (outputs) by you, with space on its disk, or pass another "
            f"--data-dir/--out-dir")


def read_timings(out_dir: Path) -> dict:
    """The seconds of the steps this run made before; a damaged timings.json is written anew."""
    try:
        t = json.loads((out_dir / "timings.json").read_text())
        return {k: v for k, v in t.items() if isinstance(v, (int, float))}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, AttributeError):
        print(f"warning: {out_dir / 'timings.json'} is damaged; writing it anew", file=sys.stderr)
        return {}


if __name__ == "__main__":
    sys.exit(main())
