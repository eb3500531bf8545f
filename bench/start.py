"""Process start to first token: the app's engine against the notebook's way, with a cold and a
warm compiled-model cache (CACHE_DIR), and what the cache keeps under each CACHE_MODE.

Every start is a fresh child process; each round gives every variant an empty cache folder,
starts it cold (the cache is written) and then warm (the cache is read), the variants in turns
(ABBA); medians over the rounds, and the median of the per-round app/notebook ratios. The time
is split into: imports; the compile (genai's LLMPipeline: read_model, the CPU plugin's
transformations or the import of the cached blob); the app's one-token warm-up, in which the
CPU plugin repacks the weights for its kernels (wall and CPU seconds); and the first answer's
time to first token. The notebook (bench/engine_vs_notebook.py's child_notebook) defers the
repack into its first answer. Findings and tables: docs/start.md.

    .venv/bin/python -m bench.start [--shape 3b] [--precision INT4] [--rounds 5]
                                    [--variants notebook app "app size" ...]
                                    [--page-cache warm|as-left]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import engine_vs_notebook
from bench.prefill import SHORT

WEIGHTS = "<the model's openvino_model.bin>"  # filled in by the child

# App variants: properties the engine is given on top of its own (None: the notebook's way).
VARIANTS: dict[str, dict | None] = {
    "notebook": None,
    # As the app loads today: CACHE_DIR only, so OpenVINO's default CACHE_MODE, OPTIMIZE_SPEED:
    # the blob holds the CPU plugin's transformed model with its weights.
    "app": {},
    # A weightless blob: the transformed graph less the constants that still point into the
    # IR's .bin, which are read from it again (for 3b INT4, 1.35 GB of 1.6: docs/start.md).
    "app size": {"CACHE_MODE": "OPTIMIZE_SIZE"},
    # OPTIMIZE_SIZE with the weights' file named: genai compiles an ov::Model, not a path, and
    # without WEIGHTS_PATH OpenVINO cannot import a weightless blob for it (a miss every time).
    "app size+path": {"CACHE_MODE": "OPTIMIZE_SIZE", "WEIGHTS_PATH": WEIGHTS},
    # Not in the default run: does anything the engine can set shorten the repack itself?
    "app dq off": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0},
    "app dq 32": {"DYNAMIC_QUANTIZATION_GROUP_SIZE": 32},
    "app f32": {"INFERENCE_PRECISION_HINT": "f32"},
}
DEFAULT = ["notebook", "app", "app size+path"]


def blobs(cache: Path) -> dict[str, tuple[int, float]]:
    """The compiled-model cache's files: name -> (bytes, mtime)."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime) for p in cache.glob("*.blob")}


def resident_mb(files: list[Path]) -> float:
    """How much of these files the OS page cache holds (util-linux fincore)."""
    if not files:
        return 0.0
    argv = ["fincore", "--bytes", "--noheadings", "--output", "RES", *map(str, files)]
    out = subprocess.run(argv, capture_output=True, text=True, check=True)
    return sum(int(x) for x in out.stdout.split()) / 1e6


def read_through(files: list[Path]) -> None:
    """Bring these files into the OS page cache, so that no start waits on the disk."""
    for f in files:
        with f.open("rb") as fh:
            while fh.read(1 << 24):
                pass


def cpu_timed(owner, name: str, key: str, cpu: dict[str, float]) -> None:
    """Record in cpu[key] the process CPU seconds (all threads) of owner.name's first call."""
    fn = getattr(owner, name)

    def timed(*args, **kw):
        c0 = time.process_time()
        try:
            return fn(*args, **kw)
        finally:
            cpu.setdefault(key, time.process_time() - c0)

    setattr(owner, name, timed)


def child_app(model: str, cache: str, props: dict, spawned_at: float) -> dict:
    from bench.prefill import date_tokens
    from dolly_desktop.generation.engines.local import Engine
    from dolly_desktop.generation.params import GenerationParams

    imported, imported_cpu = time.time(), time.process_time()
    before = blobs(Path(cache))
    props = {k: str(Path(model) / "openvino_model.bin") if v == WEIGHTS else v
             for k, v in props.items()}  # fmt: skip
    cpu: dict[str, float] = {}
    cpu_timed(Engine, "_load_pipeline", "compile", cpu)
    cpu_timed(Engine, "_prime", "warmup", cpu)  # the repack: on all cores
    marks = date_tokens()
    t0 = time.perf_counter()
    engine = Engine(model, cache_dir=Path(cache), properties=props, reuse_template=True)
    load = time.perf_counter() - t0
    noop = lambda s: None  # noqa: E731
    first = engine.generate(SHORT, GenerationParams(greedy=True, max_new_tokens=2), noop)
    first_token_at = time.time() - (first.total_s - first.ttft_s)
    after = blobs(Path(cache))
    return dict(
        imports_s=imported - spawned_at,
        load_s=load,
        compile_s=engine.load_s,
        warmup_s=engine.warmup_s,
        first_ttft_s=first.ttft_s,
        ready_s=first_token_at - spawned_at,
        imports_cpu_s=imported_cpu,
        compile_cpu_s=cpu["compile"],
        warmup_cpu_s=cpu["warmup"],
        ready_cpu_s=marks[0][1],
        blob_mb=sum(s for s, _ in after.values()) / 1e6,
        blob_written=any(before.get(n) != v for n, v in after.items()),
    )


