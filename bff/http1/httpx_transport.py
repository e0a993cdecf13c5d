"""The HTTP/1.1 pool (bff/http1/pool.py) behind httpx's transport interface, for the SDK client
that issues platform tokens (bff/vluna.py).

The SDK sends through httpx; httpx's own transport (httpcore, with the pure-Python h11 parser)
cost each issuance ~1.2 ms of CPU in the service worker, this one ~0.3 ms (bench/PROFILE.md): a
cold start is one issuance per user, so this is most of what a new user costs the service.

What the SDK sees is what httpx's transport would give it:

- the request goes out with its own headers, byte for byte, except those the pool writes itself
  (Host, Content-Length, Accept-Encoding, Connection, Transfer-Encoding); a streamed body is read
  first and sent with a Content-Length;
- the answer comes back with every header line in order and the body decoded (gzip or deflate;
  Content-Encoding and the framing headers are then dropped, so httpx does not decode it again);
- httpx's timeouts: ``connect`` to connect, ``read`` between two reads of the answer, and the
  four together bound the whole exchange (waiting for a pooled connection included); a missing
  one means no bound, as in httpx;
- failures are httpx's exceptions: ``httpx.ReadTimeout`` for any timeout, ``httpx.ConnectError``
  when there is no usable answer, ``httpx.RemoteProtocolError`` for an answer over
  ``max_response_bytes``; the socket error stays in the chain (``bff.netdiag`` names it), and no
  message carries a header value;
- one origin only: a request for another scheme, host or port is refused
  (``httpx.UnsupportedProtocol``), never sent.

Not there, because the SDK does not use them: HTTP/2, proxies from the environment (httpx skips
them too once a transport is given), streaming answers (the body is read whole).
"""

from __future__ import annotations

import ssl

import httpx

from bff.http1.errors import Timeouts, UpstreamError, UpstreamTimeout, UpstreamTooLarge
from bff.http1.pool import Http1Pool

# Request headers the pool writes itself (bff/http1/pool.py's OWN_HEADERS that httpx sets).
_WRITTEN_BY_POOL = frozenset(
    {b"host", b"content-length", b"accept-encoding", b"connection", b"transfer-encoding"}
)
# Answer headers that described the bytes on the wire, not the decoded body handed to httpx.
_WIRE_ONLY = frozenset({b"content-length", b"transfer-encoding"})
_WIRE_ONLY_DECODED = _WIRE_ONLY | {b"content-encoding"}
_NO_BOUND = 86_400.0 * 365  # httpx's "no timeout" (a year: asyncio's timers need a number)
_DEFAULT_PORTS = {"http": 80, "https": 443}


class Http1Transport(httpx.AsyncBaseTransport):
    """httpx's ``AsyncBaseTransport`` over an ``Http1Pool`` to one origin (see the module's
    docstring). ``max_connections`` and ``keepalive_timeout`` default to httpx's own pool's."""

    def __init__(
        self,
        origin: str,
        *,
        max_connections: int = 100,
        keepalive_timeout: float = 5.0,
        max_response_bytes: int = 16 * 1024 * 1024,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = httpx.URL(origin)
        if url.scheme not in _DEFAULT_PORTS or not url.host:
            raise ValueError("the transport's origin must be an http(s) URL with a host")
        self._origin = (url.scheme, url.host, url.port or _DEFAULT_PORTS[url.scheme])
        netloc = url.netloc.decode("ascii").rpartition("@")[2]
        self._pool = Http1Pool(
            f"{url.scheme}://{netloc}",
            max_connections=max_connections,
            keepalive_timeout=keepalive_timeout,
            max_response_bytes=max_response_bytes,
            ssl_context=ssl_context,
            all_headers=True,
        )

    def __repr__(self) -> str:
        return f"Http1Transport({self._pool.base_url!r})"

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if (url.scheme, url.host, url.port or _DEFAULT_PORTS.get(url.scheme)) != self._origin:
            raise httpx.UnsupportedProtocol("this transport sends only to its own origin", request=request)
        headers: dict[str, str] = {}
        for raw_name, raw_value in request.headers.raw:
            if raw_name.lower() in _WRITTEN_BY_POOL:
                continue
            name, value = raw_name.decode("ascii"), raw_value.decode("latin-1")
            seen = headers.get(name)
            headers[name] = value if seen is None else f"{seen}, {value}"
        body = await request.aread()
        try:
            status, framing, payload, lines = await self._pool.request(
                request.method, url.raw_path.decode("ascii"), headers, body or None, _timeouts(request)
            )
        except UpstreamTimeout as exc:
            raise httpx.ReadTimeout(str(exc), request=request) from exc
        except UpstreamTooLarge as exc:
            raise httpx.RemoteProtocolError(str(exc), request=request) from exc
        except UpstreamError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        # The pool decoded the body if it was encoded (it keeps that header among the framing ones).
        wire_only = _WIRE_ONLY_DECODED if b"content-encoding" in framing else _WIRE_ONLY
        return httpx.Response(
            status,
            headers=[(name, value) for name, value in lines if name not in wire_only],
            content=payload,
            request=request,
            extensions={"http_version": b"HTTP/1.1"},
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


def _timeouts(request: httpx.Request) -> Timeouts:
    given = request.extensions.get("timeout") or {}
    connect = given.get("connect")
    read = given.get("read")
    parts = [given.get(k) for k in ("pool", "connect", "write", "read")]
    total = sum(p for p in parts if p is not None) if all(p is not None for p in parts) else _NO_BOUND
    return Timeouts(
        connect=_NO_BOUND if connect is None else connect,
        read=_NO_BOUND if read is None else read,
        total=total,
    )
