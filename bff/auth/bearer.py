"""JWTs from the ``Authorization: Bearer`` header and from a cookie (with an anti-forgery header)."""

from __future__ import annotations

from typing import Any

from litestar import Request

from bff.auth.identity import Identity
from bff.auth.jwt import JwtVerifier
from bff.errors import Forbidden


def _looks_like_jwt(value: str) -> bool:
    return value.count(".") == 2


class BearerAuthenticator:
    name = "bearer"

    def __init__(self, verifier: JwtVerifier) -> None:
        self._verifier = verifier

    async def authenticate(self, request: Request[Any, Any, Any]) -> Identity | None:
        header = request.headers.get("authorization")
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
        # Browsers attach cookies to cross-site requests too; a custom header is something a
        # cross-site form or image cannot send, and CORS gates scripts from sending it.
        if request.headers.get(self._csrf_header) != self._csrf_value:
            raise Forbidden(
                f"cookie authentication requires the {self._csrf_header} header", code="csrf_header_missing"
            )
        return Identity(claims=await self._verifier.verify(token), method=self.name)
