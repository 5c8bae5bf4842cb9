"""The programs as a user runs them: import safety, --help, clear errors, and each entry point in
its quick mode on the shared CIFAR-10 copy, one test per thing it should do."""

import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, SHARED_DATA, write_batch

import assignment2 as a
from bonus import augment, keys, settings, steps


def run_program(*args, script="assignment2.py", cwd=None, env=None):
    module = script in ("report", "bonus")
    cmd = [sys.executable, *(["-m", script] if module else [str(script)]), *args]
    return subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True, env=env,
                          timeout=300)


def results(out, step: str) -> dict:
    """The results file of an Exercise 5 step in the folder out."""
    return json.loads((out / "bonus" / "results" / f"{step}.json").read_text())


def need_data():
    if not (SHARED_DATA / "data_batch_1").is_file():
        pytest.skip(f"CIFAR-10 batches not found at {SHARED_DATA}")
    return ("--quick", "--data-dir", str(SHARED_DATA), "--seed", "3")


@pytest.fixture(scope="module")
def bonus_run(tmp_path_factory):
    """One --quick run of Exercise 5's recipe: (folder, recipe.json)."""
    args, out = need_data(), tmp_path_factory.mktemp("bonus")
    done = run_program(*args, "--out-dir", str(out), script="bonus")
    assert done.returncode == 0, done.stderr
    return out, results(out, "recipe")


def test_import_runs_nothing_and_loads_neither_torch_nor_matplotlib():
    code = "import sys, assignment2; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.split() == ["False", "False"], out.stderr
    assert out.stderr == ""


def test_assignment2_imports_no_other_file_of_the_project():
    source = (ROOT / "assignment2.py").read_text()
    imported = set(re.findall(r"^\s*(?:import|from) (\w+)", source, re.M))
    allowed = set(sys.stdlib_module_names) | {"numpy", "matplotlib", "torch_gradient_computations"}
    assert imported <= allowed, imported - allowed


def test_help_lists_every_step():
    out = run_program("--help")
    assert out.returncode == 0
    for word in (*a.STEPS, "--quick", "--seed", "--data-dir", "--out-dir", "--replace"):
        assert word in out.stdout


@pytest.mark.parametrize("make,message", [(lambda d: None, "data folder not found"),
                                          (lambda d: d.mkdir(), "missing data_batch_1")])
def test_missing_data_is_one_clear_line(tmp_path, make, message):
    folder = tmp_path / "cifar"
    make(folder)
    out = run_program("fig3", "--data-dir", str(folder), "--out-dir", str(tmp_path / "out"))
    assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr


