"""Credentials are granted to the configured origins only.

Litestar's CORS middleware adds `Access-Control-Allow-Credentials: true` (and the allowed methods
and headers) to every simple (non-preflight) answer, also when the request's origin is not
allowed and no `Access-Control-Allow-Origin` is sent. Browsers still withhold such an answer, but
a grant to an origin we do not trust should not be on the wire at all: this strips every CORS
grant whenever the answer carries no origin grant.
"""

from __future__ import annotations

from typing import Any

_ALLOW_ORIGIN = b"access-control-allow-origin"
_GRANTS = (b"access-control-allow-", b"access-control-expose-", b"access-control-max-age")


class CredentialsOnlyForAllowedOrigins:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def guarded_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers") or []
                names = {bytes(name).lower() for name, _ in headers}
                if _ALLOW_ORIGIN not in names and any(n.startswith(_GRANTS) for n in names):
                    message = {
                        **message,
                        "headers": [(n, v) for n, v in headers if not bytes(n).lower().startswith(_GRANTS)],
                    }
            await send(message)

        await self.app(scope, receive, guarded_send)
