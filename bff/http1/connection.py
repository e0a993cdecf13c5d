"""One pooled connection of the HTTP/1.1 client (bff/http1/pool.py): an asyncio protocol that
writes a request and feeds what comes back to llhttp (``httptools``), one exchange at a time.

The pool decides when a connection is taken and given back; this class decides whether it can be:
``reusable`` is true only after a complete answer that allows keep-alive, with nothing unasked for
behind it. Errors reach the waiting exchange as ``UpstreamError``/``UpstreamTimeout``/
``UpstreamTooLarge`` (never with a header value in the message), or as ``LostBeforeAnswer`` when
the connection closed before the first byte of the answer (the pool may then try once more).
"""

from __future__ import annotations

import asyncio
from typing import cast

import httptools

from bff.http1.errors import UpstreamError, UpstreamTimeout, UpstreamTooLarge

# The answer headers the client reads (first value of each): framing and what the proxy passes on.
# A pool made with ``all_headers`` also keeps every header line, in order (for the httpx transport).
KEPT_HEADERS = frozenset(
    {
        b"content-type",
        b"content-length",
        b"content-encoding",
        b"transfer-encoding",
        b"retry-after",
        b"idempotent-replayed",
    }
)
# status, KEPT_HEADERS found (lower-case), body, every header line (lower-case names; empty unless
# the connection keeps them all)
Answer = tuple[int, dict[bytes, bytes], bytes, list[tuple[bytes, bytes]]]


class LostBeforeAnswer(Exception):
    """The connection closed before any byte of the answer arrived."""


class _Stop(Exception):
    """Raised in a parser callback to stop parsing (the exchange has already failed)."""


class H1Connection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop, max_bytes: int, all_headers: bool = False) -> None:
        self._loop = loop
        self._max = max_bytes
        self._keep_all = all_headers
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self.lost = False
        self.reusable = False
        self.uses = 0  # completed exchanges (the pool's: > 0 is a reused connection)
        self.idle_since = 0.0
        # The exchange under way.
        self._waiter: asyncio.Future[Answer] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head_only = False
        self._received = False
        self._last_read = 0.0
        self._read = 0.0
        self._deadline = 0.0
        # The answer being parsed.
        self._status = 0
        self._headers: dict[bytes, bytes] = {}
        self._lines: list[tuple[bytes, bytes]] = []
        self._chunks: list[bytes] = []
        self._size = 0
        self._headers_done = False
        self._until_close = False
        self._keep_alive = False

    def __repr__(self) -> str:
        return f"H1Connection(uses={self.uses}, lost={self.lost})"

    # The pool's side.

    def usable(self, idle_after: float) -> bool:
        """Open, not closing, and idle since after ``idle_after`` (loop time)."""
        t = self._transport
        return not self.lost and t is not None and not t.is_closing() and self.idle_since > idle_after

    def close(self) -> None:
        t = self._transport
        if t is not None and not t.is_closing():
            if self.reusable:
                t.close()
            else:
                t.abort()  # nothing of a broken exchange is worth flushing
        self.lost = True
        self.reusable = False

    async def exchange(self, data: bytes, head_only: bool, read: float, deadline: float) -> Answer:
        """Writes ``data`` (one request) and waits for its answer."""
        if self.lost or self._transport is None or self._transport.is_closing():
            raise LostBeforeAnswer
        loop = self._loop
        waiter: asyncio.Future[Answer] = loop.create_future()
        self._waiter = waiter
        self._head_only = head_only
        self._received = False
        self._headers_done = False
        self.reusable = False
        now = loop.time()
        self._last_read = now
        self._read = read
        self._deadline = deadline
        self._timer = loop.call_at(min(deadline, now + read), self._on_timer)
        self._transport.write(data)
        try:
            return await waiter
        finally:
            self._waiter = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    # asyncio's side.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reusable = False
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and self._until_close:
            self._finish()  # a body delimited by the end of the connection (HTTP/1.0 style)
        elif not self._received:
            waiter.set_exception(LostBeforeAnswer())
        else:
            waiter.set_exception(UpstreamError("upstream connection failed (incomplete answer)"))

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self._abort()  # bytes nobody asked for (while idle, or after the answer)
            return
        self._received = True
        self._last_read = self._loop.time()
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            if not waiter.done():
                waiter.set_exception(UpstreamError("upstream connection failed (malformed answer)"))
            self._abort()

    # The parser's side (llhttp calls these while feed_data runs).

    def on_message_begin(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.reusable = False  # a second answer to one request
            raise _Stop
        self._status = 0
        self._headers = {}
        self._lines = []
        self._chunks = []
        self._size = 0
        self._headers_done = False
        self._until_close = False

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        if name in KEPT_HEADERS and name not in self._headers:
            self._headers[name] = value
        if self._keep_all:
            self._lines.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        status = self._status = parser.get_status_code()
        self._headers_done = True
        if status < 200:
            return  # an interim answer (103 Early Hints): the real one follows
        self._keep_alive = parser.should_keep_alive()
        if self._head_only:
            # The parser would wait for the body the headers announce: answer now, then close.
            self._keep_alive = False
            self._finish()
            return
        h = self._headers
        length = h.get(b"content-length")
        te = h.get(b"transfer-encoding")
        chunked = te is not None and te.rstrip().lower().endswith(b"chunked")
        self._until_close = length is None and not chunked and status not in (204, 304)
        if length is not None and int(length) > self._max:
            self._fail(UpstreamTooLarge("upstream answer too large"))
            raise _Stop

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._max:
            self._fail(UpstreamTooLarge("upstream answer too large"))
            raise _Stop
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._status >= 200 and not self._head_only:
            self._finish()

    # Internals.

    def _finish(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            # Not while part of the request is still unsent (an early answer, e.g. a 413): what
            # follows on this connection would be the rest of that body.
            t = self._transport
            unsent = t is None or t.get_write_buffer_size() > 0
            self.reusable = self._keep_alive and not self.lost and not unsent
            chunks = self._chunks
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            self._chunks = []  # an idle connection holds no answer
            waiter.set_result((self._status, self._headers, body, self._lines))

    def _fail(self, exc: Exception) -> None:
        self.reusable = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _abort(self) -> None:
        self.reusable = False
        self.lost = True
        if self._transport is not None:
            self._transport.abort()

    def _on_timer(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        due = min(self._deadline, self._last_read + self._read)
        if self._loop.time() >= due:
            self._fail(UpstreamTimeout("upstream timed out"))
            self._abort()
        else:
            self._timer = self._loop.call_at(due, self._on_timer)
