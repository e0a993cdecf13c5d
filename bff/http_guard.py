"""Refuse requests whose body framing is ambiguous, and close their connection.

A request that carries both Content-Length and Transfer-Encoding, or several Content-Length
values, can be framed differently by a proxy in front of us and by our own server: what one
sees as the body, the other reads as a second request (request smuggling). RFC 9112 §6.1 says
such a message must be answered and the connection closed, so nothing after it is parsed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

Scope = dict[str, Any]


def framing_problem(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    lengths: list[bytes] = []
    encodings: list[bytes] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            lengths.append(value.strip())
        elif lowered == b"transfer-encoding":
            encodings.append(value.strip().lower())
    if lengths and encodings:
        return "both Content-Length and Transfer-Encoding are present"
    if len(set(lengths)) > 1:
        return "conflicting Content-Length values"
    if any(not length.isdigit() for length in lengths):
        return "Content-Length is not a non-negative integer"
    if encodings and encodings != [b"chunked"]:
        return "only 'Transfer-Encoding: chunked' is accepted"
    return None


class FramingGuard:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            problem = framing_problem(scope["headers"])
            if problem is not None:
                body = json.dumps({"error": "bad_request_framing", "message": problem}).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 400,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def install(app: Any) -> None:
    """Wrap a Litestar app's ASGI handler (after routing is built)."""
    app.asgi_handler = FramingGuard(app.asgi_handler)
