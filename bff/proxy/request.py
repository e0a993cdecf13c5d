"""Preparing a proxied call: from the client's request to what may be sent upstream, or a refusal.

The raw path is matched against the allowlist, the caller's rate limit is spent, and only
vetted parts of the request are kept: allowlisted query parameters, a request id, ``Accept`` and
``Accept-Language`` when well-formed, an ``Idempotency-Key`` on every write, and a JSON object
body within the size limit. Nothing else the client sent reaches Vluna.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from litestar import Request

from bff.errors import BadRequest, PayloadTooLarge, TooManyRequests, UnsupportedMediaType, UriTooLong
from bff.principals import Principal
from bff.proxy.paths import Allowlist, MalformedPath, Match, PathRefused
from bff.proxy.ratelimit import RateLimited, RateLimiter
from bff.settings import ProxySettings
from bff.stats import Stats
from bff.telemetry.context import current_request_id

PREFIX = "/vluna/api/v1"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_TYPE = re.compile(r"^application/(?:[a-z0-9.+-]+\+)?json\s*(?:;\s*charset=(?:\"?utf-8\"?))?\s*$", re.I)

_TOKENISH = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_LANGUAGE = re.compile(r"^[A-Za-z0-9*,;=. -]{1,128}$")
_ACCEPT = re.compile(r"^[A-Za-z0-9*/+.,;= -]{1,256}$")
_decode = msgspec.json.Decoder()


@dataclass
class Prepared:
    method: str
    match: Match
    principal: Principal
    path_and_query: str  # the upstream path (the route's own template, with the checked ids)
    query: list[tuple[str, str]]  # the allowlisted query parameters
    body: bytes | None
    headers: dict[str, str]  # from the client's allowlist, plus the request id


class RequestPreparer:
    def __init__(self, settings: ProxySettings, *, limiter: RateLimiter, stats: Stats) -> None:
        self.settings = settings
        self.allowlist = Allowlist(settings)
        self._limiter = limiter
        self._stats = stats

    async def prepare(self, request: Request[Any, Any, Any], principal: Principal) -> Prepared:
        """Allowlist, then the caller's rate limit, then the request's parts; raises a
        ``BffError`` (4xx) for anything refused."""
        method = request.method.upper()
        try:
            match = self.allowlist.match(method, sub_path(request.scope))
        except PathRefused:
            self._stats.inc("proxy.refused")
            raise
        try:
            await self._limiter.check(
                self._limiter.subject(principal.principal_id, principal.user_id),
                write=method in WRITE_METHODS,
            )
        except RateLimited as exc:
            raise TooManyRequests("too many requests", retry_after=exc.retry_after) from None
        query = self._query(request, match)
        headers = self._headers(request)
        body: bytes | None = None
        if method in WRITE_METHODS:
            key = request.headers.get("idempotency-key")
            if key is not None and not _TOKENISH.match(key):
                raise BadRequest(
                    "Idempotency-Key: 1-128 of A-Z a-z 0-9 _ . : -", code="invalid_idempotency_key"
                )
            # Every write carries a key, so that retries (ours and the client's) are safe.
            headers["Idempotency-Key"] = key or secrets.token_hex(16)
            body = await self._read_body(request)
            if body:
                headers["Content-Type"] = "application/json"
        else:
            length = request.headers.get("content-length")
            if (length and length.strip() != "0") or request.headers.get("transfer-encoding"):
                raise BadRequest("this call takes no request body", code="unexpected_body")
        return Prepared(method, match, principal, match.upstream_path, query, body, headers)

    def _query(self, request: Request[Any, Any, Any], match: Match) -> list[tuple[str, str]]:
        raw_query = request.scope.get("query_string", b"")
        if len(raw_query) > self.settings.max_query_length:
            raise UriTooLong("the query string is too long", code="query_too_long")
        allowed = match.route.query
        query: list[tuple[str, str]] = []
        if raw_query:
            try:
                pairs = parse_qsl(raw_query.decode("ascii"), keep_blank_values=True, strict_parsing=False)
            except (UnicodeDecodeError, ValueError):
                raise BadRequest("the query string is malformed", code="invalid_query") from None
            for name, value in pairs:
                if name in allowed and not any(c in value for c in "\r\n\x00"):
                    query.append((name, value))
        return query

    @staticmethod
    def _headers(request: Request[Any, Any, Any]) -> dict[str, str]:
        h = request.headers
        headers: dict[str, str] = {}
        # The request id of this request (the observability middleware's, which also puts it on
        # the answer), or one of our own when that middleware is not installed.
        rid = current_request_id()
        if rid is None:
            rid = h.get("x-request-id")
            if not (rid and _TOKENISH.match(rid)):
                rid = secrets.token_hex(16)
        headers["X-Request-Id"] = rid
        accept = h.get("accept")
        headers["Accept"] = accept if accept and _ACCEPT.match(accept) else "application/json"
        lang = h.get("accept-language")
        if lang and _LANGUAGE.match(lang):
            headers["Accept-Language"] = lang
        return headers

    async def _read_body(self, request: Request[Any, Any, Any]) -> bytes:
        limit = self.settings.max_body_bytes
        h = request.headers
        length = h.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                raise BadRequest("invalid Content-Length", code="bad_request") from None
            if n > limit:
                raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"the request body exceeds {limit} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        if not body:
            return body
        if not JSON_TYPE.match(h.get("content-type", "")):
            raise UnsupportedMediaType("request bodies must be application/json")
        try:
            parsed = _decode.decode(body)
        except (msgspec.DecodeError, RecursionError, ValueError):
            raise BadRequest("the request body is not valid JSON", code="invalid_json") from None
        if not isinstance(parsed, dict):
            raise BadRequest("the request body must be a JSON object", code="invalid_json")
        return body


def sub_path(scope: Mapping[str, Any]) -> str:
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else str(scope.get("path", ""))
    path = path.split("?", 1)[0]
    if not path.startswith(PREFIX + "/"):
        # Anything that reached this handler but is not spelt exactly like the prefix (percent-
        # encoded, different case, ...) is refused outright.
        raise MalformedPath("the request path is not allowed")
    return path[len(PREFIX) :]
