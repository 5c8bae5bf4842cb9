"""The long-run harness of Exercise 5: trial records and resuming a run cut short."""

import json

import numpy as np
import pytest

import assignment2 as a
import bonus as b
import harness


def small_run():
    rng = np.random.default_rng(0)
    s = a.Split(rng.standard_normal((a.D, 60)).astype(np.float32), rng.integers(0, a.K, 60))
    cfg = a.Config(m=6, lam=0.01, eta_max=0.01, n_s=12, n_batch=20, evals_per_cycle=4)
    return s, cfg, b.Extras(pca=0, shift=1)


def train(path, log=print):
    s, cfg, x = small_run()
    return b.train_network(s, s, cfg, x, np.random.default_rng(1), progress=(path, {"k": 1}),
                           log=log)


class Stop(Exception):
    pass


def cut_short(path, monkeypatch, after=2):
    """Train until `after` states are saved, then stop as a kill would."""
    save, calls = harness.save_progress, []

    def save_then_stop(*args):
        save(*args)
        calls.append(1)
        if len(calls) == after:
            raise Stop
    monkeypatch.setattr(harness, "save_progress", save_then_stop)
    with pytest.raises(Stop):
        train(path)
    monkeypatch.setattr(harness, "save_progress", save)


def test_a_run_cut_short_resumes_to_the_same_network(tmp_path, monkeypatch):
    whole, _ = train(tmp_path / "a.npz")
    path, said = tmp_path / "b.npz", []
    cut_short(path, monkeypatch)
    params, hist = train(path, log=said.append)
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


def test_the_code_fingerprint_ignores_comments_and_docstrings(tmp_path):
    one, two = tmp_path / "one.py", tmp_path / "two.py"
    one.write_text('def f():\n    "doc"\n    return 1  # why\n')
    two.write_text("def f():\n    return 1\n")
    assert harness.fingerprint(one) == harness.fingerprint(two)
    two.write_text("def f():\n    return 2\n")
    assert harness.fingerprint(one) != harness.fingerprint(two)
