"""Fixtures of the SDK unit tests (helpers live in `support.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from vlunaai import BearerClient, ServiceClient

from .support import make_bearer, make_service


@pytest.fixture
async def clients() -> AsyncIterator[list[ServiceClient | BearerClient]]:
    """Collects the clients a test builds and closes them afterwards."""
    built: list[ServiceClient | BearerClient] = []
    yield built
    for client in built:
        await client.close()


@pytest.fixture
def service(clients: list[ServiceClient | BearerClient]) -> Callable[..., ServiceClient]:
    def build(transport: httpx.AsyncBaseTransport, **kwargs: Any) -> ServiceClient:
        client = make_service(transport, **kwargs)
        clients.append(client)
        return client

    return build


@pytest.fixture
def bearer(clients: list[ServiceClient | BearerClient]) -> Callable[..., BearerClient]:
    def build(transport: httpx.AsyncBaseTransport, **kwargs: Any) -> BearerClient:
        client = make_bearer(transport, **kwargs)
        clients.append(client)
        return client

    return build
