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


@dataclass(slots=True)
class Prepared:
    method: str
    match: Match
    principal: Principal
    path_and_query: str  # the upstream path (the route's own template, with the checked ids)
    query: list[tuple[str, str]]  # the allowlisted query parameters
    body: bytes | None
    headers: dict[str, str]  # from the client's allowlist, plus the request id


# The request headers a proxied call reads, as ASGI gives them (lower-case bytes).
_WANTED = frozenset(
    {
        b"accept",
        b"accept-language",
        b"x-request-id",
        b"idempotency-key",
        b"content-length",
        b"transfer-encoding",
        b"content-type",
    }
)
_MATCH_MEMO_MAX = 4096


def _client_headers(scope: Mapping[str, Any]) -> dict[bytes, str]:
    """The headers of ``_WANTED`` the client sent, first value of each (what Litestar's
    ``request.headers.get`` answers), read from the ASGI scope without building a header map."""
    out: dict[bytes, str] = {}
    for name, value in scope["headers"]:
        if name in _WANTED or name.lower() in _WANTED:
            key = name.lower()
            if key not in out:
                out[key] = value.decode("latin-1")
    return out


class RequestPreparer:
    def __init__(self, settings: ProxySettings, *, limiter: RateLimiter, stats: Stats) -> None:
        self.settings = settings
        self.allowlist = Allowlist(settings)
        self._limiter = limiter
        self._stats = stats
        # (method, raw sub-path) -> the allowlist's match: matching is a pure function of the
        # path, and a page calls the same few paths over and over. Refusals are not kept.
        self._matches: dict[tuple[str, str], tuple[Match, str]] = {}

    def _match(self, method: str, scope: Mapping[str, Any]) -> tuple[Match, str]:
        raw = scope.get("raw_path")
        key = (method, raw.decode("latin-1") if isinstance(raw, bytes) else str(scope.get("path", "")))
        found = self._matches.get(key)
        if found is None:
            try:
                match = self.allowlist.match(method, sub_path(scope))
            except PathRefused:
                self._stats.inc("proxy.refused")
                raise
            found = (match, match.upstream_path)
            if len(self._matches) >= _MATCH_MEMO_MAX:
                self._matches.clear()
            self._matches[key] = found
        return found

    async def prepare(self, request: Request[Any, Any, Any], principal: Principal) -> Prepared:
        """Allowlist, then the caller's rate limit, then the request's parts; raises a
        ``BffError`` (4xx) for anything refused."""
        scope = request.scope
        method = scope["method"].upper()
        match, upstream_path = self._match(method, scope)
        write = method in WRITE_METHODS
        limiter = self._limiter
        if limiter.enabled:
            subject = limiter.subject(principal.principal_id, principal.user_id)
            # A slot already leased to this process is spent without a suspension point.
            if not limiter.spend_leased(subject, write=write):
                try:
                    await limiter.check(subject, write=write)
                except RateLimited as exc:
                    raise TooManyRequests("too many requests", retry_after=exc.retry_after) from None
        h = _client_headers(scope)
        query = self._query(scope, match)
        headers = self._headers(h)
        body: bytes | None = None
        if write:
            key = h.get(b"idempotency-key")
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
            length = h.get(b"content-length")
            if (length and length.strip() != "0") or h.get(b"transfer-encoding"):
                raise BadRequest("this call takes no request body", code="unexpected_body")
        return Prepared(method, match, principal, upstream_path, query, body, headers)

    def _query(self, scope: Mapping[str, Any], match: Match) -> list[tuple[str, str]]:
        raw_query = scope.get("query_string", b"")
        if not raw_query:
            return []
        if len(raw_query) > self.settings.max_query_length:
            raise UriTooLong("the query string is too long", code="query_too_long")
        allowed = match.route.query
        query: list[tuple[str, str]] = []
        try:
            pairs = parse_qsl(raw_query.decode("ascii"), keep_blank_values=True, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("the query string is malformed", code="invalid_query") from None
        for name, value in pairs:
            if name in allowed and not any(c in value for c in "\r\n\x00"):
                query.append((name, value))
        return query

    @staticmethod
    def _headers(h: dict[bytes, str]) -> dict[str, str]:
        # The request id of this request (the observability middleware's, which also puts it on
        # the answer), or one of our own when that middleware is not installed.
        rid = current_request_id()
        if rid is None:
            rid = h.get(b"x-request-id")
            if not (rid and _TOKENISH.match(rid)):
                rid = secrets.token_hex(16)
        accept = h.get(b"accept")
        headers = {
            "X-Request-Id": rid,
            "Accept": accept if accept and _ACCEPT.match(accept) else "application/json",
        }
        lang = h.get(b"accept-language")
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
