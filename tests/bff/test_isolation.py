"""Property: whatever the interleaving of users, scopes and sign-outs, no request ever receives a
token issued for another identity (real Redis, full HTTP path, concurrent requests)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bff.tokens.issuer import IssuedToken
from tests.support.redis_servers import SHARED_REDIS_URL as REDIS_URL

from .support import FakeIssuer, Keys, client_for, redis_settings

# Look-alikes on purpose: separators inside ids, case, whitespace, combining marks, prefixes.
ORGS = [None, "acme", "a:b", "a", "ACME", "acme ", "org:acme", "b|c"]
SUBS = ["alice", "b:alice", "Alice", "alice\u0301", "bob", "a", "1", "acme"]
SCOPES = ["checkout", "portal", "checkout,portal", "portal,checkout", None]


class TrackingIssuer(FakeIssuer):
    def __init__(self) -> None:
        super().__init__()
        self.owner: dict[str, tuple[str, str, tuple[str, ...]]] = {}

    async def issue(
        self, principal_id: str, user_id: str, scopes: Sequence[str], traits: Mapping[str, Any]
    ) -> IssuedToken:
        await asyncio.sleep(0)  # let concurrent requests interleave
        token = await super().issue(principal_id, user_id, scopes, traits)
        self.owner[token.access_token] = (principal_id, user_id, tuple(scopes))
        return token


def expected(org: str | None, sub: str, scopes: str | None) -> tuple[str, str, tuple[str, ...]]:
    principal = f"org:{org}" if org and org.strip() else f"user:{sub}"
    wanted = tuple(sorted(set((scopes or "checkout,portal").split(","))))
    return principal, sub, wanted


Op = tuple[Any, str, Any, bool]


async def scenario(keys: Keys, ops: list[Op]) -> None:
    prefix = f"test-bff-iso-{uuid.uuid4().hex[:10]}:"
    issuer = TrackingIssuer()
    tokens = {
        (org, sub): keys.token(sub, **({"org_id": org} if org is not None else {})) for org, sub, _, _ in ops
    }
    try:
        async with client_for(redis_settings(keys, prefix), issuer) as client:

            async def one(org: str | None, sub: str, scopes: str | None, sign_out: bool) -> None:
                headers = {"Authorization": f"Bearer {tokens[(org, sub)]}"}
                if sign_out:
                    assert (await client.delete("/vluna/token", headers=headers)).status_code == 204
                params = {"scopes": scopes} if scopes else {}
                r = await client.get("/vluna/token", params=params, headers=headers)
                assert r.status_code == 200, r.text
                body = r.json()
                assert issuer.owner[body["access_token"]] == expected(org, sub, scopes)
                assert tuple(body["scopes"]) == expected(org, sub, scopes)[2]

            # Twice: the first round is mostly misses, the second mostly cache hits.
            await asyncio.gather(*[one(*op) for op in ops])
            await asyncio.gather(*[one(*op) for op in reversed(ops)])
    finally:
        r = aioredis.Redis.from_url(REDIS_URL)
        leftover = [k async for k in r.scan_iter(match=f"{prefix}*")]
        if leftover:
            await r.delete(*leftover)
        await r.aclose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(ORGS), st.sampled_from(SUBS), st.sampled_from(SCOPES), st.booleans()),
        min_size=1,
        max_size=25,
    )
)
def test_no_request_receives_another_identitys_token(keys: Keys, ops: list[Op]) -> None:
    asyncio.run(scenario(keys, ops))
