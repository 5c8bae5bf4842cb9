"""Exercise 5 (bonus/): augmentation, dropout, Nesterov momentum, Adam, the
principal subspace, test-time views, networks of networks, resuming a run."""

import math
from dataclasses import asdict, replace

import numpy as np
import pytest

import assignment2 as a
from bonus import augment as aug
from bonus import settings as st
from bonus import steps, store, wide
from bonus import updates as upd


def images(n=6, seed=0, dtype=np.float32):
    # (n, D), one image per row
    return np.random.default_rng(seed).standard_normal((n, a.D)).astype(dtype)


def test_augment_source_pads_with_edge_pixels_like_np_pad():
    XT = images()
    for shift in (0, 1, 3):
        padded = np.pad(
            XT.reshape(-1, 3, 32, 32), ((0, 0), (0, 0), (shift, shift), (shift, shift)), mode="edge"
        )
        w = aug.augment_source(XT, True, shift)
        assert w.shape == (2, 6, 3, 2 * shift + 1, 2 * shift + 1, 32, 32) and w.dtype == XT.dtype
        assert aug.augment_source(XT, False, shift).shape[0] == 1
        for oy in range(2 * shift + 1):
            for ox in range(2 * shift + 1):
                np.testing.assert_array_equal(
                    w[0, :, :, oy, ox], padded[:, :, oy : oy + 32, ox : ox + 32]
                )
                np.testing.assert_array_equal(
                    w[1, :, :, oy, ox], padded[..., ::-1][:, :, oy : oy + 32, ox : ox + 32]
                )


def moved(XT, shift, f, tx, ty):
    """Every image of XT mirrored (f = 1) and moved right by tx, down by ty, through
    augmented_batch."""
    n = XT.shape[0]

    def full(v):
        return np.full(n, v)

    windows = aug.augment_source(XT, True, shift)
    return aug.augmented_batch(windows, np.arange(n), full(f), full(shift - ty), full(shift - tx))


def reference(XT, mirror, tx, ty):
    """The same transform written plainly, one image at a time, with np.roll and explicit edge
    filling."""
    out = []
    for x in XT.reshape(-1, 3, 32, 32):
        x = x[..., ::-1] if mirror else x
        r, c = np.clip(np.arange(32) - ty, 0, 31), np.clip(np.arange(32) - tx, 0, 31)
        out.append(x[:, r][:, :, c].ravel())
    return np.array(out)


@pytest.mark.parametrize(
    "f,tx,ty", [(0, 0, 0), (1, 0, 0), (0, 2, -1), (1, -3, 3), (0, 3, 0), (1, 0, -2)]
)
def test_augmented_batch_matches_a_plain_reference(f, tx, ty):
    XT = images()
    out = moved(XT, 3, f, tx, ty)
    assert out.shape == XT.shape and out.dtype == XT.dtype
    np.testing.assert_array_equal(out, reference(XT, f, tx, ty))


def test_a_flip_twice_is_the_identity():
    XT = images()
    once = moved(XT, 0, 1, 0, 0)
    assert not np.array_equal(once, XT)
    np.testing.assert_array_equal(moved(once, 0, 1, 0, 0), XT)


@pytest.mark.parametrize("tx,ty", [(3, 2), (-1, 3), (-3, -3), (2, 0)])
def test_a_shift_and_its_inverse_restore_the_interior(tx, ty):
    XT = images()
    back = moved(moved(XT, 3, 0, tx, ty), 3, 0, -tx, -ty).reshape(-1, 3, 32, 32)
    orig = XT.reshape(-1, 3, 32, 32)
    inner = (slice(None), slice(None), slice(abs(ty), 32 - abs(ty)), slice(abs(tx), 32 - abs(tx)))
    np.testing.assert_array_equal(back[inner], orig[inner])


