"""The store of Exercise 5's runs: what lets runs of an hour resume and be reused. It knows
arrays, JSON and files, nothing of the network; bonus.keys says what a run's key holds.

- Trials: a JSON-lines file of finished runs, each under its key; a line that cannot be
  believed is skipped with a warning.
- save_progress / load_progress: a run's state at an evaluation point (arrays and a JSON
  record), so that an interrupted run goes on from there; a damaged file or another run's is
  set aside, never deleted.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from pathlib import Path

import numpy as np

from assignment2 import atomic_path


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def key_text(key: dict) -> str:
    return json.dumps(key, sort_keys=True)


def run_name(key: dict) -> str:
    """The 16 hex digits that name the files of the run `key`."""
    return short_hash(key_text(key))


def arrays_fingerprint(*arrays: np.ndarray) -> str:
    """16 hex digits naming the dtype, shape and values of arrays."""
    h = hashlib.sha256()
    for x in arrays:
        h.update(f"{x.dtype} {x.shape};".encode())
        h.update((x.T if x.flags.f_contiguous else np.ascontiguousarray(x)).data)
    return h.hexdigest()[:16]


def flatten(tree: dict, prefix: str = "") -> dict:
    """The leaves of a nested dict, by their path: {"m": {"W1": x}} -> {"m/W1": x}."""
    out = {}
    for k, v in tree.items():
        out |= flatten(v, f"{prefix}{k}/") if isinstance(v, dict) else {prefix + k: v}
    return out


def set_aside(path: Path, why: str, log=print) -> None:
    """Rename a damaged or foreign file beside itself (never deleted), with one warning line."""
    dest = path.with_name(f"{path.name}.set-aside-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, dest)
    log(f"warning: {path}: {why}; set aside as {dest.name}")


def is_fraction(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x <= 1


class Trials:
    """The finished trials of a JSON-lines file, found by their key. check(record) returns None
    for a record to believe, else what is wrong with it."""

    def __init__(self, path: Path, check, log=print):
        self.path, self.log, self.done, bad = Path(path), log, {}, []
        lines = self.path.read_text(errors="replace").splitlines() if self.path.is_file() else []
        for i, line in enumerate(lines, 1):
            try:
                t = json.loads(line)
                problem = (check(t) if isinstance(t, dict) and isinstance(t.get("key"), dict)
                           else "not a keyed trial")
            except ValueError:
                problem = "not valid JSON"
            if problem:
                bad.append(f"line {i}: {problem}")
            else:
                self.done[key_text(t["key"])] = t
        if bad:
            log(f"warning: {self.path}: skipped {len(bad)} line(s) ({bad[0]})")

    def get(self, key: dict) -> dict | None:
        return self.done.get(key_text(key))

    def add(self, trial: dict) -> None:
        """Append one trial in one write, flushed to disk: a crash after it loses nothing; a
        crash during it leaves at most a cut line, which is skipped (the next record starts on a
        line of its own)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as f:
            lead = b""
            if f.seek(0, os.SEEK_END):  # the last line was cut: end it, it stays skipped
                f.seek(-1, os.SEEK_END)
                lead = b"" if f.read(1) == b"\n" else b"\n"
            f.write(lead + (json.dumps(trial) + "\n").encode())  # appended, wherever f points
            f.flush()
            os.fsync(f.fileno())
        self.done[key_text(trial["key"])] = trial


def save_progress(path: Path, key: dict, meta: dict, arrays: dict) -> None:
    """A run's state: meta (JSON) and named arrays, written whole, under the run's key."""
    record = json.dumps({"key": key_text(key), **meta})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(record), **arrays)


def load_progress(path: Path, key: dict, like: dict, check, log=print) -> tuple | None:
    """(meta, arrays) that save_progress wrote for the run `key`, when its arrays fit `like`
    (name: array) and check(meta, arrays) finds no problem (None); None when there is none. A
    damaged file or another run's is set aside."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            meta, arrays = json.loads(str(z["meta"])), {k: z[k] for k in z.files if k != "meta"}
        problem = ("it belongs to another run" if meta.get("key") != key_text(key) else
                   next((f"its {k} does not fit" for k, v in like.items() if k not in arrays
                         or arrays[k].shape != v.shape or arrays[k].dtype != v.dtype), None))
        problem = problem or check(meta, arrays)
    except (OSError, ValueError, KeyError, EOFError, TypeError, AttributeError,
            zipfile.BadZipFile) as e:
        problem = f"not a readable progress file ({e})"
    if problem:
        set_aside(path, problem + "; starting the run from step 0", log)
        return None
    return meta, arrays
