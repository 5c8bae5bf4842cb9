"""The program's own files, kept trustworthy: tooling beside assignment2.py, not the assignment.

- write_atomic / atomic_path: a file is written whole or not at all (a temporary name in the same
  folder, then os.replace), so an interruption never leaves half a results file, PDF or weights.
- FolderLock: one writer per output folder (fcntl.flock on a lock file held for the whole run).
- read_json / read_jsonl: a state file is validated when read; a damaged one is set aside (renamed,
  never deleted) with one warning line, and an implausible record is not believed.
- file_digest / source_fingerprint: what made a cached result (the bytes of the data files, the
  code that trains), so that a cache is reused only for the same data and code.
"""
from __future__ import annotations

import ast
import contextlib
import fcntl
import fnmatch
import hashlib
import json
import math
import os
import tempfile
import time
from pathlib import Path


class StateError(Exception):
    """A problem with the program's own files or folders, reported as one line."""


# --------------------------------------------------------------------------------------------------
# Writing: whole files only

@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; when the block succeeds it replaces `path` in one
    step, when it fails it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write text or bytes to path whole or not at all."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def append_line(path: Path, line: str) -> None:
    """Append one line in one write and flush it to disk: a finished trial's record survives a
    crash that follows it; a crash during the write leaves at most a cut line, which read_jsonl
    skips."""
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------------------------------
# One writer per folder

