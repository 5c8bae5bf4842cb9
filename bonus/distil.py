"""Distillation: a convolutional teacher's scores as the wide network's targets (Hinton et al.,
2015), one change to the backward pass: eq. 12's P - Y with targets Y that are not one-hot.
The loss and its gradient (checked against torch autograd), the teacher's views of every
training image, and the gain of the distilled runs over the labels' with its standard error.
"""
import math

import numpy as np

import assignment2 as a
from bonus.augment import random_views, view_count
from bonus.settings import Extras


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


def centred(S: np.ndarray) -> np.ndarray:
    """Scores less their mean over the classes (K, B): what a softmax sees of them."""
    return S - np.mean(S, axis=0, keepdims=True)


def logit_targets(P: np.ndarray, Zt: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """The targets Y (K, B) whose P - Y is dL/dS for the squared error on centred scores (Ba &
    Caruana 2014, Urban et al. 2017) beside the labels,
        L = (1 - alpha) CE(y, P) + alpha / 2 |c(S) - c(Zt)|^2,    c: centred,
    so dL/dS = (1 - alpha)(P - Y_y) + alpha (c(S) - c(Zt)), c(S) = c(log P) (log P is S less a
    constant per column)."""
    Y = np.zeros_like(P)  # (K, B)
    Y[y, np.arange(y.size)] = 1 - alpha
    S_c = centred(np.log(np.maximum(P, np.finfo(P.dtype).tiny)))  # (K, B)
    return Y + alpha * (P - (S_c - centred(Zt)))


def targets(P: np.ndarray, Zt: np.ndarray, y: np.ndarray, T: float, alpha: float,
            loss: str = "softmax") -> np.ndarray:
    """The student's targets of the loss "softmax" (distillation_targets) or "logits"
    (logit_targets, T unused)."""
    if loss == "logits":
        return logit_targets(P, Zt, y, alpha)
    return distillation_targets(P, Zt, y, T, alpha)


def distillation_loss(P: np.ndarray, Zt: np.ndarray, y: np.ndarray, T: float,
                      alpha: float, loss: str = "softmax") -> float:
    """L of distillation_targets (loss "softmax") or logit_targets ("logits"), averaged over
    the columns (for the gradient checks)."""
    if loss == "logits":
        sq = np.mean(np.sum((centred(np.log(P)) - centred(Zt)) ** 2, axis=0))
        return float((1 - alpha) * a.cross_entropy(P, y) + alpha / 2 * sq)
    P_T = a.softmax(np.log(P) / T)  # (K, B)
    Q_T = a.softmax(Zt / T)  # (K, B)
    return float((1 - alpha) * a.cross_entropy(P, y)
                 - alpha * T ** 2 * np.mean(np.sum(Q_T * np.log(P_T), axis=0)))


class Distillation:
    """A teacher's scores as the student's targets, for hooks' teach. scores (n, V, K): the
    teacher's scores of V views (n, V, 3) of (f, oy, ox) of every training image (as
    random_views gives them). Each step trains on any view, as random_views draws it for x,
    against: per_view, the teacher's scores of the scored view of that image nearest to it
    (the view itself where every view is scored; at most a pixel away on a grid of every other
    shift, grid_views); else the teacher's mean over the V views (softmax averaged, at T = 1).
    T, alpha: distillation_targets'; loss "logits": logit_targets' instead (T unused). key:
    what made the scores; the run's key holds it."""

    def __init__(self, views: np.ndarray, scores: np.ndarray, x: Extras, T: float,
                 alpha: float, per_view: bool, key: dict, loss: str = "softmax"):
        if not (T > 0 and 0 <= alpha <= 1 and loss in ("softmax", "logits")):
            raise a.ConfigError(f"invalid distillation settings: T={T!r}, alpha={alpha!r}, "
                                f"loss={loss!r}")
        self.views, self.x, self.T, self.alpha, self.per_view = views, x, T, alpha, per_view
        self.loss = loss
        self.scores = (scores if per_view else  # (n, V, K), or the mean: (n, K)
                       np.log(np.mean(a.softmax(scores.astype(np.float64).T), axis=1)).T)
        self.key = {"scores": key, "T": T, "alpha": alpha, "per_view": per_view} | (
            {"loss": loss} if loss != "softmax" else {})  # the runs before the option keep theirs

    def draw(self, idx: np.ndarray, rng) -> tuple:
        """(f, oy, ox) of the images idx to train on, and the teacher's scores of them (K, B)."""
        f, oy, ox = random_views(self.x, idx.size, rng)
        return f, oy, ox, self.scores_of(idx, f, oy, ox)

    def scores_of(self, idx: np.ndarray, f, oy, ox) -> np.ndarray:
        """The teacher's scores (K, B) that the views (f, oy, ox) of the images idx train on."""
        if not self.per_view:
            return self.scores[idx].T
        return self.scores[idx, nearest_view(self.views[idx], f, oy, ox)].T  # (K, B)

    def probe(self, n: int, rng) -> "Distillation":
        """The same targets from random scores of as many views of n images (bonus.keys)."""
        chosen = target_views(n, self.views.shape[1], self.x, rng)  # (n, V, 3)
        scores = (3 * rng.standard_normal((*chosen.shape[:2], a.K))).astype(np.float16)
        return Distillation(chosen, scores, self.x, self.T, self.alpha, self.per_view, None,
                            self.loss)

    def targets(self, P: np.ndarray, y: np.ndarray, Zt: np.ndarray) -> np.ndarray:
        return targets(P, Zt.astype(P.dtype), y, self.T, self.alpha, self.loss)


def nearest_view(views: np.ndarray, f, oy, ox) -> np.ndarray:
    """For each image b, the index of the view of views[b] (B, V, 3) nearest to (f, oy, ox)[b]:
    mirrored alike first, then the least squared move; the first of equals (B,)."""
    v = views.astype(np.int32)  # (B, V, 3)
    d = (1000 * (v[..., 0] != f[:, None]) + (v[..., 1] - oy[:, None]) ** 2
         + (v[..., 2] - ox[:, None]) ** 2)  # (B, V)
    return np.argmin(d, axis=1)


def grid_views(x: Extras, step: int) -> np.ndarray:
    """The views (f, oy, ox) whose moves are multiples of step in each direction, both mirror
    images where x mirrors, the plain view first: (V, 3) uint8. Every view is within
    step // 2 pixels of one of them in each direction; step 1: every view."""
    moves = [x.shift + k for k in range(-x.shift, x.shift + 1) if k % step == 0]
    out = [(f, oy, ox) for f in range(1 + x.flip) for oy in moves for ox in moves]
    out.sort(key=lambda v: v != (0, x.shift, x.shift))  # the plain one first, else in order
    return np.array(out, np.uint8)


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


def agreement(every: np.ndarray, S: np.ndarray, teach: Distillation) -> dict:
    """How far teach's targets lie from the teacher's scores of the views trained on: S (n, W,
    K) the teacher's scores of the views every (W, 3) of n images, teach a Distillation of
    the same n images. The mean over images and views of KL(softmax(S) || softmax(target)) in
    nats, and the fraction whose most likely class is the same."""
    n, W = S.shape[:2]
    f, oy, ox = np.tile(every, (n, 1)).T  # (n W,) each
    Zt = teach.scores_of(np.repeat(np.arange(n), W), f, oy, ox).astype(np.float64)  # (K, n W)
    p = a.softmax(S.reshape(n * W, a.K).T.astype(np.float64))  # (K, n W)
    kl = np.sum(p * (np.log(p) - np.log(a.softmax(Zt))), axis=0)  # (n W,)
    return {"kl": float(np.mean(kl)), "same_class": float(np.mean(
        np.argmax(p, axis=0) == np.argmax(Zt, axis=0)))}


def distillation_grads_torch(X, y, params: dict, Zt, T: float, alpha: float, lam: float,
                             loss: str = "softmax") -> dict:
    """The gradients of distillation_loss plus the penalty of eq. 7, as torch autograd computes
    them from the network written in torch (float64)."""
    import torch
    p = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    S = p["W2"] @ torch.relu(p["W1"] @ torch.tensor(X) + p["b1"]) + p["b2"]  # (K, n), eqs. 1-3
    labels = torch.nn.functional.cross_entropy(S.T, torch.tensor(y))
    if loss == "logits":
        Zt_c = torch.tensor(Zt) - torch.tensor(Zt).mean(dim=0)
        teach = torch.mean(torch.sum((S - S.mean(dim=0) - Zt_c) ** 2, dim=0)) / 2
    else:
        Q_T = torch.softmax(torch.tensor(Zt) / T, dim=0)  # (K, n)
        teach = -T ** 2 * torch.mean(torch.sum(Q_T * torch.log_softmax(S / T, dim=0), dim=0))
    J = ((1 - alpha) * labels + alpha * teach
         + lam * (torch.sum(p["W1"] ** 2) + torch.sum(p["W2"] ** 2)))
    J.backward()
    return {k: v.grad.numpy() for k, v in p.items()}


def distillation_gradcheck(rng, settings=((7, 6, 5, 1.0, 1.0, 0.0, "softmax"),
                                          (7, 6, 5, 3.0, 0.7, 0.01, "softmax"),
                                          (7, 6, 5, 1.0, 0.5, 0.01, "logits"))):
    """The gradient of the distillation loss (assignment2.backward with distillation_targets
    or logit_targets) against torch autograd and centred finite differences, float64, on random
    networks, data and teacher scores. A setting is (d, n, m, T, alpha, lam, loss)."""
    rows = []
    for d, n, m, T, alpha, lam, loss in settings:
        X, y, Zt = rng.standard_normal((d, n)), rng.integers(0, a.K, n), 3 * rng.standard_normal(
            (a.K, n))
        params = a.init_params(d, m, rng, "float64")
        params["b1"] += 0.1 * rng.standard_normal((m, 1))  # non-zero biases test their gradients
        params["b2"] += 0.1 * rng.standard_normal((a.K, 1))
        P, H = a.forward(X, params)
        ours = a.backward(X, targets(P, Zt, y, T, alpha, loss), P, H, params, lam)
        torch_g = distillation_grads_torch(X, y, params, Zt, T, alpha, lam, loss)
        num_g = a.grads_numerical(X, y, params, lam, h=1e-5, loss=lambda P: distillation_loss(
            P, Zt, y, T, alpha, loss))
        rows += [{"d": d, "n": n, "m": m, "T": T, "alpha": alpha, "lam": lam, "loss": loss,
                  "param": k, "vs_torch": a.rel_error(ours[k], torch_g[k]),
                  "vs_numerical": a.rel_error(ours[k], num_g[k])} for k in params]
    return rows


def gain(distilled: list, labels: list) -> dict:
    """The mean test accuracy of the distilled runs minus that of the labels' runs, with its
    standard error from the two spreads (Welch's: s_d^2 / n_d + s_l^2 / n_l)."""
    se = (math.sqrt(np.var(distilled, ddof=1) / len(distilled) + np.var(labels, ddof=1)
                    / len(labels)) if min(len(distilled), len(labels)) > 1 else None)
    return {"diff": float(np.mean(distilled) - np.mean(labels)), "se": se,
            "distilled_mean": float(np.mean(distilled)), "labels_mean": float(np.mean(labels))}
