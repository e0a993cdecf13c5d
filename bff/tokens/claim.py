"""Taking the cross-replica lock for a fill, or waiting for whoever holds it.

Outside a Cluster taking it is one script that also re-reads the cache and counts the issuance
for the user's limit (bff/tokens/limits.py): ``acquire`` for a fill, ``read_or_acquire`` for a
read that takes the lock when the token is missing (then a cold issuance is two round trips in
all, the other one storing and releasing, bff/tokens/issuance.py). On a Cluster the keys live in
different slots (their names are HMACs, without hash tags): a plain ``SET NX PX``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from bff.principals import Principal
from bff.redis_client import REDIS_ERRORS, RedisBreaker
from bff.stats import Stats
from bff.tokens.entry import BrokerConfig, TokenEntry, TokenUnavailable
from bff.tokens.keys import CacheKeys
from bff.tokens.limits import IssuanceLimiter
from bff.tokens.lock import RedisLock, Waiters
from bff.tokens.store import EntryStore


@dataclass
class Held:
    """The cross-replica lock, ours (until ``expires_by`` at the latest). ``read``: the cache
    was re-read with it (``current``) and
    the user's issuance counted (``counted``: window and count), in the same round trip."""

    owner: str
    lock_key: str
    expires_by: float  # time.monotonic() by which the lock has expired in Redis
    read: bool = False
    current: TokenEntry | None = None
    counted: tuple[int, int] | None = None


class LockClaims:
    def __init__(
        self,
        *,
        config: BrokerConfig,
        store: EntryStore,
        keys: CacheKeys,
        breaker: RedisBreaker,
        stats: Stats,
        lock: RedisLock,
        notifier: Waiters | None,
        limiter: IssuanceLimiter | None,
        clock: Callable[[], float],
    ) -> None:
        self.cfg = config
        self._store = store
        self._keys = keys
        self._breaker = breaker
        self.stats = stats
        self._lock = lock
        self._notifier = notifier
        self._limiter = limiter
        self._clock = clock

    def __repr__(self) -> str:
        return "LockClaims()"

    @property
    def scripted(self) -> bool:
        return self._lock.scripted

    async def acquire(self, key: str, lock_key: str, principal: Principal, refresh: bool) -> Held | None:
        """The lock if free (raises Redis errors); holding it outside a Cluster, the cache was
        re-read and the user's issuance counted in the same round trip."""
        lock = self._lock
        if not lock.scripted:
            owner = await lock.acquire(lock_key, self.cfg.lock_ttl_sec)
            return Held(owner, lock_key, self._expires_by()) if owner is not None else None
        counter = self._counter(principal) if not refresh else None
        epoch = self._store.l1_epoch()
        owner, blob, count = await lock.acquire_and_read(
            lock_key, self.cfg.lock_ttl_sec, key, counter[:2] if counter is not None else None
        )
        self._breaker.succeeded()
        if owner is None:
            return None
        # Another replica may have filled the key between our miss and our lock.
        current = self._store.decode(key, blob, self._clock(), epoch)
        counted = (counter[2], count) if counter is not None and count is not None else None
        return Held(owner, lock_key, self._expires_by(), read=True, current=current, counted=counted)

    async def read_or_acquire(
        self, key: str, principal: Principal, now: float
    ) -> tuple[TokenEntry | None, Held | None]:
        """One round trip (outside a Cluster; raises Redis errors): the cached entry, else the lock
        when free, with the user's issuance counted; (None, None) when another holds it or the
        entry cannot be served."""
        lock = self._lock
        counter = self._counter(principal)
        epoch = self._store.l1_epoch()
        lock_key = self._keys.lock(key)
        owner, blob, count = await lock.read_or_acquire(
            key, lock_key, self.cfg.lock_ttl_sec, counter[:2] if counter is not None else None
        )
        self._breaker.succeeded()
        if owner is None:
            return self._store.decode(key, blob, now, epoch), None
        counted = (counter[2], count) if counter is not None and count is not None else None
        return None, Held(owner, lock_key, self._expires_by(), read=True, counted=counted)

    def _expires_by(self) -> float:
        # Taken after Redis answered: the lock's expiry started before this.
        return time.monotonic() + self.cfg.lock_ttl_sec

    def _counter(self, principal: Principal) -> tuple[str, int, int] | None:
        if self._limiter is None:
            return None
        return self._limiter.user_counter(principal.principal_id, principal.user_id)

    async def wait_for_other(self, key: str, lock_key: str, deadline: float) -> TokenEntry | None:
        """Wait until the holder publishes (or its lock expires); None means: try to lock again."""
        notifier = self._notifier
        with notifier.subscription(key) if notifier else contextlib.nullcontext(asyncio.Event()) as woke:
            while True:
                entry = await self._store.read(key, self._clock())
                if entry is not None:
                    self.stats.inc("waited_for_other")
                    return entry
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stats.inc("wait_timeouts")
                    raise TokenUnavailable("timed out waiting for a token", self.cfg.retry_after_sec)
                try:
                    lock_left = await self._lock.remaining_sec(lock_key)
                except REDIS_ERRORS as exc:
                    # None: lock again (which waits while Redis is unsure, see _fill).
                    self._breaker.failed(exc)
                    return None
                if lock_left <= 0:
                    return None
                connected = notifier is not None and notifier.connected
                step = min(left, lock_left, self.cfg.recheck_interval_sec if connected else 0.05)
                woke.clear()
                try:
                    await asyncio.wait_for(woke.wait(), step)
                    self.stats.inc("lock_wakeups")
                except asyncio.TimeoutError:
                    pass
