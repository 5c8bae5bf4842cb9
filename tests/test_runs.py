"""A run never destroys another's: output folders, the lock, damaged files, whole writes."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, SHARED_DATA

import assignment2 as a
from report import build


def run_program(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "assignment2.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def snapshot(folder):
    """Every file under folder with its bytes (the lock file aside)."""
    return {
        p.relative_to(folder): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".assignment2.lock"
    }


def copy_run(quick_run, tmp_path):
    """A copy of the quick run (seed 3) to change: (its folder, the data folder)."""
    shutil.copytree(quick_run[0], tmp_path / "run")
    return tmp_path / "run", SHARED_DATA


# ---- results belong to a run ---------------------------------------------------------------------


@pytest.mark.parametrize("change", [("--seed", "1"), ("--float64",)])
def test_a_step_of_another_run_stops_before_touching_the_folder(quick_run, tmp_path, change):
    out, shared = copy_run(quick_run, tmp_path)
    before = snapshot(out)
    done = run_program("fig3", "--quick", "--data-dir", str(shared), "--out-dir", str(out), *change)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "holds the results of another run (quick-seed3-float32-" in done.stderr
    assert "--replace" in done.stderr and "another --out-dir" in done.stderr
    assert snapshot(out) == before  # nothing earlier was lost or changed


def test_replace_moves_the_earlier_run_aside_and_keeps_it_readable(quick_run, tmp_path):
    out, shared = copy_run(quick_run, tmp_path)
    first = json.loads((out / "results.json").read_text())
    done = run_program(
        "fig3",
        "--quick",
        "--data-dir",
        str(shared),
        "--out-dir",
        str(out),
        "--seed",
        "1",
        "--replace",
    )
    assert done.returncode == 0, done.stderr
    [old] = (out / "replaced").iterdir()
    # the seed-3 numbers are all still there
    assert json.loads((old / "results.json").read_text()) == first
    assert (old / "figures" / "fig3.png").is_file() and (old / "timings.json").is_file()
    new = json.loads((out / "results.json").read_text())
    identity = {"seed", "quick", "dtype", "data", "data_official"}
    assert new["seed"] == 1 and set(new) - identity == {"fig3"}


def test_replace_leaves_the_figures_of_exercise_5_where_they_are(quick_run, tmp_path):
    out, shared = copy_run(quick_run, tmp_path)
    (out / "figures" / "ablation.png").write_bytes(b"Exercise 5's")
    done = run_program("fig3", "--quick", "--data-dir", str(shared), "--out-dir", str(out),
                       "--seed", "1", "--replace")
    assert done.returncode == 0, done.stderr
    [old] = (out / "replaced").iterdir()
    assert (out / "figures" / "ablation.png").read_bytes() == b"Exercise 5's"
    assert (old / "figures" / "fine.png").exists()
    assert not (old / "figures" / "ablation.png").exists()


def test_a_step_of_the_same_run_keeps_every_other_result(quick_run, tmp_path):
    out, shared = copy_run(quick_run, tmp_path)
    first = json.loads((out / "results.json").read_text())
    done = run_program("fig3", "--quick", "--data-dir", str(shared), "--out-dir", str(out),
                       "--seed", "3")
    assert done.returncode == 0, done.stderr
    # same run, same code: same numbers
    assert json.loads((out / "results.json").read_text()) == first


@pytest.mark.parametrize(
    "args,message",
    [
        (("--out-dir", ""), "not a folder name"),
        (("--out-dir", "   "), "not a folder name"),
        (("--seed", "-1"), "--seed -1: must be from 0"),
        (("--seed", str(2**40)), "must be from 0"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    done = run_program("fig3", "--quick", "--data-dir", str(tmp_path / "nowhere"), *args)
    assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_an_out_dir_that_is_a_file_or_inside_the_data_is_refused(tiny_cifar, tmp_path):
    folder, _ = tiny_cifar
    (tmp_path / "file").write_text("mine")
    done = run_program("fig3", "--data-dir", str(folder), "--out-dir", str(tmp_path / "file"))
    assert done.returncode == 1 and "exists and is not a folder" in done.stderr
    assert (tmp_path / "file").read_text() == "mine"
    done = run_program("fig3", "--data-dir", str(folder), "--out-dir", str(folder / "out"))
    assert done.returncode == 1 and "inside the data folder" in done.stderr
    assert not (folder / "out").exists()


# ---- one writer per folder -----------------------------------------------------------------------


def test_a_second_run_into_a_locked_folder_stops_at_once(quick_run, tmp_path):
    out, shared = copy_run(quick_run, tmp_path)
    before = snapshot(out)
    with a.folder_lock(out):  # as if another run were writing there now
        done = run_program("coarse", "--quick", "--data-dir", str(shared), "--out-dir", str(out))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert f"another run (pid {os.getpid()}) is writing to this folder" in done.stderr
    assert snapshot(out) == before


def test_two_runs_started_together_never_mix(quick_run, tmp_path):
    out, shared = copy_run(quick_run, tmp_path)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "assignment2.py"),
                "coarse",
                "--quick",
                "--seed",
                seed,
                "--data-dir",
                str(shared),
                "--out-dir",
                str(out),
                "--replace",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in ("1", "2")
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) in ([0, 0], [0, 1]), outs
    for code, (_, err) in zip(codes, outs):
        assert code == 0 or "is writing to this folder" in err
    res = json.loads((out / "results.json").read_text())
    assert res["seed"] in (1, 2) and "coarse" in res and "fig3" not in res
    # each run that wrote kept the one before
    assert len(list((out / "replaced").iterdir())) == codes.count(0)


@pytest.mark.parametrize("content", ["{oops", "[1, 2]", '{"seed": "zero"}'])
def test_outputs_with_a_damaged_results_file_are_another_runs(quick_run, tmp_path, content):
    out, shared = copy_run(quick_run, tmp_path)
    (out / "results.json").write_text(content)
    before = snapshot(out)
    args = ("fig3", "--quick", "--data-dir", str(shared), "--out-dir", str(out))
    done = run_program(*args)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "that no readable results.json accounts for" in done.stderr
    assert snapshot(out) == before
    assert run_program(*args, "--replace").returncode == 0
    [old] = (out / "replaced").iterdir()
    assert snapshot(old) == {k: v for k, v in before.items() if k.parts[0] != "replaced"}
    assert "fig3" in json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("gone", ["results.json", "figures"])
def test_a_run_whose_results_file_is_gone_keeps_its_outputs(quick_run, tmp_path, gone):
    out, shared = copy_run(quick_run, tmp_path)
    shutil.rmtree(out / gone) if gone == "figures" else (out / gone).unlink()
    before = snapshot(out)
    done = run_program("fig3", "--quick", "--data-dir", str(shared), "--out-dir", str(out),
                       "--seed", "4")
    assert done.returncode == 1 and snapshot(out) == before


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "results.txt"
    path.write_text("the good one")
    with pytest.raises(RuntimeError):
        with a.atomic_path(path) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("interrupted")
    assert path.read_text() == "the good one" and [p.name for p in tmp_path.iterdir()] == [
        "results.txt"
    ]
    a.write_atomic(path, "new")
    assert path.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


def test_the_report_checks_its_inputs_and_never_leaves_a_partial_pdf(quick_run, tmp_path):
    out, _ = copy_run(quick_run, tmp_path)
    (out / "report").mkdir()
    (out / "report" / "report.pdf").write_bytes(b"%PDF the good one")
    (out / "figures" / "fig4.png").unlink()
    with pytest.raises(build.ReportError, match="the report needs fig4.png"):
        build.build_report(out)
    shutil.copy(tmp_path / "run" / "figures" / "fig3.png", out / "figures" / "fig4.png")
    with pytest.raises(build.ReportError, match="report template not found"):
        build.build_report(out, templates=tmp_path)
    (tmp_path / "report.typ").write_text(
        '#let r = json(sys.inputs.dir + "/results.json")\n#r.nothing\n'
    )
    with pytest.raises(build.ReportError, match="typst could not build it"):
        build.build_report(out, templates=tmp_path)
    (out / "results.json").write_text("{broken")
    done = subprocess.run([sys.executable, "-m", "report", "--out-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert (
        done.returncode != 0
        and "results.json: not valid JSON" in done.stderr
        and "Traceback" not in done.stderr
    )
    assert (out / "report" / "report.pdf").read_bytes() == b"%PDF the good one"
    # no temporary left behind
    assert sorted(p.name for p in (out / "report").iterdir()) == ["report.pdf"]


def test_data_too_small_for_the_sizes_is_refused_before_anything_is_written(tiny_cifar, tmp_path):
    folder, _ = tiny_cifar  # 40 images per batch
    done = run_program("fig3", "--data-dir", str(folder), "--out-dir", str(tmp_path / "out"))
    assert done.returncode == 1 and "too few images" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
