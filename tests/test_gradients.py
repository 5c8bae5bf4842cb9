"""Analytic gradients (eqs. 12-13) against torch autograd and centred finite differences
(float64)."""

import numpy as np
import pytest

import assignment2 as a


def random_problem(d, n, m, seed):
    rng = np.random.default_rng(seed)
    X, y = rng.standard_normal((d, n)), rng.integers(0, a.K, n)
    params = a.init_params(d, m, rng, "float64")
    params["b1"] += 0.1 * rng.standard_normal(params["b1"].shape)
    params["b2"] += 0.1 * rng.standard_normal(params["b2"].shape)
    return X, y, params


@pytest.mark.parametrize("d,n,m", [(5, 3, 6), (20, 10, 15), (50, 7, 4), (3072, 4, 8)])
@pytest.mark.parametrize("lam", [0.0, 0.1])
def test_analytic_matches_torch(d, n, m, lam):
    X, y, params = random_problem(d, n, m, seed=d + n + m)
    ours = a.grads_analytic(X, y, params, lam)
    theirs = a.grads_torch(X, y, params, lam)
    for k in params:
        assert ours[k].shape == params[k].shape
        assert a.rel_error(ours[k], theirs[k]) < 1e-7, k


@pytest.mark.parametrize("d,n,m", [(5, 3, 6), (20, 10, 15), (12, 8, 3)])
@pytest.mark.parametrize("lam", [0.0, 0.05])
def test_analytic_matches_finite_differences(d, n, m, lam):
    X, y, params = random_problem(d, n, m, seed=7 * d + n)
    # a finite difference across a ReLU kink is wrong by design: these problems have none within
    # reach of h
    assert np.abs(params["W1"] @ X + params["b1"]).min() > 1e-3
    ours = a.grads_analytic(X, y, params, lam)
    numerical = a.grads_numerical(X, y, params, lam)
    for k in params:
        assert a.rel_error(ours[k], numerical[k]) < 1e-6, k


def test_a_wrong_gradient_is_caught():
    """The check has teeth: dropping the penalty's factor 2 shows up as a large error."""
    X, y, params = random_problem(5, 3, 6, seed=1)
    ours = a.grads_analytic(X, y, params, 0.1)
    ours["W1"] -= 0.1 * params["W1"]  # as if the gradient of lam * W**2 were lam * W
    assert a.rel_error(ours["W1"], a.grads_torch(X, y, params, 0.1)["W1"]) > 1e-3


def test_backward_leaves_its_inputs_alone():
    X, y, params = random_problem(6, 5, 4, seed=2)
    P, H = a.forward(X, params)
    copies = [P.copy(), H.copy(), X.copy()] + [p.copy() for p in params.values()]
    a.backward(X, y, P, H, params, 0.1)
    for before, after in zip(copies, [P, H, X, *params.values()]):
        np.testing.assert_array_equal(before, after)


def test_gradcheck_reports_every_parameter():
    rows = a.gradcheck(np.random.default_rng(0), settings=((5, 3, 6, 0.0), (5, 3, 6, 0.1)))
    assert [r["param"] for r in rows] == ["W1", "b1", "W2", "b2"] * 2
    assert max(r["vs_torch"] for r in rows) < 1e-7
    assert max(r["vs_numerical"] for r in rows) < 1e-6


def test_backward_with_one_hot_targets_is_backward_with_labels():
    X, y, params = random_problem(20, 10, 15, seed=4)
    P, H = a.forward(X, params)
    Y = np.eye(a.K)[:, y]  # (K, n)
    by_labels, by_targets = (a.backward(X, t, P, H, params, 0.1) for t in (y, Y))
    for k in params:
        np.testing.assert_array_equal(by_targets[k], by_labels[k])


def test_backward_with_soft_targets_matches_finite_differences():
    """J = -sum Y log P / n + lam ||W||^2 for targets Y that are not one-hot."""
    X, _, params = random_problem(6, 5, 4, seed=5)
    Y = np.random.default_rng(5).dirichlet(np.ones(a.K), 5).T  # (K, n), columns sum to 1
    ours = a.grads_analytic(X, Y, params, 0.1)
    numerical = a.grads_numerical(X, Y, params, 0.1, h=1e-5)
    for k in params:
        assert a.rel_error(ours[k], numerical[k]) < 1e-6, k
