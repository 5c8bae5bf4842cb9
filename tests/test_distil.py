"""Exercise 5's distillation: the student's loss and its gradient (the P - Q of eq. 12), the
teacher's soft targets and views, and the convolutional teacher (teacher.py)."""

from dataclasses import replace

import numpy as np
import pytest
import torch

import assignment2 as a
from bonus import augment as aug
from bonus import distil as dist
from bonus import distil_step
from bonus import settings as st
from bonus import teacher as T


def problem(d=7, n=6, m=5, seed=3):
    """A float64 two-layer network, data and a teacher's scores (K, n)."""
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((d, n)), rng.integers(0, a.K, n)
    params = a.init_params(d, m, rng, "float64")
    params["b1"] += 0.1 * rng.standard_normal((m, 1))
    params["b2"] += 0.1 * rng.standard_normal((a.K, 1))
    return X, y, params, 3 * rng.standard_normal((a.K, n))


def ours(X, y, params, Zt, temperature, alpha, lam, loss):
    P, H = a.forward(X, params)
    Y = dist.targets(P, Zt, y, temperature, alpha, loss)  # (K, n)
    return a.backward(X, Y, P, H, params, lam)


SETTINGS = [(1.0, 1.0, 0.0, "softmax"), (1.0, 0.5, 0.1, "softmax"), (3.0, 0.7, 0.01, "softmax"),
            (0.5, 1.0, 0.0, "softmax"), (1.0, 1.0, 0.0, "logits"), (1.0, 0.25, 0.01, "logits")]


@pytest.mark.parametrize("temperature,alpha,lam,loss", SETTINGS)
def test_the_distillation_gradient_matches_torch_autograd(temperature, alpha, lam, loss):
    X, y, params, Zt = problem()
    got, want = (f(X, y, params, Zt, temperature, alpha, lam, loss)
                 for f in (ours, dist.distillation_grads_torch))
    for k in params:
        assert a.rel_error(got[k], want[k]) < 1e-7, k


@pytest.mark.parametrize("temperature,alpha,lam,loss", SETTINGS)
def test_the_distillation_gradient_matches_finite_differences(temperature, alpha, lam, loss):
    X, y, params, Zt = problem(seed=4)
    got = ours(X, y, params, Zt, temperature, alpha, lam, loss)
    want = a.grads_numerical(X, y, params, lam, h=1e-5, loss=lambda P: dist.distillation_loss(
        P, Zt, y, temperature, alpha, loss))
    for k in params:
        assert a.rel_error(got[k], want[k]) < 1e-6, k


def test_the_squared_error_ignores_a_constant_added_to_the_teachers_scores():
    X, y, params, Zt = problem()
    P, _ = a.forward(X, params)
    np.testing.assert_allclose(dist.logit_targets(P, Zt, y, 0.5),
                               dist.logit_targets(P, Zt + 7.0, y, 0.5), atol=1e-12)


def test_the_distillation_gradcheck_reports_every_parameter_and_setting():
    rows = dist.distillation_gradcheck(np.random.default_rng(0))
    assert [r["param"] for r in rows] == ["W1", "b1", "W2", "b2"] * 3
    assert {(r["T"], r["loss"]) for r in rows} == {(1.0, "softmax"), (3.0, "softmax"),
                                                   (1.0, "logits")}
    assert all(r["vs_torch"] < 1e-7 and r["vs_numerical"] < 1e-6 for r in rows)


def test_at_temperature_one_the_targets_mix_the_labels_and_the_teacher():
    X, y, params, Zt = problem()
    P, _ = a.forward(X, params)
    Y = dist.distillation_targets(P, Zt, y, 1.0, 0.3)
    np.testing.assert_allclose(Y, 0.7 * np.eye(a.K)[:, y] + 0.3 * a.softmax(Zt), atol=1e-15)
    np.testing.assert_array_equal(dist.distillation_targets(P, Zt, y, 2.0, 0.0),
                                  np.eye(a.K)[:, y])


def test_target_views_are_distinct_and_start_with_the_plain_image():
    x = st.Extras(shift=2)
    views = dist.target_views(50, 8, x, np.random.default_rng(0))  # (n, V, 3)
    assert views.shape == (50, 8, 3)
    np.testing.assert_array_equal(views[:, 0], [[0, 2, 2]] * 50)
    assert all(len({tuple(v) for v in image}) == 8 for image in views)
    assert views[..., 0].max() == 1 and views[..., 1:].max() == 4
    with pytest.raises(a.ConfigError, match="views"):
        dist.target_views(5, 51, x, np.random.default_rng(0))  # 2 x 25 views there are


def distillation(per_view, n=30, V=4):
    rng = np.random.default_rng(1)
    x = st.Extras(shift=1)
    views = dist.target_views(n, V, x, rng)
    scores = rng.standard_normal((n, V, a.K)).astype(np.float16)
    return dist.Distillation(views, scores, x, 2.0, 0.5, per_view, {"teacher": "t"}), views, scores


