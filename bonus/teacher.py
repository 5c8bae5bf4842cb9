"""DD2424 Assignment 2, Exercise 5: the convolutional teacher that the two-layer network learns
from (distillation: `python3 -m bonus distil`). The only place where torch trains anything.

The network follows airbench (K. Jordan, cifar10-airbench, 2024) at a width that a CPU trains
in under an hour: a 2x2 convolution fixed to whiten the image patches, three groups of
conv-pool-BN-GELU-conv-BN-GELU with (w, 4w, 4w) channels, a max-pool and a linear layer;
SGD with Nesterov momentum, a triangular learning rate, no label smoothing. It trains on the
student's training images with the student's augmentation (bonus.augment.augment_source:
mirroring and moves with repeated edges), in float32 on the CPU (float64 for bonus.keys'
probe).

- train_teacher: the network trained for tc.epochs, the epoch validation prefers kept; its
  progress saved after every epoch, so a run cut short resumes (bit for bit).
- teacher_logits: its scores S (logits) for chosen views of images: the student's targets.

Shapes: images are (D, n) columns as in assignment2.py; torch sees (n, 3, 32, 32).
"""

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import assignment2 as a
from bonus import augment, store, wide

# --------------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class TeacherConfig:
    """The teacher's network and training; QUICK_TEACHER shrinks them for smoke tests."""
    width: int = 48  # channels of the first conv group; the other two have 4 x width
    epochs: int = 16  # passes over the training images
    batch: int = 500  # images per step
    lr: float = 1.0  # peak learning rate (of the mean loss), reached after warmup ...
    warmup: float = 0.2  # ... of the steps, from 0; then falling linearly to 0
    momentum: float = 0.9  # Nesterov momentum
    weight_decay: float = 5e-4  # torch's (coupled) weight decay on every trained parameter
    bias_scale: float = 64.0  # the batch norms' shifts learn this many times faster (airbench)
    label_smoothing: float = 0.0  # targets (1 - s) one-hot + s / K: 0, as smoothing flattens
    # the wrong classes' scores, the part of them that a student learns from (Mueller et al. 2019)
    flip: bool = True  # augmentation as the student's: mirroring with probability 1/2 ...
    shift: int = 3  # ... and moves of up to shift pixels, edges repeated
    whiten_eps: float = 5e-4  # added to the patch covariance's eigenvalues before the whitening
    scale: float = 1 / 9  # the scores are the last layer's output times this (airbench's)
    dtype: str = "float32"  # of the images, the network and its training


QUICK_TEACHER = TeacherConfig(width=4, epochs=2, batch=100)


def check_teacher(tc: TeacherConfig) -> None:
    bad = [f"{k}={getattr(tc, k)!r}" for k, ok in (
        ("width", tc.width >= 1), ("epochs", tc.epochs >= 1), ("batch", tc.batch >= 1),
        ("lr", tc.lr > 0), ("warmup", 0 <= tc.warmup < 1), ("momentum", 0 <= tc.momentum < 1),
        ("weight_decay", tc.weight_decay >= 0), ("label_smoothing", 0 <= tc.label_smoothing < 1),
        ("shift", 0 <= tc.shift <= 8), ("whiten_eps", tc.whiten_eps > 0),
        ("scale", tc.scale > 0), ("bias_scale", tc.bias_scale > 0)) if not ok]
    if bad:
        raise a.ConfigError("invalid teacher settings: " + ", ".join(bad))


def learning_rate(step: int, total: int, tc: TeacherConfig) -> float:
    """The triangle: 0 at step 0, tc.lr after warmup * total steps, 0 at total."""
    peak = max(1, round(tc.warmup * total))
    return tc.lr * (step / peak if step < peak else (total - step) / max(1, total - peak))


# --------------------------------------------------------------------------------------------------
# The network

