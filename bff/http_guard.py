"""Refuse what the HTTP layer must not pass on, before any route sees it, and close the connection:

- ambiguous body framing: both Content-Length and Transfer-Encoding, or several Content-Length
  values, can be framed differently by a proxy in front of us and by our own server: what one
  sees as the body, the other reads as a second request (request smuggling). RFC 9112 §6.1 says
  such a message must be answered and the connection closed, so nothing after it is parsed (400);
- a request head (request line and headers) over ``server.max_header_bytes``: 431, the same
  whether the head arrived in one write or in pieces (the server hands it over whole; it reads
  at most a few times that much itself, see bff/server.py);
- a body that does not arrive within ``server.body_read_timeout_sec`` of the headers: 408 (the
  route reading it gets ``RequestTimeout``); the server times out the headers itself.

Every refusal is a JSON error with ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from bff.errors import RequestTimeout

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# "GET " + " HTTP/1.1\r\n" + the empty line: what a head has besides its target and headers.
_HEAD_OVERHEAD = len(" ") + len(" HTTP/1.1\r\n") + len("\r\n")
_DISCONNECT: Message = {"type": "http.disconnect"}


def _framing(lengths: list[bytes], encodings: list[bytes]) -> str | None:
    if lengths and encodings:
        return "both Content-Length and Transfer-Encoding are present"
    if len(set(lengths)) > 1:
        return "conflicting Content-Length values"
    if any(not length.isdigit() for length in lengths):
        return "Content-Length is not a non-negative integer"
    if encodings and encodings != [b"chunked"]:
        return "only 'Transfer-Encoding: chunked' is accepted"
    return None


def _line_size(scope: Scope) -> int:
    """Bytes of the request line and the empty line ending the head."""
    target = scope.get("raw_path") or scope["path"].encode("utf-8")
    size = _HEAD_OVERHEAD + len(scope["method"]) + len(target)
    if scope["query_string"]:
        size += 1 + len(scope["query_string"])
    return size


async def refuse(send: Send, status: int, code: str, message: str) -> None:
    body = json.dumps({"error": code, "message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    def __init__(self, app: Any, *, max_header_bytes: int, body_read_timeout_sec: float) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.body_read_timeout_sec = body_read_timeout_sec

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # One pass over the headers: the head's size as sent (to within optional whitespace) and
        # the framing headers.
        # ASGI servers give header names in lower case.
        size = _line_size(scope)
        lengths: list[bytes] = []
        encodings: list[bytes] = []
        for name, value in scope["headers"]:
            size += len(name) + len(value) + 4
            if name == b"content-length":
                lengths.append(value.strip())
            elif name == b"transfer-encoding":
                encodings.append(value.strip().lower())
        if size > self.max_header_bytes:
            await refuse(
                send,
                431,
                "headers_too_large",
                f"the request line and headers exceed {self.max_header_bytes} bytes",
            )
            return
        problem = _framing(lengths, encodings) if lengths or encodings else None
        if problem is not None:
            await refuse(send, 400, "bad_request_framing", problem)
            return
        if encodings or (lengths and lengths[0] != b"0"):
            await BodyDeadline(self.body_read_timeout_sec, receive, send).run(self.app, scope)
            return
        await self.app(scope, receive, send)


class BodyDeadline:
    """The body must be complete within ``timeout`` of the headers. Past it, the app's
    ``receive`` raises ``RequestTimeout`` (a 408 through the app's error handling, so it is
    logged and counted as such; the guard answers it if the app did not), and the answer closes
    the connection."""

    def __init__(self, timeout: float, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.deadline = loop.time() + timeout
        self._loop = loop
        self._receive = receive
        self._send = send
        self.body_done = False
        self.timed_out = False
        self.started = False

    async def run(self, app: Any, scope: Scope) -> None:
        try:
            await app(scope, self.receive, self.send)
        except RequestTimeout as exc:
            if self.started:
                raise
            await refuse(self._send, exc.status, exc.code, exc.message)

    async def receive(self) -> Message:
        if self.timed_out:
            return _DISCONNECT
        if self.body_done:
            return await self._receive()
        try:
            message = await asyncio.wait_for(self._receive(), max(self.deadline - self._loop.time(), 0.0))
        except asyncio.TimeoutError:
            self.timed_out = True
            raise RequestTimeout(f"the request body did not arrive within {self.timeout:g} s") from None
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_done = True
        return message

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if self.timed_out:
                # The rest of the body is still on its way (or never comes): nothing after it on
                # this connection can be read reliably.
                message = {**message, "headers": [*message.get("headers", ()), (b"connection", b"close")]}
        await self._send(message)
