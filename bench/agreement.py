"""How far a precision or a CPU setting moves the model's output from FP16 computed exactly.

The reference is the FP16 IR run in f32 (no bf16, no KV-cache quantization, no dynamic
quantization); it decodes greedily from Dolly-formatted prompts. Every candidate is then fed
the same tokens one at a time (teacher forcing, so one early difference does not decide all
that follows), and each step's logits are compared with the reference's: top-1 agreement and
KL(reference || candidate). Runs on the plain OpenVINO runtime, one child per candidate,
with the app's measurement (dolly_desktop/compare/agreement.py; `models check` uses it too).

    .venv/bin/python -m bench.agreement --shape 3b 3b-INT8 3b-INT4 "3b-INT4@KV u4" ...

A candidate is a bench model name, optionally with @ and a config name from bench.cpu_settings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.cpu_settings import BASE, CONFIGS
from dolly_desktop.compare.agreement import EXACT, LogitsModel, compare_rows

INSTRUCTIONS = ["Who is Dolly?", "Write a short poem about the sea and the wind."]


def decode(model: Path, props: dict, prompts: list[list[int]], forced: list[list[int]] | None,
           steps: int) -> tuple[list[list[int]], list[np.ndarray]]:  # fmt: skip
    """Greedy (or forced) decoding, the app's own (compare/agreement.py); the tokens fed and
    one logits row per step."""
    runner = LogitsModel(model, props)
    out = [runner.decode(p, steps, forced[i] if forced else None) for i, p in enumerate(prompts)]
    return [t for t, _ in out], [r for _, r in out]


def child(model: str, props: dict, work: str, steps: int, forced: bool) -> None:
    w = Path(work)
    prompts = json.loads((w / "prompts.json").read_text())
    ref_tokens = json.loads((w / "tokens.json").read_text()) if forced else None
    tokens, rows = decode(Path(model), props, prompts, ref_tokens, steps)
    if not forced:
        (w / "tokens.json").write_text(json.dumps(tokens))
    np.savez(w / "rows.npz", *rows)


def run(model: Path, props: dict, work: Path, steps: int, forced: bool) -> list[np.ndarray]:
    argv = [sys.executable, "-m", "bench.agreement", "--child", json.dumps(props), "--model",
            str(model), "--work", str(work), "--steps", str(steps)]  # fmt: skip
    subprocess.run(argv + (["--forced"] if forced else []), check=True)
    with np.load(work / "rows.npz") as z:
        return [z[k] for k in sorted(z.files, key=lambda s: int(s.split("_")[1]))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("candidates", nargs="*")
    ap.add_argument("--shape", default="3b")
    ap.add_argument("--steps", type=int, default=48)
    ap.add_argument("--child")
    ap.add_argument("--model")
    ap.add_argument("--work")
    ap.add_argument("--forced", action="store_true")
    a = ap.parse_args()
    if a.child:
        child(a.model, json.loads(a.child), a.work, a.steps, a.forced)
        return

    from tokenizers import Tokenizer

    from bench.models import TOKENIZER, ir
    from dolly_desktop.generation.prompt import build_prompt

    tok = Tokenizer.from_file(str(TOKENIZER / "tokenizer.json"))
    prompts = [tok.encode(build_prompt(i)).ids for i in INSTRUCTIONS]
    n = a.steps * len(prompts)
    print(f"reference: {a.shape}-FP16 in f32, {a.steps} greedy steps x {len(prompts)} prompts")
    print("| candidate | top-1 agreement | KL(ref‖cand) nats/token |")
    print("|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "prompts.json").write_text(json.dumps(prompts))
        ref = run(ir(a.shape, "FP16"), EXACT, work, a.steps, forced=False)
        for cand in a.candidates:
            name, _, config = cand.partition("@")
            props = {k: v for k, v in {**BASE, **CONFIGS.get(config, {})}.items()
                     if k != "ATTENTION_BACKEND"}  # genai's, not the plugin's  # fmt: skip
            shape, _, precision = name.partition("-")
            rows = run(ir(shape, precision), props, work, a.steps, forced=True)
            top1, kl = compare_rows(ref, rows)
            print(f"| {cand} | {top1:.1%} ({round(top1 * n)}/{n}) | {kl:.4f} |", flush=True)


if __name__ == "__main__":
    main()
