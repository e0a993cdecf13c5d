"""The HTTP client the proxy talks to Vluna's ``/api/v1`` with: its protocol, answer and errors.

Production: `Http1Upstream` (bff/proxy/http1.py), the service's lean HTTP/1.1 keep-alive client
(bff/http1) on asyncio with the httptools parser. The proxy sits on every page view, so the
client's per-request cost is the proxy's floor: in-process (`python -m bench.hit_cpu --only
proxy`) a proxied catalog GET cost ~135-157 us of CPU with it against ~247-283 us with aiohttp.
Earlier, httpx's AsyncClient managed ~800 req/s, httpx over an aiohttp transport ~2,000 and
aiohttp ~6,000 as a bare pass-through; the aiohttp client the proxy used until then is
bench/_aiohttp_upstream.py (the bench compares the two). The token issuer's SDK client sends
through the same client, as an httpx transport (bff/http1/httpx_transport.py).

Dev mode: `AsgiUpstream` calls the embedded emulator's ASGI app directly (no socket), so
`vluna-bff dev` stays one process. It is chosen only by `bff.dev`; the production path never
pays for the abstraction beyond one method call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from yarl import URL

from bff.http1.errors import Timeouts, UpstreamError, UpstreamTimeout, UpstreamTooLarge

__all__ = [
    "PASS_RESPONSE_HEADERS",
    "AsgiUpstream",
    "Timeouts",
    "Upstream",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeout",
    "UpstreamTooLarge",
    "asgi_call",
    "pick_headers",
]

# Upstream response headers a client may see; everything else (Set-Cookie, tracing and
# server-internal headers) stays here.
PASS_RESPONSE_HEADERS = ("retry-after", "idempotent-replayed")


@dataclass
class UpstreamResponse:
    status: int
    content_type: str
    headers: dict[str, str]  # only PASS_RESPONSE_HEADERS, lower-case names
    body: bytes


class Upstream(Protocol):
    async def start(self) -> None: ...
    async def aclose(self) -> None: ...
    async def send(
        self,
        method: str,
        path_and_query: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> UpstreamResponse: ...


def pick_headers(raw: Mapping[str, str]) -> dict[str, str]:
    """The answer headers a client may see (``PASS_RESPONSE_HEADERS``), from a case-insensitive
    or lower-cased mapping."""
    out: dict[str, str] = {}
    for name in PASS_RESPONSE_HEADERS:
        value = raw.get(name)
        if value is not None:
            out[name] = value
    return out


class AsgiUpstream:
    """Calls an ASGI app in-process (dev mode's embedded emulator)."""

    def __init__(self, app: Any, base_url: str, *, max_response_bytes: int = 4 * 1024 * 1024) -> None:
        self._app = app
        url = URL(base_url)
        self.base_url = base_url.rstrip("/")
        self._prefix = url.path.rstrip("/")
        self._host = url.host or "upstream"
        self._max = max_response_bytes

    def __repr__(self) -> str:
        return f"AsgiUpstream({self.base_url!r})"

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def send(
        self,
        method: str,
        path_and_query: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        path, _, query = (self._prefix + path_and_query).partition("?")
        call = asgi_call(self._app, method, path, path, query, headers, body or b"", self._host)
        try:
            status, resp_headers, data = await asyncio.wait_for(call, timeouts.total)
        except asyncio.TimeoutError:
            raise UpstreamTimeout("upstream timed out") from None
        except Exception as exc:
            # The emulator's injected "dropped connection" lands here, like a reset socket.
            raise UpstreamError(f"upstream connection failed ({type(exc).__name__})") from None
        with contextlib.suppress(ValueError):
            announced = int(resp_headers.get("content-length", len(data)))
            if announced != len(data):
                raise UpstreamError("upstream connection failed (incomplete answer)")
        if not status:
            raise UpstreamError("upstream connection failed (no answer)")
        if len(data) > self._max:
            raise UpstreamTooLarge("upstream answer too large")
        return UpstreamResponse(
            status, resp_headers.get("content-type", ""), pick_headers(resp_headers), data
        )


async def asgi_call(
    app: Any,
    method: str,
    path: str,
    raw_path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    host: str,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to an ASGI app in this process: (status, lower-cased headers, body)."""
    hdrs = [(b"host", host.encode())]
    hdrs += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    if body:
        hdrs.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": raw_path.encode("latin-1"),
        "root_path": "",
        "query_string": query.encode("latin-1"),
        "headers": hdrs,
        "client": ("127.0.0.1", 0),
        "server": (host, 80),
    }
    sent = False
    status = 0
    resp_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            # After the one body, the client just waits: like a connection that stays open.
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            for k, v in message.get("headers", []):
                resp_headers[k.decode("latin-1").lower()] = v.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, resp_headers, b"".join(chunks)
