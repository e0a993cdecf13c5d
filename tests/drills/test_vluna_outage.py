"""Vluna answering 503 for 15 s, then not answering at all (timeouts) for 15 s: users with a cached
token keep getting it; others get 503 + Retry-After quickly; proxied calls fail fast once the
circuit breaker opens; everything recovers without a restart."""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass

import httpx

from tests.support.emulator import Emulator
from tests.support.keys import UserKeys
from tests.support.redis_servers import SHARED_REDIS_URL
from tests.support.service import ServiceStarter

PHASE_SEC = 15.0  # x 2 phases = the 30 s outage
VLUNA_TIMEOUT = 1.0
PROXY_TOTAL = 1.5
# In the "timeout" phase Vluna takes longer to answer than the phase lasts: a request that waited
# for it would take at least this long, so the deadlines are checked without a wall-clock margin.
SLOW_UPSTREAM = 20.0
CATALOG = "/vluna/api/v1/catalog/products"


@dataclass
class Rec:
    phase: str
    kind: str
    status: int
    elapsed: float
    retry_after: str | None
    code: str | None
    token: str | None = None


async def test_vluna_down_for_30s(
    emulator: Emulator, start_service: ServiceStarter, user_keys: UserKeys
) -> None:
    bff = start_service(
        redis_url=SHARED_REDIS_URL,
        vluna={"timeout_sec": VLUNA_TIMEOUT, "max_retries": 0},
        tokens={"retry_after_sec": 3},
        rate_limit={"enabled": False},
        proxy={
            "public_cache_ttl_sec": 0,
            "connect_timeout_sec": 0.5,
            "read_timeout_sec": 1.0,
            "total_timeout_sec": PROXY_TOTAL,
            "max_retries": 1,
            "breaker_failure_threshold": 3,
            "breaker_open_sec": 2,
        },
    )
    cached = [{"Authorization": f"Bearer {user_keys.token(f'c{i}', org=f'c{i}')}"} for i in range(4)]
    fresh = ({"Authorization": f"Bearer {user_keys.token(f'n{i}', org=f'n{i}')}"} for i in itertools.count())
    recs: list[Rec] = []
    async with httpx.AsyncClient(base_url=bff.url, timeout=30) as client:

        async def call(phase: str, kind: str, path: str, h: dict[str, str]) -> httpx.Response:
            t0 = time.monotonic()
            r = await client.get(path, headers=h)
            elapsed = time.monotonic() - t0
            body = r.json()
            token = body.get("access_token") if r.status_code == 200 and kind == "cached" else None
            code = body.get("error") if r.status_code >= 400 else None
            recs.append(Rec(phase, kind, r.status_code, elapsed, r.headers.get("retry-after"), code, token))
            return r

        known = {}
        for h in cached:
            r = await client.get("/vluna/token", headers=h)
            assert r.status_code == 200
            known[h["Authorization"]] = r.json()["access_token"]
        assert (await client.get(CATALOG, headers=cached[0])).status_code == 200

        async def phase(name: str) -> None:
            end = time.monotonic() + PHASE_SEC

            async def cached_loop() -> None:
                for h in itertools.cycle(cached):
                    if time.monotonic() > end:
                        return
                    r = await call(name, "cached", "/vluna/token", h)
                    if r.status_code == 200:
                        assert r.json()["access_token"] == known[h["Authorization"]]
                    await asyncio.sleep(0.05)

            async def fresh_loop() -> None:
                while time.monotonic() < end:
                    await call(name, "fresh", "/vluna/token", next(fresh))
                    await asyncio.sleep(0.1)

            async def proxy_loop() -> None:
                while time.monotonic() < end:
                    await call(name, "proxy", CATALOG, cached[1])
                    await asyncio.sleep(0.05)

            await asyncio.gather(cached_loop(), fresh_loop(), proxy_loop())

        emulator.reset("counters")
        emulator.fault("*", status=503, retry_after=1, times=None)
        await phase("503")
        emulator.clear_faults()
        emulator.fault("*", latency_seconds=SLOW_UPSTREAM, times=None)
        await phase("timeout")
        upstream_catalog_calls = emulator.calls("list_catalog_products")
        emulator.clear_faults()

        # Recovery without a restart: new users get tokens, the breaker closes again.
        async def recovered(path: str, h: dict[str, str]) -> None:
            deadline = time.monotonic() + 15
            while (await client.get(path, headers=h)).status_code != 200:
                assert time.monotonic() < deadline, f"{path} did not recover"
                await asyncio.sleep(0.2)

        await recovered("/vluna/token", next(fresh))
        await recovered(CATALOG, cached[1])
        assert bff.alive()

    for phase_name in ("503", "timeout"):
        mine = [r for r in recs if r.phase == phase_name]
        cached_recs = [r for r in mine if r.kind == "cached"]
        fresh_recs = [r for r in mine if r.kind == "fresh"]
        proxy_recs = [r for r in mine if r.kind == "proxy"]
        assert len(cached_recs) > 20 and len(fresh_recs) > 5 and len(proxy_recs) > 10
        # Cached users: always their token.
        assert {r.status for r in cached_recs} == {200}, phase_name
        # Others: 503 with Retry-After, within Vluna's timeout.
        assert {r.status for r in fresh_recs} == {503}, phase_name
        assert all(r.retry_after and int(r.retry_after) >= 1 for r in fresh_recs)
        assert {r.code for r in fresh_recs} == {"token_unavailable"}, phase_name
        # Proxied calls: errors, never waiting for Vluna; once the breaker is open most of them
        # are refused by it (never sent upstream), with Retry-After.
        assert all(r.status in (502, 503, 504) for r in proxy_recs), phase_name
        refused = [r for r in proxy_recs if r.status == 503 and r.code == "upstream_unavailable"]
        assert len(refused) >= len(proxy_recs) // 2, (phase_name, len(refused), len(proxy_recs))
        assert all(r.retry_after for r in refused)
        if phase_name == "timeout":
            slowest = max(r.elapsed for r in fresh_recs + proxy_recs)
            assert slowest < SLOW_UPSTREAM, f"a request waited {slowest:.1f} s: for Vluna, not a deadline"
    proxied = len([r for r in recs if r.kind == "proxy"])
    # Fail-fast means Vluna saw only a fraction of the proxied calls (probes, and retries of them).
    assert upstream_catalog_calls < proxied / 2, (upstream_catalog_calls, proxied)
