"""The broker's entries in the shared cache: sealed with AES-GCM (bound to their key), read back,
and kept in the first level (bff/tokens/l1.py) only when Redis itself answered."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from bff.principals import Principal
from bff.redis_client import REDIS_ERRORS
from bff.stats import Stats
from bff.tokens.cache import ResilientCache, SharedCacheUnavailable
from bff.tokens.crypto import TokenCipher
from bff.tokens.entry import BrokerConfig, TokenEntry, TokenUnavailable
from bff.tokens.keys import CacheKeys
from bff.tokens.l1 import L1Cache


class EntryStore:
    def __init__(
        self,
        *,
        config: BrokerConfig,
        cache: ResilientCache,
        cipher: TokenCipher,
        keys: CacheKeys,
        stats: Stats,
        l1: L1Cache | None,
        clock: Callable[[], float],
    ) -> None:
        self.cfg = config
        self._cache = cache
        self._cipher = cipher
        self._keys = keys
        self._stats = stats
        self._l1 = l1
        self._clock = clock

    def __repr__(self) -> str:
        return "EntryStore()"

    def l1_epoch(self) -> int:
        return self._l1.epoch if self._l1 is not None else 0

    @property
    def l1_channel(self) -> str | None:
        """Where a stored entry is announced, for every first level to drop its copy of the key
        (a token stored twice, as during a Redis failover, must not leave replicas serving the
        one Redis no longer holds)."""
        return self._l1.channel if self._l1 is not None else None

    async def read(self, key: str, now: float) -> TokenEntry | None:
        epoch = self.l1_epoch()
        # Only what Redis answered goes into L1, never an entry of the in-process fallback: the
        # breaker must be closed before the read (so it went to Redis) and still after it.
        redis_before = self._cache.uses_redis
        blob = await self.shared_get(key)
        return self.decode(key, blob, now, epoch if redis_before else None)

    def decode(self, key: str, blob: bytes | None, now: float, epoch: int | None) -> TokenEntry | None:
        """The entry in ``blob`` while it may be served. ``epoch``: the L1 epoch when Redis was
        read (None: not read from Redis, never kept in L1)."""
        if blob is None:
            return None
        raw = self._cipher.open(blob, key.encode())
        if raw is None:
            self._stats.inc("cache_unreadable")
            return None
        try:
            entry = TokenEntry.from_bytes(raw)
        except (ValueError, KeyError, TypeError):
            self._stats.inc("cache_unreadable")
            return None
        cfg = self.cfg
        if now >= entry.expires_at - cfg.safety_margin_sec:
            return None
        l1 = self._l1
        if l1 is not None and epoch is not None and self._cache.uses_redis:
            # Until the earliest of: its refresh point (then Redis is read and the renewal starts),
            # when Redis drops it (expiry minus the margin), the L1 bound after this read.
            until = min(
                entry.issued_at + (entry.expires_at - entry.issued_at) * cfg.refresh_ahead_ratio,
                entry.expires_at - cfg.safety_margin_sec,
                now + l1.max_ttl_sec,
            )
            if until > now:
                l1.put(key, entry, until, epoch)
        return entry

    def seal(self, key: str, entry: TokenEntry) -> tuple[bytes, float]:
        """The sealed entry and its time to live in the cache (seconds; nothing to store if <= 0)."""
        ttl = entry.expires_at - self.cfg.safety_margin_sec - self._clock()
        return self._cipher.seal(entry.to_bytes(), key.encode()), ttl

    async def store(self, key: str, entry: TokenEntry) -> None:
        blob, ttl = self.seal(key, entry)
        shared = self._cache.uses_redis
        await self._cache.set(key, blob, ttl)
        if self._l1 is not None and shared and self._cache.uses_redis:
            # Best effort: a copy held elsewhere is served at most until its own bound anyway.
            with contextlib.suppress(*REDIS_ERRORS):
                await self._l1.invalidate([key])

    async def shared_get(self, key: str) -> bytes | None:
        try:
            return await self._cache.get(key)
        except SharedCacheUnavailable:
            self._stats.inc("redis_unsure")
            raise TokenUnavailable("the token cache did not answer", self.cfg.retry_after_sec) from None

    async def signed_out_since(self, principal: Principal, since: float) -> bool:
        raw = await self.shared_get(self._keys.signed_out(principal.principal_id, principal.user_id))
        try:
            return raw is not None and float(raw) >= since
        except ValueError:
            return False
