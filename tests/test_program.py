"""The program as a user runs it: import safety, --help, clear errors, the --quick pipeline end
to end."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, write_batch

import assignment2 as a
import bonus as bonus_module


def run_program(*args, env=None):
    return subprocess.run(
        [sys.executable, str(ROOT / "assignment2.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_import_runs_nothing_and_loads_neither_torch_nor_matplotlib():
    code = (
        "import sys; import assignment2; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["False", "False"], out.stderr
    assert out.stderr == ""


def test_help_lists_every_step():
    out = run_program("--help")
    assert out.returncode == 0
    for word in (
        "gradcheck",
        "overfit",
        "fig3",
        "fig4",
        "coarse",
        "fine",
        "final",
        "--quick",
        "--seed",
    ):
        assert word in out.stdout


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda d: None, "data folder not found"),
        (lambda d: d.mkdir(), "missing data_batch_1"),
    ],
)
def test_missing_data_is_one_clear_line(tmp_path, make, message):
    folder = tmp_path / "cifar"
    make(folder)
    out = run_program("fig3", "--data-dir", str(folder), "--out-dir", str(tmp_path / "out"))
    assert out.returncode == 1
    assert message in out.stderr and "Traceback" not in out.stderr


def test_corrupt_batch_is_one_clear_line(tiny_cifar, tmp_path):
    folder, _ = tiny_cifar
    write_batch(folder / "data_batch_1", np.zeros((3, 3072), np.uint8), [0, 1, 12])
    out = run_program("fig3", "--data-dir", str(folder), "--out-dir", str(tmp_path / "out"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "data_batch_1" in out.stderr and "labels outside 0..9" in out.stderr


def test_quick_pipeline_end_to_end_is_deterministic(shared_data, tmp_path):
    """The whole program in --quick mode on the shared CIFAR-10 copy, twice with one seed: same
    results.json."""
    outs = [tmp_path / "one", tmp_path / "two"]
    for out_dir in outs:
        out = run_program(
            "--quick", "--data-dir", str(shared_data), "--out-dir", str(out_dir), "--seed", "3"
        )
        assert out.returncode == 0, out.stderr
        assert "== final took" in out.stdout
    res = json.loads((outs[0] / "results.json").read_text())
    assert (outs[0] / "results.json").read_text() == (outs[1] / "results.json").read_text()
    for key in ("fig3", "fig4", "final"):
        assert 0.2 < res[key]["test_acc"] < 1
    for key in ("coarse", "fine"):
        assert res[key]["trials"] and all("lam" in t and "val_acc" in t for t in res[key]["trials"])
    assert res["gradcheck"]["max_vs_torch"] < 1e-7
    assert res["overfit"]["loss"] < 0.05
    text = (outs[0] / "results.txt").read_text()
    assert "Figure 3" in text and "Final run" in text and "total" in text
    assert set(json.loads((outs[0] / "timings.json").read_text())) == {*a.STEPS, "total"}
    figures = {p.name for p in (outs[0] / "figures").glob("*.png")}
    assert {
        "fig3.png",
        "fig4.png",
        "coarse.png",
        "fine.png",
        "final.png",
        "fig3_schedule.png",
    } <= figures
    assert len((outs[0] / "search_coarse.jsonl").read_text().splitlines()) == len(
        res["coarse"]["trials"]
    )

    # the spread over seeds, then the report from these results
    out = run_program(
        "seeds", "--quick", "--data-dir", str(shared_data), "--out-dir", str(outs[0]), "--seed", "3"
    )
    assert out.returncode == 0, out.stderr
    seeds = json.loads((outs[0] / "results.json").read_text())["seeds"]
    assert (
        seeds["final"]["seeds"] == [3, 4]
        and seeds["final"]["test_acc"][0] == res["final"]["test_acc"]
    )
    out = run_program(
        "bonus", "--quick", "--data-dir", str(shared_data), "--out-dir", str(outs[0]), "--seed", "3"
    )
    assert out.returncode == 0, out.stderr
    bonus = json.loads((outs[0] / "results_bonus.json").read_text())
    # two runs per seed group, seeds 3-6, each tested plain and mirrored
    assert list(bonus["runs"]) == ["seed 3", "seed 4", "seed 5", "seed 6"]
    assert all(0.1 < t["test_acc_mirror"] < 1 for t in bonus["runs"].values())
    assert all(t["cfg"]["pca"] == 64 and t["cfg"]["optimizer"] == "adam"
               for t in bonus["runs"].values())
    one, two = bonus["combined"].values()
    # one run measured through its saved weights gives what the trial measured
    assert one["test_acc"] == bonus["runs"]["seed 3"]["test_acc"] and one["m"] == 40
    assert two["m"] == 80 and two["seeds"] == [3, 4]
    assert two["seconds"] == round(sum(bonus["runs"][f"seed {s}"]["seconds"] for s in (3, 4)), 1)
    # validation picks the final network and its evaluation; the next seeds repeat the choice
    assert list(one["val_acc_views"]) == bonus["views"] == list(bonus_module.views(3))
    final = max((one, two), key=lambda t: max(t["val_acc_views"].values()))
    assert bonus["final"]["name"] == final["name"] == bonus["final_seeds"][0]["name"]
    assert final["val_acc_views"][final["evaluation"]] == max(final["val_acc_views"].values())
    assert (final["val_acc_views"]["plain"], final["val_acc_views"]["mirrored"]) == (
        final["val_acc"], final["val_acc_mirror"])
    again = bonus["final_seeds"][1]
    assert again["seeds"][0] == 5 and again["k"] == final["k"]
    assert again["evaluation"] == final["evaluation"]
    plain_or_mirrored = {"plain": "test_acc", "mirrored": "test_acc_mirror"}
    if final["evaluation"] in plain_or_mirrored:
        assert final["test_acc_chosen"] == final[plain_or_mirrored[final["evaluation"]]]
    assert bonus["fast"]["name"] == one["name"]
    text = (outs[0] / "results_bonus.txt").read_text()
    assert "Final network (validation picks how many runs and the evaluation)" in text
    assert "seed 6" in text
    # one folder per recipe, so that another recipe's runs cannot overwrite these weights
    [path] = (outs[0] / "models").glob(f"recipe_*/bonus_recipe_0.seed3.n{bonus['n_train']}.*.npz")
    saved = dict(np.load(path))  # pixel space
    assert saved["W1"].shape == (40, 3072) and set(saved) == {"W1", "b1", "W2", "b2"}
    assert {"augmentation.png", "bonus_minutes.png"} <= {
        p.name for p in (outs[0] / "figures").iterdir()
    }
    # the ablation at the recipe's budget, on the search split
    args = ("--quick", "--data-dir", str(shared_data), "--out-dir", str(outs[0]), "--seed", "3")
    out = run_program("explore", *args)
    assert out.returncode == 0, out.stderr
    explore = json.loads((outs[0] / "results_explore.json").read_text())
    assert explore["n_val"] == 500
    assert list(explore["rows"])[:2] == ["Nesterov", "cyclic SGD (eqs. 14-15)"]
    assert all("test_acc" not in t for t in explore["rows"].values())
    assert "bonus" not in json.loads((outs[0] / "results.json").read_text())
    out = run_program("report", "--out-dir", str(outs[0]))
    assert out.returncode == 0, out.stderr
    pdf = (outs[0] / "report" / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and int(re.search(rb"/Count (\d+)", pdf).group(1)) >= 3
    assert (outs[0] / "report" / "bonus.pdf").read_bytes().startswith(b"%PDF")


def test_single_steps_reuse_results_and_search_trials(shared_data, tmp_path):
    args = ("--quick", "--data-dir", str(shared_data), "--out-dir", str(tmp_path))
    first = run_program("coarse", *args)
    assert first.returncode == 0, first.stderr
    coarse = json.loads((tmp_path / "results.json").read_text())["coarse"]
    fine = run_program("fine", *args)  # takes the coarse result from results.json
    assert fine.returncode == 0, fine.stderr
    assert "coarse" not in fine.stdout.replace("coarse search", "")
    res = json.loads((tmp_path / "results.json").read_text())
    assert set(res) >= {"coarse", "fine"} and "fig3" not in res and res["coarse"] == coarse
    (tmp_path / "results.json").unlink()
    again = run_program("fine", *args)  # recomputes coarse, from its finished trials
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("kept from search_coarse.jsonl") == 3
    assert json.loads((tmp_path / "results.json").read_text())["coarse"] == coarse


def test_report_without_results_is_a_clear_error(tmp_path):
    out = run_program("report", "--out-dir", str(tmp_path))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "results.json: not found" in out.stderr


def test_the_readme_notebook_snippet_runs_as_written(shared_data, tmp_path):
    """The "Use it from a notebook" block of README.md, run as it stands there, with only its data
    path pointed at the tests' copy of the batches."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Use it from a notebook") :]
    code = section[section.index("```python") + len("```python") : section.index("```\n", 10)]
    assert 'data = "data/cifar-10-batches-py"' in code
    code = code.replace('"data/cifar-10-batches-py"', repr(str(shared_data)), 1)
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    result = eval(out.stdout.strip().splitlines()[-1])  # the printed evaluate() dict
    assert set(result) == {"loss", "cost", "acc"} and 0.3 < result["acc"] < 0.6
    assert (tmp_path / "curves.png").stat().st_size > 10_000