def test_mirror_images_is_the_training_flip_and_its_own_inverse():
    XT = images()
    X = np.asfortranarray(XT.T)  # (D, n)
    np.testing.assert_array_equal(aug.mirror_images(X), moved(XT, 0, 1, 0, 0).T)
    np.testing.assert_array_equal(aug.mirror_images(aug.mirror_images(X)), X)


def test_mirrored_view_averages_an_image_and_its_mirror():
    rng = np.random.default_rng(8)
    d = a.Split(rng.standard_normal((a.D, 50)), rng.integers(0, 10, 50))
    params = a.init_params(a.D, 20, rng)
    P = (a.forward(d.X, params)[0] + a.forward(aug.mirror_images(d.X), params)[0]) / 2
    acc = aug.view_accuracy(d, params, aug.views(0)["mirrored"], chunk=20)
    assert acc == np.mean(np.argmax(P, axis=0) == d.y) != a.evaluate(d.X, d.y, params, 0)["acc"]


def test_shifted_pixels_really_move():
    XT = np.zeros((1, a.D), np.float32)
    XT[0, 5 * 32 + 7] = 1  # channel 0, row 5, column 7
    out = moved(XT, 3, 0, 2, 3).reshape(3, 32, 32)  # right by 2, down by 3
    assert out[0, 8, 9] == 1 and out.sum() == 1


def test_training_with_augmentation_draws_every_transform(monkeypatch):
    seen = []
    real = aug.augmented_batch
    monkeypatch.setattr(
        wide, "augmented_batch",
        lambda w, idx, f, oy, ox: (seen.append((f, oy, ox)), real(w, idx, f, oy, ox))[1])
    rng = np.random.default_rng(0)
    tr = a.Split(np.asfortranarray(rng.standard_normal((a.D, 200), dtype=np.float32)),
                 rng.integers(0, 10, 200))
    cfg = a.Config(m=5, n_s=20, n_batch=50, eval_train=False)
    wide.train_network(tr, tr, cfg, st.Extras(optimizer="sgd", pca=0), rng, log=lambda t: None)
    f, oy, ox = (np.concatenate(x) for x in zip(*seen))
    assert set(f) == {0, 1} and set(oy) == set(ox) == set(range(7))


def test_dropout_keeps_the_expected_activation_and_is_off_at_evaluation():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((30, 2000))
    params = a.init_params(30, 40, rng)
    _, H = a.forward(X, params)
    p = 0.3
    drop = wide.dropout_mask(p, H.shape, "float64", rng)
    _, Hd = a.forward(X, params, drop)
    assert np.mean(Hd == 0) == pytest.approx(np.mean(H == 0) + p * np.mean(H > 0), abs=0.01)
    np.testing.assert_allclose(Hd.mean(), H.mean(), rtol=0.03)  # inverted: the same mean
    cfg = a.Config(m=40, n_s=10, n_batch=100, eval_train=False)
    tr = a.Split(np.asfortranarray(X), rng.integers(0, 10, 2000))
    x = st.Extras(optimizer="sgd", flip=False, shift=0, pca=0, p_drop=0.5)
    params2, hist = wide.train_network(tr, tr, cfg, x, np.random.default_rng(3), log=lambda t: None)
    # evaluation runs without dropout
    assert hist["val_acc"][-1] == a.evaluate(X, tr.y, params2, 0.0)["acc"]


@pytest.mark.parametrize("lam", [0.0, 0.1])
def test_dropout_gradients_with_a_fixed_mask(lam):
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((8, 6)), rng.integers(0, 10, 6)
    params = a.init_params(8, 7, rng)
    params["b1"] += 0.3
    drop = (rng.random((7, 6)) >= 0.4) / 0.6
    assert np.abs(params["W1"] @ X + params["b1"]).min() > 1e-3  # no ReLU kink within reach of h
    ours = a.grads_analytic(X, y, params, lam, drop)
    numerical = a.grads_numerical(X, y, params, lam, drop=drop)
    for k in params:
        assert a.rel_error(ours[k], numerical[k]) < 1e-6, k


