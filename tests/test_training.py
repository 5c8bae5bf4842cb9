"""The trainer, its refusals, divergence handling, and the resumable search."""

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

import assignment2 as a
import runfiles


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
    assert hist["eta"][5] == pytest.approx(0.1) and hist["eta"][10] == pytest.approx(1e-4)
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
    assert runfiles.without_clock(one) == runfiles.without_clock(two)
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


def search_setup(tmp_path):
    tr, va = blobs(400, seed=6), blobs(100, seed=7)
    base = a.Config(m=8, eta_max=0.05, n_s=10, n_batch=20, eval_train=False)
    return tr, va, base, tmp_path / "search_test.jsonl"


def test_search_records_trials_and_diverged_ones_go_on(tmp_path):
    tr, va, base, path = search_setup(tmp_path)
    base = replace(base, eta_min=1e4, eta_max=1e5)
    trials = a.search("coarse", [1e-3, 1e-2], base, tr, va, 0, path, **QUIET)
    assert [t["diverged"] for t in trials] == [True, True]
    assert len(path.read_text().splitlines()) == 2
    assert a.top_trials(trials) == []


def test_search_resumes_after_an_interruption(tmp_path, monkeypatch):
    tr, va, base, path = search_setup(tmp_path)
    lams = [1e-4, 1e-3, 1e-2, 1e-1]
    full = a.search("coarse", lams, base, tr, va, 0, tmp_path / "uninterrupted.jsonl", **QUIET)

    real_run, calls, interrupt_at = a.run, [], [3]

    def interrupted_run(*args, **kw):
        calls.append(args[2].lam)
        if len(calls) in interrupt_at:
            interrupt_at.clear()  # Ctrl-C once, during the third trial
            raise KeyboardInterrupt
        return real_run(*args, **kw)

    monkeypatch.setattr(a, "run", interrupted_run)
    with pytest.raises(KeyboardInterrupt):
        a.search("coarse", lams, base, tr, va, 0, path, **QUIET)
    assert len(path.read_text().splitlines()) == 2  # the finished trials were written at once
    with open(path, "a") as f:
        # a line cut short by the interruption is ignored
        f.write('{"lam": 0.01, "val_acc": 0.5, "ke')

    calls.clear()
    resumed = a.search("coarse", lams, base, tr, va, 0, path, **QUIET)
    assert calls == [1e-2, 1e-1]  # only what was missing ran
    # and it gives the same answers
    assert [t["val_acc"] for t in resumed] == [t["val_acc"] for t in full]

    calls.clear()
    # another seed is another set of trials
    a.search("coarse", lams, base, tr, va, 1, path, **QUIET)
    assert len(calls) == 4


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


class Stop(Exception):
    pass


@pytest.mark.parametrize(
    "d,extra",
    [
        (40, dict()),
        (a.D, dict(optimizer="adam", p_drop=0.2, flip=True, shift=2)),
        (40, dict(optimizer="nesterov", pca=12)),
    ],
)
def test_an_interrupted_run_resumes_exactly(tmp_path, d, extra):
    rng = np.random.default_rng(0)
    X = np.asfortranarray(rng.standard_normal((d, 300)))
    s = a.Split(X, rng.integers(0, 10, 300))
    cfg = a.Config(
        m=7,
        lam=0.01,
        eta_max=0.02,
        n_s=9,
        n_cycles=2,
        n_batch=25,
        evals_per_cycle=3,
        dtype="float64",
        eval_train=False,
        **extra,
    )
    whole = a.run(s, s, cfg, np.random.default_rng(1), log=lambda t: None)
    progress = (tmp_path / "p.npz", "this run")
    seen = []

    def stop_at_third_point(line):
        seen.append(line)
        if len(seen) == 3:
            raise Stop

    with pytest.raises(Stop):
        a.run(s, s, cfg, np.random.default_rng(1), log=stop_at_third_point, progress=progress)
    assert progress[0].is_file()
    foreign, warnings = tmp_path / "foreign.npz", []
    shutil.copy(progress[0], foreign)
    # other settings: not used, ...
    assert runfiles.load_progress(foreign, "another run", warnings.append) is None
    # ... set aside
    assert not foreign.exists() and len(list(tmp_path.glob("foreign.npz.set-aside-*"))) == 1
    assert len(warnings) == 1 and "belongs to another run" in warnings[0]
    lines = []
    resumed = a.run(s, s, cfg, np.random.default_rng(1), log=lines.append, progress=progress)
    assert "resumed at step 6/36" in lines[0]
    for k in whole[0]:
        np.testing.assert_array_equal(resumed[0][k], whole[0][k])
    # the clock goes on from the saved seconds; everything else is the same, nan != nan: as text
    times = resumed[1].pop("seconds")
    assert len(times) == len(whole[1].pop("seconds")) and times == sorted(times)
    assert str(resumed[1]) == str(whole[1])


def _progress_file(tmp_path, meta, **arrays):
    path = tmp_path / "p.npz"
    np.savez(path, meta=np.array(json.dumps(meta)), **arrays)
    return path


@pytest.mark.parametrize(
    "kind", ["not a zip", "meta not a dict", "bad step", "bad rng", "wrong shape"]
)
def test_a_damaged_progress_file_is_set_aside_and_the_run_starts_again(tmp_path, kind):
    rng_state = np.random.default_rng(0).bit_generator.state
    meta = {"tag": "tag", "t": 3, "seconds": 1.0, "rng": rng_state, "hist": {}}
    if kind == "not a zip":
        path = tmp_path / "p.npz"
        path.write_bytes(b"not a zip file")
    elif kind == "meta not a dict":
        path = _progress_file(tmp_path, [1, 2], perm=np.arange(4))
    elif kind == "bad step":
        path = _progress_file(tmp_path, meta | {"t": -5}, perm=np.arange(4))
    elif kind == "bad rng":
        path = _progress_file(
            tmp_path, meta | {"rng": {"bit_generator": "nonsense"}}, perm=np.arange(4)
        )
    else:
        path = _progress_file(tmp_path, meta, perm=np.arange(3))
    warnings = []
    assert runfiles.load_progress(path, "tag", warnings.append, like={"perm": np.arange(4)}) is None
    assert len(warnings) == 1 and str(path) in warnings[0] and "set aside" in warnings[0]
    # renamed, not deleted
    assert not path.exists() and len(list(tmp_path.glob("p.npz.set-aside-*"))) == 1
    assert runfiles.load_progress(tmp_path / "missing.npz", "tag") is None


def test_a_good_progress_file_is_read(tmp_path):
    meta = {
        "tag": "tag",
        "t": 3,
        "seconds": 1.0,
        "rng": np.random.default_rng(0).bit_generator.state,
        "hist": {},
    }
    path = _progress_file(tmp_path, meta, perm=np.arange(4))
    got_meta, arrays = runfiles.load_progress(path, "tag", like={"perm": np.arange(4)})
    assert got_meta == meta and arrays["perm"].tolist() == [0, 1, 2, 3]
