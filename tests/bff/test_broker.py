"""The broker against the real Redis at 127.0.0.1:6379 with the issuer faked at the edge."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
import redis.asyncio as aioredis

from bff.principals import Principal
from bff.tokens.broker import SignOutIncomplete, TokenRejected, TokenUnavailable
from bff.tokens.issuer import IssuerRejected
from tests.support.redis_servers import TcpProxy, dead_redis_url, start_redis
from tests.support.waiting import until

from .support import (
    ENC_KEY_2,
    FakeClock,
    FakeIssuer,
    Keys,
    make_settings,
    redis_dump,
    redis_settings,
    running_services,
)

ALICE = Principal("org:acme", "alice", {"email": "alice@acme.test"})
BOB = Principal("org:acme", "bob")
BOTH = ("checkout", "portal")


async def token_entries(redis: aioredis.Redis, prefix: str) -> list[bytes]:
    return [k for k in await redis_dump(redis, prefix) if k.startswith(f"{prefix}tok:".encode())]


async def test_miss_then_hit(
    keys: Keys, prefix: str, redis_client: aioredis.Redis, issuer: FakeIssuer
) -> None:
    async with running_services(redis_settings(keys, prefix), issuer, redis_client) as svc:
        first = await svc.broker.get_token(ALICE, BOTH)
        second = await svc.broker.get_token(ALICE, ["portal", "checkout"])
        assert first.access_token == second.access_token
        assert len(issuer.calls) == 1
        assert issuer.calls[0] == ("org:acme", "alice", BOTH, {"email": "alice@acme.test"})
        assert svc.stats.get("cache_hits") == 1 and svc.stats.get("cache_misses") == 1
        # Another identity or other scopes are other entries.
        assert (await svc.broker.get_token(BOB, BOTH)).access_token != first.access_token
        assert (await svc.broker.get_token(ALICE, ["checkout"])).access_token != first.access_token
        assert len(issuer.calls) == 3


async def test_hit_from_another_replica(keys: Keys, prefix: str, redis_client: aioredis.Redis) -> None:
    a_issuer, b_issuer = FakeIssuer(), FakeIssuer()
    settings = redis_settings(keys, prefix)
    async with running_services(settings, a_issuer, redis_client) as a:
        token = await a.broker.get_token(ALICE, BOTH)
    other = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        async with running_services(settings, b_issuer, other) as b:
            assert (await b.broker.get_token(ALICE, BOTH)).access_token == token.access_token
    finally:
        await other.aclose()
    assert len(b_issuer.calls) == 0


async def test_encrypted_at_rest_and_no_identity_in_keys(
    keys: Keys, prefix: str, redis_client: aioredis.Redis, issuer: FakeIssuer
) -> None:
    async with running_services(redis_settings(keys, prefix), issuer, redis_client) as svc:
        entries = [await svc.broker.get_token(p, BOTH) for p in (ALICE, BOB)]
    dump = await redis_dump(redis_client, prefix)
    assert len(await token_entries(redis_client, prefix)) == 2
    assert len(dump) == 4  # and the two users' issuance counters (limits.py), HMAC-named too
    blob = b"".join(k + v for k, v in dump.items())
    for entry in entries:
        token = entry.access_token.encode()
        assert token not in blob
        assert token[:16] not in blob and token[-16:] not in blob
    for needle in (b"alice", b"bob", b"acme", b"ba_org", b"Bearer"):
        assert needle not in blob


async def test_entry_expires_a_safety_margin_before_the_token(
    keys: Keys, prefix: str, redis_client: aioredis.Redis, issuer: FakeIssuer
) -> None:
    issuer.ttl = 300
    async with running_services(
        redis_settings(keys, prefix, safety_margin_sec=60), issuer, redis_client
    ) as svc:
        await svc.broker.get_token(ALICE, BOTH)
    (key,) = await token_entries(redis_client, prefix)
    ttl_ms = await redis_client.pttl(key)
    assert 0 < ttl_ms <= 240_000


async def test_unreadable_entry_is_a_miss(keys: Keys, prefix: str, redis_client: aioredis.Redis) -> None:
    old = FakeIssuer()
    async with running_services(redis_settings(keys, prefix), old, redis_client) as svc:
        first = await svc.broker.get_token(ALICE, BOTH)
    # The only key that could read the entry is retired.
    rotated = make_settings(
        keys,
        cache={
            "backend": "redis",
            "key_prefix": prefix,
            "redis": {"url": "redis://127.0.0.1:6379/0"},
            "encryption_keys": [ENC_KEY_2],
        },
    )
    new = FakeIssuer()
    async with running_services(rotated, new, redis_client) as svc:
        second = await svc.broker.get_token(ALICE, BOTH)
        assert svc.stats.get("cache_unreadable") >= 1
    assert second.access_token != first.access_token and len(new.calls) == 1


async def test_single_flight_in_process(
    keys: Keys, prefix: str, redis_client: aioredis.Redis, issuer: FakeIssuer
) -> None:
    issuer.gate = asyncio.Event()
    async with running_services(redis_settings(keys, prefix), issuer, redis_client) as svc:
        tasks = [asyncio.create_task(svc.broker.get_token(ALICE, BOTH)) for _ in range(500)]
        await until(lambda: issuer.calls)
        issuer.gate.set()
        results = await asyncio.gather(*tasks)
        # All 499 others awaited the local future; none went to the Redis lock.
        assert svc.stats.get("waited_for_other") == 0
    assert len(issuer.calls) == 1
    assert {r.access_token for r in results} == {results[0].access_token}


async def test_single_flight_across_replicas_sharing_redis(keys: Keys, prefix: str) -> None:
    """Three brokers with their own Redis connections and notifiers: one issuance in total."""
    issuers = [FakeIssuer() for _ in range(3)]
    gate = asyncio.Event()
    for i in issuers:
        i.gate = gate
    clients = [aioredis.Redis.from_url("redis://127.0.0.1:6379/0") for _ in range(3)]
    settings = redis_settings(keys, prefix, wait_timeout_sec=5)
    try:
        async with (
            running_services(settings, issuers[0], clients[0]) as a,
            running_services(settings, issuers[1], clients[1]) as b,
            running_services(settings, issuers[2], clients[2]) as c,
        ):
            for svc in (a, b, c):
                await until(lambda: svc.notifier is None or svc.notifier.connected)  # noqa: B023
                # No periodic re-check before the wait times out: only the release message can
                # wake the waiters in time.
                svc.broker._cfg = dataclasses.replace(svc.broker._cfg, recheck_interval_sec=60)
            tasks = [
                asyncio.create_task(svc.broker.get_token(ALICE, BOTH))
                for _ in range(100)
                for svc in (a, b, c)
            ]
            await until(lambda: any(i.calls for i in issuers))
            await asyncio.sleep(0.05)  # give the other replicas time to (wrongly) issue too
            gate.set()
            results = await asyncio.gather(*tasks)
            waited = sum(s.stats.get("waited_for_other") for s in (a, b, c))
            wakeups = sum(s.stats.get("lock_wakeups") for s in (a, b, c))
    finally:
        for cl in clients:
            await cl.aclose()
    assert sum(len(i.calls) for i in issuers) == 1
    assert len({r.access_token for r in results}) == 1
    assert waited == 2  # one waiting request per other replica...
    assert wakeups == 2  # ...each woken by the release message, not by a timer


@pytest.mark.parametrize("dropped", [1, 3])
async def test_a_failed_redis_command_keeps_single_flight_across_replicas(
    keys: Keys, prefix: str, dropped: int
) -> None:
    """The three-process drill's failure, reproduced: a replica whose Redis command fails (under a
    burst, a pool connect that timed out client-side while its event loop stalled; here a
    connection closed by a relay) while Redis is fine. It used to count as an outage for
    `down_backoff_sec`, so that replica issued on its own: 2 issuances for the user. Now the
    command is tried again; after `breaker_failures` (3) in a row a PING decides, and it answers:
    the breaker stays closed and the replica waits for the other's lock."""
    gate = asyncio.Event()
    issuer = FakeIssuer()
    issuer.gate = gate
    proxy = await TcpProxy().start()
    direct = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    relayed = aioredis.Redis.from_url(proxy.url)
    settings = redis_settings(keys, prefix, wait_timeout_sec=10)
    try:
        async with (
            running_services(settings, issuer, direct) as holder,
            running_services(settings, issuer, relayed) as other,
        ):
            for svc in (holder, other):
                await until(lambda: svc.notifier is not None and svc.notifier.connected)  # noqa: B023
            first = asyncio.create_task(holder.broker.get_token(ALICE, BOTH))
            await until(lambda: len(issuer.calls) == 1)  # the holder has the lock, issuing
            # The other replica's next connections fail: its pool has none yet (only the
            # notifier's), so its very first command is the one that fails.
            proxy.drop_next = dropped
            second = asyncio.create_task(other.broker.get_token(ALICE, BOTH))
            await until(lambda: proxy.drop_next == 0)
            await asyncio.sleep(0.3)  # time to (wrongly) issue on its own
            assert len(issuer.calls) == 1
            gate.set()
            a, b = await asyncio.gather(first, second)
            assert other.breaker.closed
            errors = other.stats.get("redis_errors")
            pings = other.stats.get("redis_breaker.ping_ok")
    finally:
        await direct.aclose()
        await relayed.aclose()
        await proxy.stop()
    assert a.access_token == b.access_token
    assert len(issuer.calls) == 1
    assert errors == dropped
    assert pings == (1 if dropped >= 3 else 0)


