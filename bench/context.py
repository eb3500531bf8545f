"""A passage to work from (Dolly's `Input:` format) with and without prompt lookup: time to
first token, decode tokens/s, how many drafted tokens were accepted, and whether the greedy
text is the same, for passages of about 300 and 1000 tokens and a copy-heavy case (an
instruction to repeat the passage). Each measurement a child process of its own, the
configs interleaved in ABBA order, medians.

    .venv/bin/python -m bench.context [--shape 3b] [--precision INT4] [--runs 3] [--tokens 128]
                                      [--assistant-tokens 5] [--ngram 3]

Configs: the app's engine as serve and scripts load it (generation/engines/local.py, stateful SDPA
pipeline, no lookup); openvino-genai's prompt-lookup pipeline (`prompt_lookup=True`, which
runs on genai's continuous-batching, paged-attention pipeline) with the app's other CPU
properties; and that paged-attention pipeline without lookup, to tell the lookup's effect
from the pipeline's (the app's engine with `prompt_lookup="on"` once it has the option, else
genai directly with the same properties). Acceptance: genai calls the streamer once per
generation step with every token that step produced, so tokens per step - 1 are the accepted
drafted tokens.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PLACES = ["Skerry", "Harbour Point", "Gull Rock", "Black Head", "North Sound", "Fastnet",
          "Longship", "Eddystone", "Bishop Rock", "Inishtrahull"]  # fmt: skip
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]  # fmt: skip
TEMPLATES = [
    "In {year}, the keeper of the {place} light counted {n} ships passing in {month}.",
    "The lamp at {place} burned {n} gallons of colza oil during the winter of {year}.",
    "A storm in {month} {year} broke {n} panes of the lantern room at {place}.",
    "Supplies reached {place} by boat every {n} days, weather permitting, until {year}.",
    "The fog signal at {place} sounded for {n} hours in {month}, a record for {year}.",
    "Two assistant keepers joined the station at {place} in {month} {year}, after {n} weeks "
    "of training ashore.",
    "By {year} the {place} tower had been painted {n} times, always red and white.",
    "The logbook from {place} notes {n} gannets nesting on the cliffs that {month}.",
]


def passage(tokens: int, seed: int = 0) -> str:
    """Plausible English, every sentence different, for a Dolly prompt of about `tokens` tokens
    (the template and instruction take ~50, a sentence ~19)."""
    rng = random.Random(seed)
    out = []
    for _ in range(max(1, round((tokens - 50) / 19))):
        t = rng.choice(TEMPLATES)
        out.append(t.format(year=rng.randint(1850, 1990), place=rng.choice(PLACES),
                            n=rng.randint(2, 400), month=rng.choice(MONTHS)))  # fmt: skip
    return " ".join(out)


COPY = "Repeat the passage word for word."
CASES = {  # name: (instruction, passage tokens)
    "context 300": ("How many ships passed Skerry, according to the passage?", 300),
    "context 1000": ("Summarize the passage in three sentences.", 1000),
    "copy 300": (COPY, 300),
    # A random-weight model does not copy the passage; this passage is its own answer to
    # "copy 300", so that what it writes has a chance to be in the prompt (artificial).
    "copy its own answer": (COPY, 0),
}


# --exact: arithmetic that does not depend on how many tokens a step computes, so that "same
# tokens" tests the decoding, not rounding (random weights give near-flat logits, where the
# rounding of a 6-token verification step and a 1-token step can pick different tokens).
EXACT = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32",
         "DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}  # fmt: skip


def child(
    kind: str, model: str, cache: str, tokens: int, k: int, ngram: int, exact: bool = False
) -> dict:
    import openvino_genai as ov_genai

    from dolly_desktop.generation.engines import local
    from dolly_desktop.generation.engines.local import Engine
    from dolly_desktop.generation.prompt import build_prompt

    class Steps(ov_genai.StreamerBase):
        """Counts generation steps and tokens, and dates the first and last token."""

        def __init__(self) -> None:
            super().__init__()
            self.ids: list[int] = []
            self.steps = 0
            self.first = self.last = 0.0
            self.cpu_first = self.cpu_last = 0.0  # CPU time of the process, all threads

        def write(self, token):  # an int, or a list of every token one step produced
            now, cpu = time.perf_counter(), time.process_time()
            if not self.first:
                self.first, self.cpu_first = now, cpu
            self.last, self.cpu_last = now, cpu
            self.steps += 1
            self.ids += [token] if isinstance(token, int) else list(token)
            return ov_genai.StreamingStatus.RUNNING

        def end(self) -> None:
            pass

    if kind == "app engine":
        # warmed up, as serve loads it
        engine = Engine(model, cache_dir=Path(cache), properties=EXACT if exact else None)
        pipe = engine.pipe
    elif kind == "prompt lookup" and "prompt_lookup" in inspect.signature(Engine).parameters:
        # The app's own option (generation/lookup.py): genai's prompt-lookup pipeline with the
        # engine's CPU properties, paged attention in place of SDPA.
        props = EXACT if exact else None
        engine = Engine(model, cache_dir=Path(cache), properties=props, prompt_lookup="on")
        pipe = engine.pipe
    else:  # genai's continuous-batching pipeline: with prompt lookup, or plain
        # The engine's CPU properties for this model, less its attention backend.
        cpu = local.cpu_defaults(Path(model))
        props = {k_: v for k_, v in cpu.items() if k_ != "ATTENTION_BACKEND"}
        props |= EXACT if exact else {}
        lookup = {"prompt_lookup": True} if kind == "prompt lookup" else {}
        pipe = ov_genai.LLMPipeline(model, "CPU", CACHE_DIR=cache, **props, **lookup)
    cfg = pipe.get_generation_config()
    cfg.max_new_tokens = cfg.min_new_tokens = tokens
    cfg.do_sample = False
    cfg.ignore_eos = True  # the same number of tokens on every side: random weights may stop
    if kind == "prompt lookup":
        cfg.num_assistant_tokens = k
        cfg.max_ngram_size = ngram
    tok = pipe.get_tokenizer()
    warm = Steps()
    pipe.generate(tok.encode(build_prompt("Hello.")), cfg.__class__(**_small(cfg)), warm)
    out: dict = {}
    own = ""
    for name, (instruction, n) in CASES.items():
        prompt = build_prompt(instruction, passage(n) if n else own)
        s = Steps()
        t0, c0 = time.perf_counter(), time.process_time()
        pipe.generate(tok.encode(prompt), cfg, s)
        ids = s.ids[:tokens]
        out[name] = dict(
            prompt_tokens=int(tok.encode(prompt).input_ids.shape[1]),
            ttft=s.first - t0,
            ttft_cpu=s.cpu_first - c0,
            tps=(len(s.ids) - 1) / (s.last - s.first) if len(s.ids) > 1 else 0.0,
            cpu_ms=(s.cpu_last - s.cpu_first) / max(1, len(s.ids) - 1) * 1000,
            tokens=len(s.ids),
            steps=s.steps,
            digest=hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:12],
            head=tok.decode(ids[:24]),
        )
        if name == "copy 300":
            own = tok.decode(ids)
        time.sleep(0.5)
    return out


def _small(cfg) -> dict:
    """A short greedy config of the same kind, for the warm-up answer."""
    kw = dict(max_new_tokens=4, do_sample=False)
    if cfg.num_assistant_tokens:
        kw.update(num_assistant_tokens=cfg.num_assistant_tokens, max_ngram_size=cfg.max_ngram_size)
    return kw


KINDS = ["app engine", "prompt lookup", "paged attention, no lookup"]


def spawn(kind: str, model: Path, cache: Path, a: argparse.Namespace) -> dict:
    argv = [sys.executable, "-m", "bench.context", "--child", kind, "--model", str(model),
            "--cache", str(cache), "--tokens", str(a.tokens),
            "--assistant-tokens", str(a.assistant_tokens), "--ngram", str(a.ngram),
            *(["--exact"] if a.exact else [])]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1][:160]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="3b")
    ap.add_argument("--precision", default="INT4")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=128, help="greedy tokens per answer")
    ap.add_argument("--assistant-tokens", type=int, default=5, help="num_assistant_tokens")
    ap.add_argument("--ngram", type=int, default=3, help="max_ngram_size")
    ap.add_argument("--kinds", nargs="*", default=KINDS)
    ap.add_argument("--exact", action="store_true", help="f32, f32 KV, no dynamic quantization")
    ap.add_argument("--from-log", type=Path, help="print the table of a run's stderr")
    ap.add_argument("--child")
    ap.add_argument("--model")
    ap.add_argument("--cache")
    a = ap.parse_args()
    if a.child:
        res = child(a.child, a.model, a.cache, a.tokens, a.assistant_tokens, a.ngram, a.exact)
        print(json.dumps(res))
        return

    if a.from_log:
        table(from_log(a.from_log), a)
        return

    from bench.models import cache_dir, ir, machine

    model = ir(a.shape, a.precision)
    print(f"machine: {machine()}")
    print(f"load average before: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    rows: dict[str, list[dict]] = {k: [] for k in a.kinds}
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".compiled-") as tmp:
        for r in range(a.runs):
            for kind in a.kinds if r % 2 == 0 else a.kinds[::-1]:  # ABBA
                cache = Path(tmp) / kind.replace(" ", "-").replace(",", "")
                rows[kind].append(spawn(kind, model, cache, a))
                print(f"  {kind}: {rows[kind][-1]}", file=sys.stderr, flush=True)
    print(f"load average after: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    table(rows, a)


def table(rows: dict[str, list[dict]], a: argparse.Namespace) -> None:
    runs = max(len(v) for v in rows.values())
    print(
        f"\nmedians of {runs} runs, {a.tokens} greedy tokens (ignore_eos), prompt lookup "
        f"with num_assistant_tokens={a.assistant_tokens}, max_ngram_size={a.ngram}"
        + (f"; exact arithmetic: {EXACT}" if a.exact else "")
    )
    print("| case | prompt tokens | config | TTFT (s) | TTFT CPU (s) | decode tok/s | "
          "decode CPU ms/token | CPU per token / app engine | tokens per step | "
          "drafts accepted | same tokens as app engine | same as paged, no lookup |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    kinds = list(rows)
    for case in CASES:
        ref = None
        digests = {k: {r[case]["digest"] for r in rows[k] if "error" not in r} for k in kinds}
        for kind in kinds:
            ok = [r[case] for r in rows[kind] if "error" not in r]
            if not ok:
                print(f"| {case} | | {kind} | failed: {rows[kind][0].get('error')} |")
                continue
            med = {
                k: statistics.median(x[k] for x in ok)
                for k in ("ttft", "ttft_cpu", "tps", "cpu_ms")
            }
            per_step = statistics.median(x["tokens"] / x["steps"] for x in ok)
            # Of the drafted tokens, those kept: a step proposes up to k (when the last n-gram
            # is found earlier in the text) and keeps those the model agrees with, plus its own.
            accepted = statistics.median(
                (x["tokens"] - x["steps"]) / (x["steps"] * a.assistant_tokens) for x in ok
            )
            if ref is None:
                ref = (med["cpu_ms"], ok[0]["digest"])
            same = all(x["digest"] == ref[1] for x in ok)
            paged = digests.get("paged attention, no lookup")
            same_paged = "—" if not paged else str(digests[kind] == paged)
            acc = f"{accepted:.1%}" if kind == "prompt lookup" else "—"
            print(f"| {case} | {ok[0]['prompt_tokens']} | {kind} | {med['ttft']:.2f} | "
                  f"{med['ttft_cpu']:.2f} | {med['tps']:.2f} | {med['cpu_ms']:.0f} | "
                  f"{med['cpu_ms'] / ref[0]:.2f} | {per_step:.2f} | {acc} | {same} | "
                  f"{same_paged} |")  # fmt: skip
    print("\nfirst 24 tokens of each answer:")
    for case in CASES:
        for kind in kinds:
            first = next((r[case]["head"] for r in rows[kind] if "error" not in r), "")
            print(f"  {case}, {kind}: {first!r}")


def from_log(path: Path) -> dict[str, list[dict]]:
    """The rows a run wrote to stderr ("  kind: {...}" a line), e.g. of a run cut short."""
    import ast

    rows: dict[str, list[dict]] = {}
    for line in path.read_text().splitlines():
        kind, sep, rest = line.strip().partition(": ")
        if sep and rest.startswith("{"):
            rows.setdefault(kind, []).append(ast.literal_eval(rest))
    return rows


if __name__ == "__main__":
    main()