@pytest.mark.parametrize("optimizer", ["sgd", "nesterov", "adam"])
@pytest.mark.parametrize("lam", [0.0, 0.01])
def test_optimisers_match_torch_optim(optimizer, lam):
    import torch

    rng = np.random.default_rng(5)
    params = {k: v.astype(np.float64) for k, v in a.init_params(6, 4, rng).items()}
    x = st.Extras(optimizer=optimizer)
    tparams = [torch.tensor(v.copy(), requires_grad=True) for v in params.values()]
    groups = [
        {
            "params": [tp for k, tp in zip(params, tparams) if k.startswith("W")],
            "weight_decay": 2 * lam,
        },
        {
            "params": [tp for k, tp in zip(params, tparams) if k.startswith("b")],
            "weight_decay": 0.0,
        },
    ]
    if optimizer == "sgd":  # eq. 7 penalises the weights only: lam W^2 has gradient 2 lam W
        opt = torch.optim.SGD(groups, lr=0.05)
    elif optimizer == "nesterov":
        opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.Adam(groups, lr=0.05, betas=(0.9, 0.999), eps=1e-8)
    state = upd.optimizer_state(params, optimizer)
    for t in range(6):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        for tp, g in zip(tparams, grads.values()):
            tp.grad = torch.tensor(g.copy())
        opt.step()
        upd.RULES[optimizer](params, grads, state, 0.05, t, lam, x)
        for tp, v in zip(tparams, params.values()):
            np.testing.assert_allclose(v, tp.detach().numpy(), rtol=1e-12, atol=1e-12)


def textbook(optimizer, params, grads, state, eta, t, lam, x):
    """Each rule as its equation, whole arrays at a time, float64: the reference of the fast
    forms."""
    for k, w in params.items():
        g = grads[k] + (2 * lam * w if k.startswith("W") else 0)  # eq. 12
        if optimizer == "sgd":
            w -= eta * g  # eqs. 10-11
        elif optimizer == "nesterov":
            state[k] = x.momentum * state[k] + g
            w -= eta * (g + x.momentum * state[k])
        else:
            m = state["m"][k] = x.beta1 * state["m"][k] + (1 - x.beta1) * g
            v = state["v"][k] = x.beta2 * state["v"][k] + (1 - x.beta2) * g ** 2
            m_hat, v_hat = m / (1 - x.beta1 ** (t + 1)), v / (1 - x.beta2 ** (t + 1))
            w -= eta * m_hat / (np.sqrt(v_hat) + x.eps)


