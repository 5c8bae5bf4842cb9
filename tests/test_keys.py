"""What makes a stored run reusable (bonus.keys): a change that keeps the numbers keeps every
key, a change of what a run computes changes the keys of the runs that compute it, and rounding
as another machine's BLAS would keeps them. On the quick sizes."""

import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from conftest import ROOT

import assignment2 as a
from bonus import distil as dist
from bonus import keys, settings, updates, wide
from bonus import teacher as T

N_TRAIN = 2000  # the quick mode's training images


def recipe(**change):
    cfg, x = settings.recipe(settings.QUICK, N_TRAIN)
    return cfg, replace(x, **change)


def teach(per_view=False):
    """A distillation of the quick recipe's settings, from a made-up scores key."""
    _, x = recipe()
    views = dist.target_views(20, 3, x, np.random.default_rng(0))
    scores = np.zeros((20, 3, a.K), np.float16)
    return dist.Distillation(views, scores, x, 2.0, 0.5, per_view, {"teacher": "t"})


@pytest.fixture(scope="module")
def probes():
    """One Probes for the module, so that the probe's principal directions are made once; each
    test asks for a fresh fingerprint through fresh()."""
    return keys.Probes()


def fresh(probes):
    probes.done, probes.teachers = {}, {}
    return probes


def test_the_same_setting_gives_the_same_key_and_another_setting_another(probes):
    cfg, x = recipe()
    first = fresh(probes).student(cfg, x)
    assert fresh(probes).student(cfg, x) == first
    assert probes.student(replace(cfg, lam=cfg.lam / 4), x) != first
    assert probes.student(cfg, replace(x, shift=2)) != first


def test_a_statement_added_to_the_trainer_keeps_the_key(probes, monkeypatch):
    cfg, x = recipe()
    before, real = fresh(probes).student(cfg, x), a.train

    def train(*args, **kw):
        # a statement that changes no number
        unused = len(args)  # noqa: F841
        return real(*args, **kw)
    monkeypatch.setattr(a, "train", train)
    assert fresh(probes).student(cfg, x) == before


def perturbed(real, rel):
    """real, with every array it returns off by a relative `rel` (another machine's rounding)."""
    rng = np.random.default_rng(0)

    def run(*args, **kw):
        out = real(*args, **kw)
        for v in (out.values() if isinstance(out, dict) else out):
            if isinstance(v, np.ndarray) and v.dtype == np.float64:
                v *= 1 + rel * rng.standard_normal(v.shape)
        return out
    return run


def test_rounding_as_another_machines_keeps_the_key_and_a_real_change_does_not(probes,
                                                                               monkeypatch):
    cfg, x = recipe()
    before = fresh(probes).student(cfg, x)
    for rel, same in ((1e-14, True), (1e-6, False)):
        with monkeypatch.context() as mp:
            mp.setattr(a, "forward", perturbed(a.forward, rel))
            mp.setattr(a, "backward", perturbed(a.backward, rel))
            assert (fresh(probes).student(cfg, x) == before) is same


def test_rounding_as_another_machines_keeps_the_teachers_key(monkeypatch):
    tc, real = T.QUICK_TEACHER, keys.probe_splits
    before = keys.Probes().teacher(tc)

    def nudged():  # images off by 1e-12: the teacher's numbers move by about 1e-9
        rng = np.random.default_rng(0)
        return tuple(a.Split(s.X * (1 + 1e-12 * rng.standard_normal(s.X.shape)), s.y)
                     for s in real())
    monkeypatch.setattr(keys, "probe_splits", nudged)
    assert keys.Probes().teacher(tc) == before


def test_a_change_of_adams_beta2_changes_the_adam_runs_only(probes, monkeypatch):
    cfg, x = recipe()
    adam, nesterov = fresh(probes).student(cfg, x), probes.student(cfg, replace(
        x, optimizer="nesterov"))
    real = updates.RULES["adam"]
    monkeypatch.setitem(updates.RULES, "adam", lambda p, g, s, eta, t, lam, x: real(
        p, g, s, eta, t, lam, replace(x, beta2=0.99)))
    assert fresh(probes).student(cfg, x) != adam
    assert probes.student(cfg, replace(x, optimizer="nesterov")) == nesterov


def test_a_change_of_the_shift_rule_changes_the_key(probes, monkeypatch):
    cfg, x = recipe()
    before, real = fresh(probes).student(cfg, x), wide.random_views

    def views(x, n, rng):
        f, oy, ox = real(x, n, rng)
        return f, oy, 2 * x.shift - ox  # moved the other way
    monkeypatch.setattr(wide, "random_views", views)
    assert fresh(probes).student(cfg, x) != before


