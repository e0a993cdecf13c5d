"""Timeouts that hold: a server that never answers ends in APITimeoutError within the bound.

Asserted by exception type and attempt count, never by measuring elapsed time. Bounds are tens
of milliseconds, so the whole module stays well under a second.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from vlunaai import (
    APIConnectionError,
    APITimeoutError,
    RequestContext,
    ServiceClient,
    ServiceClientOptions,
    ServiceKeyCredentials,
)

from .support import KEY_ID, SECRET_B64, ScriptedTransport, ok, service_config


class NeverAnswers(httpx.AsyncBaseTransport):
    """Accepts the request and then waits forever (until cancelled)."""

    def __init__(self) -> None:
        self.calls = 0
        self.cancelled = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        raise AssertionError("unreachable")


class SlowThenOk(httpx.AsyncBaseTransport):
    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(self.delay)
        return ok([])


async def test_per_call_timeout_override_bounds_a_silent_server(
    service: Callable[..., ServiceClient],
) -> None:
    transport = NeverAnswers()
    client = service(transport, max_retries=0)  # config default: 30 s
    with pytest.raises(APITimeoutError) as info:
        await client.list_meters(context=RequestContext(request_timeout_seconds=0.05))
    assert isinstance(info.value, APIConnectionError)
    assert info.value.operation == "list_meters"
    assert transport.calls == 1
    assert transport.cancelled == 1  # the attempt was really abandoned, not left running


async def test_config_timeout_bounds_every_attempt_and_timeouts_are_retried(
    service: Callable[..., ServiceClient],
) -> None:
    transport = NeverAnswers()
    client = service(transport, config=service_config(timeout_seconds=0.03))
    with pytest.raises(APITimeoutError):
        await client.upsert_meter(body={"meter_code": "m"})
    assert transport.calls == 3
    assert transport.cancelled == 3


async def test_override_can_also_extend_the_bound(service: Callable[..., ServiceClient]) -> None:
    client = service(SlowThenOk(0.05), config=service_config(timeout_seconds=0.01), max_retries=0)
    with pytest.raises(APITimeoutError):
        await client.list_meters()
    result = await client.list_meters(context=RequestContext(request_timeout_seconds=5))
    assert result.ok is True


@pytest.fixture
async def silent_server() -> AsyncIterator[str]:
    """A real loopback TCP server that accepts connections, reads, and never answers."""
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        try:
            await reader.read(65536)
            await asyncio.Event().wait()
        except (asyncio.CancelledError, ConnectionError):
            pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/mgt/v1"
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_real_loopback_server_that_never_answers(silent_server: str) -> None:
    client = ServiceClient(
        ServiceClientOptions(
            config=service_config(base_url=silent_server, timeout_seconds=0.2),
            service_key=ServiceKeyCredentials(key_id=KEY_ID, secret=SECRET_B64),
            max_retries=0,
        )
    )
    try:
        with pytest.raises(APITimeoutError):
            await client.list_meters()
        with pytest.raises(APITimeoutError):
            await client.upsert_meter(
                body={"meter_code": "m"}, context=RequestContext(request_timeout_seconds=0.05)
            )
    finally:
        await client.close()


async def test_refused_connection_is_a_connection_error_not_a_timeout(
    service: Callable[..., ServiceClient],
) -> None:
    client = service(ScriptedTransport(httpx.ConnectError("refused")), max_retries=0)
    with pytest.raises(APIConnectionError) as info:
        await client.list_meters()
    assert not isinstance(info.value, APITimeoutError)