def test_corrupt_batch_is_one_clear_line(tiny_cifar, tmp_path):
    folder, _ = tiny_cifar
    write_batch(folder / "data_batch_1", np.zeros((3, 3072), np.uint8), [0, 1, 12])
    out = run_program("fig3", "--data-dir", str(folder), "--out-dir", str(tmp_path / "out"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "data_batch_1" in out.stderr and "labels outside 0..9" in out.stderr


@pytest.fixture(scope="module")
def standalone(tmp_path_factory):
    """assignment2.py and torch_gradient_computations.py copied into an empty folder and run
    there in quick mode: (folder, the finished process)."""
    args, folder = need_data(), tmp_path_factory.mktemp("alone")
    for name in ("assignment2.py", "torch_gradient_computations.py"):
        shutil.copy(ROOT / name, folder / name)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return folder, run_program(*args, script=folder / "assignment2.py", cwd=folder, env=env)


def test_the_file_runs_alone_beside_the_specs_file(standalone):
    folder, done = standalone
    assert done.returncode == 0, done.stderr
    [run] = (folder / "runs").iterdir()
    assert {p.name for p in run.iterdir()} >= {"results.json", "results.txt", "figures"}


def test_one_seed_gives_one_results_file(quick_run, standalone):
    out, _, _ = quick_run
    [run] = (standalone[0] / "runs").iterdir()
    assert (run / "results.json").read_text() == (out / "results.json").read_text()


def test_quick_run_measures_every_step(quick_run):
    _, res, _ = quick_run
    assert res["seed"] == 3 and res["quick"] is True
    for key in ("fig3", "fig4", "final"):
        assert 0.2 < res[key]["test_acc"] < 1
    for key in ("coarse", "fine"):
        assert all(0 < t["lam"] and "val_acc" in t for t in res[key]["trials"])
    assert res["gradcheck"]["max_vs_torch"] < 1e-7
    assert res["overfit"]["loss"] < 0.05


def test_a_run_says_first_that_it_reads_the_official_files(quick_run):
    _, res, done = quick_run
    assert res["data_official"] is True
    assert done.stdout.startswith(f"data: {SHARED_DATA}: the official CIFAR-10")


def test_a_run_on_other_files_runs_and_says_they_are_not_official(quick_cifar, tmp_path):
    done = run_program("--quick", "--data-dir", str(quick_cifar), "--out-dir", str(tmp_path),
                       "gradcheck")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"data: {quick_cifar}: not the official CIFAR-10 (data_batch_1")
    assert json.loads((tmp_path / "results.json").read_text())["data_official"] is False


def test_quick_run_writes_its_figures_text_and_timings(quick_run):
    out, _, _ = quick_run
    figures = {p.name for p in (out / "figures").glob("*.png")}
    assert {"fig3.png", "fig4.png", "coarse.png", "fine.png",
            "final.png"} <= figures
    text = (out / "results.txt").read_text()
    assert "fig3:" in text and "final:" in text and "coarse search" in text
    assert set(json.loads((out / "timings.json").read_text())) == set(a.DEFAULT_STEPS)


def test_a_single_step_takes_what_it_needs_from_results_json(quick_run, tmp_path):
    out, res, _ = quick_run
    shutil.copy(out / "results.json", tmp_path / "results.json")
    fine = run_program("fine", *need_data(), "--out-dir", str(tmp_path))
    assert fine.returncode == 0, fine.stderr
    assert "== coarse" not in fine.stdout and "coarse 1/" not in fine.stdout
    assert json.loads((tmp_path / "results.json").read_text())["fine"] == res["fine"]


def test_a_step_recomputes_what_it_needs_when_results_json_cannot_be_believed(quick_run,
                                                                              tmp_path):
    out, res, _ = quick_run
    bad = res | {"coarse": res["coarse"] | {"trials": [{"lam": -1, "val_acc": 7}]}}
    (tmp_path / "results.json").write_text(json.dumps(bad))
    fine = run_program("fine", *need_data(), "--out-dir", str(tmp_path))
    assert fine.returncode == 0, fine.stderr
    assert "results.json: coarse" in fine.stdout and "coarse 1/" in fine.stdout
    assert json.loads((tmp_path / "results.json").read_text())["fine"] == res["fine"]


def test_seeds_repeats_the_runs_with_the_next_seeds(quick_run, tmp_path):
    out, res, _ = quick_run
    shutil.copy(out / "results.json", tmp_path / "results.json")
    done = run_program("seeds", *need_data(), "--out-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    seeds = json.loads((tmp_path / "results.json").read_text())["seeds"]
    assert seeds["final"]["seeds"] == [3, 4]
    assert seeds["final"]["test_acc"][0] == res["final"]["test_acc"]


def test_bonus_trains_and_tests_every_run(bonus_run):
    out, res = bonus_run
    assert list(res["runs"]) == ["seed 3", "seed 4", "seed 5", "seed 6"]
    assert all(0.1 < t["test_acc_mirror"] < 1 for t in res["runs"].values())
    assert res["recipe"]["pca"] == settings.QUICK.pca and res["recipe"]["optimizer"] == "adam"
    assert len((out / "bonus" / "results" / "runs.jsonl").read_text().splitlines()) == 4
    assert len(list((out / "bonus" / "models").glob("*.npz"))) == 4


def test_bonus_results_say_which_data_they_were_made_on(bonus_run):
    out, res = bonus_run
    assert res["data_official"] is True
    assert "the official CIFAR-10" in (out / "bonus" / "results" / "recipe.txt").read_text()


def test_the_program_keys_its_runs_with_the_probe_an_import_computes(bonus_run):
    out, res = bonus_run
    lines = (out / "bonus" / "results" / "runs.jsonl").read_text().splitlines()
    cfg, x = settings.recipe(settings.QUICK, res["n_train"])
    assert {json.loads(line)["key"]["probe"] for line in lines} == {keys.Probes().student(cfg, x)}


def test_bonus_measures_networks_made_of_its_runs(bonus_run):
    _, res = bonus_run
    one, two = res["combined"].values()
    assert one["test_acc"] == res["runs"]["seed 3"]["test_acc"] and one["m"] == 40
    assert two["m"] == 80 and two["seeds"] == [3, 4]
    assert list(one["val_acc_views"]) == res["views"] == list(augment.views(3))


def test_bonus_lets_validation_choose_and_repeats_the_choice(bonus_run):
    _, res = bonus_run
    final = max(res["combined"].values(), key=lambda t: max(t["val_acc_views"].values()))
    assert res["final"]["name"] == final["name"] == res["final_seeds"][0]["name"]
    assert final["val_acc_views"][final["evaluation"]] == max(final["val_acc_views"].values())
    again = res["final_seeds"][1]
    assert again["seeds"][0] == 5 and (again["k"], again["evaluation"]) == (final["k"],
                                                                            final["evaluation"])


def test_bonus_again_reuses_its_runs(bonus_run):
    out, res = bonus_run
    done = run_program(*need_data(), "--out-dir", str(out), script="bonus")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("kept from runs.jsonl") == 4
    assert results(out, "recipe")["final"] == res["final"]


@pytest.fixture(scope="module")
def explore_run(tmp_path_factory):
    """One --quick run of Exercise 5's ablation: (folder, explore.json, the process)."""
    args, out = need_data(), tmp_path_factory.mktemp("explore")
    done = run_program("explore", *args, "--out-dir", str(out), script="bonus")
    assert done.returncode == 0, done.stderr
    return out, results(out, "explore"), done


def test_explore_runs_the_ablation_on_validation_only(explore_run):
    out, res, _ = explore_run
    rows = settings.ablation(settings.QUICK, 2000)
    assert res["n_val"] == 500 and list(res["rows"]) == list(rows)
    assert all("test_acc" not in t for r in res["rows"].values() for t in r["runs"])
    assert len(res["rows"]["recipe"]["runs"]) == 3 and len(res["rows"]["dropout 0.3"]["runs"]) == 2
    assert (out / "figures" / "ablation.png").stat().st_size > 10_000


def test_explore_without_training_reports_the_stored_runs(explore_run):
    out, res, _ = explore_run
    done = run_program("explore", *need_data(), "--out-dir", str(out), "--no-training",
                       script="bonus")
    assert done.returncode == 0, done.stderr
    assert "step" not in done.stdout and "kept from runs.jsonl" in done.stdout
    again = results(out, "explore")
    assert again["rows"] == res["rows"] and again["combined"] == res["combined"]


@pytest.fixture(scope="module")
def distil_run(bonus_run, tmp_path_factory):
    """One --quick run of Exercise 5's distillation, in a copy of the recipe's folder (whose
    runs are its labels-only runs): (folder, distil.json, the process)."""
    out = tmp_path_factory.mktemp("distil")
    shutil.copytree(bonus_run[0], out, dirs_exist_ok=True)
    done = run_program("distil", *need_data(), "--out-dir", str(out), script="bonus")
    assert done.returncode == 0, done.stderr
    return out, results(out, "distil"), done


def test_distil_trains_a_teacher_and_tests_it_once(distil_run):
    _, res, done = distil_run
    t = res["teacher"]
    assert done.stdout.count("teacher epoch") == t["epochs"] == len(t["history"]["val_acc"])
    assert t["val_acc"] == max(t["history"]["val_acc"]) and 0 < t["test_acc"] < 1
    assert res["scores"]["key"]["views"] == settings.QUICK.views and res["scores"]["seconds"] > 0


def test_distil_keeps_its_teachers_weights_with_the_results(distil_run):
    out, res, _ = distil_run
    kept = list((out / "bonus" / "results").glob("teacher-*.npz"))
    assert [f.name for f in kept] == [f"teacher-{res['scores']['key']['teacher']}.npz"]


def test_distil_chooses_its_setting_on_validation(distil_run):
    _, res, _ = distil_run
    assert len(res["search"]) == len(settings.QUICK.distil_grid) + len(settings.QUICK.distil_refine)
    assert all("test_acc" not in r for r in res["search"].values())
    assert res["chosen"] == max(res["search"], key=lambda k: res["search"][k]["val_acc"])


def test_distil_searches_on_a_larger_validation_split_than_its_final_runs(distil_run):
    _, res, _ = distil_run
    assert res["search_n_val"] > res["n_val"]
    assert res["search_n_train"] <= res["n_train"]  # the first of the final runs' images


def test_distil_puts_the_recipes_runs_on_the_labels_beside_its_own(distil_run, bonus_run):
    _, res, done = distil_run
    assert list(res["runs"]) == list(res["labels_only"]) == list(bonus_run[1]["runs"])
    assert [t["test_acc"] for t in res["labels_only"].values()] == [
        t["test_acc"] for t in bonus_run[1]["runs"].values()]
    assert all(f"\n{n}: kept from runs.jsonl" in done.stdout for n in res["labels_only"])
    assert res["gain"]["diff"] == pytest.approx(
        np.mean([t["test_acc"] for t in res["runs"].values()]) - res["gain"]["labels_mean"])


def test_distil_measures_every_lever_of_its_ablation_over_seeds(distil_run):
    _, res, _ = distil_run
    ab, quick = res["ablation"], settings.QUICK
    base = {k: res["search"][res["chosen"]][k] for k in ("T", "alpha", "per_view", "lam", "epochs")}
    planned = settings.distil_rows(quick, base, ab["logit_alpha"])
    assert list(ab["rows"]) == list(planned) and len(ab["logit_search"]) == len(quick.logit_alphas)
    for name, row in ab["rows"].items():
        assert len(row["val_acc"]) == quick.ablation_seeds and row["setting"] == planned[name][0]
        assert (row["se"] is None) == (row["against"] == name)
    assert ab["pooled_std"] > 0 and ab["pooled_dof"] == len(planned) * (quick.ablation_seeds - 1)


def test_distil_makes_its_final_networks_with_the_best_distilled_row(distil_run):
    _, res, _ = distil_run
    rows = res["ablation"]["rows"]
    distilled = {n: r for n, r in rows.items() if not r["setting"].get("labels")}
    chosen = distilled[res["ablation"]["chosen"]]
    assert chosen["mean"] == max(r["mean"] for r in distilled.values())
    assert res["epochs"] == chosen["epochs"]
    assert res["setting"]["per_view"] == chosen["setting"]["per_view"]


def test_distil_says_how_far_each_target_lies_from_the_view_trained_on(distil_run):
    _, res, _ = distil_run
    c = res["consistency"]
    assert c["images"] == settings.QUICK.consistency_images and c["views"] == 98
    assert len(c["targets"]) == 5  # the plain view, the random views' mean, three grids
    assert all(r["kl"] >= 0 and 0 <= r["same_class"] <= 1 for r in c["targets"].values())


def test_distil_again_reuses_its_teacher_scores_and_runs(distil_run):
    out, res, _ = distil_run
    done = run_program("distil", *need_data(), "--out-dir", str(out), script="bonus")
    assert done.returncode == 0, done.stderr
    assert "teacher: kept from runs.jsonl" in done.stdout and "teacher epoch" not in done.stdout
    assert "scores of 3 views an image: kept" in done.stdout and "step" not in done.stdout
    assert "scores of 2 views an image: kept" in done.stdout  # the grid's: mirror images
    assert results(out, "distil")["final"] == res["final"]


@pytest.fixture(scope="module")
def report_run(quick_run, bonus_run, explore_run, distil_run, tmp_path_factory):
    """The quick runs' results in one folder, and the report built from them: (folder, the
    finished process)."""
    folder = tmp_path_factory.mktemp("report")
    for run in (quick_run[0], bonus_run[0], explore_run[0], distil_run[0]):
        shutil.copytree(run, folder, dirs_exist_ok=True)
    return folder, run_program("--out-dir", str(folder), script="report")


def test_report_builds_both_pdfs(report_run):
    folder, done = report_run
    assert done.returncode == 0, done.stderr
    pdf = (folder / "report" / "report.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and int(re.search(rb"/Count (\d+)", pdf).group(1)) >= 3
    assert (folder / "report" / "bonus.pdf").read_bytes().startswith(b"%PDF")


def test_the_report_built_again_from_the_same_results_is_the_same_bytes(report_run):
    folder, _ = report_run
    before = {p: p.read_bytes() for p in (folder / "report").glob("*.pdf")}
    time.sleep(1.1)  # a build date would differ now, to the second
    assert run_program("--out-dir", str(folder), script="report").returncode == 0
    assert len(before) == 2 and all(p.read_bytes() == pdf for p, pdf in before.items())


def test_the_report_builds_from_an_ablation_of_one_run_a_row(report_run, tmp_path):
    shutil.copytree(report_run[0], tmp_path, dirs_exist_ok=True)
    path = tmp_path / "bonus" / "results" / "explore.json"
    res = json.loads(path.read_text())  # as explore writes it after every row's first run
    for row in res["rows"].values():
        row["runs"] = row["runs"][:1]
    res |= steps.summary(res["rows"])
    res["gains"] = steps.gains(res["rows"], settings.parts(settings.QUICK))
    path.write_text(json.dumps(res))
    done = run_program("--out-dir", str(tmp_path), script="report")
    assert done.returncode == 0, done.stderr


def test_report_without_results_is_a_clear_error(tmp_path):
    out = run_program("--out-dir", str(tmp_path), script="report")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "results.json: not found" in out.stderr


def test_the_readme_notebook_snippet_runs_as_written(tmp_path):
    """The "Use it from a notebook" block of README.md, run as it stands there, with only its data
    path pointed at the tests' copy of the batches."""
    need_data()
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Use it from a notebook"):]
    code = section[section.index("```python") + len("```python"):section.index("```\n", 10)]
    assert 'data = "data/cifar-10-batches-py"' in code
    code = code.replace('"data/cifar-10-batches-py"', repr(str(SHARED_DATA)), 1)
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    result = eval(out.stdout.strip().splitlines()[-1])  # the printed evaluate() dict
    assert set(result) == {"loss", "cost", "acc"} and 0.3 < result["acc"] < 0.6
    assert (tmp_path / "curves.png").stat().st_size > 10_000


def test_distil_without_torch_is_a_clear_error(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('No module named torch')\n")
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    done = run_program("distil", *need_data(), "--out-dir", str(tmp_path / "out"), env=env,
                       script="bonus")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: python3 -m bonus distil trains its teacher with torch")
