"""Issuance limits (tokens.issuance_limit) against the real Redis, the issuer faked at the edge."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from bff.app import Services
from bff.principals import Principal
from bff.settings import Settings
from bff.tokens.limits import IssuanceLimited
from tests.support.redis_servers import dead_redis_url

from .support import FakeIssuer, Keys, client_for, make_settings, running_services

ALICE = Principal("org:acme", "alice")
BOB = Principal("org:acme", "bob")
SCOPE_SETS = [("checkout",), ("portal",), ("checkout", "portal")]


def limited(keys: Keys, prefix: str, url: str = "redis://127.0.0.1:6379/0", **limit: Any) -> Settings:
    return make_settings(
        keys,
        cache={"backend": "redis", "key_prefix": prefix, "redis": {"url": url, "probe_interval_sec": 0.2}},
        tokens={"issuance_limit": limit},
    )


async def test_per_user_limit_counts_issuances_only(
    keys: Keys, prefix: str, redis_client: aioredis.Redis, issuer: FakeIssuer
) -> None:
    settings = limited(keys, prefix, per_user=2, window_sec=60)
    async with running_services(settings, issuer, redis_client) as svc:
        first = await svc.broker.get_token(ALICE, SCOPE_SETS[0])
        await svc.broker.get_token(ALICE, SCOPE_SETS[1])
        with pytest.raises(IssuanceLimited) as refused:
            await svc.broker.get_token(ALICE, SCOPE_SETS[2])
        assert not refused.value.budget and 1 <= refused.value.retry_after <= 60
        # Cached tokens are served whatever the counter says; other users are not affected.
        for _ in range(5):
            assert (await svc.broker.get_token(ALICE, SCOPE_SETS[0])).access_token == first.access_token
        await svc.broker.get_token(BOB, SCOPE_SETS[0])
        assert len(issuer.calls) == 3
        assert svc.stats.get("issuances_limited_user") == 1


@contextlib.asynccontextmanager
async def two_replicas(
    settings: Settings, redis_client: aioredis.Redis
) -> AsyncIterator[tuple[Services, Services, FakeIssuer, FakeIssuer]]:
    """Two replicas of the service (each with its own Redis connection) sharing one Redis."""
    a_issuer, b_issuer = FakeIssuer(), FakeIssuer()
    other = aioredis.Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        async with (
            running_services(settings, a_issuer, redis_client) as a,
            running_services(settings, b_issuer, other) as b,
        ):
            yield a, b, a_issuer, b_issuer
    finally:
        await other.aclose()


async def test_the_per_user_limit_is_shared_by_replicas(
    keys: Keys, prefix: str, redis_client: aioredis.Redis
) -> None:
    settings = limited(keys, prefix, per_user=2)
    async with two_replicas(settings, redis_client) as (a, b, _, _):
        await a.broker.get_token(ALICE, SCOPE_SETS[0])
        await b.broker.get_token(ALICE, SCOPE_SETS[1])
        for svc in (a, b):
            with pytest.raises(IssuanceLimited):
                await svc.broker.get_token(ALICE, SCOPE_SETS[2])


async def test_shared_budgets_are_not_spent_by_a_refused_user(
    keys: Keys, prefix: str, redis_client: aioredis.Redis
) -> None:
    """per_replica (this process) and all_replicas (Redis): a user refused for their own limit
    does not use them up for everyone else."""
    settings = limited(keys, prefix, per_user=1, per_replica=3, all_replicas=4)
    async with two_replicas(settings, redis_client) as (a, b, a_issuer, b_issuer):
        await a.broker.get_token(ALICE, SCOPE_SETS[0])
        for scopes in SCOPE_SETS[1:] * 5:
            with pytest.raises(IssuanceLimited) as refused:
                await a.broker.get_token(ALICE, scopes)
            assert not refused.value.budget
        users = [Principal("org:x", f"u{i}") for i in range(5)]
        await a.broker.get_token(users[0], SCOPE_SETS[0])
        await a.broker.get_token(users[1], SCOPE_SETS[0])
        with pytest.raises(IssuanceLimited) as refused:  # this replica's 4th issuance
            await a.broker.get_token(users[2], SCOPE_SETS[0])
        assert refused.value.budget
        await b.broker.get_token(users[3], SCOPE_SETS[0])  # the 4th of all replicas
        with pytest.raises(IssuanceLimited) as refused:
            await b.broker.get_token(users[4], SCOPE_SETS[0])
        assert refused.value.budget
        assert len(a_issuer.calls) == 3 and len(b_issuer.calls) == 1


async def test_without_redis_the_user_limit_is_kept_per_process(keys: Keys, prefix: str) -> None:
    issuer = FakeIssuer()
    settings = limited(keys, prefix, url=dead_redis_url(), per_user=1, all_replicas=1)
    async with running_services(settings, issuer) as svc:
        await svc.broker.get_token(ALICE, SCOPE_SETS[0])
        with pytest.raises(IssuanceLimited):
            await svc.broker.get_token(ALICE, SCOPE_SETS[1])
        # The all-replica budget needs Redis: not enforced without it (the per-replica one is).
        await svc.broker.get_token(BOB, SCOPE_SETS[0])
        assert len(issuer.calls) == 2


async def test_a_429_with_retry_after_on_the_token_route(keys: Keys, prefix: str, issuer: FakeIssuer) -> None:
    settings = limited(keys, prefix, per_user=1, per_replica=2)
    async with client_for(settings, issuer) as client:
        h = {"Authorization": f"Bearer {keys.token('alice', org_id='acme')}"}
        assert (await client.get("/vluna/token", headers=h)).status_code == 200
        r = await client.get("/vluna/token", headers=h, params={"scopes": "portal"})
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
        assert r.json()["error"] == "rate_limited" and r.headers["cache-control"] == "no-store"
        assert (await client.get("/vluna/token", headers=h)).status_code == 200  # cached
        other = {"Authorization": f"Bearer {keys.token('bob', org_id='acme')}"}
        assert (await client.get("/vluna/token", headers=other)).status_code == 200
        third = {"Authorization": f"Bearer {keys.token('carol', org_id='acme')}"}
        r = await client.get("/vluna/token", headers=third)
        assert r.status_code == 429 and r.json()["error"] == "issuance_budget_exhausted"
        assert "retry-after" in r.headers


async def test_limits_can_be_turned_off(keys: Keys, prefix: str, redis_client: aioredis.Redis) -> None:
    issuer = FakeIssuer()
    settings = limited(keys, prefix, per_user=0, per_replica=0, all_replicas=0)
    async with running_services(settings, issuer, redis_client) as svc:
        for _ in range(30):
            await svc.broker.forget(ALICE)
            await svc.broker.get_token(ALICE, SCOPE_SETS[0])
        assert len(issuer.calls) == 30
    assert not [k async for k in redis_client.scan_iter(match=f"{prefix}iss:*")]
