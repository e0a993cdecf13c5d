"""The HTTP/1.1 client's tests run on both event loops: asyncio's (the tests' usual one) and
uvloop's (the service's: bff/server.py), whose transports differ in the details the client
relies on (closing, write buffers, TLS)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import pytest
import uvloop


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