async def test_commands_failing_while_ping_answers_end_in_503_not_a_guess(keys: Keys, prefix: str) -> None:
    """A Redis that answers PING but refuses the cache's GET (here an ACL without it; in real life
    a read-only replica after a failover, or out of memory): the breaker stays closed, the
    request is retried until `tokens.wait_timeout_sec`, then 503 (TokenUnavailable) without any
    issuance: neither the in-process cache nor a lock-less issuance stands in for Redis."""
    own = start_redis()
    try:
        admin = aioredis.Redis.from_url(own.url)
        await admin.execute_command("ACL", "SETUSER", "bff", "on", ">pw", "~*", "&*", "+@all", "-get")
        await admin.aclose()
        url = f"redis://bff:pw@127.0.0.1:{own.port}/0"
        issuer = FakeIssuer()
        async with running_services(
            redis_settings(keys, prefix, url=url, wait_timeout_sec=0.6), issuer
        ) as svc:
            with pytest.raises(TokenUnavailable) as info:
                await svc.broker.get_token(ALICE, BOTH)
            assert info.value.retry_after == 5
            assert svc.breaker.closed and svc.stats.get("redis_breaker.ping_ok") >= 1
            assert svc.stats.get("redis_unsure") == 1 and svc.stats.get("redis_fallbacks") == 0
        assert issuer.calls == []
    finally:
        own.stop()


