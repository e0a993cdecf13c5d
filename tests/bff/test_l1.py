"""The token cache's in-process first level (bff/tokens/l1.py): served without a Redis read, and a
sign-out answered 204 on one replica is never followed by the signed-out token on another."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from bff.stats import Stats
from bff.tokens.broker import TokenEntry
from bff.tokens.l1 import L1Cache
from tests.support.emulator import CONTROL
from tests.support.ports import free_port
from tests.support.processes import await_url, stop
from tests.support.redis_servers import SHARED_REDIS_URL as REDIS_URL
from tests.support.redis_servers import start_redis
from tests.support.service import spawn_serve

from .support import Keys, serve_config


def entry(token: str = "tok-1", now: float = 1_000.0) -> TokenEntry:
    return TokenEntry(
        access_token=token,
        token_type="Bearer",
        issued_at=now,
        expires_at=now + 3600,
        billing_account_id=None,
        billing_user_id=None,
        scopes=("read",),
    )


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def wait_for(event: asyncio.Event, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), 10)
    except asyncio.TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


async def heard_from_redis(l1: L1Cache) -> None:
    """Until a heartbeat or invalidation has been received since now."""
    l1.heard.clear()
    await wait_for(l1.heard, "a message through Redis")


# -- one process, real Redis ---------------------------------------------------------------------


async def test_served_only_while_heartbeats_arrive(prefix: str, redis_client: aioredis.Redis) -> None:
    clock = FakeMonotonic()
    l1 = L1Cache(redis_client, prefix, Stats(), monotonic=clock, heartbeat_sec=0.01)
    await l1.start()
    try:
        await wait_for(l1.subscribed, "subscribed")
        await heard_from_redis(l1)
        assert l1.usable
        l1.put("k", entry(), until=2_000.0, epoch=l1.epoch)
        assert l1.get("k", 1_500.0) == entry()
        # Past its serving bound (refresh point, expiry, max_ttl): gone.
        assert l1.get("k", 2_000.0) is None
        l1.put("k", entry(), until=2_000.0, epoch=l1.epoch)
        # No heartbeat sent within the window (a stalled loop, a lost connection): not served,
        # although the entry is still held.
        clock.now += l1.window_sec
        assert not l1.usable and l1.get("k", 1_500.0) is None and len(l1) == 1
        # A heartbeat sent after that, once received, makes it servable again.
        await heard_from_redis(l1)
        assert l1.get("k", 1_500.0) == entry()
    finally:
        await l1.stop()


async def test_a_read_that_raced_an_invalidation_is_not_kept(
    prefix: str, redis_client: aioredis.Redis
) -> None:
    a = L1Cache(redis_client, prefix, Stats(), heartbeat_sec=0.01)
    b = L1Cache(redis_client, prefix, Stats(), heartbeat_sec=0.01)
    await a.start()
    await b.start()
    try:
        for l1 in (a, b):
            await wait_for(l1.subscribed, "subscribed")
            await heard_from_redis(l1)
        b.put("k", entry(), until=2_000.0, epoch=b.epoch)
        started = b.epoch  # a Redis read of "other" starts on b
        b.heard.clear()
        await a.invalidate([f"{prefix}k-other"])
        await wait_for(b.heard, "the invalidation")
        # What b read before the invalidation arrived is not put back after it.
        b.put("other", entry("tok-2"), until=2_000.0, epoch=started)
        assert b.get("other", 1_500.0) is None
        await a.invalidate(["k"])
        await heard_from_redis(b)
        assert b.get("k", 1_500.0) is None
        assert b._stats.get("l1_invalidations") == 2
    finally:
        await a.stop()
        await b.stop()


async def test_a_lost_subscription_empties_it() -> None:
    server = start_redis()
    redis = aioredis.Redis.from_url(server.url)
    stats = Stats()
    l1 = L1Cache(redis, "l1-test:", stats, heartbeat_sec=0.01)
    await l1.start()
    try:
        await wait_for(l1.subscribed, "subscribed")
        await heard_from_redis(l1)
        l1.put("k", entry(), until=2_000.0, epoch=l1.epoch)
        assert l1.get("k", 1_500.0) is not None
        # Every pub/sub connection of this private server is dropped: invalidations published
        # meanwhile would be lost, so what L1 holds cannot be trusted any more.
        killed = await redis.client_kill_filter(_type="pubsub")
        assert killed >= 1
        for _ in range(200):
            if stats.get("l1_subscription_lost"):
                break
            await heard_from_redis(l1) if l1.subscribed.is_set() else await asyncio.sleep(0.01)
        assert stats.get("l1_subscription_lost") >= 1
        assert l1.get("k", 1_500.0) is None and len(l1) == 0
        # It subscribes again and is used for new reads.
        await wait_for(l1.subscribed, "subscribed again")
        await heard_from_redis(l1)
        l1.put("k", entry(), until=2_000.0, epoch=l1.epoch)
        assert l1.get("k", 1_500.0) is not None
    finally:
        await l1.stop()
        await redis.aclose()
        server.stop()


# -- two `vluna-bff serve` processes sharing a real Redis --------------------------------------------


def event_count(metrics: str, event: str) -> float:
    m = re.search(rf'^vluna_bff_events_total\{{event="{re.escape(event)}"\}} (\S+)$', metrics, re.M)
    return float(m.group(1)) if m else 0.0


async def test_sign_out_on_one_replica_is_never_followed_by_the_token_on_another(
    keys: Keys, prefix: str, emulator_url: str, tmp_path: Path
) -> None:
    # A 2 s invalidation window (the default is 0.5 s): on a loaded machine heartbeats can come
    # back later than 0.5 s, and b would then never serve from its first level at all. The
    # promise under test is the same for any window: no token after the sign-out's 204.
    cache = {"backend": "redis", "key_prefix": prefix, "redis": {"url": REDIS_URL}}
    cache["l1"] = {"invalidation_window_sec": 2.0}
    cfg, env = serve_config(tmp_path, keys, emulator_url, redis_prefix=prefix, cache=cache)
    ports = [free_port(), free_port()]
    procs = [spawn_serve(cfg, port, env, subprocess.DEVNULL) for port in ports]
    a, b = (f"http://127.0.0.1:{port}" for port in ports)
    headers = {"Authorization": f"Bearer {keys.token('alice', org_id='acme')}"}
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            for base in (a, b):
                await await_url(f"{base}/vluna/token", {401}, procs)
            for round_ in range(3):
                first = (await client.get(f"{a}/vluna/token", headers=headers)).json()["access_token"]
                # b reads it from Redis once, then serves it from its first level (asked until it
                # does: on a loaded machine a late heartbeat sends a request to Redis instead).
                before = event_count((await client.get(f"{b}/metrics")).text, "l1_hits")
                for _ in range(100):
                    r = await client.get(f"{b}/vluna/token", headers=headers)
                    assert r.status_code == 200 and r.json()["access_token"] == first
                    if event_count((await client.get(f"{b}/metrics")).text, "l1_hits") > before:
                        break
                else:
                    raise AssertionError(f"round {round_}: b never served from L1")
                out = await client.delete(f"{a}/vluna/token", headers=headers)
                assert out.status_code == 204
                # Right after the 204: b must not hand out the signed-out token.
                r = await client.get(f"{b}/vluna/token", headers=headers)
                assert r.status_code == 200
                assert r.json()["access_token"] != first, f"round {round_}: b served a signed-out token"
                # ... and it hears the invalidation (waited for: it may have missed its L1 because
                # its heartbeat was late, which is the other way it keeps the promise).
                for _ in range(200):
                    text = (await client.get(f"{b}/metrics")).text
                    if event_count(text, "l1_invalidations") >= round_ + 1:
                        break
                    await asyncio.sleep(0.05)
                assert event_count(text, "l1_invalidations") >= round_ + 1
            counters = (await client.get(f"{emulator_url}/__emulator__/counters", headers=CONTROL)).json()[
                "data"
            ]["calls"]
            issued = sum(v for k, v in counters.items() if k.endswith("issue_platform_token"))
            # The first token, then one per sign-out (b's request after it; a reads that one next).
            assert issued == 1 + 3
    finally:
        for p in procs:
            stop(p)
