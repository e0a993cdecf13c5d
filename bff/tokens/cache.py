"""Cache backends for sealed token entries: Redis, in-process, and Redis-with-fallback.

Values reaching a backend are already encrypted (see crypto.py); backends only store bytes.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from bff.redis_client import REDIS_ERRORS, RedisBreaker, RedisClient

__all__ = ["REDIS_ERRORS", "CacheBackend", "MemoryCache", "RedisCache", "ResilientCache"]

T = TypeVar("T")


class SharedCacheUnavailable(Exception):
    """A change every replica must see could not be made in Redis (it is down or did not answer)."""


class CacheBackend(Protocol):
    async def get(self, key: str) -> bytes | None: ...
    async def set(self, key: str, value: bytes, ttl: float) -> None: ...
    async def delete(self, keys: Sequence[str]) -> None: ...


class MemoryCache:
    """Bounded, TTL-aware, least-recently-used; for single-instance dev and as Redis fallback."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._max = max_entries
        self._data: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    async def get(self, key: str) -> bytes | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item[1] <= time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return item[0]

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if ttl <= 0:
            return
        self._data[key] = (value, time.monotonic() + ttl)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    async def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


class RedisCache:
    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis

    async def get(self, key: str) -> bytes | None:
        value = await self._redis.get(key)
        return bytes(value) if value is not None else None

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        ms = int(ttl * 1000)
        if ms > 0:
            await self._redis.set(key, value, px=ms)

    async def delete(self, keys: Sequence[str]) -> None:
        if keys:
            # One key per DEL: in a Cluster the keys live in different slots.
            for key in keys:
                await self._redis.delete(key)


class ResilientCache:
    """Redis while the breaker is closed; the in-process cache while it is open. Never raises a
    Redis error, except ``SharedCacheUnavailable`` from the ``strict`` writes that every replica
    must see.

    While the breaker is closed Redis is the only source: a miss there is a miss, even if this
    process still holds an entry it cached while the breaker was open (that entry may have been
    signed out on another replica since, which can only delete what is in Redis). A command that
    fails while the breaker stays closed is tried again (after a short pause) until it answers or
    the breaker opens: a guess from the in-process cache could be stale. For at most
    ``retry_for_sec`` (Redis answering PING while its commands keep failing, e.g. a read-only
    replica or an out-of-memory error): then a read raises ``SharedCacheUnavailable`` (the broker
    answers 503 with Retry-After) and a write that need not be shared lands in-process only.
    """

    RETRY_PAUSE_SEC = 0.05

    def __init__(
        self,
        primary: CacheBackend | None,
        fallback: MemoryCache,
        breaker: RedisBreaker,
        *,
        retry_for_sec: float = 15.0,
    ) -> None:
        self._primary = primary
        self._fallback = fallback
        self._breaker = breaker
        self._retry_for = retry_for_sec

    @property
    def uses_redis(self) -> bool:
        return self._primary is not None and self._breaker.closed

    async def _on_redis(self, op: Callable[[CacheBackend], Awaitable[T]]) -> tuple[bool | None, T | None]:
        """(True, result) once Redis answered; (False, None) once the breaker is open; (None, None)
        when Redis kept failing for ``retry_for_sec`` while the breaker stayed closed."""
        assert self._primary is not None
        pause = self.RETRY_PAUSE_SEC
        give_up = time.monotonic() + self._retry_for
        while self._breaker.closed:
            try:
                result = await op(self._primary)
            except REDIS_ERRORS as exc:
                self._breaker.failed(exc)
                if await self._breaker.verdict():
                    break
                if time.monotonic() + pause > give_up:
                    return None, None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
            else:
                self._breaker.succeeded()
                return True, result
        return False, None

    async def get(self, key: str) -> bytes | None:
        """Raises ``SharedCacheUnavailable`` when Redis kept failing while its breaker stayed
        closed (answering from this process could serve what another replica signed out)."""
        if self._primary is not None:
            answered, value = await self._on_redis(lambda r: r.get(key))
            if answered:
                return value
            if answered is None:
                raise SharedCacheUnavailable("redis commands keep failing")
            self._breaker.fell_back()
        return await self._fallback.get(key)

    async def set(self, key: str, value: bytes, ttl: float, *, strict: bool = False) -> None:
        """``strict``: the value must reach Redis (when Redis is configured; tried once even while
        the breaker is open), else ``SharedCacheUnavailable`` (the in-process cache holds it)."""
        if self._primary is not None:
            if strict and not self._breaker.closed:
                if await self._strict_once(lambda r: r.set(key, value, ttl)):
                    return
            else:
                answered, _ = await self._on_redis(lambda r: r.set(key, value, ttl))
                if answered:
                    return
            self._breaker.fell_back()
        await self._fallback.set(key, value, ttl)
        if strict and self._primary is not None:
            raise SharedCacheUnavailable("redis is unavailable")

    async def delete(self, keys: Sequence[str], *, strict: bool = False) -> None:
        """``strict``: the keys must be gone from Redis too (when Redis is configured; tried once
        even while the breaker is open), else ``SharedCacheUnavailable``."""
        await self._fallback.delete(keys)
        if self._primary is None:
            return
        if self._breaker.closed:
            answered, _ = await self._on_redis(lambda r: r.delete(keys))
        else:
            answered = await self._strict_once(lambda r: r.delete(keys))
        if not answered and strict:
            raise SharedCacheUnavailable("redis is unavailable")

    async def _strict_once(self, op: Callable[[CacheBackend], Awaitable[Any]]) -> bool:
        """One attempt while the breaker is open (a sign-out must not wait for the next probe)."""
        assert self._primary is not None
        try:
            await op(self._primary)
        except REDIS_ERRORS as exc:
            self._breaker.failed(exc)
            return False
        self._breaker.succeeded()
        return True