class FolderLock:
    """An exclusive lock on `folder` for the lifetime of a run: a second run into the same folder
    stops at once with StateError naming the process that holds it. The kernel drops the lock when
    the holder exits, however it exits, so a crashed run never leaves the folder locked."""
    NAME = ".assignment2.lock"

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.NAME
        self.fd = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise StateError(f"{self.path.parent}: another run is writing to this folder "
                             f"({holder}); wait for it to end or pass another --out-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # releases the lock; the file stays for the next holder
        self.fd = None


# --------------------------------------------------------------------------------------------------
# Reading: validated, and set aside when damaged

def set_aside(path: Path, why: str, log=print) -> Path:
    """Rename a damaged or foreign file to <name>.set-aside-<time> beside it; say so in one line."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        dest = path.with_name(f"{path.name}.set-aside-{stamp}" + (f"-{i}" if i else ""))
        if not dest.exists():
            break
    os.replace(path, dest)
    log(f"warning: {path}: {why}; set aside as {dest.name}")
    return dest


def read_json(path: Path, check, log=print):
    """The JSON value in path if check(value) accepts it (check returns None, or a complaint). A
    missing file gives None; one that is not valid JSON, or that check refuses, is set aside with a
    warning and gives None."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        set_aside(path, f"not valid JSON ({e})", log)
        return None
    if (problem := check(value)) is not None:
        set_aside(path, problem, log)
        return None
    return value


def read_jsonl(path: Path, check, log=print) -> list:
    """The records of a JSON-lines file that parse and that check() accepts (check returns None,
    or a complaint). Every other line (cut short by an interruption, or not to be believed) is
    skipped, with one warning line that counts them and names the first. The file stays as it is."""
    path = Path(path)
    if not path.is_file():
        return []
    records, bad = [], []
    for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad.append(f"line {i} is not valid JSON")
            continue
        if (problem := check(record)) is not None:
            bad.append(f"line {i}: {problem}")
            continue
        records.append(record)
    if bad:
        log(f"warning: {path}: skipped {len(bad)} line(s) that cannot be believed ({bad[0]})")
    return records


def is_fraction(x) -> bool:
    """A finite number in [0, 1] (an accuracy); bool is not a number here."""
    return is_nonneg(x) and x <= 1


def is_nonneg(x) -> bool:
    """A finite number >= 0 (a lam, a count of seconds)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x >= 0


# --------------------------------------------------------------------------------------------------
# Fingerprints: what made a result

def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def short_hash(*parts: str) -> str:
    """16 hex digits naming the parts together."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def source_fingerprint(source_file: Path, exclude=()) -> str:
    """A hash of a Python file's top-level code as code: docstrings, comments, layout and imports do
    not count, nor the functions, classes and constants whose names match a pattern of `exclude`
    (fnmatch), so rewording a comment keeps every cache while any change to what the rest of the
    code does makes a new fingerprint."""
    tree = ast.parse(Path(source_file).read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and _docstring(node):
            node.body = node.body[1:] or [ast.Pass()]
    kept = [node for node in tree.body if not isinstance(node, (ast.Import, ast.ImportFrom))
            and not any(fnmatch.fnmatchcase(_name(node), p) for p in exclude)]
    return short_hash(*(ast.unparse(node) for node in kept))


def _name(node) -> str:
    """The name a top-level statement defines: a function, a class, or one assigned constant."""
    targets = node.targets if isinstance(node, ast.Assign) else []
    if len(targets) == 1 and isinstance(targets[0], ast.Name):
        return targets[0].id
    return getattr(node, "name", "")


def _docstring(node) -> bool:
    first = node.body[0] if node.body else None
    return (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str))


def move_aside(folder: Path, names, dest: Path) -> Path:
    """Move the files and folders `names` (paths relative to folder) that exist into dest, keeping
    their relative paths; nothing is deleted. Returns dest."""
    for name in names:
        if (folder / name).exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(folder / name, dest / name)
    return dest


# --------------------------------------------------------------------------------------------------
# Run folders: what a folder of results belongs to, so that no run destroys another's

# What --replace moves aside; the trial caches stay, since each trial names what made it.
RUN_OUTPUTS = ("results.json", "results.txt", "timings.json", "results_bonus.json",
               "results_bonus.txt", "figures", "report/report.pdf", "report/bonus.pdf")


def identity(seed: int, quick: bool, dtype: str, data_files) -> dict:
    """What a run is: its seed, sizes, dtype, and its data (a hash of every data file's bytes)."""
    return {"seed": seed, "quick": quick, "dtype": dtype,
            "data": short_hash(*(file_digest(f) for f in data_files))}


def describe(run: dict) -> str:
    return (f"seed {run.get('seed')}, {'quick' if run.get('quick') else 'full'} sizes, "
            f"{run.get('dtype')}, data {run.get('data') or 'unknown (an older version made it)'}")


def run_name(run: dict) -> str:
    return (f"{'quick' if run['quick'] else 'full'}-seed{run['seed']}-{run['dtype']}-"
            f"{(run.get('data') or 'unknown')[:8]}")


def choose_out_dir(arg: str | None, run: dict, home: Path, data_dir: Path) -> Path:
    """--out-dir as given; by default `home` for a full run, unless it holds another run: then,
    and for every --quick run, home/runs/<run>/ (ignored by git), so that no smoke test touches
    the committed results. A folder inside the data folder is refused."""
    if arg is not None:
        out = Path(arg)
    else:
        try:
            held = json.loads((Path(home) / "results.json").read_text())
        except (OSError, ValueError):
            held = None  # nothing there (or damaged: open_run sets it aside)
        same = not isinstance(held, dict) or {k: held.get(k) for k in run} == run
        out = Path(home) if same and not run["quick"] else Path(home) / "runs" / run_name(run)
    data = Path(data_dir).resolve()
    if out.resolve() == data or data in out.resolve().parents:
        raise StateError(f"--out-dir {out}: inside the data folder {data_dir}; write elsewhere")
    return out


def results_problem(res) -> str | None:
    """None if res is a results.json this program wrote, else what is wrong with it."""
    if not isinstance(res, dict):
        return "not a results object"
    if not (type(res.get("seed")) is int and res["seed"] >= 0 and isinstance(res.get("quick"), bool)
            and res.get("dtype") in ("float32", "float64")):
        return "its seed, quick or dtype is missing or invalid"
    if not isinstance(res.get("code", {}), dict):
        return "its code record is not a dict"
    return None


def timings_problem(t) -> str | None:
    ok = isinstance(t, dict) and all(isinstance(k, str) and is_nonneg(v) for k, v in t.items())
    return None if ok else "not a table of seconds per step"


def open_run(out_dir: Path, run: dict, replace: bool, log=print) -> tuple[dict, dict]:
    """(results, timings) in out_dir if they belong to `run`, else ({}, {}). A damaged file is set
    aside; the results of another run stop the program (StateError) before anything is written,
    unless `replace`: then that run's outputs move to out_dir/replaced/<time>-<run>/."""
    res = read_json(out_dir / "results.json", results_problem, log)
    if res is None:
        return {}, {}
    if {k: res.get(k) for k in run} == run:
        return res, read_json(out_dir / "timings.json", timings_problem, log) or {}
    if not replace:
        raise StateError(f"{out_dir} holds the results of another run ({describe(res)}); this run "
                         f"is ({describe(run)}). Nothing was changed: pass another --out-dir, or "
                         f"--replace to move that run's outputs to {out_dir / 'replaced'}/ and start "
                         f"afresh")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = move_aside(out_dir, RUN_OUTPUTS, out_dir / "replaced" / f"{stamp}-{run_name(res)}")
    log(f"--replace: moved the outputs of the run ({describe(res)}) to {dest}")
    return {}, {}
