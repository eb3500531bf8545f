"""Shared fixtures: a tiny random Dolly-shaped model, exported once per session with the
project's own export code, and an isolated app home for every test session."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# pytest loads this file as `conftest`; importing it again as `tests.conftest` would run the
# lines below twice and move the app's home mid-session (the first one left behind, empty).
if "tests.conftest" in sys.modules and "conftest" in sys.modules:
    raise ImportError("import the test helpers as `conftest`, not `tests.conftest`")

# Before any app module reads it: nothing a test does touches the real user's data. Removed at
# exit: each run fills it with a model cache (~120 MB), which piled up in /tmp run after run.
_HOME = Path(tempfile.mkdtemp(prefix="dolly-test-home-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["DOLLY_DESKTOP_HOME"] = str(_HOME)
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the Hub
os.environ.setdefault("DOLLY_DESKTOP_CALIBRATION", "use")  # measured only where a test asks

FIXTURES = Path(__file__).parent / "fixtures"
TOKENIZER_DIR = FIXTURES / "dolly-v2-tokenizer"
# Exact arithmetic for parity checks: CPU otherwise runs bf16 (where the CPU has it) with the
# f16 KV cache the export asks for.
EXACT = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}

_FIGURES: list[tuple[str, str]] = []


@pytest.fixture(scope="session")
def report_figure():
    """Record a measured figure; all are printed at the end of the run."""

    def add(name: str, value: str) -> None:
        _FIGURES.append((name, value))

    return add


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("figures")
        for name, value in _FIGURES:
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from devtools.dolly_builder import build_random_dolly

    return build_random_dolly(tmp_path_factory.mktemp("ckpt") / "tiny-dolly", TOKENIZER_DIR)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    """The tiny model as FP16, INT8 and INT4 IR folders, by precision name."""
    from dolly_desktop.models.convert.export import export_checkpoint
    from dolly_desktop.models.folder import Precision

    root = tmp_path_factory.mktemp("ir")
    return {p.value: export_checkpoint(tiny_checkpoint, root / p.value, p) for p in Precision}


@pytest.fixture(scope="session")
def tiny_fp16(tiny_models) -> Path:
    return tiny_models["FP16"]


@pytest.fixture(scope="session")
def engine(tiny_fp16):
    """One exact-arithmetic engine on the FP16 tiny model, shared by the session."""
    from dolly_desktop.generation.engines.local import Engine

    return Engine(tiny_fp16, "CPU", properties=EXACT)


def copy_model(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


@pytest.fixture
def own_home(tmp_path, monkeypatch) -> Path:
    """A fresh app home for one test: its settings, history and model store."""
    home = tmp_path / "home"
    monkeypatch.setenv("DOLLY_DESKTOP_HOME", str(home))
    return home


@pytest.fixture
def tiny_window(qtbot, own_home, tiny_fp16):
    """A real main window (offscreen) with the FP16 tiny model loaded."""
    from dolly_desktop.ui.main_window import MainWindow

    w = MainWindow(model=str(tiny_fp16))
    qtbot.addWidget(w)
    w.show()
    qtbot.waitUntil(lambda: w.model_dir is not None, timeout=120_000)
    yield w
    w.close()


@pytest.fixture(scope="module")
def server(tiny_models):
    """`dolly-desktop serve` on the tiny INT4 model with its defaults, for one test module."""
    from serving import serve_process

    with serve_process(tiny_models["INT4"]) as served:
        yield served


@pytest.fixture
def client(server):
    """The official openai client for `server`. No retries: a 429 must be seen, not retried
    away."""
    import openai

    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=60)
