"""Builds report/report.pdf (and bonus.pdf) from a results folder with Typst; formats results.txt.

The templates report.typ and bonus.typ read results.json, timings.json, results_bonus.json,
results_explore.json (when there) and the figures of the folder themselves (rows are found by
name); this file only checks that those inputs are there and readable, compiles, and replaces a PDF
only with a complete one.
`python3 assignment2.py report` calls build_report().
"""
from __future__ import annotations

import json
from pathlib import Path

from runfiles import write_atomic

HERE = Path(__file__).resolve().parent
# report.typ reads these
STEPS = ("gradcheck", "overfit", "fig3", "fig4", "coarse", "fine", "final")
FIGURES = ("fig3.png", "fig4.png", "fig4_schedule.png", "coarse.png", "fine.png", "final.png")
BONUS_FIGURES = ("augmentation.png", "bonus_minutes.png")


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
                       "run `python3 assignment2.py` (then `seeds`) before `report`")
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


def build_report(out_dir: Path, templates: Path = HERE) -> list[Path]:
    """report/report.pdf under out_dir, and report/bonus.pdf when results_bonus.json is there."""
    out_dir = Path(out_dir)
    check_results(out_dir)
    check_figures(out_dir, FIGURES)
    jobs = ["report"]
    again = "run `python3 assignment2.py bonus` again"
    if (out_dir / "results_bonus.json").is_file():
        if "runs" not in read_results(out_dir / "results_bonus.json", again):
            raise ReportError(f"{out_dir / 'results_bonus.json'}: made by an earlier version of "
                              f"bonus.py; {again}")
        check_figures(out_dir, BONUS_FIGURES)
        jobs.append("bonus")
    explore = (out_dir / "results_explore.json").is_file()
    if explore:
        read_results(out_dir / "results_explore.json", "run `python3 assignment2.py explore`")
    inputs = {"explore": "yes" if explore else "no"}
    pdfs = {name: compile_pdf(Path(templates) / f"{name}.typ", out_dir, inputs) for name in jobs}
    for name, pdf in pdfs.items():  # written only once every one of them compiled
        write_atomic(out_dir / "report" / f"{name}.pdf", pdf)
    return [out_dir / "report" / f"{name}.pdf" for name in pdfs]


# --------------------------------------------------------------------------------------------------
# results.txt: the numbers of results.json for people (written by the program after every step)

def pct(acc: float | None) -> str:
    """An accuracy for people; None marks a diverged run."""
    return "diverged" if acc is None else f"{100 * acc:.2f}%"


def format_results(res: dict, timings: dict) -> str:
    """results.txt: the numbers of results.json for people."""
    quick = ", QUICK smoke-test sizes" if res.get("quick") else ""
    out = [f"DD2424 Assignment 2 results (seed {res.get('seed')}{quick})", ""]
    if "gradcheck" in res:
        out.append("Gradient check (float64; max element-wise relative error, analytic vs torch / "
                   "vs finite differences)")
        out += [f"  d={r['d']:<4} n={r['n']:<3} m={r['m']:<3} lam={r['lam']:<5} {r['param']}: "
                f"{r['vs_torch']:.2e} / {r['vs_numerical']:.2e}" for r in res["gradcheck"]["rows"]]
        out.append("")
    if "overfit" in res:
        o = res["overfit"]
        out += [f"Overfit check: {o['n']} images, lam=0, {o['epochs']} epochs: final training loss "
                f"{o['loss']:.4f}, accuracy {pct(o['acc'])}", ""]
    for key, label in (("fig3", "Figure 3"), ("fig4", "Figure 4")):
        if key in res:
            r, c = res[key], res[key]["cfg"]
            out += [f"{label} ({c['n_cycles']} cycle(s), n_s={c['n_s']}, lam={c['lam']}, "
                    f"{r['n_train']} training images): test accuracy {pct(r['test_acc'])}, "
                    f"final val accuracy {pct(r['history']['val_acc'][-1])}", ""]
    for key in ("coarse", "fine"):
        if key in res:
            r, (lo, hi) = res[key], res[key]["l_range"]
            out.append(f"{key.capitalize()} search: log10(lam) in [{lo:.3f}, {hi:.3f}], "
                       f"{r['n_cycles']} cycles, n_s={r['n_s']}, {r['n_train']} train / "
                       f"{r['n_val']} val images")
            out += [f"  lam={t['lam']:.4e}  val acc {pct(t['val_acc'])}  (best "
                    f"{pct(t['best_val_acc'])}){' *' if t in r['top3'] else ''}"
                    for t in sorted(r["trials"], key=lambda t: t["lam"])]
            out += ["  * the 3 best by final validation accuracy", ""]
    if "final" in res:
        r = res["final"]
        out += [f"Final run: lam={r['lam']:.4e}, {r['n_train']} train / {r['n_val']} val images, "
                f"{r['cfg']['n_cycles']} cycles, n_s={r['cfg']['n_s']}: test accuracy "
                f"{pct(r['test_acc'])}", ""]
    for key, r in res.get("seeds", {}).items():
        out.append(f"Over seeds {r['seeds']}, {key}: test accuracy {100 * r['mean']:.2f}% +- "
                   f"{100 * r['std']:.2f} ({', '.join(pct(a) for a in r['test_acc'])})")
    out += [""] if "seeds" in res else []
    if timings:
        out.append("Time per part (seconds, this machine)")
        out += [f"  {k:<10} {v:8.1f}" for k, v in timings.items()]
    return "\n".join(out) + "\n"
