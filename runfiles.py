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
import functools
import hashlib
import io
import json
import math
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path


class StateError(Exception):
    """A problem with the program's own files or folders, reported as one line."""


class DataError(Exception):
    """A missing, corrupt or unsafe data file."""


# --------------------------------------------------------------------------------------------------
# Data files: safe unpickling and an all-or-nothing download

class SafeUnpickler(pickle.Unpickler):
    """Rebuilds only what a CIFAR batch holds (dicts, lists, bytes, ints, numpy arrays) and refuses
    every other global, since unpickling an arbitrary global can run arbitrary code."""
    NUMPY = {("numpy", "ndarray"), ("numpy", "dtype"),
             ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
             ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
             ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}

    def find_class(self, module, name):
        if (module, name) == ("_codecs", "encode"):  # how Python 3 writes bytes at protocol 2
            return _latin1_encode
        if (module, name) in (("__builtin__", "bytes"), ("builtins", "bytes")):  # ... and b""
            return _empty_bytes
        if (module, name) not in self.NUMPY:
            raise pickle.UnpicklingError(f"refused to load the global {module}.{name}: not part of "
                                         f"a CIFAR batch")
        import numpy as np
        core = np._core if hasattr(np, "_core") else np.core  # numpy 2 renamed numpy.core
        owner = (np if module == "numpy" else core.numeric if module.endswith("numeric")
                 else core.multiarray)
        return getattr(owner, name)


def _latin1_encode(text, encoding="utf-8"):
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError(f"refused to load _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args):
    if args:  # bytes(n) would allocate n bytes: a tiny file could ask for any amount of memory
        raise pickle.UnpicklingError("refused to load builtins.bytes with arguments")
    return b""


def download_archive(url: str, md5: str, dest: Path, prefix: str, members, help_: str) -> None:
    """Fetch a .tar.gz with progress, check its MD5, and extract exactly prefix + each of members
    into a fresh temporary folder, renamed to dest only when all are there as regular files; on any
    failure DataError (ending with help_) and nothing is left behind."""
    import urllib.request
    buf, digest = io.BytesIO(), hashlib.md5()
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            total, done = int(r.headers.get("Content-Length") or 0), 0
            while chunk := r.read(1 << 20):
                buf.write(chunk), digest.update(chunk)
                done += len(chunk)
                print(f"\r  {done >> 20} MiB" + (f" of {total >> 20} MiB" if total else ""), end="",
                      file=sys.stderr)
        print(file=sys.stderr)
    except OSError as e:
        raise DataError(f"could not download the data ({e}). {help_}") from None
    if digest.hexdigest() != md5:
        raise DataError(f"the downloaded archive has MD5 {digest.hexdigest()}, expected {md5}. "
                        f"{help_}")
    buf.seek(0)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.part-"))  # fresh each time
    try:
        _extract(buf, tmp, {prefix + m: m for m in members}, help_)
        tmp.rename(dest)  # only a complete folder ever gets the real name
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _extract(archive: io.BytesIO, dest: Path, wanted: dict, help_: str) -> None:
    try:
        with tarfile.open(fileobj=archive, mode="r:gz") as tar:
            for member in tar.getmembers():
                if member.name not in wanted:
                    continue
                if not member.isfile():
                    raise DataError(f"the archive's {member.name} is not a regular file. {help_}")
                (dest / wanted.pop(member.name)).write_bytes(tar.extractfile(member).read())
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"the downloaded archive cannot be read ({e}). {help_}") from None
    if wanted:
        raise DataError(f"the downloaded archive lacks {', '.join(sorted(wanted.values()))}. "
                        f"{help_}")


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


def trial_problem(t, config_problem=lambda cfg: None) -> str | None:
    """None if t is a trial record to believe (as run_trials writes it), else what is wrong with
    it; config_problem(t["cfg"]) judges its settings."""
    if (not isinstance(t, dict) or not isinstance(t.get("diverged"), bool)
            or not isinstance(t.get("cfg"), dict)):
        return "not a trial record"
    if not is_nonneg(t.get("lam")):
        return f"lam={t.get('lam')!r} is not a number >= 0"
    for q, v in t.items():
        if (q.endswith("acc") or "_acc_" in q) and not (
                is_fraction(v) or (v is None and (t["diverged"] or q != "val_acc"))):
            return f"{q}={v!r} is not an accuracy in [0, 1]"
    if "seconds" in t and not is_nonneg(t["seconds"]):
        return f"seconds={t['seconds']!r} is not a duration"
    return config_problem(t["cfg"])


def step_problem(r, config_problem=lambda cfg: None) -> str | None:
    """None if r is a stored step result to believe: its trials, accuracies, lam and cfg are
    plausible."""
    if not isinstance(r, dict):
        return "not a step result"
    if "trials" in r and not (isinstance(r["trials"], list) and r["trials"]):
        return "no trials"
    for t in r.get("trials", []):
        if problem := trial_problem(t, config_problem):
            return f"a trial: {problem}"
    if "test_acc" in r and not is_fraction(r["test_acc"]):
        return f"test_acc={r['test_acc']!r} is not an accuracy in [0, 1]"
    if "lam" in r and not is_nonneg(r["lam"]):
        return f"lam={r['lam']!r} is not a number >= 0"
    return config_problem(r["cfg"]) if "cfg" in r else None


