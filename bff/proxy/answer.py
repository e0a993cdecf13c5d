"""Shaping the answer of a proxied call: Vluna's JSON with an allowlist of headers, or a copy from
the public cache with its validators; anything else Vluna sends is never passed on.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response

from bff.errors import NotFound, UpstreamInvalid, parse_retry_after, retry_after_value
from bff.proxy.public_cache import CachedAnswer, etag_matches
from bff.proxy.request import JSON_TYPE, Prepared
from bff.proxy.upstream import UpstreamResponse
from bff.stats import Stats
from bff.telemetry.context import current_request_id

log = logging.getLogger("bff.proxy")

# Answers no cache may keep (the proxy's private answers and errors, the token routes), and the
# same headers as an ASGI message carries them.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
NO_STORE_RAW = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in NO_STORE.items()]


class RawAnswer:
    """A proxied JSON answer as a bare ASGI app: the upstream body bytes as they came, headers
    encoded once. Sends what ``litestar.Response(body, status_code=..., media_type=...,
    headers=...)`` sends (the given headers with lower-case names, then content-type and
    content-length) without the per-request Response -> ASGIResponse conversion. The proxy route
    sets no handler-level headers, cookies or background tasks that this would skip."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, content_type: str, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.body = body
        encoded = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        encoded.append((b"content-type", content_type.encode("latin-1")))
        encoded.append((b"content-length", str(len(body)).encode("latin-1")))
        self.headers = encoded

    @classmethod
    def encoded(cls, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> RawAnswer:
        """From headers already encoded (lower-case names), content-type and -length included."""
        answer = cls.__new__(cls)
        answer.status = status
        answer.body = body
        answer.headers = headers
        return answer

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


Answer = Response[Any] | RawAnswer


def respond(status: int, content_type: str, headers: dict[str, str], body: bytes) -> Answer:
    if status < 200 or status in (204, 304):
        # Bodiless statuses: Litestar's own rules (no content headers; a body is an error).
        return Response(body, status_code=status, media_type=content_type, headers=headers)
    return RawAnswer(status, content_type, headers, body)


def cacheable(resp: UpstreamResponse) -> bool:
    """Only a 200 with a JSON body goes into the public cache."""
    return resp.status == 200 and bool(JSON_TYPE.match(resp.content_type))


_TYPE_MEMO_MAX = 64


class AnswerShaper:
    def __init__(self, stats: Stats, *, public_max_age: float) -> None:
        self._stats = stats
        self._max_age = int(public_max_age)
        # Content types Vluna answered with -> (JSON?, the header encoded): a handful of values.
        self._types: dict[str, tuple[bool, tuple[bytes, bytes]]] = {}

    def _content_type(self, content_type: str) -> tuple[bool, tuple[bytes, bytes]]:
        known = self._types.get(content_type)
        if known is None:
            known = (bool(JSON_TYPE.match(content_type)), (b"content-type", content_type.encode("latin-1")))
            if len(self._types) >= _TYPE_MEMO_MAX:
                self._types.clear()
            self._types[content_type] = known
        return known

    def upstream(self, resp: UpstreamResponse, p: Prepared) -> Answer:
        """Vluna's answer as the client gets it (``no-store``), or a ``BffError`` when it is not
        JSON."""
        is_json, type_header = self._content_type(resp.content_type)
        if (
            is_json
            and 200 <= resp.status < 400
            and resp.status not in (204, 304)
            and not resp.headers
            and current_request_id() is not None
        ):
            # The usual answer (nothing of Vluna's headers to pass on, the request id added by
            # the middleware): the same headers as below, encoded once.
            raw = [*NO_STORE_RAW, type_header, (b"content-length", str(len(resp.body)).encode())]
            return RawAnswer.encoded(resp.status, raw, resp.body)
        if not is_json:
            self._stats.inc("proxy.upstream.errors")
            log.warning("upstream answered %d with a non-JSON content type", resp.status)
            if resp.status in (404, 405):
                # The server has no such route (a route of another generation of the API: see
                # proxy.upstream_flavor); its own page is never passed on.
                raise NotFound("the billing service does not offer this call", code="upstream_route_missing")
            raise UpstreamInvalid("the billing service gave an unexpected answer")
        headers = dict(NO_STORE)
        if current_request_id() is None:
            headers["X-Request-Id"] = p.headers["X-Request-Id"]
        if resp.status in (429, 503) and "retry-after" in resp.headers:
            wait = parse_retry_after(resp.headers)
            if wait is not None:
                headers["Retry-After"] = retry_after_value(wait)
        if resp.headers.get("idempotent-replayed") == "true":
            headers["Idempotent-Replayed"] = "true"
        if resp.status >= 400:
            self._stats.inc(f"proxy.upstream.status.{resp.status // 100}xx")
        return respond(resp.status, resp.content_type, headers, resp.body)

    def cached(self, request: Request[Any, Any, Any], p: Prepared, cached: CachedAnswer) -> Answer:
        """A public-cache copy: private to the caller, with its ETag (304 when it matches)."""
        headers = {
            "Cache-Control": f"private, max-age={self._max_age}",
            "ETag": cached.etag,
            # A browser shared by two users must not answer one from the other's copy.
            "Vary": "Accept-Language, Authorization, Cookie",
        }
        if current_request_id() is None:
            headers["X-Request-Id"] = p.headers["X-Request-Id"]
        if etag_matches(request.headers.get("if-none-match"), cached.etag):
            return Response(b"", status_code=304, headers=headers)
        return RawAnswer(200, cached.content_type, headers, cached.body)