async def test_crashed_holder_blocks_only_until_lock_expiry(
    keys: Keys, prefix: str, redis_client: aioredis.Redis, issuer: FakeIssuer
) -> None:
    async with running_services(redis_settings(keys, prefix), issuer, redis_client) as svc:
        key = svc.broker._keys.token(ALICE.principal_id, ALICE.user_id, BOTH)
        # A holder that died: its lock stays until its expiry and nobody will ever publish.
        await redis_client.set(svc.broker._keys.lock(key), "dead-holder", px=300)
        entry = await svc.broker.get_token(ALICE, BOTH)
    assert entry.access_token and len(issuer.calls) == 1


async def test_waiting_too_long_for_a_stuck_holder_is_503(
    keys: Keys, prefix: str, redis_client: aioredis.Redis, issuer: FakeIssuer
) -> None:
    settings = redis_settings(keys, prefix, lock_ttl_sec=30, wait_timeout_sec=0.2)
    async with running_services(settings, issuer, redis_client) as svc:
        key = svc.broker._keys.token(ALICE.principal_id, ALICE.user_id, BOTH)
        await redis_client.set(svc.broker._keys.lock(key), "slow-holder", px=30_000)
        with pytest.raises(TokenUnavailable) as info:
            await svc.broker.get_token(ALICE, BOTH)
    assert info.value.retry_after == 5 and issuer.calls == []


