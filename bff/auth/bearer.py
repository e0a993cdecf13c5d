"""JWTs from the ``Authorization: Bearer`` header and from a cookie (with an anti-forgery header)."""

from __future__ import annotations

from typing import Any

from litestar import Request

from bff.auth.identity import Identity
from bff.auth.jwt import JwtVerifier
from bff.errors import BadRequest, Forbidden


def _looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2


def _header_values(request: Request[Any, Any, Any], name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in request.scope["headers"] if k.lower() == name]


def count_cookies(request: Request[Any, Any, Any], name: str) -> int:
    """How many cookies of this name the request carries, over every Cookie header. Browsers
    send two when, e.g., a sibling or parent domain set one too (cookie tossing): which one is the
    user's own session cannot be told."""
    return sum(
        1
        for header in _header_values(request, b"cookie")
        for part in header.split(";")
        if part.split("=", 1)[0].strip() == name
    )


class BearerAuthenticator:
    name = "bearer"

    def __init__(self, verifier: JwtVerifier) -> None:
        self._verifier = verifier

    async def authenticate(self, request: Request[Any, Any, Any]) -> Identity | None:
        # Read straight from the ASGI headers (not request.headers, which builds a mapping of all).
        values = _header_values(request, b"authorization")
        if len(values) > 1:
            # Which credential is the caller's? Not ours to guess.
            raise BadRequest("several Authorization headers were sent", code="ambiguous_credentials")
        header = values[0] if values else None
        if not header:
            return None
        scheme, _, token = header.partition(" ")
        token = token.strip()
        # Anything but a JWT-shaped bearer is left to the next method (e.g. introspection).
        if scheme.lower() != "bearer" or not _looks_like_jwt(token):
            return None
        return Identity(claims=await self._verifier.verify(token), method=self.name)


class CookieAuthenticator:
    name = "cookie"

    def __init__(self, verifier: JwtVerifier, cookie_name: str, csrf_header: str, csrf_value: str) -> None:
        self._verifier = verifier
        self._cookie = cookie_name
        self._csrf_header = csrf_header.lower()
        self._csrf_value = csrf_value

    async def authenticate(self, request: Request[Any, Any, Any]) -> Identity | None:
        token = request.cookies.get(self._cookie)
        if not token:
            return None
        if count_cookies(request, self._cookie) > 1:
            raise BadRequest(
                f"several {self._cookie} cookies were sent (one may have been set by another site of "
                "the same domain); clear this site's cookies and sign in again",
                code="ambiguous_session",
            )
        # Browsers attach cookies to cross-site requests too; a custom header is something a
        # cross-site form or image cannot send, and CORS gates scripts from sending it.
        if request.headers.get(self._csrf_header) != self._csrf_value:
            raise Forbidden(
                f"cookie authentication requires the {self._csrf_header} header", code="csrf_header_missing"
            )
        return Identity(claims=await self._verifier.verify(token), method=self.name)
