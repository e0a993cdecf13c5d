"""The aiohttp client the proxy used before bff/proxy/http1.py (an ``Upstream``), kept for the
bench: ``python -m bench.hit_cpu --only proxy`` measures the proxy over both clients in one run.
Not part of the service: aiohttp is a dev dependency (the bench's pass-through reference uses it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import aiohttp
from yarl import URL

from bff.proxy.upstream import (
    Timeouts,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
    UpstreamTooLarge,
    pick_headers,
)

_URL_MEMO_MAX = 4096


class AiohttpUpstream:
    def __init__(
        self, base_url: str, *, max_connections: int, keepalive_timeout: float, max_response_bytes: int
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._limit = max_connections
        self._keepalive = keepalive_timeout
        self._max = max_response_bytes
        self._session: aiohttp.ClientSession | None = None
        # Built once and reused: the URL of each upstream path (the allowlist's, a bounded set
        # but for path ids; the memo is bounded too), and the aiohttp timeout of the last bounds
        # asked for (the forwarder passes the same bounds to every first attempt).
        self._urls: dict[str, URL] = {}
        self._timeout: tuple[Timeouts, aiohttp.ClientTimeout] | None = None

    def __repr__(self) -> str:
        return f"AiohttpUpstream({self.base_url!r})"

    def _url(self, path_and_query: str) -> URL:
        url = self._urls.get(path_and_query)
        if url is None:
            # encoded=True: the path was built from checked characters only; no re-quoting.
            url = URL(self.base_url + path_and_query, encoded=True)
            if len(self._urls) >= _URL_MEMO_MAX:
                self._urls.clear()
            self._urls[path_and_query] = url
        return url

    def _client_timeout(self, timeouts: Timeouts) -> aiohttp.ClientTimeout:
        last = self._timeout
        if last is not None and last[0] is timeouts:
            return last[1]
        timeout = aiohttp.ClientTimeout(
            total=timeouts.total, sock_connect=timeouts.connect, sock_read=timeouts.read
        )
        self._timeout = (timeouts, timeout)
        return timeout

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = aiohttp.TCPConnector(
            limit=self._limit, limit_per_host=self._limit, keepalive_timeout=self._keepalive, ttl_dns_cache=60
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),  # never keep or replay upstream cookies
            skip_auto_headers=("User-Agent",),
            trust_env=False,  # no proxy from the environment: the service key's traffic stays direct
            auto_decompress=True,
        )

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def send(
        self,
        method: str,
        path_and_query: str,
        headers: Mapping[str, str],
        body: bytes | None,
        timeouts: Timeouts,
    ) -> UpstreamResponse:
        if self._session is None:
            await self.start()
        assert self._session is not None
        url = self._url(path_and_query)
        timeout = self._client_timeout(timeouts)
        try:
            async with self._session.request(
                method, url, headers=headers, data=body, timeout=timeout, allow_redirects=False
            ) as resp:
                length = resp.content_length
                if length is not None and length > self._max:
                    raise UpstreamTooLarge("upstream answer too large")
                if length is not None:
                    data = await resp.read()
                else:
                    chunks: list[bytes] = []
                    size = 0
                    async for chunk in resp.content.iter_any():
                        size += len(chunk)
                        if size > self._max:
                            raise UpstreamTooLarge("upstream answer too large")
                        chunks.append(chunk)
                    data = b"".join(chunks)
                return UpstreamResponse(
                    resp.status, resp.headers.get("content-type", ""), pick_headers(resp.headers), data
                )
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise UpstreamTimeout("upstream timed out") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"upstream connection failed ({type(exc).__name__})") from None
