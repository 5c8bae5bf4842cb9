"""The long-run harness of Exercise 5: trial records and resuming a run cut short."""

import json
from dataclasses import replace

import numpy as np
import pytest

import assignment2 as a
import bonus as b
import harness
import mechanisms as mech


def small_run():
    rng = np.random.default_rng(0)
    s = a.Split(rng.standard_normal((a.D, 60)).astype(np.float32), rng.integers(0, a.K, 60))
    cfg = a.Config(m=6, lam=0.01, eta_max=0.01, n_s=12, n_batch=20, evals_per_cycle=4)
    return s, cfg, mech.Extras(pca=0, shift=1)


def train(path, log=print, basis=None):
    """small_run() trained, saving its progress to path; with basis, W1 in its directions (the
    projected crops, as the recipe trains)."""
    s, cfg, x = small_run()
    x = replace(x, pca=basis.shape[1]) if basis is not None else x
    return mech.train_network(s, s, cfg, x, np.random.default_rng(1), basis,
                           progress=(path, {"k": 1}), log=log)


class Stop(Exception):
    pass


def cut_short(path, monkeypatch, after=2, basis=None):
    """Train until `after` states are saved, then stop as a kill would."""
    save, calls = harness.save_progress, []

    def save_then_stop(*args):
        save(*args)
        calls.append(1)
        if len(calls) == after:
            raise Stop
    monkeypatch.setattr(harness, "save_progress", save_then_stop)
    with pytest.raises(Stop):
        train(path, basis=basis)
    monkeypatch.setattr(harness, "save_progress", save)


@pytest.mark.parametrize("directions", [0, 8])
def test_a_run_cut_short_resumes_to_the_same_network(tmp_path, monkeypatch, directions):
    XT = np.ascontiguousarray(small_run()[0].X.T)
    basis = mech.pca_basis(XT, directions, mirror=True) if directions else None
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
    trials = harness.Trials(path, lambda t: None)
    trials.add({"key": {"a": 1}, "val": 0.5})
    with open(path, "a") as f:
        f.write('{"key": {"a": 2}, "va')  # a write cut short
    again = harness.Trials(path, lambda t: None, log=said.append)
    assert again.get({"a": 1})["val"] == 0.5 and again.get({"a": 2}) is None
    assert "skipped 1 line(s)" in said[0]


def test_a_record_added_after_a_cut_line_is_found_on_reload(tmp_path):
    path = tmp_path / "t.jsonl"
    harness.Trials(path, lambda t: None).add({"key": {"a": 1}, "val": 0.5})
    with open(path, "a") as f:
        f.write('{"key": {"a": 2}, "va')  # a write cut short: the file ends mid-line
    harness.Trials(path, lambda t: None, log=lambda s: None).add({"key": {"a": 3}, "val": 0.7})
    again = harness.Trials(path, lambda t: None, log=lambda s: None)
    assert again.get({"a": 3})["val"] == 0.7 and again.get({"a": 1})["val"] == 0.5


def test_trials_skip_a_record_the_check_refuses(tmp_path):
    path = tmp_path / "t.jsonl"
    harness.Trials(path, lambda t: None).add({"key": {"a": 1}, "val_acc": 7})
    assert harness.Trials(path, b.trial_problem, log=lambda s: None).get({"a": 1}) is None


def test_flatten_names_the_leaves_by_their_path():
    assert harness.flatten({"m": {"W1": 1}, "b": 2}) == {"m/W1": 1, "b": 2}


def fingerprint_of(folder, files: dict, root="run"):
    """harness.code_fingerprint of main.root, with files {name: source} as modules of folder."""
    import importlib
    import sys
    for name, text in files.items():
        (folder / f"{name}.py").write_text(text)
        sys.modules.pop(name, None)
    harness.definitions.cache_clear()
    sys.path.insert(0, str(folder))
    try:
        importlib.invalidate_caches()
        return harness.code_fingerprint(getattr(importlib.import_module("main"), root))
    finally:
        sys.path.remove(str(folder))
        for name in files:
            sys.modules.pop(name, None)


MAIN = """import helper as h
from helper import scale

RATE = 2


def run(x):
    return scale(h.square(x)) * RATE


def report(x):
    return f"{run(x)}"
"""
HELPER = """def square(x):
    return x * x


def scale(x):
    return 3 * x


def unused():
    return 0
"""


def test_the_code_fingerprint_ignores_comments_docstrings_and_code_it_does_not_run(tmp_path):
    base = fingerprint_of(tmp_path, {"main": MAIN, "helper": HELPER})
    for main, helper in [
            (MAIN.replace("def run(x):\n", 'def run(x):\n    "doc"  # why\n'), HELPER),
            (MAIN.replace("def run(x):", "def run(x: h.unused) -> float:"),  # hints ...
             HELPER.replace("return 0", "return 2")),  # ... are not followed
            (MAIN.replace('f"{run(x)}"', 'f"run: {run(x)}"'), HELPER),  # not what run runs
            (MAIN, HELPER.replace("return 0", "return 1"))]:
        assert fingerprint_of(tmp_path, {"main": main, "helper": helper}) == base


@pytest.mark.parametrize("main,helper", [
    (MAIN.replace("RATE = 2", "RATE = 3"), HELPER),  # a constant it reads
    (MAIN, HELPER.replace("x * x", "x * x * x")),  # through the module's alias
    (MAIN, HELPER.replace("3 * x", "4 * x"))])  # through from ... import
def test_the_code_fingerprint_follows_what_the_code_runs(tmp_path, main, helper):
    base = fingerprint_of(tmp_path, {"main": MAIN, "helper": HELPER})
    assert fingerprint_of(tmp_path, {"main": main, "helper": helper}) != base


def test_a_tested_record_is_reused_without_its_weights_only_when_asked(tiny_cifar, tmp_path):
    said = []
    ex = b.Experiment(tiny_cifar[0], tmp_path, 0, b.QUICK, log=said.append)
    tr, _, _ = ex.splits(20)
    cfg, x = b.recipe(b.QUICK, tr.n)
    first = ex.trial("recipe", "seed 0", cfg, x, 0)
    ex.weights_file(b.trial_name(first)).unlink()
    kept = ex.trial("recipe", "seed 0", cfg, x, 0, weights=False)  # its record suffices
    assert kept["test_acc"] == first["test_acc"] and said[-1].startswith("seed 0: kept")
    assert ex.trial("recipe", "seed 0", cfg, x, 0, train=False) is None  # its weights are gone