@pytest.mark.parametrize("optimizer", ["sgd", "nesterov", "adam"])
@pytest.mark.parametrize("layout", ["C", "F"])
def test_the_compiled_updates_are_the_textbook_rule(optimizer, layout):
    rng = np.random.default_rng(6)
    shapes = {"W1": (300, 70), "b1": (300, 1), "W2": (10, 300), "b2": (10, 1)}
    params = {k: np.asarray(rng.standard_normal(s), order=layout) for k, s in shapes.items()}
    ref, x = {k: v.copy() for k, v in params.items()}, st.Extras(optimizer=optimizer)
    state, ref_state = upd.optimizer_state(params, optimizer), upd.optimizer_state(ref, optimizer)
    fast = upd.RULES[optimizer]
    for t in range(4):
        grads = {k: rng.standard_normal(s) for k, s in shapes.items()}  # C order, always
        textbook(optimizer, ref, {k: g.copy() for k, g in grads.items()}, ref_state, 0.05, t,
                 0.01, x)
        fast(params, grads, state, 0.05, t, 0.01, x)
        for k in params:
            np.testing.assert_allclose(params[k], ref[k], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("optimizer", ["sgd", "nesterov", "adam"])
def test_updates_flush_subnormal_weights_and_moments_and_nothing_else(optimizer):
    rng = np.random.default_rng(7)
    params = {k: v.astype(np.float32) for k, v in a.init_params(30, 20, rng).items()}
    params["W1"][:4, :5] = 1e-40  # subnormal in float32: a unit the penalty shrank for long
    grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
    grads["W1"][:4, :5] = 0
    x, t = st.Extras(optimizer=optimizer), upd.FLUSH_EVERY  # a step that flushes
    runs = []
    for flush in (True, False):
        p, g = ({k: v.copy() for k, v in d.items()} for d in (params, grads))
        state = upd.optimizer_state(p, optimizer)
        for v in store.flatten(state).values():
            if v.shape == params["W1"].shape:
                v[:4, :5] = 1e-40  # and so are its moments
        with pytest.MonkeyPatch.context() as mp:
            if not flush:  # step t is then not one that flushes
                mp.setattr(upd, "FLUSH_EVERY", 10 ** 9)
            upd.RULES[optimizer](p, g, state, 1e-3, t, 0.0, x)  # lam 0: W1[:4, :5] stays
        runs.append((p, state))
    (flushed, flushed_state), (plain, plain_state) = runs
    tiny = np.finfo(np.float32).tiny

    def subnormal(z):
        return (z != 0) & (np.abs(z) < tiny)
    before = [*plain.values(), *store.flatten(plain_state).values()]
    after = [*flushed.values(), *store.flatten(flushed_state).values()]
    assert any(subnormal(z).any() for z in before) and not any(subnormal(z).any() for z in after)
    for z, y in zip(after, before):
        assert np.array_equal(z[~subnormal(y)], y[~subnormal(y)])  # the rest as computed


def test_schedules():
    cfg = a.Config(eta_min=1e-5, eta_max=0.2, n_s=50, n_cycles=2)  # 200 steps
    lin, cyc = st.Extras(schedule="linear"), st.Extras(schedule="cyclic")
    assert upd.learning_rate(0, cfg, lin) == 0.2 and upd.learning_rate(100, cfg, lin) == 0.1
    assert upd.learning_rate(200, cfg, lin) == pytest.approx(0.0)
    assert upd.learning_rate(50, cfg, cyc) == a.cyclic_eta(50, 1e-5, 0.2, 50)


def low_rank_split(d=40, n=300, rank=6, seed=7, dtype=np.float64):
    """Zero-mean data whose variance lies in `rank` directions plus a little noise: (d, n)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((d, rank)) @ rng.standard_normal(
        (rank, n)
    ) * 3 + 0.1 * rng.standard_normal((d, n))
    X -= X.mean(axis=1, keepdims=True)
    return a.Split(np.asfortranarray(X.astype(dtype)), rng.integers(0, 10, n))


def test_pca_basis_is_orthonormal_and_ordered_by_variance():
    s = low_rank_split()
    U = aug.pca_basis(np.ascontiguousarray(s.X.T), 8)
    assert U.shape == (40, 8)
    np.testing.assert_allclose(U.T @ U, np.eye(8), atol=1e-10)
    var = ((U.T @ s.X) ** 2).mean(axis=1)  # variance along each direction, (8,)
    assert np.all(np.diff(var) <= 0)
    # the same directions from an SVD, up to sign
    _, sv, Vt = np.linalg.svd(s.X.T, full_matrices=False)
    np.testing.assert_allclose(np.abs(U.T @ Vt[:8].T), np.eye(8), atol=1e-6)


def image_split(n=60, seed=8):
    """Zero-mean float64 images (D, n) with strong, not mirror-symmetric, structure."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((a.D, 5)) @ rng.standard_normal((5, n)) + 0.3 * rng.standard_normal(
        (a.D, n))
    X -= X.mean(axis=1, keepdims=True)
    return a.Split(np.asfortranarray(X), rng.integers(0, 10, n))


