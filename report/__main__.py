"""python3 -m report [--out-dir DIR]: report/report.pdf (and bonus.pdf) of a results folder."""
import argparse
import sys
from pathlib import Path

from report.build import ReportError, build_report

p = argparse.ArgumentParser(prog="python3 -m report", description=__doc__)
p.add_argument("--out-dir", default=str(Path(__file__).resolve().parents[1]),
               help="the results folder (default: the project folder)")
args = p.parse_args()
try:
    print("wrote " + ", ".join(map(str, build_report(Path(args.out_dir)))))
except (ReportError, OSError) as e:
    sys.exit(f"error: {e}")
