"""How far a precision or a CPU setting moves the model's output from FP16 computed exactly.

The reference is the FP16 IR run in f32 (no bf16, no KV-cache quantization, no dynamic
quantization); it decodes greedily from Dolly-formatted prompts. Every candidate is then fed
the same tokens one at a time (teacher forcing, so one early difference does not decide all
that follows), and each step's logits are compared with the reference's: top-1 agreement and
KL(reference || candidate). Runs on the plain OpenVINO runtime, one child per candidate.

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

EXACT = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32",
         "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}  # fmt: skip
INSTRUCTIONS = ["Who is Dolly?", "Write a short poem about the sea and the wind."]


def decode(model: Path, props: dict, prompts: list[list[int]], forced: list[list[int]] | None,
           steps: int) -> tuple[list[list[int]], list[np.ndarray]]:  # fmt: skip
    """Greedy (or forced) decoding; the tokens fed and one logits row per step."""
    import openvino as ov

    req = ov.Core().compile_model(model / "openvino_model.xml", "CPU", props).create_infer_request()
    all_tokens, all_rows = [], []
    for i, prompt in enumerate(prompts):
        req.reset_state()
        fed, rows, pos = list(prompt), [], 0
        chunk = prompt
        for step in range(steps):
            n = len(chunk)
            req.infer({
                "input_ids": np.array([chunk], dtype=np.int64),
                "attention_mask": np.ones((1, pos + n), dtype=np.int64),
                "position_ids": np.arange(pos, pos + n, dtype=np.int64)[None],
                "beam_idx": np.zeros(1, dtype=np.int32),
            })  # fmt: skip
            row = req.get_tensor("logits").data[0, -1].astype(np.float32)
            rows.append(row.copy())
            pos += n
            nxt = forced[i][step] if forced else int(row.argmax())
            fed.append(nxt)
            chunk = [nxt]
        all_tokens.append(fed[len(prompt) :])
        all_rows.append(np.stack(rows))
    return all_tokens, all_rows


def compare(ref: list[np.ndarray], cand: list[np.ndarray]) -> tuple[float, float]:
    """Top-1 agreement (share of steps) and mean KL(ref || cand) in nats."""
    r, c = np.concatenate(ref).astype(np.float64), np.concatenate(cand).astype(np.float64)
    top1 = float((r.argmax(1) == c.argmax(1)).mean())
    lp = r - r.max(1, keepdims=True)
    lp -= np.log(np.exp(lp).sum(1, keepdims=True))
    lq = c - c.max(1, keepdims=True)
    lq -= np.log(np.exp(lq).sum(1, keepdims=True))
    kl = float((np.exp(lp) * (lp - lq)).sum(1).mean())
    return top1, kl


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
            top1, kl = compare(ref, rows)
            print(f"| {cand} | {top1:.1%} ({round(top1 * n)}/{n}) | {kl:.4f} |", flush=True)


if __name__ == "__main__":
    main()