@pytest.fixture(scope="module")
def mirror_basis():
    """image_split()'s images (n, D) and their top 12 mirror-symmetric directions (D, 12): two
    eigendecompositions of (D/2, D/2), made once."""
    XT = np.ascontiguousarray(image_split().X.T)
    return XT, aug.pca_basis(XT, 12, mirror=True)


def test_the_mirror_basis_is_the_pca_of_the_images_and_their_mirror_images(mirror_basis):
    XT, U = mirror_basis
    np.testing.assert_allclose(U.T @ U, np.eye(12), atol=1e-10)
    both = np.concatenate([XT, XT[:, aug.mirror_index()]])  # (2n, D): the mirror images too
    var = ((both @ U) ** 2).mean(axis=0)  # (12,)
    top = np.linalg.eigvalsh(both @ both.T / both.shape[0])[::-1][:12]  # those of both^T both
    np.testing.assert_allclose(var, top, rtol=1e-8)  # the top 12, in order
    signs = aug.mirror_signs(U)
    np.testing.assert_allclose(XT[:, aug.mirror_index()] @ U, (XT @ U) * signs, atol=1e-10)


def test_mirror_signs_refuse_a_basis_that_is_neither_even_nor_odd():
    U = np.linalg.qr(np.random.default_rng(0).standard_normal((a.D, 6)))[0]  # orthonormal
    with pytest.raises(ValueError, match="mirror"):
        aug.mirror_signs(U)


@pytest.mark.parametrize("flip,shift", [(True, 3), (True, 0), (False, 2)])
def test_projected_batches_are_the_projected_augmented_images(mirror_basis, flip, shift):
    XT, U = mirror_basis
    x = st.Extras(flip=flip, shift=shift, pca=12)
    fast = wide.projected_batches(XT, U, x)
    windows = aug.augment_source(XT, flip, shift)
    for seed in range(3):
        idx = np.random.default_rng(seed).permutation(XT.shape[0])[:25]
        got = fast(idx, np.random.default_rng(seed))  # (k, B)
        rng = np.random.default_rng(seed)  # the pixel path's draws, in the same order
        f, (oy, ox) = rng.integers(0, 1 + flip, 25), rng.integers(0, 2 * shift + 1, (2, 25))
        want = (aug.augmented_batch(windows, idx, f, oy, ox) @ U).T
        np.testing.assert_allclose(got, want, atol=1e-10)


class LabelTeacher:
    """A teacher whose targets are the labels, one-hot, on the views the labels path draws."""

    def __init__(self, x):
        self.x, self.views = x, []

    def draw(self, idx, rng):
        f, oy, ox = aug.random_views(self.x, idx.size, rng)
        self.views.append(f)
        return f, oy, ox, None

    def targets(self, P, yb, extra):
        return np.eye(a.K, dtype=P.dtype)[:, yb]  # (K, B)


def test_a_teacher_of_one_hot_labels_trains_the_labels_network(mirror_basis):
    XT, U = mirror_basis
    s = a.Split(np.asfortranarray(XT.T), image_split().y)
    cfg = a.Config(m=7, lam=0.01, eta_max=0.01, n_s=6, n_batch=20, dtype="float64")
    x, teacher = st.Extras(pca=12, shift=2), LabelTeacher(st.Extras(pca=12, shift=2))
    runs = [wide.train_network(s, s, cfg, x, np.random.default_rng(5), U, log=lambda t: None,
                               teach=teach) for teach in (None, teacher)]
    (p0, h0), (p1, h1) = runs
    assert len(teacher.views) == 2 * cfg.n_s and set(np.concatenate(teacher.views)) == {0, 1}
    for k in p0:
        np.testing.assert_array_equal(p1[k], p0[k])
    assert h1["val_cost"] == h0["val_cost"] and h1["train_acc"] == h0["train_acc"]


