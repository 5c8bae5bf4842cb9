"""A run never destroys another's: output folders, the lock, fingerprinted caches, damaged state
files."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, SHARED_DATA, write_batch

import assignment2 as a
import runfiles
from report import build


def run_program(*args):
    return subprocess.run(
        [sys.executable, str(ROOT / "assignment2.py"), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """A --quick run of the default steps with seed 0 in a folder of its own: (folder, data
    folder)."""
    shared = SHARED_DATA
    if not (shared / "data_batch_1").is_file():
        pytest.skip(f"CIFAR-10 batches not found at {shared}")
    out = tmp_path_factory.mktemp("quick") / "run"
    done = run_program("--quick", "--data-dir", str(shared), "--out-dir", str(out))
    assert done.returncode == 0, done.stderr
    return out, shared


def snapshot(folder):
    """Every file under folder with its bytes (the lock file aside)."""
    return {
        p.relative_to(folder): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != runfiles.FolderLock.NAME
    }


def copy_run(quick_run, tmp_path):
    out, shared = quick_run
    shutil.copytree(out, tmp_path / "run")
    return tmp_path / "run", shared


# ---- results belong to a run ---------------------------------------------------------------------


@pytest.mark.parametrize("change", [("--seed", "1"), ("--float64",)])
def test_a_step_of_another_run_stops_before_touching_the_folder(quick_run, tmp_path, change):
    out, shared = copy_run(quick_run, tmp_path)
    before = snapshot(out)
    done = run_program("fig3", "--quick", "--data-dir", str(shared), "--out-dir", str(out), *change)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "holds the results of another run (seed 0, quick sizes, float32" in done.stderr
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
    # the seed-0 numbers are all still there
    assert json.loads((old / "results.json").read_text()) == first
    assert (old / "figures" / "fig3.png").is_file() and (old / "timings.json").is_file()
    new = json.loads((out / "results.json").read_text())
    assert new["seed"] == 1 and set(new) - {"seed", "quick", "dtype", "data", "code"} == {"fig3"}


def test_a_step_of_the_same_run_keeps_every_other_result(quick_run, tmp_path):
    out, shared = copy_run(quick_run, tmp_path)
    first = json.loads((out / "results.json").read_text())
    done = run_program("fig3", "--quick", "--data-dir", str(shared), "--out-dir", str(out))
    assert done.returncode == 0, done.stderr
    # same run, same code: same numbers
    assert json.loads((out / "results.json").read_text()) == first


def test_quick_and_foreign_runs_go_to_a_folder_of_their_own(tmp_path):
    header = {"seed": 0, "quick": False, "dtype": "float32", "data": "ab" * 8}

    def choose(arg, run):
        return runfiles.choose_out_dir(arg, run, tmp_path, tmp_path / "data")

    assert choose(None, header) == tmp_path  # nothing there yet
    quick = header | {"quick": True}
    assert choose(None, quick) == tmp_path / "runs" / "quick-seed0-float32-abababab"
    (tmp_path / "results.json").write_text(json.dumps(header))
    assert choose(None, header) == tmp_path  # the same run: here
    other = header | {"seed": 2}
    assert choose(None, other) == tmp_path / "runs" / "full-seed2-float32-abababab"
    assert choose("elsewhere", other) == a.Path("elsewhere")  # as given


@pytest.mark.parametrize(
    "args,message",
    [
        (("--out-dir", ""), "not a folder name"),
        (("--out-dir", "   "), "not a folder name"),
        (("--seed", "-1"), "--seed -1: must be an integer"),
        (("--seed", str(2**40)), "must be an integer from 0"),
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
    with runfiles.FolderLock(out):  # as if another run were writing there now
        done = run_program("coarse", "--quick", "--data-dir", str(shared), "--out-dir", str(out))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "another run is writing to this folder (pid " in done.stderr
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
        assert code == 0 or "another run is writing to this folder" in err
    res = json.loads((out / "results.json").read_text())
    trials = [json.loads(line) for line in (out / "search_coarse.jsonl").read_text().splitlines()]
    # the file's seed is its trials' seed
    assert {t["seed"] for t in res["coarse"]["trials"]} == {res["seed"]}
    assert {t["seed"] for t in trials} <= {0, 1, 2}
    # each run that wrote kept the one before
    assert len(list((out / "replaced").iterdir())) == codes.count(0)


# ---- caches know what made them ------------------------------------------------------------------


def blobs(n, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, a.K, n)
    return a.Split(
        np.asfortranarray(3 * rng.standard_normal((20, a.K)))[:, y] + rng.standard_normal((20, n)),
        y,
    )


def test_a_trial_is_recomputed_for_other_data_or_other_code(tmp_path, monkeypatch):
    tr, va = blobs(300, 1), blobs(100, 2)
    base = a.Config(m=8, eta_max=0.05, n_s=10, n_batch=20, eval_train=False)
    path = tmp_path / "search_coarse.jsonl"
    a.search("coarse", [1e-3], base, tr, va, 0, path, log=lambda s: None)
    lines = []
    a.search("coarse", [1e-3], base, tr, va, 0, path, log=lines.append)
    assert any("kept from search_coarse.jsonl" in s for s in lines)

    tr.X[0, 0] += 1  # one value of the data changed
    lines.clear()
    a.search("coarse", [1e-3], base, tr, va, 0, path, log=lines.append)
    assert any("made with other data; training it again" in s for s in lines)

    # as after an edit of the training code
    monkeypatch.setattr(a, "code_fingerprint", lambda: "0" * 16)
    lines.clear()
    a.search("coarse", [1e-3], base, tr, va, 0, path, log=lines.append)
    assert any("made with other code; training it again" in s for s in lines)
    assert len(path.read_text().splitlines()) == 3  # every trial kept, none overwritten


def test_the_code_fingerprint_ignores_comments_and_sees_code(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        'def f(x):\n    """Doc."""\n    return x + 1  # one\n\n\ndef plot_g():\n    pass\n'
    )
    base = runfiles.source_fingerprint(src, exclude=("plot_*",))
    src.write_text(
        'def f(x):\n    """Other words."""\n    # a comment\n    return x + 1\n\n\ndef plot_g():\n'
        "    return 3\n"
    )
    assert runfiles.source_fingerprint(src, exclude=("plot_*",)) == base
    src.write_text("def f(x):\n    return x + 2\n")
    assert runfiles.source_fingerprint(src, exclude=("plot_*",)) != base
    src.write_text('SKIP = ("a",)\nK = 10\n')
    one = runfiles.source_fingerprint(src, exclude=("SKIP",))
    src.write_text('SKIP = ("a", "b")\nK = 10\n')
    assert runfiles.source_fingerprint(src, exclude=("SKIP",)) == one  # the exclusion list itself
    src.write_text('SKIP = ("a", "b")\nK = 11\n')
    assert runfiles.source_fingerprint(src, exclude=("SKIP",)) != one  # a constant the code uses


def test_a_search_on_altered_data_recomputes_its_trials(quick_run, tmp_path):
    out, shared = copy_run(quick_run, tmp_path)
    data = tmp_path / "data"
    shutil.copytree(shared, data)
    for f in data.iterdir():
        f.chmod(0o644)
    batch = a.load_batch(data / "data_batch_1")
    X = batch.X.T.copy()
    X[0, 0] ^= 1  # one pixel of one training image
    write_batch(data / "data_batch_1", X, batch.y.tolist())
    done = run_program(
        "coarse", "--quick", "--data-dir", str(data), "--out-dir", str(out), "--replace"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("made with other data; training it again") == 3
    assert "kept from" not in done.stdout


# ---- damaged state files -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,content",
    [
        ("results.json", "{not json"),
        ("results.json", "[1, 2]"),
        ("results.json", '{"seed": "zero"}'),
        ("timings.json", "{oops"),
        ("timings.json", '{"fig3": -4}'),
    ],
)
def test_a_damaged_results_or_timings_file_is_set_aside(quick_run, tmp_path, name, content):
    out, shared = copy_run(quick_run, tmp_path)
    (out / name).write_text(content)
    done = run_program("fig3", "--quick", "--data-dir", str(shared), "--out-dir", str(out))
    assert done.returncode == 0, done.stderr
    assert f"warning: {out / name}:" in done.stdout and "set aside as" in done.stdout
    [aside] = out.glob(f"{name}.set-aside-*")
    assert aside.read_text() == content  # renamed, not deleted
    assert "fig3" in json.loads((out / "results.json").read_text())


@pytest.mark.parametrize("line", ["42", "null", '"text"', "[1]"])
def test_foreign_trial_lines_are_skipped_with_a_warning(quick_run, tmp_path, line):
    out, shared = copy_run(quick_run, tmp_path)
    with open(out / "search_coarse.jsonl", "a") as f:
        f.write(line + "\n")
    (out / "results.json").unlink()  # so that coarse is recomputed from its trial file
    done = run_program("coarse", "--quick", "--data-dir", str(shared), "--out-dir", str(out))
    assert done.returncode == 0, done.stderr
    assert "skipped 1 line(s) that cannot be believed" in done.stdout
    assert done.stdout.count("kept from search_coarse.jsonl") == 3


def test_an_implausible_trial_is_not_believed(quick_run, tmp_path):
    out, shared = copy_run(quick_run, tmp_path)
    path = out / "search_coarse.jsonl"
    trials = [json.loads(s) for s in path.read_text().splitlines()]
    worst = min(trials, key=lambda t: t["val_acc"])
    path.write_text(
        "".join(json.dumps(t | {"val_acc": 2.0} if t is worst else t) + "\n" for t in trials)
    )
    (out / "results.json").unlink()
    done = run_program("coarse", "--quick", "--data-dir", str(shared), "--out-dir", str(out))
    assert done.returncode == 0, done.stderr
    assert "val_acc=2.0 is not an accuracy in [0, 1]" in done.stdout
    res = json.loads((out / "results.json").read_text())["coarse"]
    assert all(0 <= t["val_acc"] <= 1 for t in res["trials"]) and res["top3"][0]["val_acc"] < 1


def test_an_implausible_stored_step_is_computed_again(quick_run, tmp_path):
    out, shared = copy_run(quick_run, tmp_path)
    res = json.loads((out / "results.json").read_text())
    res["coarse"]["trials"][0]["lam"] = -1.0
    (out / "results.json").write_text(json.dumps(res))
    done = run_program("fine", "--quick", "--data-dir", str(shared), "--out-dir", str(out))
    assert done.returncode == 0, done.stderr
    assert (
        "results.json: coarse cannot be believed (a trial: lam=-1.0 is not a number >= 0)"
        in done.stdout
    )
    assert json.loads((out / "results.json").read_text())["coarse"]["trials"][0]["lam"] > 0


def test_a_stored_step_made_by_other_code_is_computed_again(quick_run, tmp_path):
    out, shared = copy_run(quick_run, tmp_path)
    res = json.loads((out / "results.json").read_text())
    res["code"]["coarse"] = "0" * 16
    (out / "results.json").write_text(json.dumps(res))
    done = run_program("fine", "--quick", "--data-dir", str(shared), "--out-dir", str(out))
    assert done.returncode == 0, done.stderr
    assert "results.json: coarse was made by other code; computing it again" in done.stdout


# ---- whole files only ----------------------------------------------------------------------------


def test_an_interrupted_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "results.txt"
    path.write_text("the good one")
    with pytest.raises(RuntimeError):
        with runfiles.atomic_path(path) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("interrupted")
    assert path.read_text() == "the good one" and [p.name for p in tmp_path.iterdir()] == [
        "results.txt"
    ]
    runfiles.write_atomic(path, "new")
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
    done = run_program("report", "--out-dir", str(out))
    assert (
        done.returncode == 1
        and "results.json: not valid JSON" in done.stderr
        and "Traceback" not in done.stderr
    )
    assert (out / "report" / "report.pdf").read_bytes() == b"%PDF the good one"
    # no temporary left behind
    assert sorted(p.name for p in (out / "report").iterdir()) == ["report.pdf"]


def test_data_too_small_for_the_sizes_is_refused_before_anything_is_written(tiny_cifar, tmp_path):
    folder, _ = tiny_cifar  # 40 images per batch
    done = run_program("fig3", "--data-dir", str(folder), "--out-dir", str(tmp_path / "out"))
    assert done.returncode == 1 and "too few images for these sizes" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()
