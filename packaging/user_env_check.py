"""Check the environment a user gets from `./run-app` (the run-time lock only, no torch), the
way a person meets it; run with the test environment's Python (it makes the tiny model):

    .venv/bin/python packaging/user_env_check.py PATH/TO/.venv/bin/dolly-desktop

1. --self-test on the tiny model (INT4);
2. `models download` from a stand-in Hub on 127.0.0.1, as the Hub serves (sizes, sha256, Range)
   and as a bare mirror does (no sizes, Range ignored), then `generate` by store name;
3. an unreachable Hub: non-zero exit, one line, no traceback, no "unexpected error";
4. one `serve` request over HTTP;
5. the window, offscreen, with a scripted generation on the tiny model (--screenshot).
Exits non-zero on the first failure. ci-user-env builds the environment, and scripts/try-newest
runs this against the newest releases instead of the lock.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from bundle_check import (
    ROOT,
    CheckFailed,
    installed_path,
    make_models,
    run,
    run_checks,
    serve_once,
)

sys.path.insert(0, str(ROOT / "tests"))
from hub_server import HubServer

UNREACHABLE = ("http://127.0.0.1:9", "http://dolly-hub.invalid")  # refused; no such host


def one_line_failure(out: str, what: str) -> None:
    lines = [ln for ln in out.splitlines() if ln.strip()]
    if len(lines) != 1 or "Traceback" in out or "unexpected error" in out:
        raise CheckFailed(f"{what}: want one clear line, got:\n{out}")
    if "Cannot reach" not in lines[0] or "HF_ENDPOINT" not in lines[0]:
        raise CheckFailed(f"{what}: the line does not say the Hub cannot be reached: {lines[0]}")


def check(exe: Path, work: Path) -> None:
    env = {**os.environ, "DOLLY_DESKTOP_HOME": str(work / "home"), "QT_QPA_PLATFORM": "offscreen"}
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("HF_ENDPOINT", None)
    t0 = time.perf_counter()
    _ckpt, fp16, int4 = make_models(work)
    print(f"tiny model built and exported to FP16 and INT4 in {time.perf_counter() - t0:.1f} s")

    _, took = run(exe, "--self-test", str(int4), env=env)
    print(f"self-test: ok in {took:.2f} s")

    for bare, precision, folder in ((False, "INT4", int4), (True, "FP16", fp16)):
        repo = f"OpenVINO/dolly-v2-3b-{precision.lower()}-ov"
        with HubServer(bare=bare) as hub:
            hub.add_repo(repo, folder)
            out, took = run(
                exe, "models", "download", "dolly-v2-3b", "--precision", precision,
                "--repo", repo, "--endpoint", hub.url, "--json", env=env,
            )  # fmt: skip
        installed_path(out)
        out, _ = run(
            exe, "generate", "--model", f"dolly-v2-3b/{precision}", "--max-new-tokens", "8",
            "--no-history", "Who is Dolly?", env=env,
        )  # fmt: skip
        kind = "a bare mirror (no sizes, Range ignored)" if bare else "the Hub"
        print(f"download from {kind}: ok in {took:.2f} s; generate dolly-v2-3b/{precision} ok")

    for endpoint in UNREACHABLE:
        out, _ = run(
            exe, "models", "download", "dolly-v2-3b", "--precision", "INT8",
            "--endpoint", endpoint, env=env, ok=False,
        )  # fmt: skip
        one_line_failure(out, f"download from {endpoint}")
        print(f"unreachable Hub {endpoint}: {out.strip()}")

    print(f"serve: one completion, finish_reason {serve_once(exe, int4, env)}")

    png = work / "window.png"
    _, took = run(exe, "--model", str(int4), "--screenshot", str(png), env=env)
    if not png.is_file() or png.stat().st_size == 0:
        raise CheckFailed("--screenshot wrote no picture")
    print(f"window (offscreen, a scripted generation): ok in {took:.2f} s")


def main() -> int:
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_file():
        print("usage: user_env_check.py PATH/TO/dolly-desktop", file=sys.stderr)
        return 2
    return run_checks("user_env_check", check, Path(sys.argv[1]))


if __name__ == "__main__":
    sys.exit(main())
