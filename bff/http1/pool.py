"""The service's HTTP/1.1 client: keep-alive connections to one origin, pooled.

Used twice: the proxy's upstream (bff/proxy/http1.py) and, as an httpx transport, the SDK client
that issues platform tokens (bff/http1/httpx_transport.py).

Why not aiohttp or httpx's own transport: the proxy sits on every page view and every new user
costs an issuance, so the client's per-request cost is their floor. aiohttp's request path (URL
and header objects, auto headers, a timer context, a stream writer, a response object and its
stream reader) cost the service worker more CPU per proxied call than everything else the proxy
does, and httpcore with the pure-Python h11 parser cost an issuance ~1.2 ms of CPU where this
client costs ~0.3 ms (bench/PROFILE.md). This client does what the service needs and nothing
else: one ``asyncio.Protocol`` per pooled connection, the request written in one call from bytes
built at once, the answer parsed by llhttp (``httptools``).

What it guarantees:

- at most ``max_connections`` connections (open or opening); a caller beyond that waits for one
  within its total timeout, and never fails for it;
- a connection is reused only after a complete answer that allows it (HTTP/1.1 without
  ``Connection: close``, or HTTP/1.0 with keep-alive); one that broke, timed out, was cancelled or
  read only in part is closed. An idle connection is closed after ``keepalive_timeout``, and one
  the server closed is noticed before reuse; when a reused connection still fails before a byte
  of answer (the server closed it as the request went out), an idempotent request is sent once
  more on a new connection;
- bodies by Content-Length, chunked or until close (HTTP/1.0); none for HEAD (the connection is
  then closed: the parser cannot be told that no body follows), 1xx, 204 and 304;
- connect, read (between reads) and total timeouts; ``max_response_bytes`` checked as the answer
  arrives (and on the decoded size of a gzip or deflate answer, which is decoded here as aiohttp
  did: clients see the same bytes);
- the request has Host, Content-Length when there is a body, ``Accept-Encoding: gzip, deflate``
  and the caller's headers, nothing else (no User-Agent of its own, no cookies, no proxy from the
  environment); a header the client writes itself, or CR/LF/NUL in a header or the target, is
  refused (no request smuggling through a caller's values); header values and the target are
  strings of Latin-1 characters, each sent as the byte it stands for (what a server's bytes
  decoded as Latin-1 give back unchanged), and a character beyond Latin-1 is refused;
- https with the default TLS context (certificate and host name checked) or the one given;
- only ``UpstreamError``, ``UpstreamTimeout`` and ``UpstreamTooLarge`` escape, and no message
  carries a header value (the Authorization header is a platform token).

An answer is the status, the framing headers and those the proxy passes on (``KEPT_HEADERS``, the
first value of each), the decoded body, and, from a pool made with ``all_headers``, every header
line in order (what the httpx transport hands to httpx).
"""

from __future__ import annotations

import asyncio
import collections
import re
import ssl
import zlib
from collections.abc import Mapping

from yarl import URL

from bff.http1.connection import Answer, H1Connection, LostBeforeAnswer
from bff.http1.errors import Timeouts, UpstreamError, UpstreamTimeout, UpstreamTooLarge

# RFC 9110 9.2.2; the methods aiohttp also re-sends after a dropped keep-alive connection.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Header names this client writes itself (or must never send for a caller): refused if given.
OWN_HEADERS = frozenset(
    [
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "accept-encoding",
        "te",
        "upgrade",
        "trailer",
        "keep-alive",
    ]
)
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]").search
_METHOD = re.compile(r"[A-Z]{1,16}").fullmatch
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+").fullmatch  # a header name (RFC 9110 5.1)
_NAMES_MEMO_MAX = 256