def test_a_teacher_needs_the_principal_subspace():
    s = image_split()
    cfg = a.Config(m=7, n_s=6, n_batch=20, dtype="float64")
    x = st.Extras(pca=0)
    with pytest.raises(a.ConfigError, match="principal subspace"):
        wide.train_network(s, s, cfg, x, np.random.default_rng(5), log=lambda t: None,
                           teach=LabelTeacher(x))


def test_pca_variance_kept():
    s = low_rank_split()  # 6 strong directions plus noise of variance 0.01 in all 40
    XT = np.ascontiguousarray(s.X.T)

    def kept(k):
        return aug.pca_variance_kept(XT, aug.pca_basis(XT, k))

    assert kept(40) == pytest.approx(1.0)
    assert 0.98 < kept(6) < 1 and kept(1) < kept(2)


def test_training_in_the_full_pca_basis_equals_plain_training():
    """With k = d the basis is a rotation: gradient steps, the penalty and dropout commute with
    it, so training in it must give the same network back in pixel space."""
    s = low_rank_split()
    cfg = a.Config(m=9, lam=0.01, eta_max=0.05, n_s=15, n_batch=30, dtype="float64")
    x = st.Extras(optimizer="sgd", flip=False, shift=0, p_drop=0.2)
    U = aug.pca_basis(np.ascontiguousarray(s.X.T), 40)
    runs = [wide.train_network(s, s, cfg, replace(x, pca=k), np.random.default_rng(3), U, log=print)
            for k in (0, 40)]
    (p0, h0), (p1, h1) = runs
    assert p1["W1"].shape == (9, 40)
    for k in p0:
        np.testing.assert_allclose(p1[k], p0[k], atol=1e-9)
    np.testing.assert_allclose(h1["train_cost"], h0["train_cost"], rtol=1e-9)


def test_training_in_a_pca_subspace_keeps_w1_in_it():
    s = low_rank_split()
    cfg = a.Config(m=9, lam=0.01, eta_max=0.05, n_s=15, n_batch=30, dtype="float64")
    x = st.Extras(optimizer="nesterov", flip=False, shift=0, pca=6)
    U = aug.pca_basis(np.ascontiguousarray(s.X.T), 6)
    params, hist = wide.train_network(s, s, cfg, x, np.random.default_rng(3), U, log=print)
    W1 = params["W1"]  # (m, d), back in pixel space
    assert W1.shape == (9, 40)
    np.testing.assert_allclose(W1 - W1 @ U @ U.T, 0, atol=1e-12)
    # evaluation used the same network
    assert hist["val_acc"][-1] == a.evaluate(s.X, s.y, params, cfg.lam)["acc"]
    assert hist["val_cost"][-1] == pytest.approx(
        a.evaluate(s.X, s.y, params, cfg.lam)["cost"], rel=1e-9)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(p_drop=1.0), "p_drop"),
        (dict(shift=40), "shift"),
        (dict(pca=-1), "pca"),
        (dict(pca=a.D + 1), "pca"),
        (dict(optimizer="rmsprop"), "optimizer"),
        (dict(schedule="cos"), "schedule"),
        (dict(momentum=1.0), "momentum"),
    ],
)
def test_invalid_bonus_settings_refused(change, message):
    with pytest.raises(a.ConfigError, match=message):
        st.check_extras(replace(st.Extras(), **change))


# --------------------------------------------------------------------------------------------------
# The experiments (and the views and networks of networks they measure)

def test_concatenated_networks_average_the_scores_of_their_parts():
    rng = np.random.default_rng(0)
    nets = [a.init_params(12, m, rng) for m in (5, 7, 3)]
    for p in nets:
        p["b1"] += rng.standard_normal(p["b1"].shape)
        p["b2"] += rng.standard_normal(p["b2"].shape)
    X = rng.standard_normal((12, 9))

    def scores(p):  # eqs. 1-3
        return p["W2"] @ np.maximum(p["W1"] @ X + p["b1"], 0) + p["b2"]
    one = aug.concatenate(nets)
    assert one["W1"].shape == (15, 12) and one["W2"].shape == (10, 15)
    np.testing.assert_allclose(scores(one), sum(map(scores, nets)) / 3, rtol=1e-12, atol=1e-12)
    # and it is an ordinary network for the rest of the code
    P = sum(a.softmax(scores(p)) for p in nets) / 3
    assert not np.allclose(a.forward(X, one)[0], P)  # the mean of scores, not of probabilities
    np.testing.assert_allclose(a.forward(X, one)[0], a.softmax(sum(map(scores, nets)) / 3))


