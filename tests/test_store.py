"""The store of Exercise 5's runs: trial records and resuming a run cut short."""

import json
from dataclasses import replace

import numpy as np
import pytest

import assignment2 as a
from bonus import augment as aug
from bonus import experiment as xp
from bonus import settings as st
from bonus import store, wide


def small_run():
    rng = np.random.default_rng(0)
    s = a.Split(rng.standard_normal((a.D, 60)).astype(np.float32), rng.integers(0, a.K, 60))
    cfg = a.Config(m=6, lam=0.01, eta_max=0.01, n_s=12, n_batch=20, evals_per_cycle=4)
    return s, cfg, st.Extras(pca=0, shift=1)


def train(path, log=print, basis=None):
    """small_run() trained, saving its progress to path; with basis, W1 in its directions (the
    projected crops, as the recipe trains)."""
    s, cfg, x = small_run()
    x = replace(x, pca=basis.shape[1]) if basis is not None else x
    return wide.train_network(s, s, cfg, x, np.random.default_rng(1), basis,
                           progress=(path, {"k": 1}), log=log)


class Stop(Exception):
    pass


def cut_short(path, monkeypatch, after=2, basis=None):
    """Train until `after` states are saved, then stop as a kill would."""
    save, calls = store.save_progress, []

    def save_then_stop(*args):
        save(*args)
        calls.append(1)
        if len(calls) == after:
            raise Stop
    monkeypatch.setattr(store, "save_progress", save_then_stop)
    with pytest.raises(Stop):
        train(path, basis=basis)
    monkeypatch.setattr(store, "save_progress", save)


@pytest.mark.parametrize("directions", [0, 8])
def test_a_run_cut_short_resumes_to_the_same_network(tmp_path, monkeypatch, directions):
    XT = np.ascontiguousarray(small_run()[0].X.T)
    basis = aug.pca_basis(XT, directions, mirror=True) if directions else None
    whole, _ = train(tmp_path / "a.npz", basis=basis)
    path, said = tmp_path / "b.npz", []
    cut_short(path, monkeypatch, basis=basis)
    params, hist = train(path, log=said.append, basis=basis)
    assert any("resumed at step" in s for s in said)
    for k in whole:
        np.testing.assert_array_equal(params[k], whole[k])


@pytest.mark.parametrize("damage", [
    lambda m: m | {"rng": {"bit_generator": "PCG64", "state": "x"}},
    lambda m: m | {"t": -3},
    lambda m: m | {"hist": {"seconds": [1.0], "val_acc": "x"}},
])
def test_a_damaged_saved_state_is_set_aside_and_the_run_starts_afresh(tmp_path, monkeypatch,
                                                                        damage):
    whole, _ = train(tmp_path / "a.npz")
    path, said = tmp_path / "b.npz", []
    cut_short(path, monkeypatch)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"]))
    np.savez(path, meta=np.array(json.dumps(damage(meta))), **arrays)
    params, _ = train(path, log=said.append)
    assert not any("resumed" in s for s in said)
    assert any("set aside" in s for s in said) and list(tmp_path.glob("b.npz.set-aside-*"))
    for k in whole:
        np.testing.assert_array_equal(params[k], whole[k])


def test_a_saved_order_that_is_not_a_permutation_is_set_aside(tmp_path, monkeypatch):
    path, said = tmp_path / "b.npz", []
    cut_short(path, monkeypatch)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["perm"][:] = 10 ** 6
    np.savez(path, **arrays)
    train(path, log=said.append)
    assert any("not a permutation" in s for s in said)


def test_trials_skip_a_damaged_line_and_keep_the_rest(tmp_path):
    path, said = tmp_path / "t.jsonl", []
    trials = store.Trials(path, lambda t: None)
    trials.add({"key": {"a": 1}, "val": 0.5})
    with open(path, "a") as f:
        f.write('{"key": {"a": 2}, "va')  # a write cut short
    again = store.Trials(path, lambda t: None, log=said.append)
    assert again.get({"a": 1})["val"] == 0.5 and again.get({"a": 2}) is None
    assert "skipped 1 line(s)" in said[0]


def test_a_record_added_after_a_cut_line_is_found_on_reload(tmp_path):
    path = tmp_path / "t.jsonl"
    store.Trials(path, lambda t: None).add({"key": {"a": 1}, "val": 0.5})
    with open(path, "a") as f:
        f.write('{"key": {"a": 2}, "va')  # a write cut short: the file ends mid-line
    store.Trials(path, lambda t: None, log=lambda s: None).add({"key": {"a": 3}, "val": 0.7})
    again = store.Trials(path, lambda t: None, log=lambda s: None)
    assert again.get({"a": 3})["val"] == 0.7 and again.get({"a": 1})["val"] == 0.5


def test_trials_skip_a_record_the_check_refuses(tmp_path):
    path = tmp_path / "t.jsonl"
    store.Trials(path, lambda t: None).add({"key": {"a": 1}, "val_acc": 7})
    assert store.Trials(path, xp.trial_problem, log=lambda s: None).get({"a": 1}) is None


def test_flatten_names_the_leaves_by_their_path():
    assert store.flatten({"m": {"W1": 1}, "b": 2}) == {"m/W1": 1, "b": 2}


def test_a_tested_record_is_reused_without_its_weights_only_when_asked(tiny_cifar, tmp_path):
    said = []
    ex = xp.Experiment(tiny_cifar[0], tmp_path, 0, st.QUICK, log=said.append)
    tr, _, _ = ex.splits(20)
    cfg, x = st.recipe(st.QUICK, tr.n)
    first = ex.trial("recipe", "seed 0", cfg, x, 0)
    ex.weights_file(first["key"]).unlink()
    kept = ex.trial("recipe", "seed 0", cfg, x, 0, weights=False)  # its record suffices
    assert kept["test_acc"] == first["test_acc"] and said[-1].startswith("seed 0: kept")
    assert ex.trial("recipe", "seed 0", cfg, x, 0, train=False) is None  # its weights are gone