def make_net(tc: TeacherConfig) -> nn.Sequential:
    """(n, 3, 32, 32) -> (n, K) scores: whitening (31 x 31), three groups (15, 7, 3), pooled."""
    w = (tc.width, 4 * tc.width, 4 * tc.width)
    whiten = nn.Conv2d(3, 24, kernel_size=2, bias=True)  # 2 x 12 filters: each one and its negative
    whiten.weight.requires_grad = False  # set by init_whitening, never trained
    net = nn.Sequential(whiten, nn.GELU(), conv_group(24, w[0]), conv_group(w[0], w[1]),
                        conv_group(w[1], w[2]), nn.MaxPool2d(3), nn.Flatten(),
                        nn.Linear(w[2], a.K, bias=False), Scale(tc.scale))
    # channels last: oneDNN's faster layout on the CPU
    return net.to(dtype=getattr(torch, tc.dtype), memory_format=torch.channels_last)


def dtype_of(net: nn.Module) -> str:
    """The numpy name of the dtype the network computes in."""
    return str(next(net.parameters()).dtype).removeprefix("torch.")


class Scale(nn.Module):
    """x -> factor x: small scores at the start, so the first steps of a high learning rate do
    not saturate the softmax."""

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return x * self.factor


def conv_group(c_in: int, c_out: int) -> nn.Sequential:
    """conv 3x3 - max-pool 2 - BN - GELU - conv 3x3 - BN - GELU: the image's side halves."""
    return nn.Sequential(conv(c_in, c_out), nn.MaxPool2d(2), batch_norm(c_out), nn.GELU(),
                         conv(c_out, c_out), batch_norm(c_out), nn.GELU())


def conv(c_in: int, c_out: int) -> nn.Conv2d:
    """A 3x3 convolution whose first c_in filters start as the identity (airbench's dirac
    initialisation: each group starts close to passing its input on)."""
    layer = nn.Conv2d(c_in, c_out, kernel_size=3, padding="same", bias=False)
    nn.init.dirac_(layer.weight.data[:c_in])
    return layer


def batch_norm(c: int) -> nn.BatchNorm2d:
    """Batch normalisation with a trained shift and a fixed scale of 1 (airbench)."""
    layer = nn.BatchNorm2d(c, eps=1e-12, momentum=0.4)
    layer.weight.requires_grad = False
    return layer


def init_whitening(layer: nn.Conv2d, X: torch.Tensor, eps: float) -> None:
    """The 2x2 filters of layer: the eigenvectors of the covariance of all 2x2 patches of the
    images X (n, 3, 32, 32), each divided by the square root of its eigenvalue + eps, and their
    negatives (the GELU after it then passes both signs)."""
    patches = X.unfold(2, 2, 1).unfold(3, 2, 1)  # (n, 3, 31, 31, 2, 2)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 12).double()  # (n 31 31, 12)
    values, vectors = torch.linalg.eigh(patches.T @ patches / patches.shape[0])  # (12,), (12, 12)
    filters = (vectors.T / torch.sqrt(values + eps)[:, None]).reshape(12, 3, 2, 2)
    layer.weight.data[:] = torch.cat([filters, -filters]).to(layer.weight.dtype)


