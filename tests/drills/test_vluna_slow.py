"""Vluna slow under load: every request is answered by the service's own deadlines, never by
waiting for Vluna.

Vluna takes SLOW_UPSTREAM seconds per call, far longer than any deadline configured here. So a
request that waited for Vluna's answer would take at least that long, and one answered by a
deadline carries the deadline's error. The test asserts both, instead of a wall-clock margin
that a busy machine could eat (the deadlines' exact values are unit-tested elsewhere).
"""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.support.emulator import Emulator
from tests.support.keys import UserKeys
from tests.support.redis_servers import SHARED_REDIS_URL
from tests.support.service import ServiceStarter

VLUNA_TIMEOUT = 1.0  # vluna.timeout_sec, max_retries 0: an issuance gives up after 1 s
WAIT_TIMEOUT = 1.5  # tokens.wait_timeout_sec: a request waiting on another's issuance
PROXY_TOTAL = 1.5  # proxy.total_timeout_sec: a proxied call, retries included
SLOW_UPSTREAM = 30.0  # seconds Vluna takes to answer: 20x the longest deadline


async def test_vluna_slow_never_holds_a_request_past_the_deadline(
    emulator: Emulator, start_service: ServiceStarter, user_keys: UserKeys
) -> None:
    bff = start_service(
        redis_url=SHARED_REDIS_URL,
        vluna={"timeout_sec": VLUNA_TIMEOUT, "max_retries": 0},
        tokens={"wait_timeout_sec": WAIT_TIMEOUT},
        rate_limit={"enabled": False},
        proxy={
            "public_cache_ttl_sec": 0,
            "connect_timeout_sec": 0.5,
            "read_timeout_sec": 1.0,
            "total_timeout_sec": PROXY_TOTAL,
            "breaker_failure_threshold": 1000,  # keep every call going to the slow upstream
        },
    )
    warm = {"Authorization": f"Bearer {user_keys.token('warm', org='warm')}"}
    results: list[tuple[str, int, float, str | None]] = []
    client_timeout = SLOW_UPSTREAM * 2
    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(base_url=bff.url, timeout=client_timeout, limits=limits) as c:
        assert (await c.get("/vluna/token", headers=warm)).status_code == 200
        emulator.fault("*", latency_seconds=SLOW_UPSTREAM, times=None)

        async def one(kind: str, path: str, h: dict[str, str]) -> None:
            t0 = time.monotonic()
            r = await c.get(path, headers=h)
            code = r.json().get("error") if r.status_code >= 400 else None
            results.append((kind, r.status_code, time.monotonic() - t0, code))

        end = time.monotonic() + 6
        wave = 0
        while time.monotonic() < end:
            # Each wave: 10 new users asked for 3 times at once, cached users, proxied calls.
            fresh = [
                {"Authorization": f"Bearer {user_keys.token(f's{wave}-{i}', org=f's{wave}-{i}')}"}
                for i in range(10)
            ]
            await asyncio.gather(
                *[one("fresh", "/vluna/token", h) for h in fresh for _ in range(3)],
                *[one("cached", "/vluna/token", warm) for _ in range(10)],
                *[one("proxy", "/vluna/api/v1/catalog/products", warm) for _ in range(10)],
            )
            wave += 1
        emulator.clear_faults()
    assert wave >= 2
    slowest = max(e for _, _, e, _ in results)
    assert slowest < SLOW_UPSTREAM, f"a request waited {slowest:.1f} s: for Vluna's answer, not a deadline"
    by_kind = {k: {s for kk, s, _, _ in results if kk == k} for k in ("fresh", "cached", "proxy")}
    assert by_kind["cached"] == {200}
    assert by_kind["fresh"] == {503}
    assert by_kind["proxy"] <= {502, 503, 504} and by_kind["proxy"]
    # Each refusal names the deadline (or the breaker it opened), not an upstream answer.
    codes = {code for kind, _, _, code in results if kind != "cached"}
    assert codes <= {"token_unavailable", "upstream_timeout", "upstream_unavailable"}, codes
