"""What a cold issuance and concurrent reads cost in Redis round trips (one Redis, real server at
127.0.0.1:6379): the read, and on a miss the lock and the user's issuance count, in one script; the
sign-out check, the store, the release and its announcement in another; concurrent requests for
one key sharing one read and one fill."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from bff.principals import Principal
from bff.tokens.lock import RedisLock
from tests.support.redis_servers import SHARED_REDIS_URL
from tests.support.waiting import until

from .support import FakeIssuer, Keys, make_settings, redis_dump, redis_settings, running_services

ALICE = Principal("org:acme", "alice")
BOB = Principal("org:acme", "bob")
BOTH = ("checkout", "portal")
BACKGROUND = {"PUBLISH", "PING"}  # the first level's heartbeats; the breaker's probes


class CountingRedis(aioredis.Redis):
    """Records the name of every command sent outside pub/sub (a script call is one EVALSHA, a
    pipeline is not used on these paths)."""

    sent: list[str]

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]).upper())
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def commands(self) -> list[str]:
        return [c for c in self.sent if c not in BACKGROUND]


def counting_client() -> CountingRedis:
    client: CountingRedis = CountingRedis.from_url(SHARED_REDIS_URL)
    client.sent = []
    return client


async def test_a_cold_issuance_is_two_round_trips(keys: Keys, prefix: str, issuer: FakeIssuer) -> None:
    """Two requests at once for a user without a token: the read-or-lock script (the second
    request waits for the first's read, then joins its fill), the store script."""
    client = counting_client()
    try:
        async with running_services(redis_settings(keys, prefix), issuer, client) as svc:
            await svc.broker.get_token(BOB, BOTH)  # the scripts are loaded (SCRIPT LOAD) by now
            client.sent.clear()
            a, b = await asyncio.gather(svc.broker.get_token(ALICE, BOTH), svc.broker.get_token(ALICE, BOTH))
            assert client.commands() == ["EVALSHA", "EVALSHA"]
            assert a.access_token == b.access_token and len(issuer.calls) == 2
            assert svc.stats.get("single_flight_waits") == 1
            key = svc.broker._keys.token(ALICE.principal_id, ALICE.user_id, BOTH)
            # Stored, the lock freed, the user's issuance counted once (bff/tokens/limits.py).
            dump = await redis_dump(client, prefix)
            assert key.encode() in dump and svc.broker._keys.lock(key).encode() not in dump
            counters = [v for k, v in dump.items() if k.startswith(f"{prefix}iss:".encode())]
            assert sorted(counters) == [b"1", b"1"]  # Bob's and Alice's
            # Served from the cache afterwards: no second issuance.
            client.sent.clear()
            assert (await svc.broker.get_token(ALICE, BOTH)).access_token == a.access_token
            assert len(issuer.calls) == 2
    finally:
        await client.aclose()


async def test_a_failed_store_script_falls_back_to_separate_commands(
    keys: Keys, prefix: str, issuer: FakeIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store script fails (here: the connection drops under it): the sign-out check, the store
    and the release are then sent one by one, each tried as the cache does; nothing is lost."""
    failed: list[str] = []

    async def dropped(self: RedisLock, *args: Any) -> bool:
        failed.append("store_and_release")
        raise RedisConnectionError("connection dropped")

    monkeypatch.setattr(RedisLock, "store_and_release", dropped)
    client = counting_client()
    try:
        async with running_services(redis_settings(keys, prefix), issuer, client) as svc:
            await svc.broker.get_token(BOB, BOTH)  # the scripts are loaded (SCRIPT LOAD) by now
            client.sent.clear()
            entry = await svc.broker.get_token(ALICE, BOTH)
            assert len(failed) == 2 and svc.stats.get("redis_errors") == 2
            assert svc.breaker.closed
            # The read-or-lock script; then the marker, the store, the release.
            assert client.commands() == ["EVALSHA", "GET", "SET", "EVALSHA"]
            key = svc.broker._keys.token(ALICE.principal_id, ALICE.user_id, BOTH)
            dump = await redis_dump(client, prefix)
            assert key.encode() in dump and svc.broker._keys.lock(key).encode() not in dump
        other = FakeIssuer()
        async with running_services(redis_settings(keys, prefix), other, client) as svc:
            assert (await svc.broker.get_token(ALICE, BOTH)).access_token == entry.access_token
        assert other.calls == []
    finally:
        await client.aclose()


async def test_concurrent_hits_share_one_read_through_the_first_level(
    keys: Keys, prefix: str, issuer: FakeIssuer
) -> None:
    """Requests arriving while a read of their key is under way wait for it and take the entry it
    put into the first level: one Redis read for all of them."""
    async with running_services(redis_settings(keys, prefix), issuer) as a:
        token = await a.broker.get_token(ALICE, BOTH)
    client = counting_client()
    try:
        async with running_services(redis_settings(keys, prefix), FakeIssuer(), client) as b:
            l1 = b.l1
            assert l1 is not None
            await l1.start()
            try:
                await until(lambda: l1.usable)
                client.sent.clear()
                served = await asyncio.gather(*[b.broker.get_token(ALICE, BOTH) for _ in range(20)])
                assert {s.access_token for s in served} == {token.access_token}
                assert client.commands() == ["EVALSHA"]  # the read (it would lock on a miss)
                assert b.stats.get("l1_hits") == 19 and b.stats.get("cache_hits") == 20
            finally:
                await l1.stop()
    finally:
        await client.aclose()


async def test_without_a_first_level_concurrent_hits_read_redis_themselves(
    keys: Keys, prefix: str, issuer: FakeIssuer
) -> None:
    """Without the first level nothing proves that a value read before a request arrived was not
    signed out since: after waiting for that read, a request that found it there reads again."""
    async with running_services(redis_settings(keys, prefix), issuer) as a:
        token = await a.broker.get_token(ALICE, BOTH)
    client = counting_client()
    try:
        async with running_services(redis_settings(keys, prefix), FakeIssuer(), client) as b:
            assert b.l1 is not None and not b.l1.usable  # not started: never serves
            client.sent.clear()
            served = await asyncio.gather(*[b.broker.get_token(ALICE, BOTH) for _ in range(5)])
            assert {s.access_token for s in served} == {token.access_token}
            assert client.commands() == ["EVALSHA"] * 5
    finally:
        await client.aclose()


async def test_a_request_gone_while_its_read_takes_the_lock_leaves_no_lock_behind(
    keys: Keys, prefix: str, issuer: FakeIssuer, redis_client: aioredis.Redis
) -> None:
    """The read that takes the lock runs in a task of its own: a caller cancelled while it is under
    way (a client that disconnects) does not strand the lock; the fill goes on and stores."""
    async with running_services(redis_settings(keys, prefix, lock_ttl_sec=30), issuer, redis_client) as svc:
        key = svc.broker._keys.token(ALICE.principal_id, ALICE.user_id, BOTH)
        lock_key = svc.broker._keys.lock(key)
        request = asyncio.create_task(svc.broker.get_token(ALICE, BOTH))
        await asyncio.sleep(0)  # the script is on its way
        request.cancel()
        await until(lambda: len(issuer.calls) == 1)
        dump: dict[bytes, bytes] = {}

        async def stored() -> bool:
            dump.update(await redis_dump(redis_client, prefix))
            return key.encode() in dump

        for _ in range(200):
            if await stored():
                break
            await asyncio.sleep(0.01)
        assert key.encode() in dump and await redis_client.exists(lock_key) == 0
        again = await asyncio.wait_for(svc.broker.get_token(ALICE, BOTH), 5)
        assert again.access_token and len(issuer.calls) == 1


async def test_a_token_stored_again_is_dropped_from_every_first_level(
    keys: Keys, prefix: str, redis_client: aioredis.Redis
) -> None:
    """A key filled twice (as when two replicas issue during a Redis failover): the replica that
    keeps the first token in its first level drops it when the second is stored, and serves what
    Redis holds."""
    # A 2 s invalidation window (the default is 0.5 s): on a loaded machine heartbeats can come
    # back later than 0.5 s, and b would then not serve from its first level at that moment. The
    # promise under test is the same for any window.
    cache = {
        "backend": "redis",
        "key_prefix": prefix,
        "redis": {"url": SHARED_REDIS_URL, "probe_interval_sec": 0.2},
        "l1": {"invalidation_window_sec": 2.0},
    }
    settings = make_settings(keys, cache=cache)
    other = aioredis.Redis.from_url(SHARED_REDIS_URL)
    try:
        async with (
            running_services(settings, FakeIssuer(), redis_client) as a,
            running_services(settings, FakeIssuer(), other) as b,
        ):
            for svc in (a, b):
                assert svc.l1 is not None
                await svc.l1.start()
            try:
                await until(lambda: a.l1 is not None and a.l1.usable and b.l1 is not None and b.l1.usable)
                first = await a.broker.get_token(ALICE, BOTH)
                # b reads the first token from Redis into its first level, then serves it from there
                # (once its heartbeat is back: bounded).
                for _ in range(500):
                    assert (await b.broker.get_token(ALICE, BOTH)).access_token == first.access_token
                    if b.stats.get("l1_hits"):
                        break
                    await asyncio.sleep(0.01)
                assert b.stats.get("l1_hits") >= 1  # b holds the first token in its first level
                # The entry is lost (a failover to a replica that never had it): a fills it again.
                key = a.broker._keys.token(ALICE.principal_id, ALICE.user_id, BOTH)
                await redis_client.delete(key)
                second = await a.broker.get_token(ALICE, BOTH)
                assert second.access_token != first.access_token
                await until(lambda: b.stats.get("l1_invalidations") >= 1)
                assert (await b.broker.get_token(ALICE, BOTH)).access_token == second.access_token
            finally:
                for svc in (a, b):
                    assert svc.l1 is not None
                    await svc.l1.stop()
    finally:
        await other.aclose()
