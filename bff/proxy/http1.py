"""The proxy's upstream in production: the service's HTTP/1.1 client (bff/http1/pool.py) answering
as an ``Upstream`` (bff/proxy/upstream.py): the status, the content type, the headers a client may
see (``PASS_RESPONSE_HEADERS``) and the decoded body."""

from __future__ import annotations

from collections.abc import Mapping

from bff.http1.pool import Http1Pool
from bff.proxy.upstream import PASS_RESPONSE_HEADERS, Timeouts, UpstreamResponse

_PASS = tuple((name.encode(), name) for name in PASS_RESPONSE_HEADERS)


class Http1Upstream(Http1Pool):
    """``Upstream`` over pooled HTTP/1.1 keep-alive connections to Vluna's ``/api/v1``."""

    async def send(
        self,
        method: str,
        path_and_query: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        status, got, payload, _ = await self.request(method, path_and_query, headers, body, timeouts)
        picked: dict[str, str] = {}
        for raw, name in _PASS:
            value = got.get(raw)
            if value is not None:
                picked[name] = value.decode("latin-1")
        ctype = got.get(b"content-type")
        return UpstreamResponse(status, ctype.decode("latin-1") if ctype else "", picked, payload)
