"""python3 -m bonus: Exercise 5's command line (bonus.cli)."""
import os
import signal
import sys

if __name__ == "__main__":  # first: until main() takes over, a signal during the imports is quiet
    for _signal in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_signal, lambda s, _: (os.write(2, b"\ninterrupted\n"), os._exit(128 + s)))

import bonus
from bonus.cli import main

if __name__ == "__main__":
    sys.exit(main(doc=bonus.__doc__))
