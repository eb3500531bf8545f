"""Check a built bundle the way a person would use it; run with the venv's Python (it needs
torch to make the test model, which the bundle does not have):

    .venv/bin/python packaging/bundle_check.py [dist/dolly-desktop/dolly-desktop]

1. builds the tiny random Dolly-shaped model and exports it to INT4 with the project's code;
2. the bundle's --self-test on it (timed): load, a few tokens, metrics;
3. `models download` of that folder from a stand-in Hub on 127.0.0.1, then --self-test on
   what was downloaded (a ready-made IR, as from OpenVINO/dolly-v2-3b-int4-ov);
4. `models import` of an FP16 folder without openvino_tokenizer.xml (an older Hub export:
   the tokenizer is converted with transformers, without torch) and `models compress` to
   INT4 with NNCF;
5. `models export` of the PyTorch checkpoint must fail with the 'export' extra sentence;
6. one `serve` request (its batching engine runs in a child process of the bundle);
7. the window comes up offscreen and --screenshot writes a picture.
Exits non-zero on the first failure; prints the figures on the way.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # devtools/ (the random Dolly builder) is not in the package
TOKENIZER = ROOT / "tests" / "fixtures" / "dolly-v2-tokenizer"
EXPORT_SENTENCE = "with the 'export' extra"
TIMEOUT = 300


class CheckFailed(Exception):
    pass


def run(exe: Path, *args: str, env: dict[str, str], ok: bool = True) -> tuple[str, float]:
    """Run the bundle; return (stdout + stderr, seconds). Fail unless it exits as `ok` says."""
    t0 = time.perf_counter()
    p = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=TIMEOUT)
    took = time.perf_counter() - t0
    out = p.stdout + p.stderr
    if (p.returncode == 0) != ok:
        raise CheckFailed(f"dolly-desktop {' '.join(args)} exited {p.returncode}:\n{out}")
    return out, took


def installed_path(output: str) -> Path:
    """The folder a `models` command installed, from its last JSON progress line."""
    for line in reversed(output.splitlines()):
        if line.startswith("{") and '"path"' in line:
            return Path(json.loads(line)["path"])
    raise CheckFailed(f"no installed path in:\n{output}")


def make_models(work: Path) -> tuple[Path, Path, Path]:
    from devtools.dolly_builder import build_random_dolly
    from dolly_desktop.models.convert.export import export_checkpoint
    from dolly_desktop.models.folder import Precision

    ckpt = build_random_dolly(work / "tiny-dolly", TOKENIZER)
    fp16 = export_checkpoint(ckpt, work / "ir" / "FP16", Precision.FP16)
    int4 = export_checkpoint(ckpt, work / "ir" / "INT4", Precision.INT4)
    return ckpt, fp16, int4


X11_LIBS = ("libxcb-cursor.so.0",)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_once(exe: Path, model: Path, env: dict[str, str]) -> str:
    port = free_port()
    proc = subprocess.Popen(
        [str(exe), "serve", "--model", str(model), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise CheckFailed(f"serve exited {proc.returncode}:\n{proc.stdout.read()}")  # type: ignore[union-attr]
            try:
                urllib.request.urlopen(f"{base}/models", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise CheckFailed("serve did not answer /v1/models in 180 s") from None
                time.sleep(0.3)
        body = json.dumps({"prompt": "Who is Dolly?", "max_tokens": 8}).encode()
        req = urllib.request.Request(
            f"{base}/completions", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=120) as r:
            answer = json.load(r)
        return answer["choices"][0]["finish_reason"]
    finally:
        proc.terminate()
        proc.wait(30)


def check(exe: Path, work: Path) -> None:
    env = {**os.environ, "DOLLY_DESKTOP_HOME": str(work / "home"), "QT_QPA_PLATFORM": "offscreen"}
    env.pop("HF_HUB_OFFLINE", None)
    store = ["--store", str(work / "store")]

    t0 = time.perf_counter()
    ckpt, fp16, int4 = make_models(work)
    print(f"tiny model built and exported to FP16 and INT4 in {time.perf_counter() - t0:.1f} s")

    out, took = run(exe, "--self-test", str(int4), env=env)
    print(out.rstrip())
    print(f"self-test of the bundle: {took:.2f} s wall, process start to exit")
    # serve batches in a model process the bundle starts as itself (cli.main's CHILDREN)
    print(f"serve: one completion, finish_reason {serve_once(exe, int4, env)}")

    sys.path.insert(0, str(ROOT / "tests"))
    from hub_server import HubServer

    with HubServer() as hub:
        hub.add_repo("OpenVINO/dolly-v2-3b-int4-ov", int4)
        out, took = run(
            exe, "models", "download", "dolly-v2-3b", "--precision", "INT4",
            "--repo", "OpenVINO/dolly-v2-3b-int4-ov", "--endpoint", hub.url, "--json", *store,
            env=env,
        )  # fmt: skip
    downloaded = installed_path(out)
    run(exe, "--self-test", str(downloaded), env=env)
    print(f"download of a ready-made IR from a stand-in Hub: ok in {took:.2f} s; self-test ok")

    old = work / "old-hub-export"
    shutil.copytree(fp16, old)
    for f in old.glob("openvino_*tokenizer.*"):
        f.unlink()
    out, _ = run(exe, "models", "import", str(old), "--name", "tiny", "--precision", "FP16",
                 "--json", *store, env=env)  # fmt: skip
    imported = installed_path(out)
    run(exe, "--self-test", str(imported), env=env)  # converts the tokenizer on first load
    if not (imported / "openvino_tokenizer.xml").is_file():
        raise CheckFailed("the tokenizer of an older export was not converted")
    out, took = run(
        exe, "models", "compress", "tiny", "--precision", "INT4", "--json", *store, env=env
    )
    run(exe, "--self-test", str(installed_path(out)), env=env)
    print(f"tokenizer conversion (no torch) and NNCF compression to INT4: ok ({took:.2f} s)")

    out, _ = run(exe, "models", "export", str(ckpt), "--name", "x", *store, env=env, ok=False)
    if EXPORT_SENTENCE not in out:
        raise CheckFailed(f"export in the bundle did not say it needs the export extra:\n{out}")
    print("export from PyTorch in the bundle: refused with the 'export' extra sentence")

    png = work / "window.png"
    _, took = run(exe, "--screenshot", str(png), env=env)
    if not png.is_file() or png.stat().st_size == 0:
        raise CheckFailed("--screenshot wrote no picture")
    print(f"window (offscreen, no model) up, painted and closed: {took:.2f} s")

    # Qt 6.5+ will not start on X11 without libxcb-cursor, which many desktops lack: the
    # bundle must carry it (PyInstaller takes it only if the build machine has it).
    missing = [lib for lib in X11_LIBS if not (exe.parent / "_internal" / lib).is_file()]
    if missing:
        raise CheckFailed(f"the bundle lacks {', '.join(missing)}: install it and rebuild")
    print(f"X11 libraries Qt needs and desktops may lack, in the bundle: {', '.join(X11_LIBS)}")


def main() -> int:
    default = ROOT / "dist" / "dolly-desktop" / "dolly-desktop"
    exe = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    if not exe.is_file():
        print(f"bundle_check: no bundle at {exe}", file=sys.stderr)
        return 1
    return run_checks("bundle_check", check, exe)


def run_checks(name: str, checks: Callable[[Path, Path], None], exe: Path) -> int:
    """Run `checks(exe, work)` in a temporary folder; 0 when all passed (user_env_check too)."""
    with tempfile.TemporaryDirectory(prefix=f"dolly-{name}-") as tmp:
        try:
            checks(exe, Path(tmp))
        except (CheckFailed, subprocess.TimeoutExpired) as e:
            print(f"{name}: FAILED: {e}", file=sys.stderr)
            return 1
    print(f"{name}: all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