class Http1Pool:
    """Pooled HTTP/1.1 keep-alive connections to the origin of ``base_url`` (see the module's
    docstring); a request's target is appended to the base URL's path."""

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        keepalive_timeout: float,
        max_response_bytes: int,
        ssl_context: ssl.SSLContext | None = None,
        all_headers: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        url = URL(self.base_url)
        if url.scheme not in ("http", "https") or not url.raw_host or url.port is None:
            raise ValueError("the upstream base URL must be http(s)://host[:port][/path]")
        if url.query_string or url.fragment or url.user or url.password:
            raise ValueError("the upstream base URL must not carry a query, fragment or credentials")
        self._host = url.raw_host
        self._port = url.port
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        host = f"[{self._host}]" if ":" in self._host else self._host
        if not url.is_default_port():
            host += f":{self._port}"
        self._prefix = url.raw_path.rstrip("/")
        self._host_line = f"Host: {host}\r\n"
        self._limit = max_connections
        self._keepalive = keepalive_timeout
        self._max = max_response_bytes
        self._all_headers = all_headers
        self._idle: list[H1Connection] = []  # most recently used last (taken first)
        self._open = 0  # connections open or opening (idle or in use)
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        self._names_ok: set[tuple[str, ...]] = set()  # header name lists found free of OWN_HEADERS

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    async def start(self) -> None:
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamError("upstream client closed"))

    async def request(
        self,
        method: str,
        path_and_query: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> Answer:
        """One exchange: (status, ``KEPT_HEADERS`` found, decoded body, every header line when
        the pool keeps them all)."""
        data = self._request(method, path_and_query, headers, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeouts.total
        head_only = method == "HEAD"
        retry = method in IDEMPOTENT_METHODS
        fresh = False
        while True:
            conn = await self._acquire(loop, deadline, timeouts.connect, fresh)
            reused = conn.uses > 0
            done = False
            try:
                status, got, payload, lines = await conn.exchange(data, head_only, timeouts.read, deadline)
                done = True
            except LostBeforeAnswer:
                if not (reused and retry):
                    raise UpstreamError("upstream connection failed (closed before answering)") from None
                retry = False
                fresh = True  # the idle ones may all be stale (a restarted server): a new one
                continue
            finally:
                self._release(loop, conn, done and conn.reusable)
            break
        encoding = got.get(b"content-encoding")
        if encoding is not None:
            payload = _decode(encoding, payload, self._max)
        return status, got, payload, lines

    def _request(self, method: str, target: str, headers: Mapping[str, str], body: bytes | None) -> bytes:
        if not _METHOD(method) or not target.startswith("/") or _BAD_TARGET(target):
            raise UpstreamError("upstream request refused (malformed method or target)")
        lines = "".join([f"{k}: {v}\r\n" for k, v in headers.items()])
        n = len(headers)
        names = tuple(headers)  # the forwarder sends the same few name lists: each checked once
        if names not in self._names_ok:
            if not all(map(_TOKEN, names)) or not OWN_HEADERS.isdisjoint([k.lower() for k in names]):
                raise UpstreamError("upstream request refused (a header the client may not send)")
            if len(self._names_ok) >= _NAMES_MEMO_MAX:
                self._names_ok.clear()
            self._names_ok.add(names)
        if lines.count("\n") != n or lines.count("\r") != n or "\x00" in lines:
            raise UpstreamError("upstream request refused (CR, LF or NUL in a header)")
        if body is None and method in _BODY_METHODS:
            body = b""
        length = "" if body is None else f"Content-Length: {len(body)}\r\n"
        try:
            # Latin-1: each character is the byte it was read from (a header's obs-text bytes
            # pass as they came, not re-encoded as UTF-8).
            head = (
                f"{method} {self._prefix}{target} HTTP/1.1\r\n{self._host_line}{lines}{length}"
                "Accept-Encoding: gzip, deflate\r\n\r\n"
            ).encode("latin-1")
        except UnicodeEncodeError:
            raise UpstreamError("upstream request refused (a character beyond Latin-1)") from None
        return head + body if body else head

    async def _acquire(
        self, loop: asyncio.AbstractEventLoop, deadline: float, connect: float, fresh: bool
    ) -> H1Connection:
        while True:
            if self._closed:
                raise UpstreamError("upstream client closed")
            idle = self._idle
            if not fresh:
                while idle:
                    conn = idle.pop()
                    if conn.usable(loop.time() - self._keepalive):
                        return conn
                    self._discard(conn)
            if self._open < self._limit:
                self._open += 1
                try:
                    return await self._connect(loop, min(connect, deadline - loop.time()))
                except BaseException:
                    self._open -= 1
                    self._wake()
                    raise
            if fresh and idle:
                self._discard(idle.pop(0))  # room for the new connection: the oldest idle one goes
                continue
            await self._wait(loop, deadline)

    async def _wait(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Until a connection is released (or closed), within the deadline."""
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise UpstreamTimeout("upstream timed out (waiting for a pooled connection)")
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, remaining)
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._wake()  # woken but leaving: the turn goes to the next in line
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            if isinstance(exc, asyncio.TimeoutError):
                raise UpstreamTimeout("upstream timed out (waiting for a pooled connection)") from None
            raise

    async def _connect(self, loop: asyncio.AbstractEventLoop, timeout: float) -> H1Connection:
        if timeout <= 0:
            raise UpstreamTimeout("upstream timed out (connect)")
        max_bytes, all_headers = self._max, self._all_headers
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: H1Connection(loop, max_bytes, all_headers),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl is not None else None,
                ),
                timeout,
            )
        except asyncio.TimeoutError:
            raise UpstreamTimeout("upstream timed out (connect)") from None
        except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError is an OSError)
            raise UpstreamError(f"upstream connection failed ({type(exc).__name__})") from None
        return conn

    def _release(self, loop: asyncio.AbstractEventLoop, conn: H1Connection, reusable: bool) -> None:
        if reusable and not self._closed:
            conn.uses += 1
            conn.idle_since = loop.time()
            self._idle.append(conn)
            if self._sweep is None:
                self._sweep = loop.call_at(conn.idle_since + self._keepalive, self._expire)
        else:
            self._discard(conn)
        self._wake()

    def _discard(self, conn: H1Connection) -> None:
        self._open -= 1
        conn.close()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _expire(self) -> None:
        """Closes the connections idle for ``keepalive_timeout`` (or closed by the server)."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        oldest_kept = loop.time() - self._keepalive
        kept: list[H1Connection] = []
        for conn in self._idle:
            if conn.usable(oldest_kept):
                kept.append(conn)
            else:
                self._discard(conn)
        self._idle = kept
        if kept:
            self._sweep = loop.call_at(kept[0].idle_since + self._keepalive, self._expire)
        self._wake()


def _decode(encoding: bytes, body: bytes, limit: int) -> bytes:
    """The body of a gzip or deflate answer (at most ``limit`` bytes once decoded)."""
    enc = encoding.strip().lower()
    if enc in (b"", b"identity"):
        return body
    if enc in (b"gzip", b"x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif enc == b"deflate":
        # zlib-wrapped as RFC 9110 says, or raw deflate as some servers send it.
        zlib_header = len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0
        wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
    else:
        raise UpstreamError("upstream answer has an unsupported content encoding")
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error:
        raise UpstreamError("upstream answer could not be decoded") from None
    if len(out) > limit:
        raise UpstreamTooLarge("upstream answer too large")
    if not d.eof:
        raise UpstreamError("upstream answer could not be decoded (truncated)")
    return out
