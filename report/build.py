"""Builds report/report.pdf (and bonus.pdf) from a results folder with Typst; formats results.txt.

The templates report.typ and bonus.typ read results.json, timings.json and Exercise 5's
bonus/results/recipe.json, explore.json and distil.json (when there) and the figures of the folder
themselves (rows are found by name); this file only checks that those inputs are there and
readable, compiles, and replaces a PDF only with a complete one.
`python3 -m report [--out-dir DIR]` calls build_report().
"""
from __future__ import annotations

import json
from pathlib import Path

import assignment2 as a

HERE = Path(__file__).resolve().parent
# report.typ reads these
STEPS = ("gradcheck", "overfit", "fig3", "fig4", "coarse", "fine", "final")
FIGURES = tuple(Path(f).name for f in a.FIGURES)  # those assignment2.py draws
BONUS_FIGURES = ("augmentation.png", "bonus_minutes.png")
STEPS_5 = ("recipe", "explore", "distil")  # Exercise 5's steps, each with a results file


class ReportError(Exception):
    """A missing or unreadable input of the report, in one line."""


def read_results(path: Path, remedy: str) -> dict:
    """A results file as a dict, or a ReportError naming it."""
    if not path.is_file():
        raise ReportError(f"{path}: not found; {remedy}")
    try:
        res = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: not valid JSON ({e}); {remedy}") from None
    if not isinstance(res, dict):
        raise ReportError(f"{path}: not a results file; {remedy}")
    return res


def check_results(out_dir: Path) -> None:
    res = read_results(out_dir / "results.json",
                       "run `python3 assignment2.py` (then `seeds`) first")
    if missing := [k for k in STEPS if k not in res]:
        raise ReportError(f"{out_dir / 'results.json'}: no results for {', '.join(missing)}; "
                          f"run those steps first")
    read_results(out_dir / "timings.json", "run `python3 assignment2.py` again")


def check_figures(out_dir: Path, figures) -> None:
    if absent := [f for f in figures if not (out_dir / "figures" / f).is_file()]:
        raise ReportError(f"{out_dir / 'figures'}: the report needs {', '.join(absent)}; run the "
                          f"steps that draw them")


def compile_pdf(template: Path, out_dir: Path, inputs: dict | None = None) -> bytes:
    """The PDF of one template, reading the results of out_dir (an absolute path: root is /);
    inputs: more sys.inputs for the template."""
    import typst
    if not template.is_file():
        raise ReportError(f"{template}: report template not found")
    try:
        return typst.compile(str(template), root="/",
                             sys_inputs={"dir": str(out_dir.resolve()), **(inputs or {})})
    except RuntimeError as e:  # typst reports a template error or a damaged input this way
        raise ReportError(f"{template}: typst could not build it from {out_dir} "
                          f"({' '.join(str(e).split())[:300]})") from None


def bonus_results(out_dir: Path, step: str) -> Path:
    """Where Exercise 5's step writes its results (python3 -m bonus STEP)."""
    return out_dir / "bonus" / "results" / f"{step}.json"


def build_report(out_dir: Path, templates: Path = HERE) -> list[Path]:
    """report/report.pdf under out_dir, and report/bonus.pdf when Exercise 5's recipe has run."""
    out_dir = Path(out_dir)
    check_results(out_dir)
    check_figures(out_dir, FIGURES)
    jobs, there = ["report"], {s: bonus_results(out_dir, s).is_file() for s in STEPS_5}
    if there["recipe"]:
        read_results(bonus_results(out_dir, "recipe"), "run `python3 -m bonus` again")
        check_figures(out_dir, BONUS_FIGURES)
        jobs.append("bonus")
    if there["explore"]:
        path = bonus_results(out_dir, "explore")
        res = read_results(path, "run `python3 -m bonus explore`")
        if not all(isinstance(r, dict) and "runs" in r for r in res.get("rows", {}).values()):
            raise ReportError(f"{path}: made by an older version; run `python3 -m bonus explore` "
                              f"again")
        check_figures(out_dir, ("ablation.png",))
    if there["distil"]:
        read_results(bonus_results(out_dir, "distil"), "run `python3 -m bonus distil`")
    inputs = {s: "yes" if there[s] else "no" for s in ("explore", "distil")}
    pdfs = {name: compile_pdf(Path(templates) / f"{name}.typ", out_dir, inputs) for name in jobs}
    for name, pdf in pdfs.items():  # written only once every one of them compiled
        a.write_atomic(out_dir / "report" / f"{name}.pdf", pdf)
    return [out_dir / "report" / f"{name}.pdf" for name in pdfs]