def test_a_change_of_softmax_changes_the_key(probes, monkeypatch):
    cfg, x = recipe()
    before, real = fresh(probes).student(cfg, x), a.softmax
    monkeypatch.setattr(a, "softmax", lambda S: real(1.01 * S))
    assert fresh(probes).student(cfg, x) != before


@pytest.mark.parametrize("per_view", [False, True])
def test_a_change_of_the_distillation_targets_changes_the_distilled_runs_only(probes, per_view,
                                                                              monkeypatch):
    cfg, x = recipe()
    labels, distilled = fresh(probes).student(cfg, x), probes.student(cfg, x, teach(per_view))
    real = dist.distillation_targets
    monkeypatch.setattr(dist, "distillation_targets",
                        lambda P, Zt, y, T, alpha: real(P, Zt, y, T, 0.9 * alpha))
    assert fresh(probes).student(cfg, x, teach(per_view)) != distilled
    assert probes.student(cfg, x) == labels


def test_a_change_of_the_teachers_training_changes_its_key_and_its_scores(probes, monkeypatch):
    _, x = recipe()
    tc = T.QUICK_TEACHER
    teacher, scores = fresh(probes).teacher(tc), probes.scores(tc, x, 3)
    assert fresh(probes).teacher(tc) == teacher and probes.scores(tc, x, 3) == scores
    real = T.learning_rate
    monkeypatch.setattr(T, "learning_rate", lambda step, total, tc: 0.9 * real(step, total, tc))
    assert fresh(probes).teacher(tc) != teacher and probes.scores(tc, x, 3) != scores


def test_a_change_of_the_grid_changes_the_grids_scores_only(probes, monkeypatch):
    _, x = recipe()
    tc = T.QUICK_TEACHER
    grid, views = fresh(probes).scores(tc, x, 18, 3), probes.scores(tc, x, 3)
    real = dist.grid_views
    monkeypatch.setattr(dist, "grid_views", lambda x, step: real(x, step)[::-1].copy())
    assert fresh(probes).scores(tc, x, 18, 3) != grid and probes.scores(tc, x, 3) == views


def test_a_change_of_the_nearest_view_changes_the_per_view_runs_only(probes, monkeypatch):
    cfg, x = recipe()
    means, per_view = fresh(probes).student(cfg, x, teach()), probes.student(cfg, x, teach(True))
    monkeypatch.setattr(dist, "nearest_view", lambda views, f, oy, ox: np.zeros(f.size, int))
    assert fresh(probes).student(cfg, x, teach(True)) != per_view
    assert probes.student(cfg, x, teach()) == means


def test_edits_that_keep_the_numbers_keep_every_stored_run(quick_cifar, tmp_path):
    """The issue's case, as a user meets it: a stored quick recipe, then the code edited (a
    statement added to assignment2.train, a function renamed, one moved between modules): the
    same command again trains nothing."""
    code = tmp_path / "code"
    code.mkdir()
    shutil.copy(ROOT / "assignment2.py", code)
    shutil.copytree(ROOT / "bonus", code / "bonus", ignore=shutil.ignore_patterns(
        "results", "models", "__pycache__"))
    cmd = [sys.executable, "-m", "bonus", "--quick", "--data-dir", str(quick_cifar),
           "--out-dir", str(tmp_path / "out")]
    first = subprocess.run(cmd, cwd=code, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0 and first.stdout.count("step ") > 0, first.stderr
    edit(code / "assignment2.py", "    check_config(cfg, train_set.n)\n",
         "    check_config(cfg, train_set.n)\n    unused = 0  # noqa: F841\n", count=1)
    edit(code / "bonus" / "wide.py", "record_trial", "record_of_network")  # renamed
    augment = (code / "bonus" / "augment.py").read_text()
    start = augment.index("def concatenate(")
    end = augment.index("\ndef ", start + 1)
    (code / "bonus" / "augment.py").write_text(augment[:start] + augment[end + 1:])
    with open(code / "bonus" / "wide.py", "a") as f:  # moved to another module
        f.write("\n\n" + augment[start:end].rstrip() + "\n")
    edit(code / "bonus" / "steps.py", "    concatenate,\n", "")
    edit(code / "bonus" / "steps.py", "from bonus.experiment import Experiment\n",
         "from bonus.experiment import Experiment\nfrom bonus.wide import concatenate\n")
    again = subprocess.run(cmd, cwd=code, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("kept from runs.jsonl") == 4 and "step " not in again.stdout


def edit(path, old: str, new: str, count: int = -1) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, count))
