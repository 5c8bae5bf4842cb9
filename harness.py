"""The long-run harness of Exercise 5 (bonus.py): runs of an hour that resume and are reused.

- Trials: a JSON-lines file of finished trials, each under the key of all that made it (its
  settings, seed, sizes, a fingerprint of its data and of the code), so a rerun reuses a trial
  only when all of that is the same. A line that cannot be believed is skipped with a warning.
- save_progress / load_progress: a run's state at an evaluation point (arrays and a JSON record),
  so that an interrupted run goes on from there; a damaged file or another run's is set aside.
- code_fingerprint: a hash of the code that a function runs, followed through the project's
  modules (comments, docstrings, layout and the code it does not run do not count).

It knows arrays, JSON and files, nothing of the network: bonus.py says what goes in them.
"""
from __future__ import annotations

import ast
import copy
import functools
import hashlib
import inspect
import json
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

from assignment2 import atomic_path


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def key_text(key: dict) -> str:
    return json.dumps(key, sort_keys=True)


def code_fingerprint(*roots) -> str:
    """16 hex digits naming the code that roots (module-level functions or classes) run: their
    source and that of every module-level name they use, followed into the modules of the same
    folder that they import (as `a.name` or by `from m import name`), as code: comments,
    docstrings and layout do not count, and editing any other part of the files changes
    nothing. Modules are named by their files, so a module run as a script (__main__) has the
    fingerprint it has when imported."""
    folder = Path(inspect.getsourcefile(roots[0])).parent
    todo = [(sys.modules[r.__module__], r.__name__) for r in roots]
    seen, parts = set(), []
    while todo:
        module, name = todo.pop()
        file = Path(module.__file__).stem  # not __name__: run as a script, bonus is __main__
        if (file, name) in seen:
            continue
        seen.add((file, name))
        node = without_docstrings(definitions(module)[name])
        parts.append(f"{file}.{name}: {ast.unparse(node)}")
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                todo += uses(module, getattr(module, sub.id, None), sub.id, folder)
            if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name):
                other = getattr(module, sub.value.id, None)
                if inspect.ismodule(other) and in_folder(other, folder):
                    todo += [(other, sub.attr)] if sub.attr in definitions(other) else []
    return short_hash("\n".join(sorted(parts)))


def uses(module, value, name: str, folder: Path) -> list:
    """The (module, name) that the name `name` of module refers to, if it is code of folder."""
    if name in definitions(module):
        return [(module, name)]
    home = sys.modules.get(getattr(value, "__module__", None) or "")
    if home is not None and in_folder(home, folder) and name in definitions(home):
        return [(home, name)]  # from home import name
    return []


def in_folder(module, folder: Path) -> bool:
    file = getattr(module, "__file__", None)
    return file is not None and Path(file).resolve().parent == folder.resolve()


@functools.cache
def definitions(module) -> dict:
    """The module-level functions, classes and assignments of module's source, by name."""
    out = {}
    for node in ast.parse(Path(module.__file__).read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out[node.name] = node
        for target in getattr(node, "targets", [getattr(node, "target", None)]):
            if isinstance(target, ast.Name):
                out[target.id] = node
    return out


def without_docstrings(node):
    """A copy of node without the docstrings and the signatures' annotations of it and of what
    it defines (type hints do not run; a dataclass's fields stay)."""
    node = copy.deepcopy(node)
    for sub in ast.walk(node):
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
            sub.returns = None
        if isinstance(sub, ast.arg):
            sub.annotation = None
        body = getattr(sub, "body", None)
        if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                and isinstance(getattr(body[0], "value", None), ast.Constant)
                and isinstance(body[0].value.value, str)):
            sub.body = body[1:] or [ast.Pass()]
    return node


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
