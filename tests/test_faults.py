"""Faults and misuse: one clear line, a non-zero exit, and nothing earlier lost or half-written."""

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT

import assignment2 as a


def run_program(*args, umask=None, **kw):
    return subprocess.run([sys.executable, str(ROOT / "assignment2.py"), *args],
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None, **kw)


def one_error_line(done, *words):
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert all(w in lines[0] for w in words), lines[0]


def tree(folder):
    return {p.relative_to(folder): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*")) if p.name != ".assignment2.lock"}


# ---- a run's outputs belong to it ----------------------------------------------------------------

def test_the_lock_never_follows_a_symbolic_link(quick_cifar, tmp_path):
    folder = quick_cifar
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / ".assignment2.lock").symlink_to(target)
    done = run_program("gradcheck", "--quick", "--data-dir", str(folder), "--out-dir", str(out))
    one_error_line(done, ".assignment2.lock")
    assert target.read_text() == "keep me"


def test_an_interrupted_replace_is_finished_by_the_next_run(quick_cifar, tmp_path):
    """--replace marks its replaced/ folder, moves the outputs, then unmarks it; a run that finds
    the mark moves what is left, so the earlier run ends up whole in one place."""
    folder = quick_cifar
    out = tmp_path / "out"
    aside = out / "replaced" / "20260101-000000-earlier"
    (aside / "figures").mkdir(parents=True)
    (aside / "figures" / "fig3.png").write_bytes(b"png")
    (aside / ".moving").touch()
    (out / "results.txt").write_text("earlier text")
    (out / "timings.json").write_text("{}")  # moved before the interruption: results.json
    (aside / "results.json").write_text('{"seed": 5}')
    done = run_program("overfit", "--quick", "--data-dir", str(folder), "--out-dir", str(out))
    assert done.returncode == 0, done.stderr
    assert not (aside / ".moving").exists()
    assert (aside / "results.txt").read_text() == "earlier text"
    assert (aside / "timings.json").exists()
    assert json.loads((out / "results.json").read_text())["overfit"]


def test_a_report_without_its_results_is_another_runs_output(quick_cifar, tmp_path):
    out = tmp_path / "out"
    (out / "report").mkdir(parents=True)
    (out / "report" / "report.pdf").write_bytes(b"%PDF earlier")
    args = ("overfit", "--quick", "--data-dir", str(quick_cifar), "--out-dir", str(out))
    one_error_line(run_program(*args), "outputs (report/report.pdf)", "--replace")
    assert run_program(*args, "--replace").returncode == 0
    [aside] = (out / "replaced").iterdir()
    assert (aside / "report" / "report.pdf").read_bytes() == b"%PDF earlier"


# ---- the functions a notebook calls check their inputs -------------------------------------------

def small(n=20, seed=0):
    rng = np.random.default_rng(seed)
    return a.Split(rng.standard_normal((a.D, n)).astype(np.float32), rng.integers(0, a.K, n))


@pytest.mark.parametrize("bad,words", [
    (lambda s: a.Split(s.X, s.y - 1), ["y must hold one label in 0..9", "from -1"]),
    (lambda s: a.Split(s.X, np.full(s.n, 10)), ["from 10 to 10"]),
    (lambda s: a.Split(s.X, s.y.astype(float)), ["y must be a 1-D integer array", "float64"]),
    (lambda s: a.Split(s.X, np.append(s.y, 1)), ["got 21 labels"]),
    (lambda s: a.Split(np.ascontiguousarray(s.X.T), s.y), ["transposed?"]),
    (lambda s: a.Split(s.X[:, :0], s.y[:0]), ["non-empty float array"]),
])
def test_evaluate_and_run_refuse_data_they_cannot_use(bad, words):
    s, rng = small(), np.random.default_rng(0)
    params = a.init_params(a.D, 5, rng, "float32")
    for call in (lambda d: a.evaluate(d.X, d.y, params, 0.0),
                 lambda d: a.run(d, small(), a.Config(n_batch=10), rng)):
        with pytest.raises(ValueError) as e:
            call(bad(s))
        assert all(w in str(e.value) for w in words), str(e.value)


def test_a_config_field_of_the_wrong_type_is_named():
    with pytest.raises(ValueError, match=r"m=2.5 must be a positive integer"):
        a.run(small(), small(), a.Config(m=2.5, n_batch=10), np.random.default_rng(0))