async def test_refresh_ahead_serves_then_renews_once(
    keys: Keys, prefix: str, redis_client: aioredis.Redis, issuer: FakeIssuer
) -> None:
    clock = FakeClock()
    settings = redis_settings(keys, prefix, refresh_ahead_ratio=0.5)
    async with running_services(settings, issuer, redis_client, clock) as svc:
        old = await svc.broker.get_token(ALICE, BOTH)
        clock.advance(300)  # a third of 900 s: not due yet
        assert (await svc.broker.get_token(ALICE, BOTH)).access_token == old.access_token
        await svc.broker.drain()
        assert len(issuer.calls) == 1
        clock.advance(200)  # past half its life
        issuer.gate = asyncio.Event()
        served = await asyncio.gather(*[svc.broker.get_token(ALICE, BOTH) for _ in range(50)])
        assert {s.access_token for s in served} == {old.access_token}  # served without waiting
        issuer.gate.set()
        await svc.broker.drain()
        assert len(issuer.calls) == 2  # one background renewal for 50 due requests
        new = await svc.broker.get_token(ALICE, BOTH)
        assert new.access_token != old.access_token
        assert new.expires_at > old.expires_at
        assert svc.stats.get("refreshes") == 1


async def test_vluna_down_serves_cached_token_until_it_expires(
    keys: Keys, prefix: str, redis_client: aioredis.Redis, issuer: FakeIssuer
) -> None:
    clock = FakeClock()
    async with running_services(redis_settings(keys, prefix), issuer, redis_client, clock) as svc:
        old = await svc.broker.get_token(ALICE, BOTH)
        issuer.fail = True
        clock.advance(600)  # due for renewal, which fails
        assert (await svc.broker.get_token(ALICE, BOTH)).access_token == old.access_token
        await svc.broker.drain()
        assert svc.stats.get("refresh_failures") == 1
        assert (await svc.broker.get_token(ALICE, BOTH)).access_token == old.access_token
        await svc.broker.drain()
        # Within the safety margin it is no longer served; nothing left to serve: 503.
        clock.advance(280)
        with pytest.raises(TokenUnavailable):
            await svc.broker.get_token(ALICE, BOTH)
        # Without any cached token: 503 right away.
        with pytest.raises(TokenUnavailable) as info:
            await svc.broker.get_token(BOB, BOTH)
        assert info.value.retry_after == 5


async def test_vluna_rejecting_is_not_retried_as_unavailable(
    keys: Keys, prefix: str, redis_client: Any
) -> None:
    class Rejecting(FakeIssuer):
        async def issue(self, *args: Any) -> Any:
            raise IssuerRejected("no", status=403, code="AUTH.SERVICE_KEY_DISABLED")

    async with running_services(redis_settings(keys, prefix), Rejecting(), redis_client) as svc:
        with pytest.raises(TokenRejected):
            await svc.broker.get_token(ALICE, BOTH)


async def test_redis_down_keeps_answering_from_process_cache(
    keys: Keys, prefix: str, issuer: FakeIssuer
) -> None:
    settings = redis_settings(keys, prefix, url=dead_redis_url())
    async with running_services(settings, issuer) as svc:
        first = await svc.broker.get_token(ALICE, BOTH)
        second = await svc.broker.get_token(ALICE, BOTH)
        assert first.access_token == second.access_token
        assert len(issuer.calls) == 1
        assert svc.stats.get("redis_errors") >= 1
        # Single flight still holds within the process.
        issuer.gate = asyncio.Event()
        tasks = [asyncio.create_task(svc.broker.get_token(BOB, BOTH)) for _ in range(50)]
        await until(lambda: len(issuer.calls) >= 2)
        issuer.gate.set()
        await asyncio.gather(*tasks)
        assert len(issuer.calls) == 2
        # Sign-out cannot be promised without Redis; a best-effort drop raises nothing.
        with pytest.raises(SignOutIncomplete):
            await svc.broker.forget(ALICE)
        await svc.broker.forget(ALICE, strict=False)
        assert len(issuer.calls) == 2


async def test_redis_failing_mid_flight(keys: Keys, prefix: str, redis_client: aioredis.Redis) -> None:
    proxy = await TcpProxy().start()
    issuer = FakeIssuer()
    try:
        async with running_services(redis_settings(keys, prefix, url=proxy.url), issuer) as svc:
            alice = await svc.broker.get_token(ALICE, BOTH)
            assert len(await token_entries(redis_client, prefix)) == 1  # really in Redis
            await proxy.stop()
            bob = await svc.broker.get_token(BOB, BOTH)
            assert bob.access_token and svc.stats.get("redis_errors") >= 1
            # Alice's entry lives only in the unreachable Redis: issued again, then cached locally.
            again = await svc.broker.get_token(ALICE, BOTH)
            assert again.access_token != alice.access_token
            assert (await svc.broker.get_token(BOB, BOTH)).access_token == bob.access_token
            assert len(issuer.calls) == 3
    finally:
        await proxy.stop()


