from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from tests.support.emulator import start_emulator
from tests.support.redis_servers import SHARED_REDIS_URL as REDIS_URL

from .support import FakeIssuer, Keys


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys()


@pytest.fixture
def emulator_url() -> Iterator[str]:
    """The emulator as a process (tests.support.emulator: controls on, EMULATOR_SECRET)."""
    with start_emulator() as emulator:
        yield emulator.url


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer()


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own; whatever the test left under it is deleted afterwards."""
    value = f"test-bff-{uuid.uuid4().hex[:12]}:"
    yield value
    client = sync_redis.Redis.from_url(REDIS_URL)
    try:
        leftover = list(client.scan_iter(match=f"{value}*", count=1000))
        if leftover:
            client.delete(*leftover)
    finally:
        client.close()


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL)
    try:
        yield client
    finally:
        await client.aclose()
