"""One issuance per key: per process (a future every request for the key awaits) and across
replicas (the Redis lock; the others wait for its release notification, then read the cache).

While the Redis breaker is closed a failed lock command is tried again (or the request ends in
``TokenUnavailable`` at its deadline): never an issuance without the cross-replica lock on the
guess that Redis is down. With the breaker open (or no Redis) the process-local single flight
carries on alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from bff.principals import Principal
from bff.redis_client import REDIS_ERRORS, RedisBreaker
from bff.stats import Stats
from bff.tokens.entry import BrokerConfig, TokenEntry, TokenRejected, TokenUnavailable
from bff.tokens.issuance import Held, Issuance
from bff.tokens.keys import CacheKeys
from bff.tokens.limits import IssuanceLimited, IssuanceLimiter
from bff.tokens.lock import RedisLock, Waiters
from bff.tokens.store import EntryStore


class SingleFlight:
    def __init__(
        self,
        *,
        config: BrokerConfig,
        store: EntryStore,
        issuance: Issuance,
        keys: CacheKeys,
        breaker: RedisBreaker,
        stats: Stats,
        lock: RedisLock | None,
        notifier: Waiters | None,
        limiter: IssuanceLimiter | None,
        clock: Callable[[], float],
    ) -> None:
        self.cfg = config
        self._store = store
        self._issuance = issuance
        self._keys = keys
        self._breaker = breaker
        self.stats = stats
        self._lock = lock
        self._notifier = notifier
        self._limiter = limiter
        self._clock = clock
        # key -> (the fill every request for it awaits, whether it renews a served entry)
        self._inflight: dict[str, tuple[asyncio.Future[TokenEntry], bool]] = {}

    def __repr__(self) -> str:
        return f"SingleFlight(inflight={len(self._inflight)})"

    def running(self, key: str) -> bool:
        return key in self._inflight

    def missing(self, key: str) -> asyncio.Future[TokenEntry] | None:
        """The fill under way for a key found missing (not a renewal), to await instead of reading
        the cache again."""
        item = self._inflight.get(key)
        return item[0] if item is not None and not item[1] else None

    def start(
        self, key: str, principal: Principal, scopes: tuple[str, ...], *, refresh: bool
    ) -> asyncio.Future[TokenEntry]:
        """The fill for ``key``: the one under way, else a new one."""
        item = self._inflight.get(key)
        if item is not None:
            self.stats.inc("single_flight_waits")
            return item[0]
        fut = asyncio.ensure_future(self._fill(key, principal, scopes, refresh=refresh))
        self._inflight[key] = (fut, refresh)
        fut.add_done_callback(lambda f: self._settle(key, f))
        return fut

    def _settle(self, key: str, fut: asyncio.Future[Any]) -> None:
        item = self._inflight.get(key)
        if item is not None and item[0] is fut:
            del self._inflight[key]
        if not fut.cancelled():
            fut.exception()  # retrieved, so an unawaited failure is not reported as lost

    async def _fill(
        self, key: str, principal: Principal, scopes: tuple[str, ...], *, refresh: bool
    ) -> TokenEntry:
        deadline = time.monotonic() + self.cfg.wait_timeout_sec
        lock_key = self._keys.lock(key)
        pause = 0.05
        while True:
            if self._lock is None or not self._breaker.closed:
                return await self._issuance.run(key, principal, scopes, refresh, None)
            try:
                held = await self._acquire(self._lock, key, lock_key, principal, refresh)
            except REDIS_ERRORS as exc:
                self._breaker.failed(exc)
                if await self._breaker.verdict():
                    continue  # the breaker is open: process-local from now on
                # Redis answers (or has not been found down): the lock is tried again, never
                # skipped on a guess; at the deadline the request gets a 503.
                self.stats.inc("lock_retries")
                if time.monotonic() + pause >= deadline:
                    self.stats.inc("wait_timeouts")
                    raise TokenUnavailable(
                        "the token lock did not answer", self.cfg.retry_after_sec
                    ) from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            if held is not None:
                return await self._issuance.run(key, principal, scopes, refresh, held)
            if refresh:
                # Another replica is already renewing this token.
                current = await self._store.read(key, self._clock())
                if current is not None:
                    return current
            entry = await self._wait_for_other(self._lock, key, lock_key, deadline)
            if entry is not None:
                return entry

    async def _acquire(
        self, lock: RedisLock, key: str, lock_key: str, principal: Principal, refresh: bool
    ) -> Held | None:
        if not lock.scripted:
            owner = await lock.acquire(lock_key, self.cfg.lock_ttl_sec)
            return Held(owner, lock_key) if owner is not None else None
        counter = None
        if self._limiter is not None and not refresh:
            counter = self._limiter.user_counter(principal.principal_id, principal.user_id)
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
        return Held(owner, lock_key, read=True, current=current, counted=counted)

    async def _wait_for_other(
        self, lock: RedisLock, key: str, lock_key: str, deadline: float
    ) -> TokenEntry | None:
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
                    lock_left = await lock.remaining_sec(lock_key)
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


class Renewals:
    """Renewals ahead of expiry, in the background: a failed one leaves the current token in the
    cache, served until it expires."""

    def __init__(self, flight: SingleFlight, stats: Stats) -> None:
        self._flight = flight
        self.stats = stats
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"Renewals(running={len(self._tasks)})"

    def start(self, key: str, principal: Principal, scopes: tuple[str, ...]) -> None:
        if self._flight.running(key):
            return
        self.stats.inc("refresh_ahead")
        fut = self._flight.start(key, principal, scopes, refresh=True)

        async def watch() -> None:
            try:
                await fut
                self.stats.inc("refreshes")
            except (TokenUnavailable, TokenRejected, IssuanceLimited):
                self.stats.inc("refresh_failures")

        task = asyncio.create_task(watch())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
