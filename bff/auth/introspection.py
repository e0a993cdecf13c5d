"""Server-side sessions: ask the team's backend who the cookie/Authorization belongs to."""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import httpx
from litestar import Request

from bff.auth.identity import Identity
from bff.errors import Forbidden, ServiceUnavailable, Unauthenticated
from bff.settings import IntrospectionSettings

log = logging.getLogger("bff.introspection")


class IntrospectionAuthenticator:
    name = "introspection"

    def __init__(
        self,
        settings: IntrospectionSettings,
        http: httpx.AsyncClient,
        *,
        csrf_header: str,
        csrf_value: str,
    ) -> None:
        assert settings.url is not None
        self._s = settings
        self._url = settings.url
        self._http = http
        self._csrf_header = csrf_header.lower()
        self._csrf_value = csrf_value
        # Keyed by a hash of the credentials, so the session cookie itself is not kept around.
        self._cache: OrderedDict[str, tuple[Mapping[str, Any], float]] = OrderedDict()
        self.calls = 0

    def _forwarded(self, request: Request[Any, Any, Any]) -> dict[str, str]:
        headers: dict[str, str] = {}
        auth = request.headers.get("authorization")
        if "authorization" in self._s.forward and auth:
            headers["authorization"] = auth
        cookie = request.headers.get("cookie")
        if "cookie" in self._s.forward and cookie:
            if request.headers.get(self._csrf_header) == self._csrf_value:
                headers["cookie"] = cookie
            elif not headers:
                raise Forbidden(
                    f"cookie authentication requires the {self._csrf_header} header",
                    code="csrf_header_missing",
                )
        return headers

    async def authenticate(self, request: Request[Any, Any, Any]) -> Identity | None:
        headers = self._forwarded(request)
        if not headers:
            return None
        digest = hashlib.sha256(repr(sorted(headers.items())).encode()).hexdigest()
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return Identity(claims=hit[0], method=self.name)
        claims = await self._ask(headers)
        if self._s.cache_ttl_sec > 0 and self._s.cache_max_entries > 0:
            self._cache[digest] = (claims, now + self._s.cache_ttl_sec)
            self._cache.move_to_end(digest)
            while len(self._cache) > self._s.cache_max_entries:
                self._cache.popitem(last=False)
        return Identity(claims=claims, method=self.name)

    async def _ask(self, headers: dict[str, str]) -> Mapping[str, Any]:
        self.calls += 1
        unavailable = ServiceUnavailable(
            "session service unavailable", retry_after=5, code="auth_unavailable"
        )
        try:
            resp = await self._http.request(
                self._s.method,
                self._url,
                headers={**headers, "accept": "application/json"},
                timeout=self._s.timeout_sec,
            )
        except httpx.HTTPError as exc:
            log.warning("session introspection failed: %s", type(exc).__name__)
            raise unavailable from None
        if resp.status_code in (401, 403, 404):
            raise Unauthenticated("session not valid")
        if resp.status_code != 200:
            log.warning("session introspection answered %d", resp.status_code)
            raise unavailable
        try:
            data: Any = resp.json()
        except ValueError:
            raise unavailable from None
        if self._s.active_field and (
            not isinstance(data, dict) or data.get(self._s.active_field) is not True
        ):
            raise Unauthenticated("session not valid")
        if self._s.claims_path:
            for part in self._s.claims_path.split("."):
                data = data.get(part) if isinstance(data, dict) else None
        if not isinstance(data, dict) or not data:
            raise Unauthenticated("session not valid")
        return data