# ---- operating-system faults: one line, before anything trains -----------------------------------

@pytest.mark.parametrize("make,words", [
    (lambda t: (t / "file").write_text("x") and t / "file" / "out",
     ["file/out", "Not a directory"]),
    (lambda t: (t / "loop").symlink_to(t / "loop") or t / "loop", ["loop"]),
    (lambda t: (t / "dangling").symlink_to(t / "nowhere") or t / "dangling", ["dangling"]),
    (lambda t: t / ("n" * 300), ["File name too long"]),
])
def test_an_output_folder_that_cannot_be_made_is_one_line(quick_cifar, tmp_path, make, words):
    folder = quick_cifar
    done = run_program("gradcheck", "--quick", "--data-dir", str(folder), "--out-dir",
                       str(make(tmp_path)))
    one_error_line(done, *words)


@pytest.mark.parametrize("name,kind", [("results.json", "a file"), ("timings.json", "a file"),
                                       ("figures", "a folder")])
def test_outputs_of_the_wrong_kind_stop_the_run_before_it_trains(quick_cifar, tmp_path, name, kind):
    folder = quick_cifar
    out = tmp_path / "out"
    out.mkdir()
    (out / name).mkdir() if kind == "a file" else (out / name).write_text("x")
    before = tree(out)
    t0 = time.perf_counter()
    done = run_program("overfit", "--quick", "--data-dir", str(folder), "--out-dir", str(out))
    one_error_line(done, name, f"not {kind}")
    assert tree(out) == before and time.perf_counter() - t0 < 60


def tmpfs(folder, options):
    """folder as a fresh tmpfs mount with options, or a skip where this machine allows none."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return folder


@pytest.fixture
def mounts(tmp_path):
    made = []
    yield lambda name, options: made.append(tmpfs(tmp_path / name, options)) or made[-1]
    for m in made:
        subprocess.run(["umount", str(m)], capture_output=True)


def test_a_read_only_mount_is_one_line(quick_cifar, mounts):
    ro = mounts("ro", "ro,size=1m")
    done = run_program("overfit", "--quick", "--data-dir", str(quick_cifar), "--out-dir",
                       str(ro / "out"))
    one_error_line(done, str(ro / "out"), "Read-only file system")


def test_a_full_disk_is_one_line_and_leaves_whole_files(quick_cifar, mounts):
    small = mounts("full", "size=48k")
    done = run_program("--quick", "--data-dir", str(quick_cifar), "--out-dir", str(small))
    one_error_line(done, f"error: {small}: No space left on device")
    assert not list(small.rglob("*.tmp"))
    if (small / "results.json").exists():  # what was written is whole
        assert "gradcheck" in json.loads((small / "results.json").read_text())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_one_line(quick_cifar, tmp_path):
    folder = quick_cifar
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        done = run_program("overfit", "--quick", "--data-dir", str(folder), "--out-dir", str(out))
    finally:
        out.chmod(stat.S_IRWXU)
    one_error_line(done, str(out), "Permission denied")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files without read permission")
def test_a_batch_file_that_cannot_be_read_is_one_line(quick_cifar, tmp_path):
    folder = shutil.copytree(quick_cifar, tmp_path / "cifar")
    (folder / "data_batch_3").chmod(0)
    done = run_program("overfit", "--quick", "--data-dir", str(folder), "--out-dir",
                       str(tmp_path / "out"))
    one_error_line(done, "data_batch_3", "Permission denied")


@pytest.mark.parametrize("arg", ["", "   "])
def test_an_empty_data_dir_is_refused(tmp_path, arg):
    done = run_program("overfit", "--quick", "--data-dir", arg, "--out-dir", str(tmp_path / "o"))
    one_error_line(done, "--data-dir", "not a folder name")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("package", ["matplotlib", "torch"])
def test_a_missing_package_is_one_line_before_anything_is_written(quick_cifar, tmp_path, package):
    out = tmp_path / "out"
    hide = (f"import runpy, sys; sys.modules[{package!r}] = None; sys.argv[0] = 'assignment2.py'; "
            f"runpy.run_path({str(ROOT / 'assignment2.py')!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", hide, "--quick", "--data-dir", str(quick_cifar),
                           "--out-dir", str(out)], capture_output=True, text=True, timeout=60)
    one_error_line(done, package, "pip install -r requirements.txt")
    assert not out.exists()


# ---- signals -------------------------------------------------------------------------------------

def start(folder, out):
    return subprocess.Popen([sys.executable, str(ROOT / "assignment2.py"), "--quick", "--data-dir",
                             str(folder), "--out-dir", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signals", [1, 2])
def test_sigterm_is_handled_as_ctrl_c(quick_cifar, tmp_path, signals):
    out = tmp_path / "out"
    p = start(quick_cifar, out)
    for line in p.stdout:
        if line.startswith("== overfit took"):
            break
    for _ in range(signals):  # a second one while the first is handled changes nothing
        p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143 and "Traceback" not in err
    assert "interrupted: the steps that finished are saved" in err
    assert {"gradcheck", "overfit"} <= set(json.loads((out / "results.json").read_text()))


def loading_numpy(p):
    """True once the process maps numpy's libraries: its own code runs, numpy is loading."""
    try:
        return "numpy" in open(f"/proc/{p.pid}/maps").read()
    except OSError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc")
