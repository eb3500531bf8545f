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
    from dolly_desktop.generation.engines.local import Engine
    from dolly_desktop.generation.params import GenerationParams
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
    bare = Engine(model, reuse_template=True)  # as the window loads it

    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer(interval=5)
    timer.timeout.connect(tick)

    def through_window(stall_timer: bool) -> None:
        window.instruction.setPlainText(instruction)
        window.set_params(params)
        gaps.clear()
        last[0] = time.perf_counter()
        if stall_timer:
            timer.start()
        cpu0 = time.thread_time()
        window.submit()
        wait(window.response_done)
        timer.stop()
        if not stall_timer:
            r = window.last_result
            gui_cpu_ms.append((time.thread_time() - cpu0) * 1000 / max(1, r.generated_tokens))

    # Speed runs alternate the order (ABBA) and run without the stall timer: a 200 Hz wake-up
    # on the GUI thread would tax only the window's side on 2 cores. The stall is measured in
    # runs of its own after them.
    gui_tps, bare_tps, gui_ttft, bare_ttft, stalls = [], [], [], [], []
    gui_cpu_ms: list[float] = []  # the GUI thread's CPU time per token, speed runs
    for i in range(a.runs):
        for side in ("bare", "window") if i % 2 == 0 else ("window", "bare"):
            if side == "bare":
                r = bare.generate(instruction, params)  # no text callback: the strictest baseline
                bare_tps.append(r.tokens_per_s)
                bare_ttft.append(r.ttft_s)
            else:
                through_window(stall_timer=False)
                gui_tps.append(window.last_result.tokens_per_s)
                gui_ttft.append(window.last_result.ttft_s)
    for _ in range(2):
        through_window(stall_timer=True)
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
    print(f"runs, tokens/s: engine {_fmt(bare_tps)}; window {_fmt(gui_tps)}")
    print(f"GUI thread CPU per token (median): {statistics.median(gui_cpu_ms):.2f} ms")
    print(
        "GUI thread longest stall while generating (5 ms timer, 2 runs of its own): "
        f"worst {max(stalls):.1f} ms, best {min(stalls):.1f} ms"
    )


def _fmt(xs: list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in xs)


if __name__ == "__main__":
    try:
        main()
    finally:
        shutil.rmtree(HOME, ignore_errors=True)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: Qt + openvino-genai objects can crash it
