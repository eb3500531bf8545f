"""`dolly-desktop compare` (one instruction through two or three models, side by side in the
terminal) and `dolly-desktop models check` (a variant's agreement with its reference over a
prompt set, stored beside it). The work is in dolly_desktop/compare; this is the terminal's
side: arguments, a progress bar on a terminal, tables, `--json`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from dolly_desktop.cli.options import EXIT_INTERRUPTED, add_param_options, params_from_args
from dolly_desktop.errors import DollyError

if TYPE_CHECKING:
    from dolly_desktop.compare.agreement import Summary

CHECK_DEFAULT_TOKENS = 48  # compare/check.DEFAULT_MAX_NEW_TOKENS, without importing openvino


def register(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "compare",
        help="one instruction through two or three models, one after another, with speed, "
        "memory and agreement",
    )
    c.set_defaults(func=cmd_compare)
    c.add_argument(
        "--model",
        action="append",
        default=[],
        required=True,
        help="a model folder or an installed model (dolly-v2-3b/INT4); give it 2 or 3 times",
    )
    add_param_options(c)
    c.set_defaults(greedy=True)  # differences come from the weights, not from sampling
    c.add_argument(
        "--sample", dest="greedy", action="store_false", help="sample instead of greedy decoding"
    )
    c.add_argument(
        "--context", metavar="FILE", help="a passage to work from (UTF-8 text; - reads stdin)"
    )
    c.add_argument("--no-agreement", action="store_true", help="skip measuring agreement")
    c.add_argument("--json", action="store_true", help="one JSON object on stdout, for programs")
    c.add_argument("instruction", nargs="?", help="the instruction (default: read stdin)")


def add_check_options(ck: argparse.ArgumentParser) -> None:
    """`models check`'s own options (cli/models.py registers the subcommand)."""
    ck.add_argument("target", help="NAME/VARIANT, e.g. dolly-v2-3b/INT4")
    ck.add_argument(
        "--against",
        metavar="VARIANT",
        help="the reference: a variant of the same model or NAME/VARIANT (default: its FP16, "
        "else its highest precision)",
    )
    ck.add_argument(
        "--prompts",
        metavar="FILE",
        help="instructions of your own, one per line, or JSON lines with instruction, context "
        "and category (default: the built-in 50)",
    )
    ck.add_argument(
        "--max-new-tokens",
        type=int,
        default=CHECK_DEFAULT_TOKENS,
        metavar="N",
        help=f"tokens of the reference's answer to each prompt (default: {CHECK_DEFAULT_TOKENS})",
    )
    ck.add_argument("--json", action="store_true", help="the result as JSON on stdout")


# -- models check -----------------------------------------------------------------------------


def _percent(x: float) -> str:
    return f"{x:.1%}"


def _divergence(s: Summary) -> str:
    return "never" if s.median_first_divergence is None else f"{s.median_first_divergence:g}"


def cmd_check(a: argparse.Namespace) -> int:
    from pathlib import Path

    from dolly_desktop.compare.check import (
        MAX_NEW_TOKENS_LIMIT,
        choose_reference,
        find_installed,
        run_check,
    )
    from dolly_desktop.compare.prompts import BUILT_IN, read_prompt_file
    from dolly_desktop.models.store import Store

    if not 1 <= a.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        raise DollyError(
            f"--max-new-tokens must be 1 to {MAX_NEW_TOKENS_LIMIT}; got {a.max_new_tokens}."
        )
    store = Store(Path(a.store).expanduser() if a.store else None)
    prompts = read_prompt_file(a.prompts) if a.prompts else list(BUILT_IN)
    prompt_set = Path(a.prompts).name if a.prompts else "built-in"
    target = find_installed(store, a.target)
    reference = choose_reference(store, target, a.against)
    err = sys.stderr
    print(
        f"Checking {target.label} against {reference.label}: {len(prompts)} prompts, up to "
        f"{a.max_new_tokens} tokens each, one model in memory at a time.",
        file=err,
    )
    bar = _Bar(2 * len(prompts), err) if not a.json and err.isatty() else None
    offset = {"reference": 0}

    def progress(phase: str, done: int, total: int) -> None:
        if bar is not None:
            start = offset.get(phase, total)
            bar.show(f"{'reference' if phase == 'reference' else target.variant}", start + done)

    try:
        result = run_check(
            store, target, reference, prompts, prompt_set, a.max_new_tokens, progress
        )
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()
        print("dolly-desktop: check stopped; nothing was stored.", file=err)
        return EXIT_INTERRUPTED
    if bar is not None:
        bar.close()
    r = result.record
    if a.json:
        print(json.dumps({**json.loads(r.to_json()), "stored": str(result.stored)}))
        return 0
    rows = [(c, s) for c, s in result.agreement.by_category().items()]
    rows.append(("overall", result.agreement.overall))
    print(f"{target.label} against {reference.label}, teacher-forced over its greedy answers")
    print(f"{'category':<18} {'prompts':>7} {'tokens':>7} {'top-1':>7} {'mean KL':>9}  "
          "first divergence (median token)")  # fmt: skip
    for name, s in rows:
        print(f"{name:<18} {s.prompts:>7} {s.tokens:>7} {_percent(s.top1):>7} "
              f"{s.mean_kl:>9.4f}  {_divergence(s)}")  # fmt: skip
    print(f"{r.summary()} (in {r.seconds:.0f} s; stored in {result.stored})", file=err)
    return 0