def test_an_interrupt_while_numpy_loads_is_one_line(quick_cifar, tmp_path):
    p = start(quick_cifar, tmp_path / "out")
    t0 = time.perf_counter()
    while not loading_numpy(p) and p.poll() is None and time.perf_counter() - t0 < 30:
        time.sleep(0.002)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130 and "Traceback" not in err and "interrupted" in err


FIRST_IMPORT = """
import os, runpy, signal, sys
script = sys.argv[1]
def at_first_import(event, args):  # the first module the file's own lines load
    if event == "import" and args[0] not in sys.modules and sys._getframe(1).f_globals.get(
            "__file__") == script:
        os.kill(os.getpid(), signal.SIGINT)
sys.path.insert(0, os.path.dirname(script))
sys.argv = [script, "--help"]
sys.addaudithook(at_first_import)
runpy.run_path(script, run_name="__main__")
"""


@pytest.mark.parametrize("program", ["assignment2.py", "bonus/__main__.py"])
def test_an_interrupt_at_the_first_import_is_one_line(program):
    done = subprocess.run([sys.executable, "-c", FIRST_IMPORT, str(ROOT / program)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 130 and done.stderr == "\ninterrupted\n", done.stderr


# ---- small things --------------------------------------------------------------------------------

def test_a_run_removes_what_killed_writes_left_in_its_folder(quick_cifar, tmp_path):
    folder = quick_cifar
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    left = [out / ".results.txt.abc123.tmp", out / "figures" / ".fig3.png.x1.tmp"]
    for f in left:
        f.write_bytes(b"half")
    done = run_program("overfit", "--quick", "--data-dir", str(folder), "--out-dir", str(out))
    assert done.returncode == 0, done.stderr
    assert not any(f.exists() for f in left)


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_follow_the_umask(quick_cifar, tmp_path, umask):
    folder = quick_cifar
    out = tmp_path / "out"
    done = run_program("overfit", "--quick", "--data-dir", str(folder), "--out-dir", str(out),
                       umask=umask)
    assert done.returncode == 0, done.stderr
    for name in ("results.json", "results.txt", "timings.json"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask


def test_the_report_only_reads(tmp_path):
    where = tmp_path / "nothing" / "here"
    done = subprocess.run([sys.executable, "-m", "report", "--out-dir", str(where)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "results.json: not found" in done.stderr and not (tmp_path / "nothing").exists()


def test_the_report_refuses_an_empty_folder_name():
    done = subprocess.run([sys.executable, "-m", "report", "--out-dir", ""], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.strip() == "error: --out-dir '': not a folder name"


def test_the_report_without_typst_names_what_to_install(tmp_path):
    hide_typst = ("import runpy, sys; sys.modules['typst'] = None; "  # find_spec now finds none
                  "runpy.run_module('report', run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", hide_typst, "--out-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip() == "error: typst not installed: pip install -r requirements.txt"


def test_a_damaged_timings_file_is_written_anew_with_a_warning(quick_cifar, tmp_path):
    out = tmp_path / "out"
    args = ("overfit", "--quick", "--data-dir", str(quick_cifar), "--out-dir", str(out))
    assert run_program(*args).returncode == 0
    (out / "timings.json").write_text("{oops")
    done = run_program(*args)
    assert done.returncode == 0 and "timings.json is damaged; writing it anew" in done.stderr
    assert "overfit" in json.loads((out / "timings.json").read_text())