def test_the_ablation_measures_the_recipe_it_was_planned_on_whatever_lam_is_chosen_now():
    e = st.Exercise5()
    assert st.ablation(replace(e, lam=1.0), 45000) == st.ablation(e, 45000)
    assert st.ablation(e, 45000)["recipe"][0].lam == e.ablation_lam


def test_every_ablation_row_changes_one_thing_against_its_recipe_row():
    e = replace(st.Exercise5(), lam=st.Exercise5().ablation_lam)
    rows = st.ablation(e, 45000)
    assert rows["recipe"] == (*st.recipe(e, 45000), "recipe")
    base = f"recipe, {e.ablation_epochs} epochs"
    assert rows[base] == (*st.recipe(e, 45000, e.ablation_epochs), base)
    assert 2 * rows["recipe"][0].n_s == e.epochs * (45000 // e.batch)  # a partial batch dropped
    budgets = {f"{e.ablation_epochs // 2} epochs": 0.5, f"{e.ablation_epochs * 3 // 2} epochs": 1.5}
    for name, (c, y, against) in rows.items():
        a.check_config(c, 45000)
        st.check_extras(y)
        ref_c, ref_x, _ = rows[against]
        scale = budgets.get(name, 1.0)
        assert st.epochs_of(c, 45000) == pytest.approx(scale * st.epochs_of(ref_c, 45000), rel=1e-3)
        changed = {k for k, v in (asdict(c) | asdict(y)).items()
                   if v != (asdict(ref_c) | asdict(ref_x))[k]}
        changed -= {"n_s", "n_cycles", "evals_per_cycle", "eta_max", "schedule"}
        assert len(changed) <= 1 or (name.startswith("no augmentation")
                                     and changed == {"flip", "shift"}), (name, changed)
        assert changed or name in budgets or name == against, name
    assert sum(against == "recipe" for *_, against in rows.values()) == 4  # at both budgets


def test_the_summary_pools_the_spread_of_one_run():
    def run(acc):
        return {"val_acc": acc, "diverged": False, "seconds": 60}
    rows = {"recipe": {"against": "recipe", "runs": [run(0.70), run(0.72), run(0.71)]},
            "x": {"against": "recipe", "runs": [run(0.66), run(0.68)]},
            "y": {"against": "recipe", "runs": [run(0.73)]}}
    out = steps.summary(rows)
    pooled = math.sqrt((0.0002 + 0.0002) / 3)  # squares about the means: 2e-4 and 2e-4
    assert out["pooled_std"] == pytest.approx(pooled) and out["pooled_dof"] == 3
    assert rows["x"]["diff"] == pytest.approx(-0.04)
    assert rows["x"]["se"] == pytest.approx(pooled * math.sqrt(1 / 2 + 1 / 3))
    assert rows["y"]["std"] is None and rows["y"]["se"] == pytest.approx(pooled * math.sqrt(4 / 3))
    assert rows["recipe"]["diff"] is None and rows["recipe"]["std"] == pytest.approx(0.01)


def test_the_gains_are_the_parts_taken_away_largest_first():
    def row(diff, se=0.004, epochs=70):
        return {"against": "recipe", "epochs": epochs, "diff": diff, "se": se}
    rows = {"recipe": row(None, None), "no augmentation": row(-0.10),
            "dropout 0.3": row(-0.20),  # added to the recipe, not taken away
            "m=2048": row(0.01), "mirroring only": row(-0.07), "35 epochs": row(-0.02, epochs=35)}
    out = steps.gains(rows, st.parts(st.Exercise5()))
    assert [g["row"] for g in out] == ["no augmentation", "mirroring only", "35 epochs", "m=2048"]
    assert [g["gain"] for g in out] == [0.10, 0.07, 0.02, -0.01] and out[0]["se"] == 0.004
    assert out[2]["epochs"] == 70  # the budget of the recipe row it is measured against
    assert out[0]["part"] == "mirroring and shifts"


def test_every_part_names_a_row_of_the_ablation():
    e, again = st.Exercise5(), ", 140 epochs"  # a part's row at the full budget, where run
    rows, named = st.ablation(e, 45000), st.parts(e)
    assert {n for n in named if not n.endswith(again)} <= set(rows)
    assert "no augmentation" + again in named and "no augmentation" + again in rows


def test_test_time_views_are_the_moved_and_mirrored_images():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((a.D, 6)).astype(np.float32)
    y = rng.integers(0, a.K, 6)
    params = a.init_params(a.D, 7, rng, "float32")
    views = aug.views(2)
    assert list(views) == ["plain", "mirrored", "mirrored, moved 1", "mirrored, moved 2"]
    imgs = X.T.reshape(6, 3, 32, 32)
    ref = 0
    for f, dy, dx in views["mirrored, moved 2"]:
        img = imgs[..., ::-1] if f else imgs
        pad = np.pad(img, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="edge")
        moved = pad[:, :, 2 - dy:34 - dy, 2 - dx:34 - dx]  # moved down dy, right dx
        ref = ref + a.forward(moved.reshape(6, a.D).T, params)[0]
    acc = aug.view_accuracy(a.Split(X, y), params, views["mirrored, moved 2"])
    assert acc == np.mean(np.argmax(ref, axis=0) == y)


def test_view_sets_measured_together_are_each_measured_alone():
    rng = np.random.default_rng(3)
    d = a.Split(rng.standard_normal((a.D, 30)).astype(np.float32), rng.integers(0, a.K, 30))
    params = a.init_params(a.D, 8, rng, "float32")
    sets = aug.views(2)
    assert aug.view_accuracies(d, params, sets, chunk=7) == {
        name: aug.view_accuracy(d, params, v, chunk=7) for name, v in sets.items()}


def test_the_plain_view_is_the_trainers_accuracy():
    rng = np.random.default_rng(2)
    d = a.Split(rng.standard_normal((a.D, 50)), rng.integers(0, a.K, 50))
    params = a.init_params(a.D, 9, rng)
    assert aug.view_accuracy(d, params, aug.views(0)["plain"], chunk=20) == a.evaluate(
        d.X, d.y, params, 0.0)["acc"]


def test_validation_alone_chooses_the_evaluation(monkeypatch):
    va, te = (a.Split(np.zeros((a.D, 4)), np.zeros(4, int)) for _ in range(2))
    val = {"plain": 0.5, "mirrored": 0.6, "mirrored, moved 1": 0.6, "mirrored, moved 2": 0.55}
    seen = []

    def fake(d, params, sets):  # the accuracy each evaluation would have; which split asked
        seen.extend((d is te, name) for name in sets)
        return {name: val[name] if d is va else 0.1 * list(val).index(name) for name in sets}
    monkeypatch.setattr(aug, "view_accuracies", fake)
    res = aug.measure({}, (None, va, te), 2)
    # the first of the best on validation: mirrored
    assert res["evaluation"] == "mirrored" and res["test_acc_chosen"] == 0.1
    assert {name for on_test, name in seen if on_test} == {"plain", "mirrored"}
    res = aug.measure({}, (None, va, te), 2, evaluation="mirrored, moved 2")
    assert res["test_acc_chosen"] == pytest.approx(0.3) and (True, "mirrored, moved 2") in seen
