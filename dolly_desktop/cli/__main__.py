"""`python -m dolly_desktop.cli`: the same entry point as the `dolly-desktop` command."""

import sys

from dolly_desktop.cli import main

sys.exit(main())
