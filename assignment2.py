"""DD2424 Assignment 2: a two-layer network for CIFAR-10, trained with cyclical learning rates.

Run it
    python3 assignment2.py             # every exercise in order (about 3 minutes on 2 cores)
    python3 assignment2.py fig3        # one step: gradcheck overfit fig3 fig4 coarse fine final
    python3 assignment2.py --quick     # tiny sizes, the whole pipeline in seconds (a smoke test)
    python3 assignment2.py bonus       # Exercise 5, stated in bonus.py (about 80 minutes)
    python3 assignment2.py report      # report/report.pdf, typeset from report/report.typ
    python3 assignment2.py --help

Data: --data-dir, else $CIFAR10_DIR, else data/cifar-10-batches-py (downloaded there when missing).

Writes under --out-dir (default: this folder for a full run; runs/<run>/ for --quick, or when this
folder holds another run, which is never written into)
    figures/*.png      Figure 3 and 4 replicas, the schedule, both searches, the final run
    results.json       every number, keyed by step; the same seed gives the same file
    results.txt        the same numbers for people, and how long each part took
    search_*.jsonl     one line per finished search trial: a rerun resumes from them
The program's own files (atomic writes, one writer per folder, validated reads, fingerprints of
data and code) are kept by runfiles.py beside this file.

Conventions: X is d x n (one column per image, stored Fortran-ordered so that a column is
contiguous), Y is K x n one-hot, y holds the n labels 0..K-1. Params and grads are dicts with keys
W1 (m, d), b1 (m, 1), W2 (K, m), b2 (K, 1). The penalty is lam * sum(W**2) as in eq. (7), so its
gradient is 2 lam W (eq. 12).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from runfiles import (
    DataError,
    FolderLock,
    SafeUnpickler,
    StateError,
    TrialFile,
    arrays_fingerprint,
    atomic_path,
    choose_out_dir,
    code_fingerprint,
    describe,
    download_archive,
    identity,
    load_progress,
    nested,
    open_run,
    save_progress,
    step_problem,
    without_clock,
    write_atomic,
)

# --------------------------------------------------------------------------------------------------
# Config

K = 10  # classes
D = 32 * 32 * 3  # input dimension of a CIFAR-10 image
PROJECT_DIR = Path(__file__).resolve().parent
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
               "test_batch")
MAX_BATCH_BYTES = 1 << 28  # a batch file may hold at most this much (an official one: 31 MB)


@dataclass(frozen=True)
class Config:
    """One training run. Defaults are the spec's Exercise 3 setting (Figure 3)."""
    m: int = 50  # hidden units
    lam: float = 0.01  # L2 penalty, eq. (7)
    eta_min: float = 1e-5  # lowest learning rate of the cycle, eqs. (14-15)
    eta_max: float = 1e-1  # highest learning rate of the cycle
    n_s: int = 500  # half-cycle length, update steps
    n_cycles: int = 1  # full cycles of 2 * n_s steps
    n_batch: int = 100  # images per mini-batch
    evals_per_cycle: int = 10  # points on the training curves per cycle
    eval_train: bool = True  # evaluate the training set at every point (searches: at the end)
    dtype: str = "float32"  # training precision; gradient checks always use float64
    # Exercise 5 (the defaults leave them off, so the runs above are the spec's)
    p_drop: float = 0.0  # probability of dropping a hidden unit in training (inverted dropout)
    flip: bool = False  # mirror each training image left-right with probability 1/2
    shift: int = 0  # move each image by tx, ty in [-shift, shift] pixels, edges replicated
    pca: int = 0  # train W1 in the top-pca principal directions (0: all of pixel space)
    optimizer: str = "sgd"  # sgd (eqs. 10-11), nesterov, adam
    schedule: str = "cyclic"  # cyclic (eqs. 14-15), linear (eta_max to 0), range (to eta_max)
    momentum: float = 0.9  # Nesterov momentum
    beta1: float = 0.9  # Adam's decay of the first moment
    beta2: float = 0.999  # Adam's decay of the second moment
    eps: float = 1e-8  # Adam's guard against division by zero


OPTIMIZERS = ("sgd", "nesterov", "adam")
SCHEDULES = ("cyclic", "linear", "range")


class ConfigError(ValueError):
    """Invalid hyper-parameters, raised before any training starts."""


class Diverged(ArithmeticError):
    """Training produced a non-finite cost; history holds the curves up to that point."""

    def __init__(self, message: str, history: dict | None = None):
        super().__init__(message)
        self.history = history


