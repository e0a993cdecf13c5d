"""Bounded waits: a bug fails the test instead of hanging it."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any


def poll_until(predicate: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Call `predicate` until it returns something truthy; bounded, so a bug fails instead of hanging."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g} s")
        time.sleep(interval)


async def until(predicate: Any, timeout: float = 10.0) -> None:
    """Wait for a condition another task brings about (bounded so a bug fails, not hangs)."""
    async with asyncio.timeout(timeout) if hasattr(asyncio, "timeout") else contextlib.nullcontext():
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.002)
