from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from tests.support.emulator import start_emulator
from tests.support.redis_servers import SHARED_REDIS_URL as REDIS_URL

from .proxy_support import EmulatorServer, emulator_server, in_own_task, proxy_client, proxy_settings
from .support import AppClient, FakeIssuer, Keys


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


# The proxy's tests (test_proxy.py, test_proxy_mount.py; test_flavours.py has its own per flavour):
# the emulator on a real socket, and the app proxying to it.


@pytest.fixture
async def server() -> AsyncIterator[EmulatorServer]:
    async with emulator_server() as s:
        yield s


@pytest.fixture
async def client(keys: Keys, server: EmulatorServer, prefix: str) -> AsyncIterator[AppClient]:
    async with in_own_task(proxy_client(proxy_settings(keys, server, prefix), server)) as c:
        yield c