def check_config(cfg: Config, n_train: int) -> None:
    """Refuse settings that cannot train, before any work is done."""
    problems = []
    if cfg.m < 1:
        problems.append(f"m={cfg.m} must be at least 1")
    if cfg.lam < 0 or not math.isfinite(cfg.lam):
        problems.append(f"lam={cfg.lam} must be finite and >= 0")
    if not (0 < cfg.eta_min <= cfg.eta_max) or not math.isfinite(cfg.eta_max):
        problems.append(f"need 0 < eta_min <= eta_max, got {cfg.eta_min}, {cfg.eta_max}")
    if cfg.n_s <= 0:
        problems.append(f"n_s={cfg.n_s} must be positive")
    if cfg.n_cycles <= 0:
        problems.append(f"n_cycles={cfg.n_cycles} must be positive")
    if cfg.evals_per_cycle <= 0:
        problems.append(f"evals_per_cycle={cfg.evals_per_cycle} must be positive")
    if not 1 <= cfg.n_batch <= n_train:
        problems.append(f"n_batch={cfg.n_batch} must be from 1 to the {n_train} training images")
    if cfg.dtype not in ("float32", "float64"):
        problems.append(f"dtype={cfg.dtype!r} must be 'float32' or 'float64'")
    if not 0 <= cfg.p_drop < 1:
        problems.append(f"p_drop={cfg.p_drop} must be in [0, 1)")
    if not 0 <= cfg.pca <= D:
        problems.append(f"pca={cfg.pca} must be between 0 (off) and {D}")
    if not 0 <= cfg.shift <= 8:
        problems.append(f"shift={cfg.shift} must be between 0 and 8 pixels")
    if cfg.optimizer not in OPTIMIZERS:
        problems.append(f"optimizer={cfg.optimizer!r} must be one of {OPTIMIZERS}")
    if cfg.schedule not in SCHEDULES:
        problems.append(f"schedule={cfg.schedule!r} must be one of {SCHEDULES}")
    if not (0 <= cfg.momentum < 1 and 0 <= cfg.beta1 < 1 and 0 <= cfg.beta2 < 1 and cfg.eps > 0):
        problems.append("need 0 <= momentum, beta1, beta2 < 1 and eps > 0")
    if problems:
        raise ConfigError("invalid hyper-parameters: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------------
# Data (Exercise 1)

@dataclass
class Split:
    """Images and labels of one split: X (d, n), y (n,)."""
    X: np.ndarray
    y: np.ndarray

    @property
    def n(self) -> int:
        return self.X.shape[1]

    @property
    def Y(self) -> np.ndarray:
        """One-hot labels, (K, n)."""
        return one_hot(self.y)


def one_hot(y: np.ndarray) -> np.ndarray:
    Y = np.zeros((K, y.size))  # (K, n)
    Y[y, np.arange(y.size)] = 1
    return Y


def _labels(labels, n: int, path: Path) -> np.ndarray:
    """b'labels' as int64 (n,), checked before numpy converts it: a flat list of n integers or a
    1-D integer array. Anything else (nested, ragged or self-referencing lists) is refused
    without being expanded."""
    if isinstance(labels, np.ndarray):
        flat = labels.ndim == 1 and labels.dtype.kind in "iu"
    else:
        flat = isinstance(labels, list) and all(isinstance(v, (int, np.integer))
                                                and not isinstance(v, bool) for v in labels)
    if not flat or len(labels) != n:
        what = type(labels).__name__ + (f" of {len(labels)}" if hasattr(labels, "__len__") else "")
        raise DataError(f"{path}: b'labels' must be a flat list of {n} integers (one per image), "
                        f"got {what}")
    try:
        return np.asarray(labels, dtype=np.int64)
    except OverflowError:
        raise DataError(f"{path}: labels outside 0..{K - 1} (too large for an integer)") from None


def load_batch(path: Path) -> Split:
    """Read one batch file of the official python layout; X comes back as uint8 (d, n),
    Fortran-ordered."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size > MAX_BATCH_BYTES:
        raise DataError(f"{path}: {path.stat().st_size:,} bytes is too large for a CIFAR-10 "
                        f"batch (at most {MAX_BATCH_BYTES:,})")
    try:
        with open(path, "rb") as f:
            batch = SafeUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError) as e:
        raise DataError(f"{path}: not a readable CIFAR-10 batch (truncated, corrupt or unsafe): "
                        f"{e}") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise DataError(f"{path}: expected a dict with b'data' and b'labels'")
    data = batch[b"data"]
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
            or data.shape[1] != D):
        shape = getattr(data, "shape", None)
        raise DataError(f"{path}: b'data' must be a uint8 array of shape (n, {D}), got "
                        f"{type(data).__name__} {getattr(data, 'dtype', '')} {shape}")
    labels = _labels(batch[b"labels"], data.shape[0], path)
    if labels.size and (labels.min() < 0 or labels.max() >= K):
        raise DataError(f"{path}: labels outside 0..{K - 1} (found {labels.min()}..{labels.max()})")
    # data.T of a C-ordered (n, d) array is (d, n) Fortran
    return Split(X=data.T, y=labels.astype(np.int64))


def concat(parts: list[Split]) -> Split:
    """Several splits as one, in order."""
    # (d, n) Fortran: stack images as rows, then view as columns
    X = np.concatenate([p.X.T for p in parts]).T
    return Split(X=X, y=np.concatenate([p.y for p in parts]))


def load_batches(data_dir: Path, names) -> Split:
    """Concatenate several batch files into one split."""
    return concat([load_batch(Path(data_dir) / name) for name in names])


def normalise(train: Split, *others: Split, dtype="float32") -> list[Split]:
    """Zero mean, unit std per pixel, with the training split's statistics for every split
    (Exercise 1)."""
    mean = train.X.mean(axis=1, keepdims=True)  # (d, 1), float64
    std = train.X.std(axis=1, keepdims=True)  # (d, 1)
    std[std == 0] = 1  # a constant pixel carries no information; avoid 0/0
    out = []
    for s in (train, *others):
        X = s.X.astype(dtype, order="F")  # (d, n)
        X -= mean.astype(dtype)
        X /= std.astype(dtype)
        out.append(Split(X=X, y=s.y))
    return out


def head(s: Split, k: int | None) -> Split:
    """The first k images of s (all of them when k is None)."""
    return s if k is None else Split(s.X[:, :k], s.y[:k])


def split_last(s: Split, n_val: int) -> tuple[Split, Split]:
    """Hold out the last n_val images of s for validation."""
    if not 0 < n_val < s.n:
        raise ConfigError(f"cannot hold out {n_val} of {s.n} images for validation")
    return Split(s.X[:, :-n_val], s.y[:-n_val]), Split(s.X[:, -n_val:], s.y[-n_val:])


def resolve_data_dir(arg: str | None) -> tuple[Path, bool]:
    """The data folder and whether it is the project default (the only one we may download into)."""
    if arg:
        return Path(arg), False
    if os.environ.get("CIFAR10_DIR"):
        return Path(os.environ["CIFAR10_DIR"]), False
    return PROJECT_DIR / "data" / "cifar-10-batches-py", True


def ensure_data(data_dir: Path, may_download: bool, url=CIFAR_URL, md5=CIFAR_MD5) -> Path:
    """Check the folder holds every batch; download the official archive into the default folder
    if it is missing."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        if not may_download:
            raise DataError(f"{data_dir}: data folder not found")
        print(f"data: {data_dir} is missing; downloading {url}", file=sys.stderr)
        help_ = (f"Download {CIFAR_URL} by hand, extract it, and put the folder "
                 f"cifar-10-batches-py at {data_dir} (or pass --data-dir / set CIFAR10_DIR).")
        download_archive(url, md5, data_dir, "cifar-10-batches-py/",
                         CIFAR_FILES + ("batches.meta",), help_)
    missing = [f for f in CIFAR_FILES if not (data_dir / f).is_file()]
    if missing:
        raise DataError(f"{data_dir}: missing {', '.join(missing)}")
    return data_dir


def load_cifar(data_dir: Path, train_names, n_val: int | None = None, val_names=(),
               dtype="float32") -> list[Split]:
    """Train, validation and test splits, normalised with the training statistics.
    Validation is either the files val_names or the last n_val images of the training files."""
    train = load_batches(data_dir, train_names)
    if n_val:
        train, val = split_last(train, n_val)
    else:
        val = load_batches(data_dir, val_names)
    test = load_batch(Path(data_dir) / "test_batch")
    return normalise(train, val, test, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Network: initialisation, forward pass, cost (eqs. 1-8)

def init_params(d: int, m: int, rng: np.random.Generator, dtype="float64") -> dict:
    """W1 ~ N(0, 1/d), W2 ~ N(0, 1/m), zero biases (Exercise 1)."""
    return {
        # W1 is Fortran-ordered, the layout its gradient (X G^T)^T comes out in, so updates stream
        # contiguously
        "W1": np.asfortranarray(rng.standard_normal((m, d)) / np.sqrt(d), dtype),  # (m, d)
        "b1": np.zeros((m, 1), dtype),  # (m, 1)
        "W2": (rng.standard_normal((K, m)) / np.sqrt(m)).astype(dtype),  # (K, m)
        "b2": np.zeros((K, 1), dtype),  # (K, 1)
    }


def softmax(S: np.ndarray) -> np.ndarray:
    """Eq. (5), column-wise; subtracting the column max keeps exp from overflowing."""
    E = np.exp(S - S.max(axis=0, keepdims=True))  # (K, n)
    return E / E.sum(axis=0, keepdims=True)


def forward(X: np.ndarray, params: dict, drop: np.ndarray | None = None) -> tuple:
    """Eqs. (1-4): P (K, n) and the hidden activations H (m, n) that the backward pass needs.
    drop: inverted-dropout mask (m, n) of 0 and 1/(1-p) multiplying H in training (Exercise 5);
    None at evaluation."""
    # (m, n) = W1 X; written transposed, OpenBLAS picks a faster kernel for it
    S1 = (X.T @ params["W1"].T).T
    S1 += params["b1"]  # eq. 1
    H = np.maximum(S1, 0, out=S1)  # (m, n), eq. 2
    if drop is not None:
        H *= drop
    S = params["W2"] @ H + params["b2"]  # (K, n), eq. 3
    return softmax(S), H  # eq. 4


def predict(X: np.ndarray, params: dict) -> np.ndarray:
    """Eq. (6): the most probable class of each column."""
    return np.argmax(forward(X, params)[0], axis=0)  # (n,)


def penalty(params: dict, lam: float) -> float:
    """The L2 term of eq. (7): lam * sum of squared weights (biases are not penalised)."""
    return lam * sum(float(np.sum(params[k].astype(np.float64) ** 2)) for k in ("W1", "W2"))


def cross_entropy(P: np.ndarray, y: np.ndarray) -> float:
    """Mean of eq. (8), -log p_y, over the columns of P."""
    p_y = P[y, np.arange(y.size)].astype(np.float64)
    return float(-np.mean(np.log(np.maximum(p_y, np.finfo(P.dtype).tiny))))  # no log(0) = -inf


def evaluate(X: np.ndarray, y: np.ndarray, params: dict, lam: float, chunk: int = 10000,
             mirror: bool = False) -> dict:
    """Loss (eq. 8), cost (eq. 7) and accuracy on a whole split, in chunks of columns to bound
    memory. mirror (Exercise 5): classify with the mean of P for each image and its mirror image."""
    loss_sum, correct = 0.0, 0
    for i in range(0, y.size, chunk):
        P, _ = forward(X[:, i:i + chunk], params)  # (K, chunk)
        if mirror:
            P = (P + forward(mirror_images(X[:, i:i + chunk]), params)[0]) / 2
        yc = y[i:i + chunk]
        loss_sum += cross_entropy(P, yc) * yc.size
        correct += int(np.sum(np.argmax(P, axis=0) == yc))
    loss = loss_sum / y.size
    return {"loss": loss, "cost": loss + penalty(params, lam), "acc": correct / y.size}


# --------------------------------------------------------------------------------------------------
# Gradients and their checks (Exercise 2, eqs. 12-13)

def backward(X: np.ndarray, y: np.ndarray, P: np.ndarray, H: np.ndarray, params: dict, lam: float,
             out: dict | None = None, drop: np.ndarray | None = None) -> dict:
    """Eqs. (12-13): gradients of the mini-batch cost J with respect to every parameter. With
    one-hot Y, dJ/dS = (P - Y) / n; y is used instead of Y to avoid building the one-hot matrix.
    out: arrays shaped like params to write the gradients into (the trainer reuses one set every
    step). drop: the dropout mask forward() used, if any."""
    n = X.shape[1]
    # W1 keeps its F order
    grads = out if out is not None else {k: np.empty_like(v) for k, v in params.items()}
    G = P.copy()  # (K, n)
    G[y, np.arange(n)] -= 1
    G /= n
    np.matmul(G, H.T, out=grads["W2"])  # (K, m)
    np.sum(G, axis=1, keepdims=True, out=grads["b2"])  # (K, 1)
    G = (G.T @ params["W2"]).T  # (m, n) in H's (Fortran) order: the masks below run 2x faster
    G *= H > 0  # ReLU passes the gradient where it was active
    if drop is not None:
        G *= drop  # dH/dS1 = drop where the ReLU was active
    # (d, m) view of the (m, d) gradient G X^T: the faster kernel again
    np.matmul(X, G.T, out=grads["W1"].T)
    np.sum(G, axis=1, keepdims=True, out=grads["b1"])  # (m, 1)
    if lam:
        for k in ("W1", "W2"):
            grads[k] += (2 * lam) * params[k]  # the L2 term of eq. 12
    return grads


def grads_analytic(X, y, params, lam, drop=None) -> dict:
    P, H = forward(X, params, drop)
    return backward(X, y, P, H, params, lam, drop=drop)


def grads_numerical(X, y, params, lam, h=1e-4, drop=None) -> dict:
    """Centred finite differences of the cost, one parameter entry at a time (float64, small
    sizes only). h=1e-4 balances truncation (h**2) against rounding (eps / h) error best on the
    spec's small setting."""
    def J():
        return cross_entropy(forward(X, params, drop)[0], y) + penalty(params, lam)
    grads = {}
    for k, p in params.items():
        g = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + h
            plus = J()
            p[i] = old - h
            minus = J()
            p[i] = old
            g[i] = (plus - minus) / (2 * h)
        grads[k] = g
    return grads


def grads_torch(X, y, params, lam) -> dict:
    """The gradients that PyTorch autograd computes (torch_gradient_computations.py), in our dict
    layout."""
    from torch_gradient_computations import ComputeGradsWithTorch
    net = {"W": [params["W1"], params["W2"]], "b": [params["b1"], params["b2"]]}
    g = ComputeGradsWithTorch(X, y, net, lam)
    return {"W1": g["W"][0], "b1": g["b"][0], "W2": g["W"][1], "b2": g["b"][1]}


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """Largest element-wise relative error |a-b| / max(1e-8, |a|+|b|) (cs231n's gradient-check
    measure)."""
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


def gradcheck(rng: np.random.Generator, X: np.ndarray | None = None, y: np.ndarray | None = None,
              settings=((5, 3, 6, 0.0), (5, 3, 6, 0.1), (20, 10, 15, 0.0), (20, 10, 15, 0.05)),
              ) -> list[dict]:
    """Compare analytic gradients with torch autograd and with finite differences, in float64.
    Each setting is (d, n, m, lam); data come from the first d rows and n columns of X (random if
    None)."""
    rows = []
    for d, n, m, lam in settings:
        if X is None:
            Xs, ys = rng.standard_normal((d, n)), rng.integers(0, K, n)
        else:
            Xs, ys = np.asarray(X[:d, :n], np.float64), y[:n]
        params = init_params(d, m, rng, "float64")
        # non-zero biases test their gradients too
        params["b1"] += 0.1 * rng.standard_normal(params["b1"].shape)
        params["b2"] += 0.1 * rng.standard_normal(params["b2"].shape)
        ours = grads_analytic(Xs, ys, params, lam)
        torch_g, num_g = grads_torch(Xs, ys, params, lam), grads_numerical(Xs, ys, params, lam)
        for k in params:
            rows.append({"d": d, "n": n, "m": m, "lam": lam, "param": k,
                         "vs_torch": rel_error(ours[k], torch_g[k]),
                         "vs_numerical": rel_error(ours[k], num_g[k])})
    return rows


# --------------------------------------------------------------------------------------------------
# Training: mini-batch gradient descent with a cyclical learning rate (Exercise 3, eqs. 10-15)

def cyclic_eta(t: int, eta_min: float, eta_max: float, n_s: int) -> float:
    """Triangular schedule: rises linearly from eta_min at t = 2 l n_s to eta_max at (2l+1) n_s
    (eq. 14), then falls back to eta_min at 2(l+1) n_s (eq. 15)."""
    assert t >= 0 and n_s > 0
    l, r = divmod(t, 2 * n_s)  # noqa: E741 (l: the spec's cycle index)
    if r <= n_s:
        return eta_min + r / n_s * (eta_max - eta_min)  # eq. 14
    return eta_max - (r - n_s) / n_s * (eta_max - eta_min)  # eq. 15


def learning_rate(t: int, cfg: Config) -> float:
    """eta at update step t under cfg.schedule: the cyclic rate of eqs. 14-15, a linear decay
    from eta_max to 0 over the run (for Nesterov momentum, Exercise 5), or a linear rise from
    eta_min to eta_max (the range test)."""
    total = 2 * cfg.n_s * cfg.n_cycles
    if cfg.schedule == "cyclic":
        return cyclic_eta(t, cfg.eta_min, cfg.eta_max, cfg.n_s)
    if cfg.schedule == "linear":
        return cfg.eta_max * (1 - t / total)
    return cfg.eta_min + t / total * (cfg.eta_max - cfg.eta_min)


def eval_steps(cfg: Config) -> list[int]:
    """Update steps after which the curves are recorded: 0, then evals_per_cycle evenly spaced
    points per cycle."""
    total = 2 * cfg.n_s * cfg.n_cycles
    every = 2 * cfg.n_s / cfg.evals_per_cycle
    points = cfg.evals_per_cycle * cfg.n_cycles
    return sorted({0, total} | {round(i * every) for i in range(1, points + 1)})


def update(params: dict, grads: dict, state: dict, eta: float, t: int, cfg: Config) -> None:
    """One optimiser step, in place. grads holds the gradient of the loss only; the L2 term of
    eq. 12 enters here, and grads is used as scratch space. Plain SGD (eqs. 10-12) folds the penalty
    into a decay: W - eta (dL/dW + 2 lam W) = (1 - 2 eta lam) W - eta dL/dW."""
    if cfg.optimizer != "sgd":
        return update_momentum(params, grads, state, eta, t, cfg)  # Exercise 5
    for k in params:
        if cfg.lam and k.startswith("W"):
            params[k] *= 1 - 2 * eta * cfg.lam
        grads[k] *= eta
        params[k] -= grads[k]


def train(params: dict, train_set: Split, val_set: Split, cfg: Config, rng: np.random.Generator,
          log=print, name: str = "", progress: tuple[Path, str] | None = None,
          basis: np.ndarray | None = None) -> dict:
    """Mini-batch gradient descent for 2 n_s n_cycles update steps, reshuffled every epoch: by
    default the spec's SGD with the cyclic learning rate (eqs. 10-15); cfg can switch on Exercise
    5's augmentation, dropout, W1 in a principal subspace, Nesterov momentum, Adam and other
    schedules. Updates params in place; returns the history of cost, loss and accuracy on the
    whole training and validation sets at eval_steps(cfg). Raises Diverged if the cost stops
    being finite. progress = (path, tag): save the state at every evaluation point, and go on
    from a saved state of the same tag: an interrupted long run resumes. basis:
    pca_basis(training images, cfg.pca), when the caller has it already (a 3072 x 3072
    eigendecomposition); computed here otherwise."""
    check_config(cfg, train_set.n)
    t_start, dtype = time.perf_counter(), np.dtype(cfg.dtype)
    for k in params:
        params[k] = np.asarray(params[k], dtype)  # no-op when already in the training dtype
    XT = np.ascontiguousarray(train_set.X.T, dtype)  # (n, d): a batch gather copies whole rows
    Xv = np.asarray(val_set.X, dtype)  # (d, n_val)
    windows = augment_source(XT, cfg.flip, cfg.shift) if cfg.flip or cfg.shift else None
    if (basis := subspace(XT, cfg, basis)) is not None:  # train V = W1 U on U^T x (Exercise 5)
        params["W1"] = np.asfortranarray(params["W1"] @ basis)  # (m, k)
        XT, Xv = XT @ basis, basis.T @ Xv  # (n, k), (k, n_val); ||V|| = ||W1||: the same penalty
    data = (XT, train_set.y, Xv, val_set.y)
    grads = {k: np.empty_like(v) for k, v in params.items()}  # reused every step
    state, hist = optimizer_state(params, cfg), new_history()
    n, B, total, points = train_set.n, cfg.n_batch, 2 * cfg.n_s * cfg.n_cycles, eval_steps(cfg)
    per_epoch = n // B  # a partial last batch is dropped
    start, seconds, perm = resume(progress, params, state, hist, rng, n, log, f"{name}", total)
    try:
        # divergence makes inf/nan: record() says so
        with np.errstate(over="ignore", invalid="ignore"):
            if start == 0:
                record(hist, 0, params, data, cfg, log, name, (0.0, 0.0))
            for t in range(start, total):
                if t % per_epoch == 0:
                    perm = rng.permutation(n)
                idx = perm[(t % per_epoch) * B:(t % per_epoch + 1) * B]
                Xb = get_batch(XT, windows, basis, idx, cfg, rng)  # (d or k, B)
                train_step(params, grads, state, Xb, train_set.y[idx], t, cfg, rng)
                if t + 1 in points:
                    now = time.perf_counter() - t_start  # this session's share of the run
                    left = now / (t + 1 - start) * (total - t - 1)
                    elapsed = seconds + now
                    record(hist, t + 1, params, data, cfg, log, name, (elapsed, left))
                    if progress and t + 1 < total:
                        save_progress(*progress, t + 1, elapsed, params, state, rng, perm, hist)
    finally:
        if basis is not None:  # params always leave as a plain two-layer network on pixels
            params["W1"] = np.asfortranarray(params["W1"] @ basis.T)  # (m, d)
    return hist


def get_batch(XT: np.ndarray, windows, basis, idx: np.ndarray, cfg: Config,
              rng: np.random.Generator) -> np.ndarray:
    """Where a mini-batch comes from: the images idx as columns (d, B), Fortran-ordered; with
    augmentation (Exercise 5) one draw per image, mirror or not and the offset of its crop, and
    one gather from windows = augment_source(...); projected onto basis (k, B) when W1 is in a
    subspace."""
    if windows is None:
        return XT[idx].T  # XT is already projected when basis is set
    f = rng.integers(0, 1 + cfg.flip, idx.size)
    oy, ox = rng.integers(0, 2 * cfg.shift + 1, (2, idx.size))
    Xr = augmented_batch(windows, idx, f, oy, ox)  # (B, d)
    return (Xr if basis is None else Xr @ basis).T


def train_step(params: dict, grads: dict, state: dict, Xb: np.ndarray, yb: np.ndarray, t: int,
               cfg: Config, rng: np.random.Generator) -> None:
    """One update: forward pass (with a fresh dropout mask, Exercise 5), the loss gradients of
    eqs. 12-13 into grads, and the optimiser step at the learning rate of step t (eqs. 10-11,
    14-15)."""
    drop = dropout_mask(cfg, Xb.shape[1], rng)  # (m, B) or None
    P, H = forward(Xb, params, drop)
    backward(Xb, yb, P, H, params, 0.0, out=grads, drop=drop)  # the loss part; update() adds L2
    update(params, grads, state, learning_rate(t, cfg), t, cfg)


def new_history() -> dict:
    curves = [f"{s}_{q}" for s in ("train", "val") for q in ("cost", "loss", "acc")]
    return {"step": [], "eta": [], "seconds": []} | {c: [] for c in curves}


def record(hist: dict, t: int, params: dict, data: tuple, cfg: Config, log=print, name="",
           clock: tuple = (0.0, 0.0)) -> None:
    """One evaluation point: cost, loss and accuracy on the whole validation set, and on the
    training set unless cfg skips it until the end, appended to hist with the seconds trained so
    far and logged with the time left (clock); Diverged if not finite."""
    XT, y, Xv, yv = data
    va = evaluate(Xv, yv, params, cfg.lam)
    skip = not cfg.eval_train and t != 2 * cfg.n_s * cfg.n_cycles
    tr = dict.fromkeys(va, math.nan) if skip else evaluate(XT.T, y, params, cfg.lam)
    hist["step"].append(t)
    hist["eta"].append(learning_rate(t, cfg))
    hist["seconds"].append(round(clock[0], 2))
    for q in ("cost", "loss", "acc"):
        hist[f"train_{q}"].append(None if skip else tr[q])
        hist[f"val_{q}"].append(va[q])
    log(f"{name}step {t:5d}/{2 * cfg.n_s * cfg.n_cycles}: train cost {tr['cost']:.4f}, "
        f"loss {tr['loss']:.4f}, acc {tr['acc']:.4f} | val cost {va['cost']:.4f}, "
        f"loss {va['loss']:.4f}, acc {va['acc']:.4f} | {clock[0]:.0f} s, {clock[1]:.0f} s left")
    if not math.isfinite(va["cost"]) or not (skip or math.isfinite(tr["cost"])):
        raise Diverged(f"training diverged at step {t} (non-finite cost) with {cfg}", hist)


def resume(progress, params: dict, state: dict, hist: dict, rng: np.random.Generator, n: int, log,
           name: str, total: int) -> tuple:
    """Go on from the last saved evaluation point of the same run, if there is one (see
    runfiles.load_progress): (step, seconds trained before, the epoch's permutation)."""
    current = dict([*nested(params, "params/"), *nested(state, "state/")])
    saved = progress and load_progress(*progress, log, current | {"perm": np.arange(n)})
    if not saved:
        return 0, 0.0, None
    meta, arrays = saved
    for k, v in current.items():
        v[...] = arrays[k]  # in place, keeping each array's memory order
    rng.bit_generator.state = meta["rng"]
    hist.update(meta["hist"])
    log(f"{name}resumed at step {meta['t']}/{total} from {progress[0].name}")
    return meta["t"], meta["seconds"], arrays["perm"]


def run(train_set: Split, val_set: Split, cfg: Config, rng: np.random.Generator, log=print, name="",
        progress: tuple[Path, str] | None = None, basis: np.ndarray | None = None) -> tuple:
    """Initialise a network and train it: (params, history). progress, basis: see train()."""
    check_config(cfg, train_set.n)
    params = init_params(train_set.X.shape[0], cfg.m, rng, cfg.dtype)
    return params, train(params, train_set, val_set, cfg, rng, log, name, progress, basis)


# --------------------------------------------------------------------------------------------------
# Experiments: the spec's runs and the coarse-to-fine search for lam (Exercise 4)

@dataclass(frozen=True)
class Plan:
    """Sizes and settings of every experiment in main(); quick_plan() shrinks them for smoke
    tests."""
    fig3: Config = Config()  # Exercise 3: one cycle, n_s = 500, lam = 0.01
    fig4: Config = Config(n_s=800, n_cycles=3, evals_per_cycle=9)  # Exercise 4: three cycles
    overfit: Config = Config(lam=0.0, eta_min=0.05, eta_max=0.05, n_s=1000, n_batch=10)  # 200 ep.
    overfit_n: int = 100  # training images for the overfitting sanity check
    limit: int | None = None  # use at most this many training images per stage (quick mode)
    n_val_search: int = 5000  # validation images held out of the five batches during the search
    n_val_final: int = 1000  # ... and for the final run
    ns_epochs: int = 2  # n_s = ns_epochs * floor(n / n_batch) in the search and the final run
    coarse_l: tuple = (-5.0, -1.0)  # log10 range of lam for the coarse grid
    coarse_n: int = 8  # grid points
    coarse_cycles: int = 2
    fine_n: int = 10  # random draws of lam in the narrowed range
    fine_cycles: int = 3
    final_cycles: int = 3
    n_seeds: int = 3  # seeds behind the mean and spread of the `seeds` step
    gradcheck: tuple = ((5, 3, 6, 0.0), (5, 3, 6, 0.1), (100, 20, 30, 0.0), (100, 20, 30, 0.05))
    quick: bool = False  # quick_plan()'s smoke-test sizes (Exercise 5 keeps its own in bonus.py)


def quick_plan() -> Plan:
    """Tiny sizes that run the whole pipeline in seconds: a smoke test, not a result."""
    small = dict(n_s=20, evals_per_cycle=4)
    return Plan(fig3=Config(**small), fig4=Config(**small, n_cycles=2),
                overfit=replace(Plan.overfit, n_s=100), overfit_n=20, limit=2000, n_val_search=500,
                n_val_final=200, ns_epochs=1, coarse_n=3, coarse_cycles=1, fine_n=2, fine_cycles=1,
                final_cycles=1, n_seeds=2, gradcheck=((5, 3, 6, 0.0), (5, 3, 6, 0.1)), quick=True)


def stage_rng(seed: int, stage: str, trial: int = 0) -> np.random.Generator:
    """An independent stream per (seed, stage, trial): a resumed search redraws exactly what it
    skipped."""
    stages = ("gradcheck", "overfit", "fig3", "fig4", "coarse", "fine", "final", "fine_lams",
              "bonus_range", "bonus_lam", "bonus_ablation", "bonus_best", "bonus_pca",
              "bonus_select", "bonus_long", "bonus_long_seed", "bonus_recipe",
              "explore")  # append only: indices are seeds
    return np.random.default_rng([seed, stages.index(stage), trial])


def search_ns(plan: Plan, n_train: int, n_batch: int) -> int:
    return plan.ns_epochs * (n_train // n_batch)


def config_problem(cfg) -> str | None:
    """None if cfg is the asdict() of a valid Config, else what is wrong with it."""
    try:
        c = Config(**cfg)
        check_config(c, max(c.n_batch, 1))
    except (TypeError, ValueError) as e:
        return f"its cfg is not a valid Config ({e})"
    return None


@dataclass(frozen=True)
class Stage:
    """A named set of trials and what to record of each (the lam search needs only the defaults)."""
    name: str  # part of every trial's key and random stream (stage_rng)
    trials: tuple  # ((label, Config), ...)
    test: bool = False  # evaluate the test set once per trained network
    mirror: bool = False  # also with mirrored test-time averaging (Exercise 5)
    history: bool = False  # keep each trial's curves
    save_dir: Path | None = None  # write each trained network there
    verbose: bool = False  # log the curves while a trial trains


def run_trials(stage: Stage, splits: tuple, seed: int, path: Path, log=print,
               basis: np.ndarray | None = None) -> list[dict]:
    """Train one fresh network per config of the stage on splits (train, val, test) and append
    each finished trial to path (JSON lines) at once. A trial already in path with the same key
    (settings, seed, index, sizes, data and code) is reused, not rerun, so an interrupted run
    resumes where it stopped. basis: the principal directions of the training split for configs
    with pca (train())."""
    tr, va, te = splits
    cache = TrialFile(path, config_problem, log)
    data = (tr.X, tr.y, va.X, va.y) + ((te.X, te.y) if stage.test else ())
    origin = {"data": arrays_fingerprint(*data), "code": code_fingerprint()}
    trials = []
    for i, (label, cfg) in enumerate(stage.trials):
        key = {"stage": stage.name, "trial": i, "seed": seed, "n_train": tr.n, "n_val": va.n,
               **asdict(cfg)} | ({"test": True} if stage.test else {}) | origin
        tag = f"{stage.name} {i + 1}/{len(stage.trials)} {label}"
        trial = cache.get(key, tag)
        lost = stage.save_dir and not weights_path(stage, i, seed, tr, cfg).exists()
        if trial is not None and lost:
            log(f"{tag}: its weights are missing from {stage.save_dir}; training it again")
            trial = None
        if trial is None:
            ckpt = (path.with_name(f"{path.stem}.{stage.name}.{i}.progress.npz"),
                    json.dumps(key, sort_keys=True))
            trial = run_trial(stage, i, label, cfg, splits, seed, ckpt, log, tag, basis)
            trial["key"] = key
            cache.add(trial)
            ckpt[0].unlink(missing_ok=True)  # the trial is in path now
        trials.append(trial)
    return trials


def run_trial(stage: Stage, i: int, label: str, cfg: Config, splits: tuple, seed: int,
              ckpt: tuple, log, tag: str, basis) -> dict:
    """Train trial i of the stage (resuming from ckpt if it was interrupted) and measure it."""
    (tr, va, te), t0 = splits, time.perf_counter()
    before = (load_progress(*ckpt, log) or ({"seconds": 0.0},))[0]["seconds"]  # trained before
    trial = {"name": label, "lam": cfg.lam, "diverged": False}
    try:
        params, hist = run(tr, va, cfg, stage_rng(seed, stage.name, i), name=f"{tag}: ",
                           log=log if stage.verbose else lambda s: None, progress=ckpt, basis=basis)
        trial |= {"val_acc": hist["val_acc"][-1], "best_val_acc": max(hist["val_acc"]),
                  "train_acc": hist["train_acc"][-1]}
        if stage.test:
            trial["test_acc"] = evaluate(te.X, te.y, params, cfg.lam)["acc"]
        if stage.mirror:  # Exercise 5: the mean of P for each image and its mirror image
            trial["val_acc_mirror"] = evaluate(va.X, va.y, params, cfg.lam, mirror=True)["acc"]
            if stage.test:
                trial["test_acc_mirror"] = evaluate(te.X, te.y, params, cfg.lam, mirror=True)["acc"]
        if stage.save_dir is not None:
            with atomic_path(weights_path(stage, i, seed, tr, cfg)) as tmp, open(tmp, "wb") as f:
                np.savez(f, **params)
    except Diverged as e:
        log(f"{tag}: {e}")
        trial |= {"val_acc": None, "best_val_acc": None, "train_acc": None, "diverged": True}
        hist = e.history  # a range test ends this way: its curve up to the divergence is the result
    trial |= {"history": hist} if stage.history else {}
    trial |= {"seconds": round(before + time.perf_counter() - t0, 1), "seed": seed, "trial": i,
              "cfg": asdict(cfg)}
    accs = [f"{q} {v}" for q, v in trial.items() if q.endswith("acc") or "_acc_" in q]
    log(f"{tag}: {', '.join(accs)}, {trial['seconds']} s")
    return trial


def weights_path(stage: Stage, i: int, seed: int, train_set: Split, cfg: Config) -> Path:
    """Where trial i of the stage keeps its trained network: named by the stage, trial, seed,
    training-set size and dtype, not by the other settings, so a caller that trains one stage with
    other settings gives it another save_dir (bonus.py: a folder per recipe)."""
    name = f"{stage.name}_{i}.seed{seed}.n{train_set.n}.{cfg.dtype}.npz"
    return Path(stage.save_dir) / name


def search(stage: str, lams, base: Config, train_set: Split, val_set: Split, seed: int, path: Path,
           log=print) -> list[dict]:
    """One trial per lam with the other settings of base (the coarse and fine searches of
    Exercise 4)."""
    trials = tuple((f"lam={lam:.3e}", replace(base, lam=float(lam))) for lam in lams)
    return run_trials(Stage(stage, trials), (train_set, val_set, None), seed, path, log)


def top_trials(trials: list[dict], k: int = 3) -> list[dict]:
    """The k trials of highest final validation accuracy (diverged ones never win)."""
    ok = [t for t in trials if not t["diverged"]]
    return sorted(ok, key=lambda t: -t["val_acc"])[:k]


def fine_range(coarse: list[dict], plan: Plan) -> tuple[float, float]:
    """log10 range for the fine search: one coarse grid step either side of the best coarse lam."""
    best = top_trials(coarse, 1)
    if not best:
        raise Diverged("every coarse trial diverged; nothing to refine")
    step = (plan.coarse_l[1] - plan.coarse_l[0]) / max(1, plan.coarse_n - 1)
    centre = math.log10(best[0]["lam"])
    return max(plan.coarse_l[0], centre - step), min(plan.coarse_l[1], centre + step)


# --------------------------------------------------------------------------------------------------
# Plots and outputs

def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path: Path) -> None:
    """Write fig as a PNG whole or not at all, then free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    _pyplot().close(fig)


def plot_curves(hist: dict, path: Path, title: str) -> None:
    """Cost, loss and accuracy on the training and validation sets against the update step."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.3))
    for ax, q in zip(axes, ("cost", "loss", "acc")):
        # None: not measured
        ax.plot(hist["step"], np.array(hist[f"train_{q}"], float), "o-", ms=3, label="training")
        ax.plot(hist["step"], hist[f"val_{q}"], "o-", ms=3, label="validation")
        label = {"acc": "accuracy"}.get(q, q)
        ax.set(xlabel="update step", ylabel=label, title=label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def plot_schedule(cfg: Config, path: Path) -> None:
    """The learning rate of eqs. (14-15) at every update step (the spec's Figure 2)."""
    plt = _pyplot()
    t = np.arange(2 * cfg.n_s * cfg.n_cycles + 1)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(t, [cyclic_eta(int(s), cfg.eta_min, cfg.eta_max, cfg.n_s) for s in t])
    ax.set(xlabel="update step t", ylabel="eta_t",
           title=f"cyclic learning rate, n_s={cfg.n_s}, {cfg.n_cycles} cycles")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def plot_search(trials: list[dict], path: Path, title: str) -> None:
    """Final (and best) validation accuracy against lam, on a log axis."""
    plt = _pyplot()
    ok = sorted((t for t in trials if not t["diverged"]), key=lambda t: t["lam"])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.semilogx([t["lam"] for t in ok], [t["val_acc"] for t in ok], "o", label="final")
    ax.semilogx([t["lam"] for t in ok], [t["best_val_acc"] for t in ok], "x",
                label="best during training")
    ax.set(xlabel="lambda", ylabel="validation accuracy", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------------
# The steps of Exercises 1-4, each a function of one shared context

@dataclass
class Context:
    """What every step needs: where data and outputs live, the plan, the seed, and the results so
    far."""
    data_dir: Path
    out_dir: Path
    plan: Plan
    seed: int
    dtype: str
    results: dict  # what this run computed
    # results.json of an earlier run of the same identity()
    stored: dict = field(default_factory=dict)
    log: object = print
    # batch files and normalised splits, each loaded once per run
    cache: dict = field(default_factory=dict)

    def raw(self, names) -> Split:
        for name in names:
            if name not in self.cache:
                self.cache[name] = load_batch(self.data_dir / name)
        return concat([self.cache[name] for name in names])

    def data(self, which: str) -> list[Split]:
        """Normalised (train, val, test): 'batch12' is batch 1 / batch 2; 'search' and 'final'
        hold out the last n_val_search / n_val_final images of all five batches."""
        key = ("splits", which)
        if key not in self.cache:
            lim = self.plan.limit
            if which == "batch12":
                tr = head(self.raw(["data_batch_1"]), lim)
                va = head(self.raw(["data_batch_2"]), lim)
            else:
                n_val = self.plan.n_val_search if which == "search" else self.plan.n_val_final
                tr, va = split_last(head(self.raw(CIFAR_FILES[:5]), lim and lim + n_val), n_val)
            self.cache[key] = normalise(tr, va, self.raw(["test_batch"]), dtype=self.dtype)
        return self.cache[key]

    def basis(self, which: str, k: int) -> np.ndarray:
        """pca_basis of the training images of the splits `which`, computed once per run."""
        key = ("basis", which, k)
        if key not in self.cache:
            tr = self.data(which)[0]
            # as train() would make it
            self.cache[key] = pca_basis(np.ascontiguousarray(tr.X.T, self.dtype), k)
        return self.cache[key]

    def need(self, step: str) -> dict:
        """The result of a step this one depends on: from this run, else from results.json if the
        same code made it and it can be believed, else computed now."""
        if step not in self.results:
            self.results[step] = self.stored_result(step) or STEPS[step](self)
        return self.results[step]

    def stored_result(self, step: str) -> dict | None:
        if step not in self.stored:
            return None
        if (self.stored.get("code") or {}).get(step) != code_fingerprint():
            self.log(f"results.json: {step} was made by other code; computing it again")
            return None
        if problem := step_problem(self.stored[step], config_problem):
            self.log(f"warning: results.json: {step} cannot be believed ({problem}); "
                     f"computing it again")
            return None
        return self.stored[step]

    def train_and_test(self, which: str, cfg: Config, rng: np.random.Generator, name: str,
                       log=None) -> tuple:
        """Train a fresh network on the splits `which` and evaluate the test set once: (history,
        test accuracy)."""
        tr, va, te = self.data(which)
        params, hist = run(tr, va, cfg, rng, log=log or self.log, name=f"{name} ")
        test_acc = evaluate(te.X, te.y, params, cfg.lam)["acc"]
        self.log(f"{name}: test accuracy {test_acc:.4f}")
        return hist, test_acc

    def figure(self, name: str) -> Path:
        (self.out_dir / "figures").mkdir(parents=True, exist_ok=True)
        return self.out_dir / "figures" / name


def step_gradcheck(ctx: Context) -> dict:
    """Exercise 2: analytic gradients against torch and finite differences on CIFAR pixels,
    float64."""
    tr = ctx.data("batch12")[0]
    rows = gradcheck(stage_rng(ctx.seed, "gradcheck"), tr.X, tr.y, ctx.plan.gradcheck)
    for r in rows:
        ctx.log(f"gradcheck d={r['d']} n={r['n']} m={r['m']} lam={r['lam']} {r['param']}: "
                f"rel error vs torch {r['vs_torch']:.2e}, vs finite differences "
                f"{r['vs_numerical']:.2e}")
    return {"rows": rows, "max_vs_torch": max(r["vs_torch"] for r in rows),
            "max_vs_numerical": max(r["vs_numerical"] for r in rows)}


def step_overfit(ctx: Context) -> dict:
    """Exercise 2's sanity check: lam = 0 on a handful of images should drive the training loss
    towards zero."""
    tr = ctx.data("batch12")[0]
    n = ctx.plan.overfit_n
    small = Split(tr.X[:, :n], tr.y[:n])
    cfg = replace(ctx.plan.overfit, dtype=ctx.dtype)
    _, hist = run(small, small, cfg, stage_rng(ctx.seed, "overfit"), log=lambda s: None)
    epochs = 2 * cfg.n_s * cfg.n_cycles * cfg.n_batch / n
    ctx.log(f"overfit: {n} images, {epochs:.0f} epochs, lam=0: training loss "
            f"{hist['train_loss'][0]:.3f} -> "
            f"{hist['train_loss'][-1]:.4f}, accuracy {hist['train_acc'][-1]:.3f}")
    return {"n": n, "epochs": epochs, "cfg": asdict(cfg), "loss": hist["train_loss"][-1],
            "acc": hist["train_acc"][-1],
            "history": hist}


def _figure_step(ctx: Context, key: str, cfg: Config, title: str) -> dict:
    tr, va, _ = ctx.data("batch12")
    cfg = replace(cfg, dtype=ctx.dtype)
    hist, test_acc = ctx.train_and_test("batch12", cfg, stage_rng(ctx.seed, key), key)
    plot_curves(hist, ctx.figure(f"{key}.png"), f"{title}: test accuracy {100 * test_acc:.2f}%")
    plot_schedule(cfg, ctx.figure(f"{key}_schedule.png"))
    return {"cfg": asdict(cfg), "n_train": tr.n, "n_val": va.n, "test_acc": test_acc,
            "history": hist}


def step_fig3(ctx: Context) -> dict:
    """Exercise 3: one cycle, n_s = 500, batch 1 for training, batch 2 for validation."""
    c = ctx.plan.fig3
    return _figure_step(ctx, "fig3", c, f"Figure 3 replica (lam={c.lam}, n_s={c.n_s})")


def step_fig4(ctx: Context) -> dict:
    """Exercise 4: three cycles, n_s = 800."""
    c = ctx.plan.fig4
    return _figure_step(ctx, "fig4", c,
                        f"Figure 4 replica (lam={c.lam}, n_s={c.n_s}, {c.n_cycles} cycles)")


def _search_step(ctx: Context, stage: str, lams, n_cycles: int, l_range) -> dict:
    tr, va, _ = ctx.data("search")
    base = Config(n_s=search_ns(ctx.plan, tr.n, Config.n_batch), n_cycles=n_cycles,
                  eval_train=False,
                  dtype=ctx.dtype)
    path = ctx.out_dir / f"search_{stage}.jsonl"
    trials = search(stage, lams, base, tr, va, ctx.seed, path, ctx.log)
    # reproducible fields
    trials = [{k: v for k, v in t.items() if k not in ("key", "seconds")} for t in trials]
    top3 = top_trials(trials)
    for t in top3:
        ctx.log(f"{stage} top: lam={t['lam']:.4e} val acc {t['val_acc']:.4f}")
    width = l_range[1] - l_range[0]
    if top3 and min(abs(math.log10(top3[0]["lam"]) - end) for end in l_range) < 0.1 * width:
        ctx.log(f"{stage}: note, the best lam lies at the edge of the searched range {l_range}")
    plot_search(trials, ctx.figure(f"{stage}.png"),
                f"{stage} search: {n_cycles} cycles, n_s={base.n_s}")
    return {"l_range": list(l_range), "n_cycles": n_cycles, "n_s": base.n_s, "n_train": tr.n,
            "n_val": va.n,
            "trials": trials, "top3": top3}


def step_coarse(ctx: Context) -> dict:
    """Coarse search: lam on a uniform log10 grid over the whole plausible range."""
    p = ctx.plan
    lams = 10 ** np.linspace(*p.coarse_l, p.coarse_n)
    return _search_step(ctx, "coarse", lams, p.coarse_cycles, p.coarse_l)


def step_fine(ctx: Context) -> dict:
    """Fine search: random log10 draws around the best coarse lam, trained for more cycles."""
    lo, hi = fine_range(ctx.need("coarse")["trials"], ctx.plan)
    lams = 10 ** np.sort(stage_rng(ctx.seed, "fine_lams").uniform(lo, hi, ctx.plan.fine_n))
    return _search_step(ctx, "fine", lams, ctx.plan.fine_cycles, (lo, hi))


def step_final(ctx: Context) -> dict:
    """Train with the best lam of the fine search (by validation accuracy) on all but n_val_final
    images; the test set is evaluated here, once."""
    best = top_trials(ctx.need("fine")["trials"], 1)
    if not best:
        raise Diverged("every fine-search trial diverged; no lam to train with")
    tr, va, _ = ctx.data("final")
    cfg = Config(lam=best[0]["lam"], n_s=search_ns(ctx.plan, tr.n, Config.n_batch),
                 n_cycles=ctx.plan.final_cycles,
                 dtype=ctx.dtype)
    hist, test_acc = ctx.train_and_test("final", cfg, stage_rng(ctx.seed, "final"), "final")
    plot_curves(hist, ctx.figure("final.png"),
                f"Final run (lam={cfg.lam:.2e}, {tr.n} training images): test accuracy "
                f"{100 * test_acc:.2f}%")
    return {"lam": cfg.lam, "cfg": asdict(cfg), "n_train": tr.n, "n_val": va.n,
            "test_acc": test_acc, "history": hist}


def step_seeds(ctx: Context) -> dict:
    """Mean and spread of the test accuracies of Figures 3 and 4 and the final run over
    plan.n_seeds seeds: the run's own seed and the next ones, same settings (the final run keeps
    the lam its search chose)."""
    out = {}
    for key, which in (("fig3", "batch12"), ("fig4", "batch12"), ("final", "final")):
        base = ctx.need(key)
        cfg = Config(**base["cfg"])
        seeds, accs = [ctx.seed], [base["test_acc"]]
        for s in range(ctx.seed + 1, ctx.seed + ctx.plan.n_seeds):
            accs.append(ctx.train_and_test(which, cfg, stage_rng(s, key), f"{key} seed {s}",
                                           log=lambda m: None)[1])
            seeds.append(s)
        out[key] = {"seeds": seeds, "test_acc": accs, "mean": float(np.mean(accs)),
                    "std": float(np.std(accs, ddof=1))}
        ctx.log(f"seeds {key}: test accuracy {100 * out[key]['mean']:.2f} +- "
                f"{100 * out[key]['std']:.2f}% "
                f"over seeds {seeds}")
    return out


# --------------------------------------------------------------------------------------------------
# Exercise 5: augmentation, dropout, W1 in a principal subspace, momentum and Adam; the experiment
# is in bonus.py

def mirror_images(X: np.ndarray) -> np.ndarray:
    """Every image (column) of X (D, n) mirrored left-right."""
    return X.reshape(3, 32, 32, -1)[:, :, ::-1].reshape(D, -1)  # (D, n)


def augment_source(XT: np.ndarray, flip: bool, shift: int) -> np.ndarray:
    """The training images laid out once for augmentation (Exercise 5): every (3, 32, 32) image
    padded by `shift` pixels on each side by repeating its edge pixels, with flip stacked with
    its mirror image, and viewed as all its (32, 32) crops: (1 or 2, n, 3, 2 shift + 1, 2 shift +
    1, 32, 32), a view of (1 or 2) x (1 + shift/16)^2 times the memory of XT. Storing the mirror
    images makes a batch one gather, at half the cost of flipping after it."""
    from numpy.lib.stride_tricks import sliding_window_view
    n, s = XT.shape[0], shift
    X = XT.reshape(n, 3, 32, 32)
    # filled by hand: np.pad is twice as slow
    out = np.empty((1 + flip, n, 3, 32 + 2 * s, 32 + 2 * s), XT.dtype)
    p = out[0]
    p[:, :, s:s + 32, s:s + 32] = X
    p[:, :, :s, s:s + 32] = X[:, :, :1]  # top rows repeat the first row, ...
    p[:, :, s + 32:, s:s + 32] = X[:, :, -1:]  # ... bottom rows the last
    p[:, :, :, :s] = p[:, :, :, s:s + 1]  # then the columns, corners included
    p[:, :, :, s + 32:] = p[:, :, :, s + 31:s + 32]
    if flip:
        out[1] = p[..., ::-1]
    return sliding_window_view(out, (32, 32), axis=(3, 4))


def augmented_batch(windows: np.ndarray, idx: np.ndarray, f: np.ndarray, oy: np.ndarray,
                    ox: np.ndarray) -> np.ndarray:
    """Images idx, image i mirrored if f[i] = 1 and then moved down by shift - oy[i] and right by
    shift - ox[i] pixels: (B, D). windows is augment_source(...); one gather for the batch, no
    per-image loop."""
    return windows[f, idx, :, oy, ox].reshape(idx.size, D)  # (B, 3, 32, 32) -> (B, D)


def dropout_mask(cfg: Config, B: int, rng: np.random.Generator) -> np.ndarray | None:
    """Inverted dropout: every hidden unit of every image kept with probability 1 - p_drop and
    scaled by 1 / (1 - p_drop), so that evaluation needs no mask: (m, B), or None without
    dropout."""
    if not cfg.p_drop:
        return None
    dtype, keep = np.dtype(cfg.dtype), 1 - cfg.p_drop
    return (rng.random((cfg.m, B), dtype) < keep) / dtype.type(keep)


def pca_basis(XT: np.ndarray, k: int) -> np.ndarray:
    """The k directions of largest variance of the zero-mean training images XT (n, d), as
    orthonormal columns, the largest first: (d, k). Exercise 5 trains wide networks with W1 = V
    U^T, V (m, k): a two-layer network whose first layer sees only these directions, at about k/d
    of the first layer's cost."""
    # (d, d) covariance; normalise() made every pixel zero-mean
    C = (XT.T @ XT).astype(np.float64) / XT.shape[0]
    _, U = np.linalg.eigh(C)  # eigenvalues ascending
    return np.ascontiguousarray(U[:, ::-1][:, :k], dtype=XT.dtype)  # (d, k)


def pca_variance_kept(XT: np.ndarray, basis: np.ndarray) -> float:
    """The fraction of the training images' pixel variance that lies in the directions basis (d,
    k) of pca_basis()."""
    Z = XT @ basis  # (n, k)
    return float(np.sum(Z.astype(np.float64) ** 2) / np.sum(XT.astype(np.float64) ** 2))


def subspace(XT: np.ndarray, cfg: Config, basis: np.ndarray | None = None) -> np.ndarray | None:
    """The principal directions W1 is trained in (d, k), or None when cfg.pca is 0: basis if given
    (checked against the data), else pca_basis of the training images XT (n, d)."""
    if not cfg.pca:
        return None
    if cfg.pca > XT.shape[1]:
        raise ConfigError(f"pca={cfg.pca} exceeds the input dimension {XT.shape[1]}")
    if basis is None:
        return pca_basis(XT, cfg.pca)  # (d, k)
    if basis.shape != (XT.shape[1], cfg.pca):
        raise ConfigError(f"a basis of shape {basis.shape} does not fit pca={cfg.pca} on "
                          f"{XT.shape[1]} inputs")
    return basis


def optimizer_state(params: dict, cfg: Config) -> dict:
    """What the optimiser carries between steps: nothing (SGD), a velocity (Nesterov), two
    moments (Adam)."""
    def zeros():
        return {k: np.zeros_like(v) for k, v in params.items()}
    if cfg.optimizer == "sgd":
        return {}
    return zeros() if cfg.optimizer == "nesterov" else {"m": zeros(), "v": zeros()}


def add_scaled(y: np.ndarray, a: float, x: np.ndarray, c: float = 1.0) -> None:
    """y <- c (y + a x) in place, as (a c) (y / a + x): no temporary the size of a wide W1,
    whose allocation and extra passes cost more than the scalings."""
    if a:
        y *= 1 / a
        y += x
    y *= a * c if a else c


def update_momentum(params: dict, grads: dict, state: dict, eta: float, t: int,
                    cfg: Config) -> None:
    """Exercise 5's optimisers, in place: SGD with Nesterov momentum (as torch.optim.SGD with
    nesterov=True: v <- mu v + g, step along g + mu v) and Adam (Kingma and Ba, 2015) with
    bias-corrected moments; both on the gradient of the whole cost, eq. 12."""
    mu = cfg.momentum
    for k, g in grads.items():
        if cfg.lam and k.startswith("W"):
            add_scaled(g, 2 * cfg.lam, params[k])  # eq. 12
        if cfg.optimizer == "nesterov":
            v = state[k]
            v *= mu
            v += g
            add_scaled(g, mu, v, eta)  # eta (g + mu v)
            params[k] -= g
        else:
            update_adam(params[k], g, state["m"][k], state["v"][k], eta, t, cfg)


def blend(y: np.ndarray, x: np.ndarray, b: float) -> None:
    """y <- b y + (1 - b) x in place: Adam's moving averages."""
    if b:
        add_scaled(y, (1 - b) / b, x, b)
    else:
        np.copyto(y, x)


def update_adam(w: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, eta: float, t: int,
                cfg: Config) -> None:
    """One Adam step on w in place, its gradient g used as scratch. Kingma and Ba's
    w <- w - eta m_hat / (sqrt(v_hat) + eps), with m_hat = m / c1 and v_hat = v / c2, is computed
    as w <- w - (eta sqrt(c2) / c1) m / (sqrt(v) + eps sqrt(c2)), the same number, so that no
    array the size of a wide W1 is allocated (about a third of the time of the update with them)."""
    c1, c2 = 1 - cfg.beta1 ** (t + 1), 1 - cfg.beta2 ** (t + 1)
    blend(m, g, cfg.beta1)
    g *= g
    blend(v, g, cfg.beta2)
    np.sqrt(v, out=g)
    g += cfg.eps * math.sqrt(c2)
    np.divide(m, g, out=g)
    g *= eta * math.sqrt(c2) / c1
    w -= g


def step_bonus(ctx: Context) -> dict:
    """Exercise 5: the recipe stated in bonus.py, run on the mechanisms of this file."""
    import bonus
    return bonus.run(ctx)


def step_explore(ctx: Context) -> dict:
    """Exercise 5's ablation at the recipe's budget on the search split (bonus.py): hours."""
    import bonus
    return bonus.explore(ctx)


# --------------------------------------------------------------------------------------------------
# main(): the command line

STEPS = {"gradcheck": step_gradcheck, "overfit": step_overfit, "fig3": step_fig3, "fig4": step_fig4,
         "coarse": step_coarse, "fine": step_fine, "final": step_final}
# not in the default run: python assignment2.py seeds
EXTRA_STEPS = {"seeds": step_seeds, "bonus": step_bonus, "explore": step_explore}


HELP = """steps:
  gradcheck  analytic gradients vs torch autograd and finite differences (float64)
  overfit    sanity check: 100 images, lam=0, 200 epochs, training loss near zero
  fig3       Exercise 3: 1 cycle, n_s=500, lam=0.01 on batch 1 (validation: batch 2)
  fig4       Exercise 4: 3 cycles, n_s=800
  coarse     lam on a log grid over [1e-5, 1e-1], 45,000/5,000 images, 2 cycles
  fine       random lam around the best coarse value, 3 cycles (runs coarse first if needed)
  final      best lam, 49,000/1,000 images, 3 cycles, test accuracy (runs the searches if needed)
  seeds      (not in 'all') Figures 3, 4 and the final run with 2 more seeds: mean and spread
  bonus      (not in 'all') Exercise 5's recipe as stated in bonus.py: m=4096 with W1 in the top
             512 principal directions, Adam, linear decay, mirroring and shifts, 140 epochs,
             4 runs, 1-2 at a time as one network, validation picks it and its test-time views;
             about 80 minutes; results_bonus.json, .txt, bonus.jsonl
  explore    (not in 'all') the ablation at the recipe's full budget on 45,000 / 5,000 images,
             one change per row from the first (Nesterov) recipe; hours; results_explore.json is
             rewritten after every row
  report     (not in 'all') report/report.pdf and bonus.pdf, typeset by Typst from report/*.typ

A run is its seed, sizes (--quick or not), dtype and data (a hash of the batch files). Its outputs
go to --out-dir; by default to this folder for a full run, and to runs/<run>/ for a --quick run or
when this folder holds another run. A folder holding another run is never written into: the
program stops and says so, unless --replace moves that run's outputs to <out-dir>/replaced/ first.
Search and Exercise 5 trials are appended to search_<stage>.jsonl and bonus.jsonl as they finish;
a rerun skips those made with the same settings, data and code, and a long trial resumes from its
last evaluation point. A single step reuses what it needs from results.json when the same code
made it. One run at a time writes a folder."""


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="DD2424 Assignment 2: a two-layer network on CIFAR-10 trained with cyclical "
                    "learning rates. Without a step, runs every step in order and writes figures/, "
                    "results.json and results.txt.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=HELP)
    p.add_argument("step", nargs="?", default="all", help="run one step alone (default: all)",
                   choices=["all", *STEPS, *EXTRA_STEPS, "report"])
    p.add_argument("--data-dir", help="folder of the CIFAR-10 python batches (default: "
                   "$CIFAR10_DIR, else data/cifar-10-batches-py, downloaded there if missing)")
    p.add_argument("--out-dir", help="where figures/ and the results go (default: this folder for "
                   "a full run, runs/<run>/ for --quick or when this folder holds another run)")
    p.add_argument("--seed", type=int, default=0,
                   help="one seed reproduces every result (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes: the whole pipeline in seconds, for smoke tests")
    p.add_argument("--float64", action="store_true", help="train in float64 instead of float32")
    p.add_argument("--replace", action="store_true", help="if --out-dir holds another run, move "
                   "its outputs to <out-dir>/replaced/ and start afresh")
    return p.parse_args(argv)


def check_args(args) -> None:
    """Refuse arguments that cannot make a run, before anything on disk is touched."""
    if not 0 <= args.seed < 2 ** 32:
        raise ConfigError(f"--seed {args.seed}: must be an integer from 0 to 2**32 - 1")
    if args.out_dir is not None:
        if not args.out_dir.strip() or any(c in args.out_dir for c in "\n\r\t\0"):
            raise StateError(f"--out-dir {args.out_dir!r}: not a folder name")
        if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
            raise StateError(f"--out-dir {args.out_dir}: exists and is not a folder")


def check_sizes(plan: Plan, batches: dict) -> None:
    """Refuse data too small for the plan's splits, before anything is written."""
    n_first = min(batches[f].n for f in CIFAR_FILES[:2])
    n_five = sum(batches[f].n for f in CIFAR_FILES[:5])
    n_val = max(plan.n_val_search, plan.n_val_final)
    if n_first < max(plan.overfit_n, Config.n_batch) or n_five < n_val + Config.n_batch:
        need = max(plan.overfit_n, Config.n_batch)
        raise ConfigError(f"too few images for these sizes: data_batch_1 and 2 hold {n_first} or "
                          f"more each, the five training batches {n_five}; they need {need} each "
                          f"and {n_val + Config.n_batch} together (try --quick, or all of CIFAR)")


def save_run(out_dir: Path, results: dict, timings: dict) -> None:
    """results.json, timings.json and results.txt, each written whole."""
    write_atomic(out_dir / "results.json", json.dumps(without_clock(results), indent=1) + "\n")
    write_atomic(out_dir / "timings.json", json.dumps(timings, indent=1) + "\n")
    from report.build import format_results
    write_atomic(out_dir / "results.txt", format_results(results, timings))


def run_steps(ctx: Context, steps: list[str], results: dict, timings: dict) -> float:
    """Run steps in order, saving every result as soon as its step ends; returns the seconds they
    took."""
    t_start = time.perf_counter()
    for step in steps:
        print(f"== {step}", flush=True)
        t0 = time.perf_counter()
        value = (STEPS | EXTRA_STEPS)[step](ctx)
        seconds = time.perf_counter() - t0
        if step in ("bonus", "explore"):  # Exercise 5 keeps its own files
            import bonus
            seconds = value["train_seconds"]  # its trials may come from earlier, interrupted runs
            bonus.save(ctx.out_dir, step, value)
        else:
            ctx.results[step] = value
        for done, v in ctx.results.items():  # a step may have computed the steps it depends on too
            results[done] = v
            results["code"][done] = code_fingerprint()
        timings[step] = round(seconds, 2)
        save_run(ctx.out_dir, results, timings)
        how = " of training, its trials' times summed" if step in ("bonus", "explore") else ""
        print(f"== {step} took {seconds:.1f} s{how}", flush=True)
    return time.perf_counter() - t_start


def report(out_dir: Path) -> list[Path]:
    """The PDF report(s) of a results folder, typeset by report/build.py beside this file."""
    from report.build import ReportError, build_report
    try:
        return build_report(out_dir)
    except ReportError as e:
        raise DataError(str(e)) from None


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = None
    try:
        check_args(args)
        if args.step == "report":
            out_dir = Path(args.out_dir) if args.out_dir is not None else PROJECT_DIR
            with FolderLock(out_dir):
                print("wrote " + ", ".join(map(str, report(out_dir))))
            return 0
        data_dir, is_default = resolve_data_dir(args.data_dir)
        data_dir = ensure_data(data_dir, is_default)
        run = identity(args.seed, args.quick, "float64" if args.float64 else "float32",
                       [data_dir / f for f in CIFAR_FILES])
        out_dir = choose_out_dir(args.out_dir, run, PROJECT_DIR, data_dir)
        batches = {name: load_batch(data_dir / name) for name in CIFAR_FILES}  # bad data stops here
        plan = quick_plan() if args.quick else Plan()
        check_sizes(plan, batches)
        with FolderLock(out_dir):
            stored, timings = open_run(out_dir, run, args.replace)
            results = {**run, "code": {}, **stored}
            ctx = Context(data_dir, out_dir, plan, args.seed, run["dtype"], results={},
                          stored={} if args.step == "all" else stored, cache=batches)
            steps = list(STEPS) if args.step == "all" else [args.step]
            print(f"run: {describe(run)}; writing to {out_dir}", flush=True)
            total = run_steps(ctx, steps, results, timings)
            if args.step == "all":
                save_run(out_dir, results, timings | {"total": round(total, 2)})
        print(f"done in {total:.1f} s: {out_dir / 'results.txt'}, {out_dir / 'results.json'}, "
              f"{out_dir / 'figures'}")
        if out_dir != PROJECT_DIR:
            print(f"its report: python3 assignment2.py report --out-dir {out_dir}")
        return 0
    except (DataError, ConfigError, Diverged, StateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        where = f" in {out_dir}" if out_dir is not None else ""
        print(f"\ninterrupted: finished steps and trials are saved{where}; run the same command "
              f"again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    import assignment2  # run the module that bonus.py imports too, not a second copy of it
    sys.exit(assignment2.main())
