"""Cache backends for sealed token entries: Redis, in-process, and Redis-with-fallback.

Values reaching a backend are already encrypted (see crypto.py); backends only store bytes.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Protocol

from redis.exceptions import RedisError

from bff.stats import Stats

log = logging.getLogger("bff.cache")

# What a down, slow or misbehaving Redis raises through redis-py.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


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


class RedisGuard:
    """Remembers that Redis failed, so that for a short backoff requests skip it instead of each
    paying a connect timeout; logs the transitions once and counts every failure."""

    def __init__(self, stats: Stats, backoff_sec: float) -> None:
        self._stats = stats
        self._backoff = backoff_sec
        self._down_until = 0.0
        self._down = False

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def failed(self, exc: BaseException) -> None:
        self._stats.inc("redis_errors")
        self._down_until = time.monotonic() + self._backoff
        if not self._down:
            self._down = True
            # The exception type only: messages can carry the URL and its password.
            log.warning("redis unavailable (%s); serving from the in-process cache", type(exc).__name__)

    def fell_back(self) -> None:
        """A cache operation was served by the in-process cache because Redis was down (metrics)."""
        self._stats.inc("redis_fallbacks")

    def succeeded(self) -> None:
        if self._down:
            self._down = False
            log.info("redis available again")


class RedisCache:
    def __init__(self, redis: Any) -> None:
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
    """Redis when it answers; the in-process cache when it does not. Never raises a Redis error,
    except ``SharedCacheUnavailable`` from the ``strict`` writes that every replica must see.

    While Redis answers it is the only source: a miss there is a miss, even if this process
    still holds an entry it cached during an outage. That entry may have been signed out on
    another replica since (which can only delete what is in Redis).
    """

    def __init__(self, primary: CacheBackend | None, fallback: MemoryCache, guard: RedisGuard) -> None:
        self._primary = primary
        self._fallback = fallback
        self._guard = guard

    @property
    def uses_redis(self) -> bool:
        return self._primary is not None and self._guard.available

    async def get(self, key: str) -> bytes | None:
        if self._primary is not None and self._guard.available:
            try:
                value = await self._primary.get(key)
            except REDIS_ERRORS as exc:
                self._guard.failed(exc)
                self._guard.fell_back()
            else:
                self._guard.succeeded()
                return value
        elif self._primary is not None:
            self._guard.fell_back()
        return await self._fallback.get(key)

    async def set(self, key: str, value: bytes, ttl: float, *, strict: bool = False) -> None:
        """``strict``: the value must reach Redis (when Redis is configured; tried even during
        its backoff), else ``SharedCacheUnavailable`` (the in-process cache holds it anyway)."""
        if self._primary is not None and (strict or self._guard.available):
            try:
                await self._primary.set(key, value, ttl)
            except REDIS_ERRORS as exc:
                self._guard.failed(exc)
            else:
                self._guard.succeeded()
                return
        if self._primary is not None:
            self._guard.fell_back()
        await self._fallback.set(key, value, ttl)
        if strict and self._primary is not None:
            raise SharedCacheUnavailable("redis is unavailable")

    async def delete(self, keys: Sequence[str], *, strict: bool = False) -> None:
        """``strict``: the keys must be gone from Redis too (when Redis is configured; tried even
        during its backoff), else ``SharedCacheUnavailable``."""
        await self._fallback.delete(keys)
        if self._primary is None:
            return
        try:
            await self._primary.delete(keys)
        except REDIS_ERRORS as exc:
            self._guard.failed(exc)
            if strict:
                raise SharedCacheUnavailable("redis is unavailable") from None
        else:
            self._guard.succeeded()
