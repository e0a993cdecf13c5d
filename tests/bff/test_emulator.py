"""Issuance through the real SDK against the Vluna emulator (in-process transport)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from vlunaai import RequestContext
from vlunaai.testing import VlunaEmulator

from bff.settings import Settings
from bff.tokens.issuer import IssuerRejected, IssuerUnavailable

from .support import Keys, client_for, make_settings, sdk_issuer

OP = "issue_platform_token"


@pytest.fixture
async def emulator() -> AsyncIterator[VlunaEmulator]:
    async with VlunaEmulator() as emu:
        yield emu


@pytest.fixture(params=["0.3.2", "oss"])
async def any_emulator(request: pytest.FixtureRequest) -> AsyncIterator[VlunaEmulator]:
    """Each flavour: the 0.3.2 API, the open-source server as recorded."""
    async with VlunaEmulator(flavor=request.param) as emu:
        yield emu


def first_calls(emu: VlunaEmulator) -> int:
    """Issuance calls for a new principal: the open-source server fails the first one (500)."""
    return 2 if emu.settings.flavor == "oss" else 1


async def test_issue_through_the_sdk(any_emulator: VlunaEmulator) -> None:
    emulator = any_emulator
    issuer = sdk_issuer(emulator)
    token = await issuer.issue("org:acme", "alice", ["checkout"], {"email": "a@acme.test"})
    await issuer.aclose()
    assert token.token_type == "Bearer" and token.expires_in == 600
    assert token.billing_account_id and token.billing_user_id and token.expires_at
    assert emulator.calls(OP) == first_calls(emulator)
    assert "access_token" not in repr(token) and token.access_token not in repr(token)
    # The platform token works on the bearer API.
    bearer = emulator.bearer_client(error_mode="raise")
    await bearer.list_catalog_products(context=RequestContext(access_token=token.access_token))


@pytest.mark.parametrize(("status", "calls"), [(500, 2), (502, 1), (503, 1), (429, 1)])
async def test_unavailable_statuses(emulator: VlunaEmulator, status: int, calls: int) -> None:
    emulator.inject_fault(OP, status=status, retry_after=0, times=None)
    issuer = sdk_issuer(emulator)
    with pytest.raises(IssuerUnavailable):
        await issuer.issue("org:acme", "alice", ["checkout"], {})
    await issuer.aclose()
    # max_retries 0: one attempt, except that a 500 SERVER.UNEXPECTED is always tried twice.
    assert emulator.calls(OP) == calls


async def test_connection_dropped_and_slow_are_unavailable(emulator: VlunaEmulator) -> None:
    emulator.inject_fault(OP, drop_connection=True, times=1)
    issuer = sdk_issuer(emulator)
    with pytest.raises(IssuerUnavailable):
        await issuer.issue("org:acme", "alice", ["checkout"], {})
    emulator.inject_fault(OP, latency=5, times=1)
    slow = sdk_issuer(emulator, timeout=0.1)
    with pytest.raises(IssuerUnavailable):
        await slow.issue("org:acme", "alice", ["checkout"], {})
    await issuer.aclose()
    await slow.aclose()


async def test_wrong_service_key_is_rejected_not_unavailable(emulator: VlunaEmulator) -> None:
    issuer = sdk_issuer(emulator, secret="d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldC13cm9uZyE=")
    with pytest.raises(IssuerRejected) as info:
        await issuer.issue("org:acme", "alice", ["checkout"], {})
    await issuer.aclose()
    assert info.value.status == 401
    assert "d3Jvbmc" not in str(info.value)


@pytest.mark.parametrize("retries", [0, 1, 2])
async def test_first_call_failing_once_is_retried_with_the_same_key(retries: int) -> None:
    # The server of the recordings: a new principal's first call answers 500 SERVER.UNEXPECTED
    # (the account is created anyway), the same request again succeeds. Even with retries off
    # the user never sees it, and both attempts carry one Idempotency-Key.
    async with VlunaEmulator(flaky_account_creation=True) as emu:
        keys_seen: list[str] = []
        transport = emu.transport()
        inner = transport.handle_async_request

        async def spy(request: Any) -> Any:
            keys_seen.append(request.headers["idempotency-key"])
            return await inner(request)

        transport.handle_async_request = spy  # type: ignore[method-assign]
        issuer = sdk_issuer(emu, retries=retries, transport=transport)
        assert (await issuer.issue("org:new", "alice", ["portal"], {})).access_token
        assert emu.calls(OP) == 2 and len(set(keys_seen)) == 1
        # An existing principal: one call, and a key of its own.
        assert (await issuer.issue("org:new", "bob", ["portal"], {})).access_token
        await issuer.aclose()
        assert emu.calls(OP) == 3 and len(set(keys_seen)) == 2


def emulated(keys: Keys, emu: VlunaEmulator, prefix: str) -> Settings:
    return make_settings(
        keys,
        vluna={
            "base_url": emu.service_base_url,
            "realm_id": emu.realm_id,
            "service_key_id": emu.service_key_id,
            "service_key_secret": emu.service_key_secret,
            "max_retries": 0,
        },
        cache={"backend": "redis", "key_prefix": prefix, "redis": {"url": "redis://127.0.0.1:6379/0"}},
    )


async def test_end_to_end_with_emulator_and_redis(
    keys: Keys, any_emulator: VlunaEmulator, prefix: str, redis_client: aioredis.Redis
) -> None:
    emulator = any_emulator
    settings = emulated(keys, emulator, prefix)
    issuer = sdk_issuer(emulator)
    async with client_for(settings, issuer) as client:
        h = {"Authorization": f"Bearer {keys.token('alice', org_id='acme', email='alice@acme.test')}"}
        r = await client.get("/vluna/token", headers=h)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (await client.get("/vluna/token", headers=h)).json()["access_token"] == body["access_token"]
        assert emulator.calls(OP) == first_calls(emulator)
        # Vluna goes down: the cached token is still served; a new user gets 503.
        emulator.inject_fault(OP, status=503, retry_after=0, times=None)
        assert (await client.get("/vluna/token", headers=h)).json()["access_token"] == body["access_token"]
        r = await client.get("/vluna/token", headers={"Authorization": f"Bearer {keys.token('bob')}"})
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
    bearer = emulator.bearer_client(error_mode="raise")
    products: Any = await bearer.list_catalog_products(
        context=RequestContext(access_token=body["access_token"])
    )
    assert products.ok
