"""Initialisation, forward pass, cost and the learning-rate schedule."""

import math

import numpy as np
import pytest

import assignment2 as a


def test_init_statistics():
    rng = np.random.default_rng(0)
    p = a.init_params(3072, 50, rng, "float32")
    assert {k: v.shape for k, v in p.items()} == {
        "W1": (50, 3072),
        "b1": (50, 1),
        "W2": (10, 50),
        "b2": (10, 1),
    }
    assert all(v.dtype == np.float32 for v in p.values())
    assert abs(p["W1"].mean()) < 3 / math.sqrt(p["W1"].size) / math.sqrt(3072)
    assert p["W1"].std() == pytest.approx(1 / math.sqrt(3072), rel=0.02)
    assert p["W2"].std() == pytest.approx(1 / math.sqrt(50), rel=0.1)
    assert not p["b1"].any() and not p["b2"].any()


def test_init_is_reproducible_from_the_generator():
    one = a.init_params(30, 5, np.random.default_rng(3))
    two = a.init_params(30, 5, np.random.default_rng(3))
    for k in one:
        np.testing.assert_array_equal(one[k], two[k])


def test_softmax_is_stable_and_normalised():
    S = np.array([[1000.0, -1000.0], [999.0, -1001.0], [0.0, -5000.0]])
    P = a.softmax(S)
    assert np.all(np.isfinite(P))
    np.testing.assert_allclose(P.sum(axis=0), 1)
    np.testing.assert_allclose(
        P[:2, 0], [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))]
    )


def test_forward_shapes_and_initial_loss_near_log_k():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((3072, 500))
    y = rng.integers(0, 10, 500)
    params = a.init_params(3072, 50, rng)
    P, H = a.forward(X, params)
    assert P.shape == (10, 500) and H.shape == (50, 500)
    assert np.all(H >= 0)
    res = a.evaluate(X, y, params, lam=0.0)
    # cs231n's sanity check: chance-level loss
    assert res["loss"] == pytest.approx(math.log(10), abs=0.3)
    assert res["cost"] == res["loss"]
    assert a.evaluate(X, y, params, lam=0.1)["cost"] == pytest.approx(
        res["loss"] + 0.1 * (np.sum(params["W1"] ** 2) + np.sum(params["W2"] ** 2))
    )


def test_evaluate_in_chunks_equals_one_pass():
    rng = np.random.default_rng(2)
    X, y = rng.standard_normal((20, 103)), rng.integers(0, 10, 103)
    params = a.init_params(20, 7, rng)
    whole, chunked = (
        a.evaluate(X, y, params, 0.01, chunk=1000),
        a.evaluate(X, y, params, 0.01, chunk=10),
    )
    assert whole["acc"] == chunked["acc"]
    assert whole["loss"] == pytest.approx(chunked["loss"], rel=1e-12)
    assert whole["acc"] == np.mean(a.predict(X, params) == y)


@pytest.mark.parametrize("n_s", [500, 800, 7])
def test_cyclic_schedule_values(n_s):
    lo, hi = 1e-5, 1e-1

    def eta(t):
        return a.cyclic_eta(t, lo, hi, n_s)

    assert eta(0) == lo
    assert eta(n_s) == pytest.approx(hi)
    assert eta(2 * n_s) == pytest.approx(lo)
    assert eta(3 * n_s) == pytest.approx(hi)
    if n_s % 2 == 0:
        assert eta(n_s // 2) == pytest.approx((lo + hi) / 2)
        assert eta(3 * n_s // 2) == pytest.approx((lo + hi) / 2)
    steps = np.array([eta(t) for t in range(4 * n_s + 1)])
    assert steps.min() >= lo - 1e-15 and steps.max() <= hi + 1e-15
    np.testing.assert_allclose(np.diff(steps[: n_s + 1]), (hi - lo) / n_s)  # eq. 14: linear rise
    # eq. 15: linear fall
    np.testing.assert_allclose(np.diff(steps[n_s : 2 * n_s + 1]), -(hi - lo) / n_s)


def test_eval_steps_about_ten_per_cycle():
    steps = a.eval_steps(a.Config(n_s=500, n_cycles=1))
    assert steps == list(range(0, 1001, 100))
    steps = a.eval_steps(a.Config(n_s=800, n_cycles=3, evals_per_cycle=9))
    assert steps[0] == 0 and steps[-1] == 4800 and len(steps) == 28
