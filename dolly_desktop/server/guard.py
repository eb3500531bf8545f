"""What every request passes before a route sees it, and the connection's read deadlines.

- Host: only names the server answers to (DNS rebinding: a web page whose name resolves to
  127.0.0.1 would otherwise reach the API as its own origin). An IP address is always
  accepted: a page can only be served under a name, so an address is never a rebinding.
- Origin: requests from web pages are refused unless `--allow-origin` names the page's origin
  (then CORS headers allow it, through Starlette's CORSMiddleware).
- Content-Type: a POST must be JSON. Browsers send text/plain and form posts from any page
  without asking first (a "simple" CORS request); JSON needs a preflight, which fails here.
- Any error a route did not turn into an answer: a 500 with one sentence; the log has the rest.
- Headers must arrive within a deadline after the connection opens (or after the last
  response), or the connection is closed: uvicorn itself waits forever for a silent client.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from dolly_desktop.server.errors import ApiError, internal_error

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


class Guard:
    """ASGI middleware: Host, Origin and Content-Type checks, and a last-resort 500."""

    def __init__(
        self, app: ASGIApp, host_names: Iterable[str] = (), origins: Iterable[str] = ()
    ) -> None:
        self.names = {n.lower().strip("[]") for n in (*LOOPBACK_NAMES, *host_names)}
        self.origins = {o.rstrip("/") for o in origins}
        if self.origins:
            app = CORSMiddleware(
                app,
                allow_origins=sorted(self.origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
            )
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                await refusal.response()(scope, receive, tracked_send)
                return
            await self.app(scope, receive, tracked_send)
        except Exception as e:
            log.error("%s %s failed", scope["method"], scope["path"], exc_info=e)
            if not started:
                await internal_error().response()(scope, receive, tracked_send)

    def _refusal(self, scope: Scope) -> ApiError | None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host")
        if host is None:
            return ApiError(400, "The request has no Host header.", code="missing_host")
        if not self.host_allowed(host):
            return ApiError(
                421,
                f"This server does not answer to the name {_shown(_host_name(host))}; "
                "start it with --allow-host NAME to allow a name.",
                code="host_not_allowed",
            )
        origin = headers.get("origin")
        if origin is not None and origin.rstrip("/") not in self.origins:
            return ApiError(
                403,
                f"Requests from web pages ({_shown(origin)}) are refused; start the server "
                "with --allow-origin ORIGIN to allow one.",
                code="origin_not_allowed",
            )
        if scope["method"] == "POST":
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            if kind != "application/json":
                return ApiError(
                    415,
                    "The request body must be JSON, sent with 'Content-Type: application/json'.",
                    code="unsupported_media_type",
                )
        return None

    def host_allowed(self, host: str) -> bool:
        name = _host_name(host)
        if name in self.names:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True


def _host_name(host: str) -> str:
    """'Example.com:8000' -> 'example.com'; '[::1]:8000' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]")[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _shown(text: str) -> str:
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


def protocol_with_header_deadline(header_timeout_s: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request headers do not arrive within
    `header_timeout_s` of it opening or of the last response (slowloris)."""

    class Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _waiting_since: object = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._deadline is not None and self.cycle is not self._waiting_since:
                self._disarm()  # a new request's headers are in

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._waiting_since = self.cycle
            self._deadline = self.loop.call_later(header_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            # A request that began meanwhile (pipelined, so no data_received) is not cut.
            if self.cycle is self._waiting_since and not self.transport.is_closing():
                log.info("closed a connection whose request did not arrive in time")
                self.transport.close()

    return Protocol
