"""The GUI path against the bare engine: the GUI thread's longest stall while a response
streams, and tokens/s through the window vs the engine on the same model, side by side.

    .venv/bin/python -m bench.gui_stream [--shape tiny|3b] [--precision INT4] [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
HOME = tempfile.mkdtemp(prefix="dolly-bench-")  # the window's settings and compiled cache
os.environ.setdefault("DOLLY_DESKTOP_HOME", HOME)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="tiny")
    ap.add_argument("--precision", default="INT4")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=200)
    a = ap.parse_args()

    from PySide6.QtCore import QEventLoop, QTimer

    from bench.models import ir, machine
    from dolly_desktop.core.engine import Engine
    from dolly_desktop.core.params import GenerationParams
    from dolly_desktop.ui.app import make_app
    from dolly_desktop.ui.main_window import MainWindow

    model = ir(a.shape, a.precision)
    params = GenerationParams(greedy=True, max_new_tokens=a.tokens)
    instruction = "Write a love letter to my best friend"
    app = make_app()

    def wait(signal) -> None:
        loop = QEventLoop()
        signal.connect(loop.quit)
        loop.exec()
        signal.disconnect(loop.quit)

    window = MainWindow(model=str(model))
    window.show()
    wait(window.load_done)
    bare = Engine(model)

    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer(interval=5)
    timer.timeout.connect(tick)

    gui_tps, bare_tps, gui_ttft, bare_ttft, stalls = [], [], [], [], []
    for _ in range(a.runs):
        r = bare.generate(instruction, params)  # no text callback: the strictest baseline
        bare_tps.append(r.tokens_per_s)
        bare_ttft.append(r.ttft_s)
        window.instruction.setPlainText(instruction)
        window.set_params(params)
        gaps.clear()
        last[0] = time.perf_counter()
        timer.start()
        window.submit()
        wait(window.response_done)
        timer.stop()
        gui_tps.append(window.last_result.tokens_per_s)
        gui_ttft.append(window.last_result.ttft_s)
        stalls.append(max(gaps) * 1000)
    window.close()
    app.processEvents()

    g, b = statistics.median(gui_tps), statistics.median(bare_tps)
    gt, bt = statistics.median(gui_ttft), statistics.median(bare_ttft)
    print(f"machine: {machine()}")
    print(f"model: {a.shape} {a.precision}, {a.tokens} greedy tokens, {a.runs} runs each")
    print("| path | tokens/s (median) | time to first token (median, ms) |")
    print("|---|---|---|")
    print(f"| bare engine (no text callback) | {b:.2f} | {bt * 1000:.0f} |")
    print(f"| through the window (GUI worker) | {g:.2f} | {gt * 1000:.0f} |")
    print(f"ratio window/engine: tokens/s {g / b:.3f}, first token {gt / bt:.3f}")
    print(
        f"GUI thread longest stall while generating (5 ms timer, worst run): {max(stalls):.1f} ms;"
        f" median run {statistics.median(stalls):.1f} ms"
    )


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(HOME, ignore_errors=True)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: Qt + openvino-genai objects can crash it
