"""The bundle's entry point (PyInstaller needs a script, not a package module).

One executable for everything: no arguments starts the window, `--self-test DIR` and the
subcommands run on the terminal, and `dolly-desktop --child-job REQUEST` is how the
app starts its own child jobs (`--child-job`, see dolly_desktop/models/convert/jobs.py).
"""

import multiprocessing
import sys

from dolly_desktop.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # a library starting worker processes must not rerun the app
    sys.exit(main())