class TrialFile:
    """The finished trials of a JSON-lines file, found by their key: the settings, seed and sizes
    that made a trial, plus "data" and "code" fingerprints. A trial with the same settings made on
    other data or by other code is not reused, and the log says which."""

    def __init__(self, path: Path, config_problem, log=print):
        self.path, self.log = Path(path), log
        def check(t):
            keyed = isinstance(t, dict) and isinstance(t.get("key"), dict)
            return trial_problem(t, config_problem) if keyed else "it has no key"
        stored = read_jsonl(self.path, check, log)
        self.done = {_text(t["key"]): t for t in stored}
        self.made = {_text(_settings(t["key"])): t["key"] for t in stored}

    def get(self, key: dict, tag: str) -> dict | None:
        if (hit := self.done.get(_text(key))) is not None:
            self.log(f"{tag}: kept from {self.path.name}, val acc {hit['val_acc']}")
            return hit
        if (other := self.made.get(_text(_settings(key)))) is not None:
            why = " and ".join(f"other {q}" for q in ("data", "code") if other.get(q) != key.get(q))
            self.log(f"{tag}: {self.path.name} holds this trial made with {why}; training it again")
        return None

    def add(self, trial: dict) -> None:
        append_line(self.path, json.dumps(trial))


def _text(key: dict) -> str:
    return json.dumps(key, sort_keys=True)


def _settings(key: dict) -> dict:
    """A trial key without what made its data and code."""
    return {k: v for k, v in key.items() if k not in ("data", "code")}


# --------------------------------------------------------------------------------------------------
# Progress files: a long run saved at its evaluation points, resumed exactly

def nested(d: dict, prefix: str = ""):
    """(path, array) for every array in a dict of arrays or of such dicts (params, optimiser
    state)."""
    for k, v in d.items():
        yield from nested(v, f"{prefix}{k}/") if isinstance(v, dict) else [(prefix + k, v)]


def save_progress(path: Path, tag: str, t: int, seconds: float, params: dict, state: dict,
                  rng, perm, hist: dict) -> None:
    """Everything a run needs to go on from step t exactly as if it had not stopped."""
    import numpy as np
    meta = json.dumps({"tag": tag, "t": t, "seconds": seconds, "rng": rng.bit_generator.state,
                       "hist": hist})
    arrays = dict(nested(params, "params/")) | dict(nested(state, "state/"))
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(meta), perm=perm, **arrays)


def load_progress(path: Path, tag: str, log=print, like: dict | None = None) -> tuple | None:
    """(meta, arrays) of the progress file save_progress wrote for the run `tag`; None when there is
    none. A damaged file, one from another run, or one whose arrays differ in shape or dtype from
    `like` ({name: array}) is set aside with a warning, and the run starts from step 0."""
    import numpy as np
    if not Path(path).is_file():
        return None
    try:
        with np.load(path) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files if k != "meta"}
        problem = _progress_problem(meta, arrays, tag, like or {})
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        problem = f"not a readable progress file ({e})"
    if problem:
        set_aside(path, problem + "; starting this run from step 0", log)
        return None
    return meta, arrays


def _progress_problem(meta, arrays: dict, tag: str, like: dict) -> str | None:
    import numpy as np
    if not isinstance(meta, dict) or not isinstance(meta.get("hist"), dict):
        return "its metadata is not a progress record"
    if meta.get("tag") != tag:
        return "it belongs to another run (other settings, seed, data or code)"
    if not (isinstance(meta.get("t"), int) and meta["t"] > 0 and is_nonneg(meta.get("seconds"))):
        return f"its step {meta.get('t')!r} or seconds {meta.get('seconds')!r} are not plausible"
    try:
        np.random.default_rng().bit_generator.state = meta["rng"]  # a state we can restore
    except (KeyError, TypeError, ValueError) as e:
        return f"its generator state is damaged ({e!r})"
    for k, v in like.items():
        if k not in arrays or arrays[k].shape != v.shape or arrays[k].dtype != v.dtype:
            return f"its {k} does not fit this network"
    return None


# --------------------------------------------------------------------------------------------------
# Fingerprints: what made a result

def arrays_fingerprint(*arrays) -> str:
    """A hash of the exact dtype, shape and values of numpy arrays."""
    import numpy as np
    h = hashlib.sha256()
    for a in arrays:
        h.update(f"{a.dtype} {a.shape};".encode())
        h.update((a.T if a.flags.f_contiguous else np.ascontiguousarray(a)).data)  # no copy of X
    return h.hexdigest()[:16]


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


# The code that makes the numbers: assignment2.py as code (comments, docstrings and layout do not
# count), without its plots, its command line and its checks of stored records.
NOT_NUMBERS = ("plot_*", "_pyplot", "save_figure", "report", "HELP", "parse_args", "main",
               "check_args", "check_sizes", "*_problem", "save_run", "run_steps")


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A cached trial or stored result is reused only under the same fingerprint of this code."""
    return source_fingerprint(Path(__file__).with_name("assignment2.py"), exclude=NOT_NUMBERS)


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

def without_clock(value):
    """value without the wall-clock times of its training curves ("seconds" beside "step"): the
    one thing that makes results.json differ between two runs of one seed (timings.json has the
    times)."""
    if isinstance(value, dict):
        return {k: without_clock(v) for k, v in value.items()
                if not (k == "seconds" and "step" in value)}
    if isinstance(value, list):
        return [without_clock(v) for v in value]
    return value


# What --replace moves aside; the trial caches stay, since each trial names what made it.
RUN_OUTPUTS = ("results.json", "results.txt", "timings.json", "results_bonus.json",
               "results_bonus.txt", "results_explore.json", "results_explore.txt", "figures",
               "report/report.pdf", "report/bonus.pdf")


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
                         f"--replace to move that run's outputs to {out_dir / 'replaced'}/ and "
                         f"start afresh")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = move_aside(out_dir, RUN_OUTPUTS, out_dir / "replaced" / f"{stamp}-{run_name(res)}")
    log(f"--replace: moved the outputs of the run ({describe(res)}) to {dest}")
    return {}, {}
