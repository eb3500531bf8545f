"""Which model: store names wherever a model is asked for, the best installed model for this
machine's memory, the first-start recommendation, and export support installed on demand."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_history import home_env

from dolly_desktop.errors import DollyError
from dolly_desktop.models.capacity import GB
from dolly_desktop.models.catalog import CATALOG
from dolly_desktop.models.choice import (
    MIN_TOK_S,
    best_installed,
    expected_tok_s,
    recommend,
    resolve_model,
    run_ram_bytes,
)
from dolly_desktop.models.folder import Precision
from dolly_desktop.models.store import InstalledModel, Store


def fake(name: str, variant: str, weights_gb: float) -> InstalledModel:
    w = int(weights_gb * GB)
    return InstalledModel(name, variant, Path(f"/m/{name}/{variant}"), w, w, None, "", None)


# Weights as the catalog sizes them (3b FP16 5.68 GB, INT8 about half, INT4 1.57 GB).
ALL = [
    fake("dolly-v2-3b", "FP16", 5.68),
    fake("dolly-v2-3b", "INT8", 2.85),
    fake("dolly-v2-3b", "INT4", 1.57),
    fake("dolly-v2-12b", "INT4", 6.6),
]


@pytest.mark.parametrize(
    ("ram_gb", "want"),
    [
        (64, "dolly-v2-12b/INT4"),  # the bigger model beats a higher precision of a smaller
        (8, "dolly-v2-3b/FP16"),  # 12b INT4 needs 6.6 + 1.65 GB: over 8; 3b FP16 fits
        (5, "dolly-v2-3b/INT8"),
        (3.5, "dolly-v2-3b/INT4"),
        (1, "dolly-v2-3b/INT4"),  # nothing fits: the smallest, to try anyway
    ],
)
def test_best_installed_by_memory(ram_gb, want):
    assert best_installed(ALL, int(ram_gb * GB)).label == want


def test_best_installed_skips_what_cannot_run():
    broken = InstalledModel("x", "FP16", Path("/x"), 1, 1, None, "", "missing openvino_model.bin")
    assert best_installed([broken]) is None
    assert run_ram_bytes(ALL[2]) > ALL[2].weights_bytes


def test_first_start_recommendation_by_memory_and_disk():
    big = recommend(ram=64 * GB, free_disk=200 * GB)  # memory for 12b, but not the speed
    assert (big.model, big.precision) == ("dolly-v2-3b", Precision.INT8)
    assert expected_tok_s(big) >= MIN_TOK_S
    faster = [v for m in CATALOG.values() for v in m.variants if expected_tok_s(v) >= MIN_TOK_S]
    assert all(v.model == "dolly-v2-3b" for v in faster)
    small = recommend(ram=6 * GB, free_disk=200 * GB)
    assert small.model == "dolly-v2-3b" and small.run_ram_bytes <= 6 * GB
    no_disk = recommend(ram=64 * GB, free_disk=3 * GB)
    assert no_disk.download_bytes + GB // 2 <= 3 * GB and no_disk.repo_id
    nothing = recommend(ram=1 * GB, free_disk=1 * GB)  # the smallest; the panel says why
    ready = [v for m in CATALOG.values() for v in m.variants if v.repo_id]
    assert nothing.run_ram_bytes == min(v.run_ram_bytes for v in ready)


def test_names_resolve_to_store_folders(tmp_path, tiny_models):
    store = Store(tmp_path / "store")
    store.import_folder(tiny_models["INT4"], name="dolly-v2-3b", precision="INT4")
    store.import_folder(tiny_models["INT8"], name="dolly-v2-3b", precision="INT8")
    assert resolve_model("dolly-v2-3b/INT4", store) == store.path_for("dolly-v2-3b", "INT4")
    assert resolve_model("dolly-v2-3b/int8", store) == store.path_for("dolly-v2-3b", "INT8")
    assert resolve_model("dolly-v2-3b", store) == store.path_for("dolly-v2-3b", "INT8")
    assert resolve_model(str(tiny_models["FP16"]), store) == tiny_models["FP16"]
    with pytest.raises(DollyError, match="no folder or installed model called dolly-v2-7b") as e:
        resolve_model("dolly-v2-7b", store)
    assert "dolly-v2-3b/INT4" in str(e.value) and "dolly-v2-3b/INT8" in str(e.value)


def test_generate_and_self_test_take_a_store_name(tmp_path, tiny_models):
    home = tmp_path / "home"
    env = home_env(home)
    run = [sys.executable, "-m", "dolly_desktop.cli"]
    imp = subprocess.run([*run, "models", "import", str(tiny_models["INT4"]), "--name",
                          "dolly-v2-3b", "--precision", "INT4"], capture_output=True, text=True,
                         env=env)  # fmt: skip
    assert imp.returncode == 0, imp.stderr
    g = subprocess.run([*run, "generate", "--model", "dolly-v2-3b/INT4", "--max-new-tokens", "4",
                        "--no-history", "Who is Dolly?"], capture_output=True, text=True,
                       env=env)  # fmt: skip
    assert g.returncode == 0 and "4 tokens" in g.stderr, g.stderr
    st = subprocess.run([*run, "--self-test", "dolly-v2-3b"], capture_output=True, text=True,
                        env=env)  # fmt: skip
    assert st.returncode == 0 and "self-test passed" in st.stdout, st.stderr
    bad = subprocess.run([*run, "generate", "--model", "dolly-v2-12b", "hi"], capture_output=True,
                         text=True, env=env)  # fmt: skip
    assert bad.returncode == 2 and "Installed: dolly-v2-3b/INT4" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_export_without_export_support_says_the_one_command(tmp_path, tiny_checkpoint):
    """As on a light install: optimum cannot be imported (None in sys.modules makes any import
    of it fail, exactly as when it is not installed)."""
    code = (
        "import sys; sys.modules['optimum'] = None;"
        "from dolly_desktop.cli import main;"
        f"sys.exit(main(['models', 'export', {str(tiny_checkpoint)!r}, '--store',"
        f" {str(tmp_path / 'store')!r}]))"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env=home_env(tmp_path / "home"))  # fmt: skip
    assert p.returncode == 2, p.stderr
    # The locked set: adding export support changes no run-time package (tests/test_lock.py).
    assert "pip install --require-hashes -r" in p.stderr, p.stderr
    assert "requirements/export.txt" in p.stderr and len(p.stderr.splitlines()) == 1
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.xml"))


def test_serve_takes_a_store_name(tiny_models):
    """`serve --model NAME/VARIANT` resolves through the store, as generate does."""
    import httpx
    from serving import serve_process

    store = Store()  # the session's app home, which the serve process inherits
    store.import_folder(tiny_models["INT4"], name="served-by-name", precision="INT4")
    with serve_process(Path("served-by-name/INT4")) as served:
        body = {"prompt": "Who is Dolly?", "max_tokens": 3}
        r = httpx.post(f"{served.url}/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