def child_notebook(model: str, cache: str, spawned_at: float) -> dict:
    # Imported here (optimum.intel loads its model classes lazily) so that the split shows them.
    from optimum.intel import OVModelForCausalLM
    from transformers import TextIteratorStreamer

    imported, imported_cpu = time.time(), time.process_time()
    cpu: dict[str, float] = {}
    cpu_timed(OVModelForCausalLM, "from_pretrained", "compile", cpu)
    put = TextIteratorStreamer.put

    def dated_put(self, value) -> None:  # child_notebook's streamer ends in this put
        if not self.next_tokens_are_prompt:
            cpu.setdefault("ready", time.process_time())
        put(self, value)

    TextIteratorStreamer.put = dated_put
    engine_vs_notebook.SPAWNED_AT = spawned_at
    before = blobs(Path(cache))
    r = engine_vs_notebook.child_notebook(model, cache, 1, SHORT)
    after = blobs(Path(cache))
    return dict(
        imports_s=imported - spawned_at,
        load_s=r["load_s"],
        compile_s=r["compile_s"],
        warmup_s=0.0,
        first_ttft_s=r["first_ttft_s"],
        ready_s=r["ready_s"],
        imports_cpu_s=imported_cpu,
        compile_cpu_s=cpu["compile"],
        warmup_cpu_s=0.0,
        ready_cpu_s=cpu["ready"],
        blob_mb=sum(s for s, _ in after.values()) / 1e6,
        blob_written=any(before.get(n) != v for n, v in after.items()),
    )


def spawn(variant: str, model: Path, cache: Path, page_cache: str) -> dict:
    files = [model / "openvino_model.bin", *cache.glob("*.blob")]
    if page_cache == "warm":
        read_through(files)
    resident = resident_mb(files)
    argv = [sys.executable, "-m", "bench.start", "--child", variant, "--model", str(model),
            "--cache", str(cache), "--spawned-at", repr(time.time())]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{variant}: {(out.stderr.strip().splitlines() or ['?'])[-1]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["other_s"] = res["ready_s"] - res["imports_s"] - res["load_s"] - res["first_ttft_s"]
    res["resident_mb"] = resident
    return res


MEASURES = [
    ("imports_s", "imports (s)"),
    ("compile_s", "compile: LLMPipeline / from_pretrained (s)"),
    ("warmup_s", "warm-up generate, the repack (s)"),
    ("first_ttft_s", "TTFT of the first answer (s)"),
    ("other_s", "the rest: tokenizer, Python (s)"),
    ("ready_s", "**process start to first token (s)**"),
    ("imports_cpu_s", "CPU seconds (all threads): imports"),
    ("compile_cpu_s", "CPU: compile"),
    ("warmup_cpu_s", "CPU: warm-up"),
    ("ready_cpu_s", "**CPU: process start to first token**"),
    ("blob_mb", "cache blob (MB)"),
    ("resident_mb", "weights and blob in the OS page cache at the start (MB)"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="3b")
    ap.add_argument("--precision", default="INT4")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--variants", nargs="+", default=DEFAULT, choices=list(VARIANTS))
    ap.add_argument("--page-cache", choices=["warm", "as-left"], default="warm",
                    help="warm: the weights and the blob read into the OS page cache before "
                    "every start; as-left: as the previous start left them")  # fmt: skip
    ap.add_argument("--child")
    ap.add_argument("--model")
    ap.add_argument("--cache")
    ap.add_argument("--spawned-at", type=float)
    a = ap.parse_args()
    if a.child:
        props = VARIANTS[a.child]
        if props is None:
            res = child_notebook(a.model, a.cache, a.spawned_at)
        else:
            res = child_app(a.model, a.cache, props, a.spawned_at)
        print(json.dumps(res))
        return

    from bench.models import cache_dir, ir, machine

    model = ir(a.shape, a.precision)
    print(f"machine: {machine()}")
    print(f"OS page cache before each start: {a.page_cache}")
    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    rows: dict[tuple[str, str], list[dict]] = {}
    for r in range(a.rounds):
        for v in a.variants if r % 2 == 0 else a.variants[::-1]:  # ABBA
            with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".start-") as tmp:
                for state in ("cold", "warm"):
                    res = spawn(v, model, Path(tmp), a.page_cache)
                    rows.setdefault((v, state), []).append(res)
                    print(f"  round {r + 1} {v} {state}: {json.dumps(res)}", file=sys.stderr,
                          flush=True)  # fmt: skip
    print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    table(rows, a.variants, a.rounds, f"{a.shape} {a.precision}")


def table(rows: dict[tuple[str, str], list[dict]], variants: list[str], rounds: int, what: str):
    cols = [(v, s) for v in variants for s in ("cold", "warm")]
    print(f"\n### {what}: medians of {rounds} rounds")
    print("| measure | " + " | ".join(f"{v}, {s}" for v, s in cols) + " |")
    print("|---|" + "---|" * len(cols))
    for key, label in MEASURES:
        cells = [statistics.median(r[key] for r in rows[c]) for c in cols]
        print(f"| {label} | " + " | ".join(f"{x:.2f}" for x in cells) + " |")
    written = [f"{sum(r['blob_written'] for r in rows[c])}/{rounds}" for c in cols]
    print("| starts that wrote a blob | " + " | ".join(written) + " |")
    if "notebook" not in variants:
        return
    print("\nprocess start to first token, app / notebook, median of per-round ratios "
          "(each round's ratios in brackets):")  # fmt: skip
    for v in variants:
        if v == "notebook":
            continue
        for s in ("cold", "warm"):
            cells = []
            for key, unit in (("ready_s", "wall"), ("ready_cpu_s", "CPU")):
                ratios = [x[key] / n[key] for x, n in
                          zip(rows[(v, s)], rows[("notebook", s)], strict=True)]  # fmt: skip
                cells.append(f"{unit} {statistics.median(ratios):.2f} "
                             f"({' '.join(f'{x:.2f}' for x in ratios)})")  # fmt: skip
            print(f"  {v}, {s} cache: {'; '.join(cells)}")


if __name__ == "__main__":
    main()
