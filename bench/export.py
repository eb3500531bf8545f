"""Export wall time and peak RSS for the 3b shape: the app's export (optimum-intel to FP16 IR,
then NNCF on the IR) against plain `optimum-cli export openvino`, same checkpoint, same
compression parameters. Each export is a child process; its peak RSS comes from wait4.

    .venv/bin/python -m bench.export [--shape 3b] [--precision FP16 INT8 INT4] [--runs 1]

The checkpoint is bfloat16, as Databricks published Dolly (--fp32 for the float32 one the
bench IRs come from); the exported folders are thrown away.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.models import cache_dir, checkpoint, machine

# The app's INT4 defaults (core/compress.py Int4Options), spelled for optimum-cli.
CLI_ARGS = {
    "FP16": ["--weight-format", "fp16"],
    "INT8": ["--weight-format", "int8"],
    "INT4": ["--weight-format", "int4", "--group-size", "128", "--ratio", "1.0"],
}


def run_child(argv: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[:4]} failed:\n{err[-2000:]}")
    return wall, usage.ru_maxrss * 1024 / 1e9  # KiB -> GB


def app_argv(src: Path, dest: Path, precision: str) -> list[str]:
    code = (
        "import sys; from pathlib import Path; "
        "from dolly_desktop.models.convert.export import export_checkpoint; "
        "from dolly_desktop.models.convert.compress import Precision; "
        "export_checkpoint(Path(sys.argv[1]), Path(sys.argv[2]), Precision(sys.argv[3]))"
    )
    return [sys.executable, "-c", code, str(src), str(dest), precision]


def cli_argv(src: Path, dest: Path, precision: str) -> list[str]:
    cli = Path(sys.executable).with_name("optimum-cli")
    return [str(cli), "export", "openvino", "-m", str(src), "--task",
            "text-generation-with-past", *CLI_ARGS[precision], str(dest)]  # fmt: skip


def bin_gb(folder: Path) -> float:
    return (folder / "openvino_model.bin").stat().st_size / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="3b")
    ap.add_argument("--precision", nargs="+", default=["FP16", "INT8", "INT4"])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--fp32", action="store_true", help="the float32 checkpoint, not bfloat16")
    a = ap.parse_args()
    src = checkpoint(a.shape, bf16=not a.fp32)
    ckpt_gb = sum(f.stat().st_size for f in src.glob("*.safetensors")) / 1e9
    for f in src.glob("*.safetensors"):  # into the page cache, so the first export is not cold
        with f.open("rb") as fh:
            while fh.read(1 << 26):
                pass
    print(f"machine: {machine()}")
    dtype = "float32" if a.fp32 else "bfloat16"
    print(f"checkpoint: {a.shape}, {dtype}, {ckpt_gb:.1f} GB of safetensors\n")
    print("| precision | app wall (s) | optimum-cli wall (s) | app/cli | app peak RSS (GB) "
          "| optimum-cli peak RSS (GB) | app/cli | IR .bin app / cli (GB) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for precision in a.precision:
        rows: dict[str, list[tuple[float, float]]] = {"app": [], "cli": []}
        sizes: dict[str, float] = {}
        pair = [("app", app_argv), ("cli", cli_argv)]
        for run in range(a.runs):
            for kind, argv in pair if run % 2 == 0 else pair[::-1]:  # ABBA: page cache fair
                with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
                    dest = Path(tmp) / "out"
                    rows[kind].append(run_child(argv(src, dest, precision)))
                    sizes[kind] = bin_gb(dest)
        app_wall, app_rss = (statistics.median(v) for v in zip(*rows["app"], strict=True))
        cli_wall, cli_rss = (statistics.median(v) for v in zip(*rows["cli"], strict=True))
        print(
            f"| {precision} | {app_wall:.0f} | {cli_wall:.0f} | {app_wall / cli_wall:.2f} "
            f"| {app_rss:.1f} | {cli_rss:.1f} | {app_rss / cli_rss:.2f} "
            f"| {sizes['app']:.2f} / {sizes['cli']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
