"""The images of Exercise 5: augmentation (mirroring and translations, one gather per batch),
W1's principal subspace (the directions of the images and their mirror images, and every crop's
projection onto them, computed once), and at test time the views of an image and networks made
of networks. Shapes: images are (D, n) columns as in assignment2.py; XT is (n, D).
"""
import math

import numpy as np

import assignment2 as a
from bonus.settings import Extras


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


def random_views(x: Extras, n: int, rng) -> tuple:
    """The augmentation of n images: mirrored or not (f), and where the crop starts (oy, ox in
    [0, 2 shift]), drawn uniformly, one draw per image."""
    f = rng.integers(0, 1 + x.flip, n)  # (n,)
    oy, ox = rng.integers(0, 2 * x.shift + 1, (2, n))  # (n,) each
    return f, oy, ox


def view_count(x: Extras) -> int:
    """The views of an image that x's mirroring and moves offer, the plain one included."""
    return (1 + x.flip) * (2 * x.shift + 1) ** 2


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