async def test_redis_coming_back(keys: Keys, prefix: str, redis_client: aioredis.Redis) -> None:
    proxy = await TcpProxy().start()
    issuer = FakeIssuer()
    try:
        async with running_services(redis_settings(keys, prefix, url=proxy.url), issuer) as svc:
            notifier = svc.notifier
            assert notifier is not None
            await until(lambda: notifier.connected)
            await proxy.stop()
            await svc.broker.get_token(ALICE, BOTH)  # served while Redis is away
            await until(lambda: not notifier.connected)
            proxy = await TcpProxy(port=proxy.port).start()  # Redis is back on the same address
            await until(lambda: notifier.connected)
            # The breaker's next PING (every probe_interval_sec) finds Redis back.
            await until(lambda: svc.breaker.closed)
            await svc.broker.get_token(BOB, BOTH)
            assert len(await token_entries(redis_client, prefix)) == 1  # Bob's went to Redis again
    finally:
        await proxy.stop()


async def test_once_redis_answers_it_alone_decides(keys: Keys, prefix: str) -> None:
    """A token this process cached in-process during an outage is not served once Redis is back:
    another replica may have signed its user out meanwhile, and a sign-out can only delete what is
    in Redis."""
    proxy = await TcpProxy().start()
    issuer = FakeIssuer()
    try:
        async with running_services(redis_settings(keys, prefix, url=proxy.url), issuer) as svc:
            await proxy.stop()
            during = await svc.broker.get_token(ALICE, BOTH)
            assert (await svc.broker.get_token(ALICE, BOTH)).access_token == during.access_token
            proxy = await TcpProxy(port=proxy.port).start()
            # Back: the breaker's next PING closes it, and from then on Redis alone decides.
            await until(lambda: svc.breaker.closed)
            after = await svc.broker.get_token(ALICE, BOTH)
            assert after.access_token != during.access_token
            assert len(issuer.calls) == 2
    finally:
        await proxy.stop()


async def test_forget_drops_every_scope_combination(
    keys: Keys, prefix: str, redis_client: aioredis.Redis, issuer: FakeIssuer
) -> None:
    async with running_services(redis_settings(keys, prefix), issuer, redis_client) as svc:
        for scopes in (BOTH, ("checkout",), ("portal",)):
            await svc.broker.get_token(ALICE, scopes)
        bob = await svc.broker.get_token(BOB, BOTH)
        assert len(await token_entries(redis_client, prefix)) == 4
        await svc.broker.forget(ALICE)
        assert len(await token_entries(redis_client, prefix)) == 1
        assert (await svc.broker.get_token(BOB, BOTH)).access_token == bob.access_token
        await svc.broker.get_token(ALICE, BOTH)
        assert len(issuer.calls) == 5


async def test_sign_out_during_an_issuance_is_not_undone(
    keys: Keys, prefix: str, redis_client: aioredis.Redis, issuer: FakeIssuer
) -> None:
    issuer.gate = asyncio.Event()
    async with running_services(redis_settings(keys, prefix), issuer, redis_client) as svc:
        pending = asyncio.create_task(svc.broker.get_token(ALICE, BOTH))
        await until(lambda: issuer.calls)
        await svc.broker.forget(ALICE)  # the user signs out while their token is being issued
        issuer.gate.set()
        first = await pending
        assert svc.stats.get("stores_skipped_after_sign_out") == 1
        issuer.gate = None
        second = await svc.broker.get_token(ALICE, BOTH)
        assert second.access_token != first.access_token
        # Later issuances are cached again.
        assert (await svc.broker.get_token(ALICE, BOTH)).access_token == second.access_token
        assert len(issuer.calls) == 2


async def test_memory_backend(keys: Keys, issuer: FakeIssuer) -> None:
    async with running_services(make_settings(keys), issuer) as svc:
        assert svc.redis is None
        a = await svc.broker.get_token(ALICE, BOTH)
        assert (await svc.broker.get_token(ALICE, BOTH)).access_token == a.access_token
        await svc.broker.forget(ALICE)
        assert (await svc.broker.get_token(ALICE, BOTH)).access_token != a.access_token
        assert len(issuer.calls) == 2
