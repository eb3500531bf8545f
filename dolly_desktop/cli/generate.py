"""`dolly-desktop generate` and `--self-test`: answer on the terminal through the same
run-and-record path as the window."""

from __future__ import annotations

import argparse
import sys

from dolly_desktop import __version__
from dolly_desktop.cli.docs import DocsQuestion, add_docs_options
from dolly_desktop.cli.options import (
    EXIT_INTERRUPTED,
    add_lookup_option,
    add_param_options,
    params_from_args,
)
from dolly_desktop.cli.serve import API_KEY_ENV, env_api_key
from dolly_desktop.errors import DollyError
from dolly_desktop.generation.params import GenerationParams


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="answer one instruction on the terminal")
    g.set_defaults(func=cmd_generate)
    where = g.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--model",
        help="a model folder, or an installed model: dolly-v2-3b (its best variant here) or "
        "dolly-v2-3b/INT4",
    )
    where.add_argument(
        "--remote",
        metavar="URL",
        help="an OpenAI-compatible server instead: http://HOST:PORT/v1 for dolly-desktop "
        "serve, http://HOST:PORT/v3 for OpenVINO Model Server; several, comma-separated, are "
        "tried in turn",
    )
    g.add_argument(
        "--api-key",
        default=env_api_key(),
        metavar="KEY",
        help=f"with --remote: the server's API key (default: ${API_KEY_ENV})",
    )
    g.add_argument("--device", default="CPU", help="OpenVINO device (default: CPU)")
    add_param_options(g)
    add_lookup_option(g)
    g.add_argument(
        "--context",
        metavar="FILE",
        help="a passage for Dolly to work from (UTF-8 text; - reads stdin), given in the "
        "Input: format Dolly was trained on",
    )
    add_docs_options(g)
    g.add_argument("--no-history", action="store_true", help="do not record this run")
    g.add_argument("instruction", nargs="?", help="the instruction (default: read stdin)")


def cmd_generate(a: argparse.Namespace) -> int:
    from dolly_desktop.generation.engine import EngineBase
    from dolly_desktop.generation.prompt import build_prompt, read_text_file
    from dolly_desktop.history.runs import run_and_record, source_records
    from dolly_desktop.history.store import History
    from dolly_desktop.models.choice import resolve_model

    params = params_from_args(a)
    if a.context == "-" and a.instruction in (None, "-"):
        raise DollyError("With --context -, give the instruction as an argument.")
    instruction = a.instruction if a.instruction not in (None, "-") else sys.stdin.read()
    context = read_text_file(a.context) if a.context else ""
    prompt = build_prompt(instruction, context)  # refuse bad input before the model loads
    if a.docs and a.context:
        raise DollyError("Give --context or --docs, not both.")
    docs = DocsQuestion(a.docs, instruction, a.docs_fallback) if a.docs else None
    if a.remote and a.prompt_lookup:
        raise DollyError("--prompt-lookup is for a local model: a server decodes its own way.")

    def warn(sentence: str) -> None:
        print(f"dolly-desktop: {sentence}", file=sys.stderr)

    engine: EngineBase
    if a.remote:
        from dolly_desktop.generation.engines.remote import RemoteEngine

        engine = RemoteEngine(a.remote, api_key=a.api_key, notify=warn)
    else:
        from dolly_desktop.generation.engines.local import Engine, resolve_lookup

        folder = resolve_model(a.model)
        # auto, with the one prompt known: one pipeline, plain or prompt lookup, not both.
        lookup = resolve_lookup(a.prompt_lookup or "off", folder, prompt, a.device)
        engine = Engine(folder, a.device, prompt_lookup=lookup)
    history = History(enabled=not a.no_history)
    engine.notify = warn

    def out(piece: str) -> None:
        sys.stdout.write(piece)
        sys.stdout.flush()

    try:
        if docs is not None:
            count, n = engine.count_tokens, engine.context_length
            context = docs.passage(count, n, params.max_new_tokens)
        sources = source_records(docs.sources) if docs is not None else []
        result = run_and_record(
            engine, history, instruction, params, out, warn, context, sources=sources
        )
    except KeyboardInterrupt:
        engine.cancel()
        return EXIT_INTERRUPTED
    finally:
        engine.close()
    sys.stdout.write("\n")
    if docs is not None:
        docs.print_sources()
    print(result.metrics_line(), file=sys.stderr)
    if result.extra.get("prompt_lookup"):
        n, steps = result.generated_tokens, result.extra["inferences"]
        print(f"prompt lookup: {n} tokens in {steps} inferences", file=sys.stderr)
    return 0


def self_test(a: argparse.Namespace) -> int:
    """Check an install (or a bundle) end to end: devices, model load, a few tokens."""
    import time

    import openvino

    from dolly_desktop.generation.devices import list_devices
    from dolly_desktop.generation.engines.local import Engine
    from dolly_desktop.models.choice import resolve_model

    t0 = time.perf_counter()
    print(f"dolly-desktop {__version__}, OpenVINO {openvino.get_version()}")
    print("devices: " + ", ".join(d.id for d in list_devices()))
    engine = Engine(resolve_model(a.self_test), "CPU")
    print(f"model loaded in {engine.load_s:.2f} s, warmed up in {engine.warmup_s:.2f} s")
    result = engine.generate("Who is Dolly?", GenerationParams(greedy=True, max_new_tokens=8))
    if result.generated_tokens < 1:
        raise DollyError("the model generated no tokens.")
    print(result.metrics_line())
    print(f"self-test passed in {time.perf_counter() - t0:.2f} s")
    return 0
