"""Redis stopped for 10 s under steady load, then started again: zero 5xx on /vluna/token, and
the shared cache is used again afterwards."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import cast

import httpx
import redis

from tests.support.emulator import Emulator
from tests.support.keys import UserKeys
from tests.support.processes import Proc
from tests.support.redis_servers import start_redis
from tests.support.service import ServiceStarter

OUTAGE_SEC = 10.0


async def test_redis_stopped_for_10s_under_load(
    emulator: Emulator, own_redis: Proc, start_service: ServiceStarter, user_keys: UserKeys
) -> None:
    bff = start_service(redis_url=own_redis.url, cache={"redis": {"probe_interval_sec": 1}})
    users = [{"Authorization": f"Bearer {user_keys.token(f'r{i}', org=f'r{i}')}"} for i in range(12)]
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()

    async with httpx.AsyncClient(base_url=bff.url, timeout=15) as client:
        for h in users:  # every user has a cached token before the outage
            assert (await client.get("/vluna/token", headers=h)).status_code == 200
        r = redis.Redis.from_url(own_redis.url)
        assert dbsize(r) > 0

        async def steady(h: dict[str, str]) -> None:
            while not stop.is_set():
                resp = await client.get("/vluna/token", headers=h)
                statuses[resp.status_code] += 1
                await asyncio.sleep(0.02)

        load = [asyncio.create_task(steady(h)) for h in users]
        try:
            await asyncio.sleep(1.0)
            own_redis.stop()
            down_since = time.monotonic()
            # New users during the outage: issued and served from the in-process cache.
            during = [{"Authorization": f"Bearer {user_keys.token(f'd{i}', org=f'd{i}')}"} for i in range(5)]
            for h in during:
                resp = await client.get("/vluna/token", headers=h)
                statuses[resp.status_code] += 1
                assert resp.status_code == 200
            await asyncio.sleep(max(0.0, OUTAGE_SEC - (time.monotonic() - down_since)))
            restarted = start_redis(own_redis.port)
            try:
                await asyncio.sleep(1.0)
                stop.set()
                await asyncio.wait_for(asyncio.gather(*load), 20)
                # The shared cache is used again: a user first seen now lands in Redis, and once
                # there, their next request does not cause another issuance.
                after = {"Authorization": f"Bearer {user_keys.token('after', org='after')}"}
                r2 = redis.Redis.from_url(restarted.url)

                async def lands_in_redis() -> bool:
                    resp = await client.get("/vluna/token", headers=after)
                    assert resp.status_code == 200
                    return dbsize(r2) > 0

                deadline = time.monotonic() + 15
                while not await lands_in_redis():
                    assert time.monotonic() < deadline, "the service never wrote to Redis again"
                    await asyncio.sleep(0.2)
                before = emulator.issuances()
                for _ in range(5):
                    assert (await client.get("/vluna/token", headers=after)).status_code == 200
                assert emulator.issuances() == before
                # A second replica started now finds the token in Redis: no new issuance.
                other = start_service(like=bff)
                async with httpx.AsyncClient(base_url=other.url, timeout=15) as c2:
                    resp = await c2.get("/vluna/token", headers=after)
                assert resp.status_code == 200
                assert emulator.issuances() == before
                r2.close()
            finally:
                restarted.stop()
        finally:
            stop.set()
            for t in load:
                t.cancel()
            r.close()
    assert sum(statuses.values()) > 100, statuses
    assert not [s for s in statuses if s >= 500], statuses
    assert set(statuses) == {200}, statuses


async def test_replicas_converge_after_redis_returns(
    emulator: Emulator, own_redis: Proc, start_service: ServiceStarter, user_keys: UserKeys
) -> None:
    """Two replicas; Redis stopped; replica B issues a token for a user and keeps it in its own
    memory (its breaker open); Redis starts again (empty); once B's breaker has closed, the user
    signs out through replica A. B never serves the token it cached during the outage again."""
    a = start_service(redis_url=own_redis.url)
    b = start_service(like=a)
    user = {"Authorization": f"Bearer {user_keys.token('conv', org='conv')}"}

    async def breaker(client: httpx.AsyncClient) -> str:
        state: str = (await client.get("/readyz")).json()["checks"]["redis_breaker"]
        return state

    async with (
        httpx.AsyncClient(base_url=a.url, timeout=20) as ca,
        httpx.AsyncClient(base_url=b.url, timeout=20) as cb,
    ):
        assert await breaker(cb) == "closed"
        own_redis.stop()
        resp = await cb.get("/vluna/token", headers=user)
        assert resp.status_code == 200, resp.text
        during = resp.json()["access_token"]
        assert await breaker(cb) == "open"
        # Served again from B's memory while Redis is away: no new issuance.
        issued = emulator.issuances()
        assert (await cb.get("/vluna/token", headers=user)).json()["access_token"] == during
        assert emulator.issuances() == issued
        restarted = start_redis(own_redis.port)
        try:
            deadline = time.monotonic() + 15
            while await breaker(cb) != "closed":  # B's next PING (every probe_interval_sec: 1 s)
                assert time.monotonic() < deadline, "replica B's breaker never closed"
                await asyncio.sleep(0.2)
            # The user signs out through A (which may first have to find Redis back itself).
            deadline = time.monotonic() + 15
            while (resp := await ca.delete("/vluna/token", headers=user)).status_code == 503:
                assert time.monotonic() < deadline, resp.text
                await asyncio.sleep(0.5)
            assert resp.status_code == 204, resp.text
            seen = set()
            for client in (cb, ca, cb):
                resp = await client.get("/vluna/token", headers=user)
                assert resp.status_code == 200, resp.text
                seen.add(resp.json()["access_token"])
            assert during not in seen
            assert len(seen) == 1  # one new token, shared by both replicas through Redis
        finally:
            restarted.stop()


def dbsize(client: redis.Redis) -> int:
    """DBSIZE (redis-py types its blocking and asyncio answers alike: this one is an int)."""
    return int(cast("int", client.dbsize()))
