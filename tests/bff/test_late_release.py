"""A lock holder whose release Redis refused (bff/tokens/release.py), against the real Redis at
127.0.0.1:6379: the holder reaches it through a relay (tests.support.redis_servers.TcpProxy) that
is cut while it issues, so its store-and-release and its release fail and its breaker opens (the
Cluster drill's case: a master killed, the holder's breaker open, its lock left in Redis). The
other replica reaches Redis directly and waits for that lock."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from bff.app import Services
from bff.principals import Principal
from tests.support.redis_servers import SHARED_REDIS_URL, TcpProxy
from tests.support.waiting import until

from .support import FakeIssuer, Keys, make_settings, running_services

ALICE = Principal("org:acme", "alice")
BOTH = ("checkout", "portal")


def settings(keys: Keys, prefix: str, url: str, lock_ttl_sec: float) -> Any:
    return make_settings(
        keys,
        cache={"backend": "redis", "key_prefix": prefix, "redis": {"url": url, "probe_interval_sec": 0.2}},
        tokens={"lock_ttl_sec": lock_ttl_sec, "wait_timeout_sec": lock_ttl_sec + 2},
        vluna={"timeout_sec": 1},  # lets the lock's TTL be short (it must exceed the issuance's)
    )


@dataclass
class Refused:
    holder: Services  # issued with the lock, then lost Redis before storing and releasing
    proxy: TcpProxy  # the holder's relay to Redis, cut
    lock_key: str  # the holder's lock, still in Redis
    direct: aioredis.Redis  # a client of the same Redis, not through the relay


@contextlib.asynccontextmanager
async def refused_release(keys: Keys, prefix: str, lock_ttl_sec: float) -> AsyncIterator[Refused]:
    proxy = await TcpProxy().start()
    relayed = aioredis.Redis.from_url(proxy.url)
    direct = aioredis.Redis.from_url(SHARED_REDIS_URL)
    issuer = FakeIssuer()
    issuer.gate = asyncio.Event()
    try:
        holder_settings = settings(keys, prefix, proxy.url, lock_ttl_sec)
        async with running_services(holder_settings, issuer, relayed) as holder:
            key = holder.broker._keys.token(ALICE.principal_id, ALICE.user_id, BOTH)
            lock_key = holder.broker._keys.lock(key)
            first = asyncio.create_task(holder.broker.get_token(ALICE, BOTH))
            await until(lambda: len(issuer.calls) == 1)  # holding the lock, issuing
            await proxy.stop()
            issuer.gate.set()
            served = await first  # from its own issuance; stored in-process only
            assert served.access_token
            assert holder.breaker.state == "open"
            assert await direct.exists(lock_key) == 1
            yield Refused(holder, proxy, lock_key, direct)
    finally:
        await relayed.aclose()
        await direct.aclose()
        await proxy.stop()


async def test_a_refused_release_is_retried_and_wakes_the_waiting_replica(keys: Keys, prefix: str) -> None:
    """The waiting replica is served as soon as the holder reaches Redis again, not when the lock
    expires (8 s): the holder's release is tried again in the background and announced."""
    ttl = 8.0
    other_issuer = FakeIssuer()
    other_client = aioredis.Redis.from_url(SHARED_REDIS_URL)
    other_settings = settings(keys, prefix, SHARED_REDIS_URL, ttl)
    try:
        async with (
            running_services(other_settings, other_issuer, other_client) as other,
            refused_release(keys, prefix, ttl) as refused,
        ):
            holder = refused.holder
            await until(lambda: other.notifier is not None and other.notifier.connected)
            t_asked = time.monotonic()
            waiting = asyncio.create_task(other.broker.get_token(ALICE, BOTH))
            await asyncio.sleep(1.0)  # the holder's retries keep failing meanwhile
            assert not waiting.done()
            assert holder.stats.get("lock_releases_late") == 0
            await refused.proxy.start()  # Redis answers the holder again
            t_back = time.monotonic()
            entry = await asyncio.wait_for(waiting, ttl + 3)
            served_after = time.monotonic() - t_back
            waited = time.monotonic() - t_asked
            late = holder.stats.get("lock_releases_late")
            retried = holder.stats.get("lock_releases_retried")
    finally:
        await other_client.aclose()
    assert entry.access_token
    # Released within the retries' pause (at most 1 s) plus the other replica's wake-up and
    # issuance; the lock itself would have held it until its expiry, about 8 s after it was taken.
    assert served_after < 2.5, (served_after, waited)
    assert len(other_issuer.calls) == 1
    assert late == 1 and retried == 1


async def test_a_late_release_never_deletes_another_holders_lock(keys: Keys, prefix: str) -> None:
    async with refused_release(keys, prefix, 8.0) as refused:
        # Meanwhile the lock changed hands (as after its expiry): the late release must leave it.
        await refused.direct.set(refused.lock_key, "another-holder", px=8000)
        await refused.proxy.start()
        await until(lambda: refused.holder.stats.get("lock_releases_late") == 1, timeout=5)
        assert await refused.direct.get(refused.lock_key) == b"another-holder"


async def test_a_late_release_stops_once_the_lock_has_expired(keys: Keys, prefix: str) -> None:
    async with refused_release(keys, prefix, 2.5) as refused:
        holder = refused.holder
        releases = holder.broker._releases
        assert releases is not None and releases.pending == 1
        await until(lambda: releases.pending == 0, timeout=5)  # Redis never came back
        assert holder.stats.get("lock_releases_abandoned") == 1
        assert holder.stats.get("lock_releases_late") == 0
        assert await refused.direct.exists(refused.lock_key) == 0  # expired in Redis by then


async def test_late_releases_are_cancelled_on_shutdown(keys: Keys, prefix: str) -> None:
    async with refused_release(keys, prefix, 8.0) as refused:
        holder = refused.holder
        releases = holder.broker._releases
        assert releases is not None and releases.pending == 1
        tasks = list(releases._tasks)
        await holder.broker.aclose()
        assert releases.pending == 0 and all(t.done() for t in tasks)
        assert holder.stats.get("lock_releases_abandoned") == 1
        # Shut down: a release refused from now on is not tried again.
        releases.start(refused.lock_key, "owner", "key", time.monotonic() + 5)
        assert releases.pending == 0 and holder.stats.get("lock_releases_abandoned") == 2
