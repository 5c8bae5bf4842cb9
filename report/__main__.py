"""python3 -m report [--out-dir DIR]: report/report.pdf (and bonus.pdf) of a results folder."""
import os
import signal

for _signal in (signal.SIGINT, signal.SIGTERM):  # first: a signal during the imports is quiet
    signal.signal(_signal, lambda s, _: (os.write(2, b"\ninterrupted\n"), os._exit(128 + s)))

import argparse
import sys
from pathlib import Path

from assignment2 import DataError, StateError, folder_name, os_error, require
from report.build import ReportError, build_report

signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on, Ctrl-C is handled below
signal.signal(signal.SIGTERM, signal.SIG_DFL)
p = argparse.ArgumentParser(prog="python3 -m report", description=__doc__)
p.add_argument("--out-dir", default=str(Path(__file__).resolve().parents[1]),
               help="the results folder (default: the project folder)")
args = p.parse_args()
try:
    require("typst")
    folder_name("--out-dir", args.out_dir)
    print("wrote " + ", ".join(map(str, build_report(Path(args.out_dir)))))
except (ReportError, StateError, DataError) as e:
    sys.exit(f"error: {e}")
except OSError as e:
    sys.exit(os_error(e, args.out_dir))
except KeyboardInterrupt:
    sys.exit("\ninterrupted: no PDF was replaced by a partial one")