def as_images(XT: np.ndarray) -> torch.Tensor:
    """Rows of XT (n, D) as torch images (n, 3, 32, 32) in channels-last memory."""
    return torch.from_numpy(XT.reshape(-1, 3, 32, 32)).contiguous(
        memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------------------
# Training and scores

def train_teacher(tr: a.Split, va: a.Split, tc: TeacherConfig, seed: int, progress=None,
                  log=print) -> tuple:
    """The teacher trained on tr, with tr's mirroring and moves, validated on va after every
    epoch: (the state of the epoch with the best validation accuracy, as numpy arrays; its
    history). progress = (path, key): save the state after each epoch and go on from a saved
    one. Randomness: torch's initialisation from seed, the batches from a numpy generator."""
    check_teacher(tc)
    a.check_config(a.Config(n_batch=tc.batch), tr.n)
    with torch.random.fork_rng():  # the caller's torch generator is left as it was
        torch.manual_seed(seed)
        net = make_net(tc)
    XT = np.ascontiguousarray(tr.X.T, tc.dtype)  # (n, D)
    init_whitening(net[0], as_images(XT[:5000]), tc.whiten_eps)
    opt = optimizer(net, tc)
    rng = np.random.default_rng([seed, 18])
    arrays = state_arrays(net, opt)
    best = snapshot(arrays)
    start, save = resume(progress, arrays, best, rng, tr.n, log) if progress else (None, None)
    hist = start["hist"] if start else {}
    windows = augment.augment_source(XT, tc.flip, tc.shift)
    per_epoch = tr.n // tc.batch
    for epoch in range(start["t"] // per_epoch if start else 0, tc.epochs):
        t0, perm = time.perf_counter(), rng.permutation(tr.n)
        loss = train_epoch(net, opt, windows, tr.y, perm, epoch, tc, rng)
        seconds = (hist["seconds"][-1] if hist else 0.0) + time.perf_counter() - t0
        val = accuracy(net, va)
        if not hist or val > max(hist["val_acc"]):
            best = snapshot(arrays)
        for q, v in (("epoch", epoch + 1), ("seconds", round(seconds, 2)),
                     ("train_loss", loss), ("val_acc", val)):
            hist.setdefault(q, []).append(v)
        log(f"teacher epoch {epoch + 1:2d}/{tc.epochs}: train loss {loss:.4f}, val acc "
            f"{val:.4f} | {seconds:.0f} s, {seconds / (epoch + 1) * (tc.epochs - epoch - 1):.0f} "
            f"s left")
        if save:
            save((epoch + 1) * per_epoch, perm, hist, best)
    return {k[4:]: v for k, v in best.items()}, hist


def fit(splits: tuple, tc: TeacherConfig, seed: int, progress=None, log=print) -> tuple:
    """The teacher trained on the training images of splits (train_teacher) and its record: the
    epoch validation picked, its validation and test accuracy (the test set seen once by that
    epoch) and the history: (state, record)."""
    tr, va, te = splits
    state, hist = train_teacher(tr, va, tc, seed, progress, log)
    net, best = load_net(state, tc), int(np.argmax(hist["val_acc"]))
    rec = {"name": "teacher", "seed": seed, "diverged": False, "epoch": best + 1,
           "val_acc": hist["val_acc"][best], "test_acc": accuracy(net, te),
           "seconds": hist["seconds"][-1], "history": hist}
    log(f"teacher: val acc {rec['val_acc']:.4f} (epoch {best + 1}), test acc "
        f"{rec['test_acc']:.4f}, {rec['seconds'] / 60:.1f} minutes")
    return state, rec


def train_epoch(net, opt, windows, y, perm, epoch: int, tc: TeacherConfig, rng) -> float:
    """One pass over the images perm in batches of tc.batch (a partial last one dropped), each
    image mirrored and moved as augment.random_views draws: the mean training loss."""
    net.train()
    per_epoch, losses = perm.size // tc.batch, []
    total = per_epoch * tc.epochs
    for i in range(per_epoch):
        idx = perm[i * tc.batch:(i + 1) * tc.batch]
        f, oy, ox = augment.random_views(tc, idx.size, rng)
        X = as_images(augment.augmented_batch(windows, idx, f, oy, ox))  # (B, 3, 32, 32)
        for group in opt.param_groups:
            group["lr"] = learning_rate(epoch * per_epoch + i, total, tc) * group["scale"]
        loss = F.cross_entropy(net(X), torch.from_numpy(y[idx]).long(),
                               label_smoothing=tc.label_smoothing)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    mean = float(np.mean(losses))
    if not math.isfinite(mean):
        raise a.Diverged(f"the teacher diverged in epoch {epoch + 1} (non-finite loss)")
    return mean


def optimizer(net: nn.Module, tc: TeacherConfig):
    """SGD with Nesterov momentum over the trained parameters in two groups: the batch norms'
    shifts at tc.bias_scale times the learning rate, the rest at it (group["scale"]); the weight
    decay per step, lr * weight_decay, is the same in both (airbench's)."""
    shifts = [p for n, p in net.named_parameters() if p.requires_grad and p.ndim == 1
              and isinstance(net.get_submodule(n.rsplit(".", 1)[0]), nn.BatchNorm2d)]
    rest = [p for p in net.parameters() if p.requires_grad and all(p is not q for q in shifts)]
    opt = torch.optim.SGD(
        [{"params": shifts, "scale": tc.bias_scale, "weight_decay": tc.weight_decay
          / tc.bias_scale}, {"params": rest, "scale": 1.0, "weight_decay": tc.weight_decay}],
        lr=0.0, momentum=tc.momentum, nesterov=True)
    for p in shifts + rest:  # a zero buffer updates as torch's first step does: 0 * mu + g = g
        opt.state[p]["momentum_buffer"] = torch.zeros_like(p)
    return opt


def snapshot(arrays: dict) -> dict:
    """A copy of the network's part of state_arrays, as it is now."""
    return {k: v.copy() for k, v in arrays.items() if k.startswith("net/")}


def state_arrays(net: nn.Module, opt) -> dict:
    """The network's parameters and buffers and the optimiser's momentum, as numpy views of the
    tensors (writing into them writes into the network)."""
    out = {f"net/{k}": v.detach().numpy() for k, v in net.state_dict().items()}
    params = [p for group in opt.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        out[f"momentum/{i}"] = opt.state[p]["momentum_buffer"].numpy()
    return out


def resume(progress: tuple, arrays: dict, best: dict, rng, n: int, log) -> tuple:
    """(start, save): the saved state of the run, if any, written into arrays and best, and a
    function that saves the state after an epoch."""
    path, key = progress

    def save(t, perm, hist, best_now):
        meta = {"t": t, "seconds": hist["seconds"][-1], "hist": hist,
                "rng": rng.bit_generator.state}
        best_arrays = {f"best/{k}": v for k, v in best_now.items()}
        store.save_progress(path, key, meta, arrays | best_arrays | {"perm": perm})

    like = arrays | {f"best/{k}": v for k, v in best.items()} | {"perm": np.empty(n, np.int64)}
    saved = store.load_progress(path, key, like,
                                  lambda m, z: wide.progress_problem(m, z, rng), log)
    if not saved:
        return None, save
    meta, stored = saved
    for k, v in arrays.items():
        v[...] = stored[k]
    for k in best:
        best[k] = stored[f"best/{k}"]
    rng.bit_generator.state = meta["rng"]
    log(f"resumed the teacher after epoch {len(meta['hist']['epoch'])} from {path.name}")
    return {"t": meta["t"], "hist": meta["hist"]}, save


def load_net(state: dict, tc: TeacherConfig) -> nn.Sequential:
    """The teacher network of the numpy arrays state (train_teacher's), ready to evaluate."""
    net = make_net(tc)
    net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    return net.eval()


@torch.no_grad()
def scores(net: nn.Module, XT: np.ndarray, chunk: int = 1000) -> np.ndarray:
    """The network's scores for the images XT (n, D): (n, K), in evaluation mode."""
    net.eval()
    return np.concatenate([net(as_images(np.ascontiguousarray(XT[i:i + chunk]))).numpy()
                           for i in range(0, XT.shape[0], chunk)])


def accuracy(net: nn.Module, d: a.Split) -> float:
    """The fraction of d's images (plain) whose highest score is their label."""
    S = scores(net, np.ascontiguousarray(d.X.T, dtype_of(net)))  # (n, K)
    return float(np.mean(np.argmax(S, axis=1) == d.y))


def teacher_logits(net: nn.Module, X: np.ndarray, views: np.ndarray, shift: int,
                   chunk: int = 250) -> np.ndarray:
    """The scores of the views of every image: X (D, n) images; views (n, V, 3) of (f, oy, ox),
    image i mirrored if f and cropped at (oy, ox) of its padded copy as in augment.
    random_views; returns (n, V, K) float16 (the student's targets need no more)."""
    n, V = views.shape[:2]
    out = np.empty((n, V, a.K), np.float16)  # (n, V, K)
    for i in range(0, n, chunk):
        XT = np.ascontiguousarray(X[:, i:i + chunk].T, dtype_of(net))  # (c, D)
        windows = augment.augment_source(XT, True, shift)
        c = XT.shape[0]
        f, oy, ox = (views[i:i + c].reshape(-1, 3).T)  # (c V,) each
        idx = np.repeat(np.arange(c), V)  # (c V,)
        batch = augment.augmented_batch(windows, idx, f, oy, ox)  # (c V, D)
        out[i:i + c] = scores(net, batch, chunk=c * V).reshape(c, V, a.K)
    return out
