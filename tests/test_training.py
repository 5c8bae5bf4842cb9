"""The trainer, its refusals, divergence handling, and the search."""

import weakref
from dataclasses import replace

import numpy as np
import pytest

import assignment2 as a


def blobs(n, d=20, seed=0):
    """Ten well separated Gaussian clusters: learnable in a few hundred steps."""
    rng = np.random.default_rng(seed)
    centres = 3 * rng.standard_normal((d, a.K))
    y = rng.integers(0, a.K, n)
    X = centres[:, y] + rng.standard_normal((d, n))
    return a.Split(np.asfortranarray(X), y)


QUIET = dict(log=lambda s: None)


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(n_s=0), "n_s=0"),
        (dict(eta_min=0.2, eta_max=0.1), "eta_min <= eta_max"),
        (dict(n_batch=1000), "n_batch"),
        (dict(lam=-1e-3), "lam="),
        (dict(m=0), "m=0"),
        (dict(n_cycles=0), "n_cycles"),
        (dict(dtype="float16"), "dtype"),
        (dict(eta_min=0.0), "0 < eta_min"),
    ],
)
def test_invalid_hyper_parameters_refused_before_training(change, message):
    data = blobs(200)
    cfg = replace(a.Config(n_s=10), **change)
    with pytest.raises(a.ConfigError, match=message):
        a.run(data, data, cfg, np.random.default_rng(0), **QUIET)


def test_training_learns_and_records_about_ten_points_per_cycle():
    tr, va = blobs(1000, seed=1), blobs(300, seed=1)
    va = a.Split(np.asfortranarray(va.X), va.y)
    cfg = a.Config(m=20, lam=1e-3, eta_min=1e-4, eta_max=0.1, n_s=50, n_cycles=2, n_batch=50)
    params, hist = a.run(tr, va, cfg, np.random.default_rng(0), **QUIET)
    assert hist["step"] == list(range(0, 201, 10))
    assert hist["train_loss"][-1] < 0.5 * hist["train_loss"][0]
    assert hist["val_acc"][-1] > 0.9
    assert all(p.dtype == np.float32 for p in params.values())
    cost = np.array(hist["train_cost"]) - np.array(hist["train_loss"])
    assert np.all(cost > 0)  # the L2 term is part of the cost


def test_float32_and_float64_training_agree():
    tr = blobs(500, seed=2)
    cfg = a.Config(m=16, lam=1e-3, n_s=25, n_batch=20)
    h32 = a.run(tr, tr, cfg, np.random.default_rng(5), **QUIET)[1]
    h64 = a.run(tr, tr, replace(cfg, dtype="float64"), np.random.default_rng(5), **QUIET)[1]
    np.testing.assert_allclose(h32["train_loss"], h64["train_loss"], rtol=1e-3)


def test_same_seed_same_run_other_seed_other_run():
    tr = blobs(300, seed=3)
    cfg = a.Config(m=8, n_s=15, n_batch=20)
    one = a.run(tr, tr, cfg, np.random.default_rng(7), **QUIET)[1]
    two = a.run(tr, tr, cfg, np.random.default_rng(7), **QUIET)[1]
    three = a.run(tr, tr, cfg, np.random.default_rng(8), **QUIET)[1]
    # the wall clock is the one thing two runs of a seed may differ in
    assert len(one["seconds"]) == len(one["step"])
    assert a.without_clock(one) == a.without_clock(two)
    assert one["train_loss"] != three["train_loss"]


def test_every_epoch_is_reshuffled(monkeypatch):
    seen = []
    real = a.backward
    monkeypatch.setattr(
        a, "backward", lambda X, y, *args, **kw: (seen.append(y.copy()), real(X, y, *args, **kw))[1]
    )
    tr = blobs(40, seed=4)
    # 8 steps = 2 epochs
    a.run(tr, tr, a.Config(m=4, n_s=4, n_batch=10), np.random.default_rng(0), **QUIET)
    first, second = np.concatenate(seen[:4]), np.concatenate(seen[4:])
    assert sorted(first) == sorted(tr.y) == sorted(second)  # each epoch sees every image once
    assert list(first) != list(second)


