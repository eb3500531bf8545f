"""The one HTTP client the downloads use, and the one sentence for a Hub that cannot be reached.

huggingface-hub 1.x talks through httpx and 2.x through httpx2, two libraries whose clients take
different timeout types and whose network errors share no base class. So the bytes come through
an httpx client of our own (our timeouts, our redirects), and the failures of whichever the hub
library uses for its listing are caught by both names.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx

from dolly_desktop.errors import DollyError

TIMEOUT = httpx.Timeout(30.0, read=60.0)  # a stalled connection fails, and is resumed


def _transport_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [httpx.TransportError]
    try:  # huggingface-hub >= 2 (absent with 1.x)
        import httpx2  # type: ignore[import-not-found]

        found.append(httpx2.TransportError)
    except ImportError:
        pass
    return tuple(found)


# A timeout, refused or reset connection, unknown host, broken TLS: from either library.
TRANSPORT_ERRORS = _transport_errors()


def client() -> httpx.Client:
    """A client for the Hub's files: redirects followed (LFS files live on a CDN)."""
    return httpx.Client(timeout=TIMEOUT, follow_redirects=True)


def cannot_reach(endpoint: str, e: BaseException) -> DollyError:
    """'Cannot reach HOST: REASON. …' for a failure from TRANSPORT_ERRORS (or OSError)."""
    host = urlsplit(endpoint).netloc or endpoint
    reason = re.sub(r"^\[Errno -?\d+\]\s*", "", str(e).splitlines()[0] if str(e) else "")
    reason = reason or _words(type(e).__name__)
    return DollyError(
        f"Cannot reach {host}: {reason}. Check the connection, or set HF_ENDPOINT to a mirror."
    )


def _words(name: str) -> str:
    """ConnectTimeout -> 'connect timeout'."""
    return re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower()
