"""`dolly-desktop serve`: the local model behind an OpenAI-compatible HTTP API."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import socket
import sys
from typing import TYPE_CHECKING

from dolly_desktop.errors import DollyError

if TYPE_CHECKING:
    from types import FrameType

    from dolly_desktop.generation.engine import EngineBase, ModelRef

API_KEY_ENV = "DOLLY_DESKTOP_API_KEY"  # keeps the key out of the process list
DEFAULT_QUEUE = 4
DEFAULT_READ_TIMEOUT_S = 30.0
DEFAULT_MAX_BATCH = 4  # generation.engines.batching's; not imported here, which would load OpenVINO


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `serve` parser; set `func` on it (see dolly_desktop/cli.py)."""
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API")
    p.add_argument(
        "--model",
        required=True,
        help="a model folder, or an installed model: dolly-v2-3b (its best variant here) or "
        "dolly-v2-3b/INT4",
    )
    p.add_argument("--device", default="CPU", help="OpenVINO device (default: CPU)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="ADDR",
        help="address to listen on (default: 127.0.0.1, this machine only)",
    )
    p.add_argument("--port", type=int, default=8000, metavar="N", help="TCP port (default: 8000)")
    p.add_argument(
        "--api-key",
        default=env_api_key(),
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' (default: ${API_KEY_ENV}, else none)",
    )
    p.add_argument(
        "--queue",
        type=int,
        default=DEFAULT_QUEUE,
        metavar="N",
        help=f"requests that may wait while one runs; more get 429 (default: {DEFAULT_QUEUE})",
    )
    p.add_argument(
        "--name", metavar="ID", help="model id shown to clients (default: from the folder name)"
    )
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a host name clients may reach the server by, besides localhost and IP "
        "addresses (repeatable)",
    )
    p.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="a web page origin (https://app.example) allowed to call the API from a browser "
        "(repeatable; default: none)",
    )
    p.add_argument(
        "--read-timeout",
        type=float,
        default=DEFAULT_READ_TIMEOUT_S,
        metavar="S",
        help="seconds a client has to send a request's headers, and again its body "
        f"(default: {DEFAULT_READ_TIMEOUT_S:g})",
    )
    p.add_argument(
        "--batching",
        choices=("on", "off"),
        default="on",
        help="decode several requests together (continuous batching; default: on); off "
        "answers one at a time with the app's one-stream engine",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        metavar="N",
        help=f"requests decoded together with batching on (default: {DEFAULT_MAX_BATCH})",
    )
    p.add_argument(
        "--kv-cache",
        type=int,
        metavar="GB",
        help="KV cache size with batching on; all of it becomes resident as requests come and "
        "go (default: room for --max-batch full contexts and no more, at most a quarter of "
        "free memory)",
    )
    p.set_defaults(func=cmd_serve)


def env_api_key() -> str | None:
    """The API key from the environment, where it does not show in the process list."""
    return os.environ.get(API_KEY_ENV) or None


def cmd_serve(a: argparse.Namespace) -> int:
    import uvicorn

    from dolly_desktop.server.app import OpenAIServer

    if not 0 <= a.port <= 65535:
        raise DollyError(f"The port must be from 0 to 65535; got {a.port}.")
    if a.queue < 0:
        raise DollyError(f"The queue length must be 0 or more; got {a.queue}.")
    if not a.read_timeout > 0:
        raise DollyError(f"The read timeout must be over 0 seconds; got {a.read_timeout:g}.")
    if a.max_batch < 1:
        raise DollyError(f"--max-batch must be 1 or more; got {a.max_batch}.")
    if a.kv_cache is not None and a.kv_cache < 1:
        raise DollyError(f"--kv-cache must be 1 GB or more; got {a.kv_cache}.")
    if not _is_loopback(a.host) and not a.api_key:
        print(
            f"dolly-desktop: warning: listening on {a.host} without --api-key: "
            "anyone who can reach this machine can use the model.",
            file=sys.stderr,
        )
    from dolly_desktop.models.choice import resolve_model

    model_dir = resolve_model(a.model)
    sock = _listen(a.host, a.port)  # before the model loads: a busy port fails at once
    engine: EngineBase
    if a.batching == "on":
        from dolly_desktop.generation.engines.batching import BatchingEngine

        engine = batch = BatchingEngine(
            model_dir, a.device, max_batch=a.max_batch, cache_gb=a.kv_cache
        )
        slots, session = a.max_batch, batch.session
        answering = f"up to {a.max_batch} requests at once; {batch.kv.line()}"
    else:
        from dolly_desktop.generation.engines.local import Engine

        engine = Engine(model_dir, a.device)
        slots, session = 1, None
        answering = "one request at a time"
    model_id = a.name or _model_id(engine.model)
    server = OpenAIServer(
        engine,
        model_id,
        api_key=a.api_key,
        queue=a.queue,
        slots=slots,
        session=session,
        host_names=(a.host, *a.allow_host),
        origins=tuple(a.allow_origin),
        body_timeout_s=a.read_timeout,
    )
    host, port = sock.getsockname()[:2]
    print(
        f"Serving {model_id} on {engine.device} at http://{_url_host(host)}:{port}/v1 "
        f"(Ctrl+C stops): {answering}, {a.queue} more may wait.",
        file=sys.stderr,
        flush=True,
    )
    config = server.uvicorn_config(a.read_timeout)

    class Uvicorn(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            server.close_soon()  # end open answers now, not after the graceful timeout
            super().handle_exit(sig, frame)

    # uvicorn raises Ctrl+C again once it has shut down cleanly.
    try:
        with contextlib.suppress(KeyboardInterrupt):
            Uvicorn(config).run(sockets=[sock])
    finally:
        engine.close()
    print("Stopped.", file=sys.stderr)
    return 0


def _model_id(ref: ModelRef) -> str:
    """models/dolly-v2-3b/INT4 -> dolly-v2-3b-int4; a Hub name that has it stays as it is."""
    precision = ref.precision.lower()
    if not precision or precision in ref.name.lower().replace("_", "-").split("-"):
        return ref.name
    return f"{ref.name}-{precision}"


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise DollyError(
            f"Cannot listen on {host} port {port}: {e.strerror or e}. "
            "Choose another with --port or --host."
        ) from e
    sock.listen(128)
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