def test_overfit_sanity_check_on_cifar(shared_data):
    """Exercise 2: 100 images, lam=0, 200 epochs: the training loss goes (nearly) to zero."""
    s = a.load_batch(shared_data / "data_batch_1")
    (small,) = a.normalise(a.Split(s.X[:, :100], s.y[:100]), dtype="float32")
    _, hist = a.run(small, small, a.Plan().overfit, np.random.default_rng(0), **QUIET)
    assert hist["train_loss"][0] > 2.0
    assert hist["train_loss"][-1] < 0.01
    assert hist["train_acc"][-1] == 1.0


def test_divergence_stops_the_run_with_its_settings():
    tr = blobs(200, seed=5)
    cfg = a.Config(m=10, eta_min=1e3, eta_max=1e4, n_s=20, n_batch=20)
    with pytest.raises(a.Diverged, match=r"non-finite cost.*eta_max=10000"):
        a.run(tr, tr, cfg, np.random.default_rng(0), **QUIET)


def test_search_records_trials_and_diverged_ones_go_on():
    tr, va = blobs(400, seed=6), blobs(100, seed=7)
    base = a.Config(m=8, eta_min=1e4, eta_max=1e5, n_s=10, n_batch=20, eval_train=False)
    trials = a.search("coarse", [1e-3, 1e-2], base, tr, va, 0, **QUIET)
    assert [t["diverged"] for t in trials] == [True, True]
    assert [t["lam"] for t in trials] == [1e-3, 1e-2]
    assert a.top_trials(trials) == []


def test_the_default_step_is_eqs_10_to_15():
    """One update of train() equals W - eta_t (dL/dW + 2 lam W), eta_t of eq. 14, by hand."""
    tr = blobs(20, seed=8)
    cfg = a.Config(m=5, lam=0.1, eta_min=0.01, eta_max=0.11, n_s=4, n_batch=20, dtype="float64")
    params = a.init_params(20, 5, np.random.default_rng(0))
    before = {k: v.copy() for k, v in params.items()}
    a.sgd_step(params, tr.X, tr.y, 1, cfg, None)
    g = a.grads_analytic(tr.X, tr.y, before, 0.0)
    eta = 0.01 + 1 / 4 * 0.1  # eq. 14 at t = 1
    for k in params:
        decay = 2 * cfg.lam * before[k] if k.startswith("W") else 0
        np.testing.assert_allclose(params[k], before[k] - eta * (g[k] + decay), rtol=1e-12)


def test_fine_range_is_one_grid_step_around_the_best():
    plan = a.Plan()
    trials = [
        {"lam": lam, "val_acc": acc, "diverged": False}
        for lam, acc in zip(
            10 ** np.linspace(-5, -1, 8), [0.40, 0.41, 0.45, 0.50, 0.47, 0.44, 0.42, 0.30]
        )
    ]
    lo, hi = a.fine_range(trials, plan)
    l_best = np.log10(trials[3]["lam"])
    assert (lo, hi) == pytest.approx((l_best - 4 / 7, l_best + 4 / 7))
    assert [t["val_acc"] for t in a.top_trials(trials)] == [0.50, 0.47, 0.45]
    trials[0]["val_acc"] = 0.9
    assert a.fine_range(trials, plan)[0] == -5.0  # clipped to the coarse range


def test_the_last_set_of_splits_is_freed_before_the_next_is_loaded(tiny_cifar, tmp_path):
    folder, _ = tiny_cifar
    plan = replace(a.quick_plan(), limit=None, n_val_search=20, n_val_final=10, coarse_n=2)
    ctx = a.Context(folder, tmp_path / "out", plan, log=lambda s: None)
    ctx.need("coarse")  # trains on the search splits and plots the search
    alive = weakref.ref(ctx.data("search")[0])
    ctx.data("final")
    assert alive() is None  # one set of splits in memory at a time