def test_a_view_drawn_comes_with_the_teachers_scores_of_that_view_where_it_was_scored():
    x = st.Extras(shift=1)
    every = dist.grid_views(x, 1)  # (18, 3)
    scores = np.random.default_rng(0).standard_normal((5, 18, a.K)).astype(np.float16)
    d = dist.Distillation(np.broadcast_to(every, (5, 18, 3)), scores, x, 2.0, 0.5, True, {})
    idx = np.array([3, 1, 1, 4, 0, 2])
    f, oy, ox, Zt = d.draw(idx, np.random.default_rng(2))
    for j, i in enumerate(idx):
        v = [tuple(w) for w in every].index((f[j], oy[j], ox[j]))
        np.testing.assert_array_equal(Zt[:, j], scores[i, v])


def test_a_view_not_scored_comes_with_the_scores_of_the_nearest_scored_view():
    views = np.array([[[0, 1, 1], [0, 3, 3], [1, 1, 1]]], np.uint8)  # (1, 3, 3)
    f, oy, ox = np.array([0, 0, 1, 0, 1]), np.array([0, 3, 3, 2, 0]), np.array([1, 2, 3, 2, 0])
    got = dist.nearest_view(np.repeat(views, 5, axis=0), f, oy, ox)
    np.testing.assert_array_equal(got, [0, 1, 2, 0, 2])  # a mirror image stays mirrored


def test_grid_views_start_plain_and_leave_no_view_more_than_a_pixel_away():
    x = st.Extras(shift=3)
    g = dist.grid_views(x, 2)
    assert len(g) == 18 and tuple(g[0]) == (0, 3, 3) and len({tuple(v) for v in g}) == 18
    every = dist.grid_views(x, 1)
    assert len(every) == aug.view_count(x) == 98
    near = g[dist.nearest_view(np.broadcast_to(g, (98, 18, 3)), *every.T.astype(int))]
    assert np.all(near[:, 0] == every[:, 0])
    assert np.abs(near[:, 1:].astype(int) - every[:, 1:]).max() == 1


def test_targets_agree_fully_with_the_scores_they_are_made_of_and_less_with_a_mean():
    x = st.Extras(shift=1)
    every = dist.grid_views(x, 1)  # (18, 3)
    S = (3 * np.random.default_rng(0).standard_normal((4, 18, a.K))).astype(np.float16)
    exact = dist.agreement(every, S, dist.Distillation(
        np.broadcast_to(every, (4, 18, 3)), S, x, 1.0, 1.0, True, None))
    assert exact["kl"] == pytest.approx(0, abs=1e-9) and exact["same_class"] == 1
    mean = dist.agreement(every, S, dist.Distillation(
        np.broadcast_to(every, (4, 18, 3)), S, x, 1.0, 1.0, False, None))
    assert mean["kl"] > 0.1 and mean["same_class"] < 1


def test_any_view_comes_with_the_teachers_mean_over_its_views():
    d, views, scores = distillation(per_view=False)
    idx = np.array([3, 7])
    *_, Zt = d.draw(idx, np.random.default_rng(2))
    mean = np.mean(a.softmax(scores[idx].astype(np.float32).transpose(2, 0, 1)), axis=2)  # (K, B)
    np.testing.assert_allclose(a.softmax(Zt), mean, rtol=1e-5)


def test_a_distillations_key_names_its_settings_and_scores():
    d, *_ = distillation(per_view=True)
    assert d.key == {"scores": {"teacher": "t"}, "T": 2.0, "alpha": 0.5, "per_view": True}
    with pytest.raises(a.ConfigError, match="alpha"):
        dist.Distillation(*distillation(True)[1:], st.Extras(), 1.0, 1.5, True, {})


def test_the_squared_error_distillation_names_its_loss_in_its_key_and_uses_it():
    _, views, scores = distillation(per_view=True)
    d = dist.Distillation(views, scores, st.Extras(shift=1), 2.0, 0.5, True, {}, loss="logits")
    assert d.key["loss"] == "logits"
    rng = np.random.default_rng(0)
    P, y, Zt = a.softmax(rng.standard_normal((a.K, 4))), np.array([1, 2, 3, 4]), scores[:4, 0].T
    np.testing.assert_array_equal(d.targets(P, y, Zt), dist.logit_targets(
        P, Zt.astype(P.dtype), y, 0.5))
    with pytest.raises(a.ConfigError, match="loss"):
        dist.Distillation(views, scores, st.Extras(shift=1), 2.0, 0.5, True, {}, loss="l1")


# --------------------------------------------------------------------------------------------------
# The teacher

def test_the_teachers_learning_rate_is_a_triangle():
    tc = T.TeacherConfig(lr=0.4, warmup=0.25)
    lrs = [T.learning_rate(t, 100, tc) for t in range(101)]
    assert lrs[0] == 0 and lrs[25] == pytest.approx(0.4) and lrs[100] == 0
    assert max(lrs) == lrs[25] and lrs[10] == pytest.approx(0.16)
    assert lrs[75] == pytest.approx(0.4 / 3)