class _Bar:
    """A tqdm bar on stderr, made on first use (tqdm is not needed for --help)."""

    def __init__(self, total: int, err: Any) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, file=err, dynamic_ncols=True, unit="prompt")

    def show(self, desc: str, n: int) -> None:
        self._bar.set_description_str(desc, refresh=False)
        self._bar.update(n - self._bar.n)

    def close(self) -> None:
        self._bar.close()


# -- compare ----------------------------------------------------------------------------------


def cmd_compare(a: argparse.Namespace) -> int:
    from dolly_desktop.compare.runs import contenders, plan_sentence, run_comparison
    from dolly_desktop.generation.prompt import build_prompt, read_text_file

    params = params_from_args(a)
    if a.context == "-" and a.instruction in (None, "-"):
        raise DollyError("With --context -, give the instruction as an argument.")
    instruction = a.instruction if a.instruction not in (None, "-") else sys.stdin.read()
    context = read_text_file(a.context) if a.context else ""
    build_prompt(instruction, context)  # bad input: one line, nothing loaded
    models = contenders(a.model)
    err = sys.stderr

    def stage(label: str, what: str) -> None:
        if not a.json:
            print(f"[{label}] {what}…", file=err, flush=True)

    try:
        result = run_comparison(
            models, instruction, context, params, on_stage=stage,
            measure_agreement=not a.no_agreement,
        )  # fmt: skip
    except KeyboardInterrupt:
        print("dolly-desktop: compare stopped.", file=err)
        return EXIT_INTERRUPTED
    how = plan_sentence(models, result.available, result.loading)
    if a.json:
        print(json.dumps({
            "instruction": instruction,
            "context": context,
            "params": asdict(params),
            "loading": result.loading,
            "available_bytes": result.available,
            "reference": result.reference,
            "models": [o.as_dict() for o in result.outcomes],
        }, ensure_ascii=False))  # fmt: skip
        return 0
    print(how, file=err)
    for o in result.outcomes:
        print(f"── {o.label}{' (reference)' if o.reference else ''} ──")
        print(o.text)
        print()
    from dolly_desktop.models.capacity import format_bytes

    print(f"{'model':<24} {'tok/s':>7} {'first token':>11} {'tokens':>6} {'peak memory':>11} "
          f"{'top-1':>7} {'mean KL':>8} {'parts at':>8}")  # fmt: skip
    for o in result.outcomes:
        mem = "?" if o.peak_rss is None else format_bytes(o.peak_rss)
        if o.reference:
            agree = f"{'reference':>7} {'':>8} {'':>8}"
        elif o.agreement is None:
            agree = f"{'-':>7} {'-':>8} {'-':>8}"
        else:
            s = o.agreement
            agree = f"{_percent(s.top1):>7} {s.mean_kl:>8.4f} {_divergence(s):>8}"
        print(f"{o.label:<24} {o.tokens_per_s:>7.1f} {o.ttft_s * 1000:>9.0f} ms {o.tokens:>6} "
              f"{mem:>11} {agree}")  # fmt: skip
    notes = [f"{o.label}: {o.agreement_note}" for o in result.outcomes if o.agreement_note]
    for n in notes:
        print(n, file=err)
    print("Run one after another on the CPU, greedy unless --sample; agreement is "
          "teacher-forced over the reference's greedy answer.", file=err)  # fmt: skip
    return 0
