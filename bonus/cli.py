"""The command line of Exercise 5: python3 -m bonus [recipe|explore|distil] [options]."""
import argparse
import sys
import time
from pathlib import Path

import assignment2 as a
from bonus import settings

HERE = Path(__file__).resolve().parents[1]  # the project folder: results and figures go there


def parse_args(argv=None, doc: str = "") -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bonus", description=doc.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=doc.split("\n\n", 1)[-1])
    p.add_argument("step", nargs="?", default="recipe", choices=["recipe", "explore", "distil"])
    p.add_argument("--data-dir", default=None, help="folder of the CIFAR-10 python batches "
                   "(default: $CIFAR10_DIR, else data/cifar-10-batches-py)")
    p.add_argument("--out-dir", help="default: the project folder, or runs/bonus-quick/ for "
                   "--quick; results go to its bonus/results/, figures to its figures/")
    p.add_argument("--seed", type=int, default=0, help="the first run's seed (default: 0)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    p.add_argument("--no-training", action="store_true", help="explore: write the results and "
                   "figure of the runs the store holds, training none")
    return p.parse_args(argv)


def run_step(ex, step: str, train: bool) -> None:
    """The step's runs, then its results files (explore writes its own as its runs finish)."""
    from bonus import distil_step, outputs, steps  # after require(): they import numba
    if step == "explore":
        steps.explore(ex, train=train)
        return
    res = steps.run_recipe(ex) if step == "recipe" else distil_step.run_distil(ex)
    fmt = outputs.format_recipe if step == "recipe" else outputs.format_distil
    outputs.save(ex.results, step, res, fmt)


def main(argv=None, doc: str = "") -> int:
    args, out = parse_args(argv, doc), None
    try:
        a.on_signals()
        a.require("matplotlib", "numba", *(["torch"] if args.step == "distil" else []))
        from bonus.experiment import Experiment
        a.folder_name("--out-dir", args.out_dir)
        data_dir = a.data_folder(args.data_dir)
        out = Path(args.out_dir or (HERE / "runs" / "bonus-quick" if args.quick else HERE))
        with a.folder_lock(out):
            a.check_out_dir(out)
            ex = Experiment(data_dir, out, args.seed, settings.QUICK if args.quick else
                            settings.Exercise5(), 2000 if args.quick else None)
            for folder in (out, ex.results, ex.models):
                a.clean_temporaries(folder)
            t0 = time.perf_counter()
            run_step(ex, args.step, not args.no_training)
        print(f"done in {time.perf_counter() - t0:.0f} s: {out}")
        return 0
    except (a.DataError, a.ConfigError, a.Diverged, a.StateError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(a.os_error(e, out), file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print("\ninterrupted: finished runs are in bonus/results/runs.jsonl, a run cut short "
              "resumes from its last evaluation point; run the same command again",
              file=sys.stderr)
        return 143 if isinstance(e, a.Terminated) else 130