def test_the_whitening_filters_decorrelate_the_patches():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((40, 3, 32, 32)).astype(np.float32)
    X = torch.from_numpy(base + np.roll(base, 1, axis=3) + 0.5 * base[:, ::-1])  # correlated
    layer = torch.nn.Conv2d(3, 24, 2)
    T.init_whitening(layer, X, eps=1e-9)
    with torch.no_grad():
        out = torch.nn.functional.conv2d(X, layer.weight[:12])  # (n, 12, 31, 31)
    flat = out.permute(1, 0, 2, 3).reshape(12, -1).double()
    np.testing.assert_allclose((flat @ flat.T / flat.shape[1]).numpy(), np.eye(12), atol=1e-3)


def test_invalid_teacher_settings_refused():
    with pytest.raises(a.ConfigError, match="width"):
        T.check_teacher(replace(T.TeacherConfig(), width=0))


def tiny_images(n=120, seed=0):
    """Images (D, n) whose class is the sign pattern of their colour channels' means."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, a.K, n)
    X = rng.standard_normal((a.D, n)).astype(np.float32)
    X.reshape(3, 1024, n)[0] += (y % 2) * 2 - 1.0
    X.reshape(3, 1024, n)[1] += (y // 5) * 2 - 1.0
    return a.Split(np.asfortranarray(X), y)


TINY = T.TeacherConfig(width=4, epochs=5, batch=40, lr=0.5)


def test_the_teacher_learns_and_keeps_its_best_epoch():
    tr = tiny_images()
    state, hist = T.train_teacher(tr, tr, TINY, 0, log=lambda s: None)
    assert hist["epoch"] == [1, 2, 3, 4, 5] and hist["val_acc"][-1] > 0.3
    best = int(np.argmax(hist["val_acc"]))
    assert T.accuracy(T.load_net(state, TINY), tr) == hist["val_acc"][best]


def test_a_teacher_cut_short_resumes_to_the_same_network(tmp_path):
    tr, said = tiny_images(), []
    progress = (tmp_path / "teacher.progress.npz", {"run": 1})
    whole, hist = T.train_teacher(tr, tr, TINY, 0, log=lambda s: None)

    def stop_after_epoch_2(line):
        said.append(line)
        if line.startswith("teacher epoch  2/"):
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        T.train_teacher(tr, tr, TINY, 0, progress, log=stop_after_epoch_2)
    resumed, hist2 = T.train_teacher(tr, tr, TINY, 0, progress, log=said.append)
    assert any("resumed the teacher after epoch 1" in s for s in said)
    for k in whole:
        np.testing.assert_array_equal(resumed[k], whole[k])
    assert hist2["val_acc"] == hist["val_acc"]


def test_the_teachers_scores_of_views_are_those_of_the_moved_images():
    tr = tiny_images(n=6)
    state, _ = T.train_teacher(tr, tr, replace(TINY, epochs=1, batch=6), 0, log=lambda s: None)
    net = T.load_net(state, TINY)
    views = dist.target_views(6, 3, st.Extras(shift=2), np.random.default_rng(0))
    got = T.teacher_logits(net, tr.X, views, shift=2, chunk=4)  # (n, V, K)
    windows = aug.augment_source(np.ascontiguousarray(tr.X.T), True, 2)
    for i in range(6):
        for v, (f, oy, ox) in enumerate(views[i]):
            image = windows[f, i, :, oy, ox].reshape(1, a.D)
            np.testing.assert_allclose(got[i, v], T.scores(net, image)[0], rtol=2e-3, atol=2e-3)


def test_the_batch_norms_shifts_learn_faster_with_the_same_decay():
    tc = replace(TINY, bias_scale=8.0, weight_decay=1e-3)
    net = T.make_net(tc)
    shifts, rest = T.optimizer(net, tc).param_groups
    bn = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(p) for p in shifts["params"]} == {id(m.bias) for m in bn}
    assert (shifts["scale"], rest["scale"]) == (8.0, 1.0)
    assert shifts["scale"] * shifts["weight_decay"] == pytest.approx(rest["weight_decay"])


def test_scoring_cut_short_resumes_and_scores_each_image_once(tmp_path):
    full = np.random.default_rng(0).standard_normal((23, 4, a.K)).astype(np.float16)
    asked = []

    def score(i, j, stop_at=None):
        if i == stop_at:
            raise KeyboardInterrupt
        asked.append((i, j))
        return full[i:j]
    progress, log = (tmp_path / "scores-x.progress.npz", {"views": 4}), lambda s: None
    with pytest.raises(KeyboardInterrupt):
        distil_step.score_views(lambda i, j: score(i, j, stop_at=15), (23, 4), progress, log,
                                chunk=5, every=0.0)
    assert asked == [(0, 5), (5, 10), (10, 15)]
    out, _ = distil_step.score_views(score, (23, 4), progress, log, chunk=5, every=0.0)
    assert asked[3:] == [(15, 20), (20, 23)] and np.array_equal(out, full)
