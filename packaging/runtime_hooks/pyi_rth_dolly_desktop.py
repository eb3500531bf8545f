"""Runs in the bundle before the app's code.

The bundle leaves torch out on purpose, so transformers' "PyTorch was not found. Models won't
be available..." advice (printed when an older Hub export's tokenizer is converted) is noise:
silence transformers' advisory warnings. Child jobs (the bundle re-run) inherit it.
"""

import os

os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
