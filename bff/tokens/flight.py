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
from bff.tokens.claim import Held, LockClaims
from bff.tokens.entry import BrokerConfig, TokenEntry, TokenRejected, TokenUnavailable
from bff.tokens.issuance import Issuance
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
        self._clock = clock
        self._claims = None  # without Redis
        if lock is not None:
            self._claims = LockClaims(
                config=config,
                store=store,
                keys=keys,
                breaker=breaker,
                stats=stats,
                lock=lock,
                notifier=notifier,
                limiter=limiter,
                clock=clock,
            )
        # key -> (the fill every request for it awaits, whether it renews a served entry)
        self._inflight: dict[str, tuple[asyncio.Future[TokenEntry], bool]] = {}
        self._spares: set[asyncio.Future[None]] = set()  # releases of locks taken for nothing

    def __repr__(self) -> str:
        return f"SingleFlight(inflight={len(self._inflight)})"

    def configure(self, config: BrokerConfig) -> None:
        self.cfg = config
        if self._claims is not None:
            self._claims.cfg = config

    def running(self, key: str) -> bool:
        return key in self._inflight

    def missing(self, key: str) -> asyncio.Future[TokenEntry] | None:
        """The fill under way for a key found missing (not a renewal), to await instead of reading
        the cache again."""
        item = self._inflight.get(key)
        return item[0] if item is not None and not item[1] else None

    def start(
        self,
        key: str,
        principal: Principal,
        scopes: tuple[str, ...],
        *,
        refresh: bool,
        held: Held | None = None,
    ) -> asyncio.Future[TokenEntry]:
        """The fill for ``key``: the one under way, else a new one (as the holder of ``held``)."""
        item = self._inflight.get(key)
        if item is not None:
            self.stats.inc("single_flight_waits")
            if held is not None:  # not needed after all: freed at once
                self._spare(asyncio.ensure_future(self._issuance.release(held, key)))
            return item[0]
        fut = asyncio.ensure_future(self._fill(key, principal, scopes, refresh=refresh, held=held))
        self._inflight[key] = (fut, refresh)
        fut.add_done_callback(lambda f: self._settle(key, f))
        return fut

    async def read_or_fill(
        self, key: str, principal: Principal, scopes: tuple[str, ...], now: float
    ) -> TokenEntry | asyncio.Future[TokenEntry]:
        """The entry in the shared cache, else its fill (started). Outside a Cluster, with Redis in
        use and no fill under way, one round trip reads it and, when it is missing, takes the
        lock, so that the fill starts as its holder (bff/tokens/issuance.py)."""
        claims = self._claims
        if claims is not None and claims.scripted and self._breaker.closed and key not in self._inflight:
            try:
                entry, held = await claims.read_or_acquire(key, principal, now)
            except REDIS_ERRORS as exc:
                self._breaker.failed(exc)  # then the cache's own read, with its retries
            else:
                return entry or self.start(key, principal, scopes, refresh=False, held=held)
        entry = await self._store.read(key, now)
        return entry or self.start(key, principal, scopes, refresh=False)

    def _spare(self, task: asyncio.Future[None]) -> None:
        self._spares.add(task)
        task.add_done_callback(self._spares.discard)

    def _settle(self, key: str, fut: asyncio.Future[Any]) -> None:
        item = self._inflight.get(key)
        if item is not None and item[0] is fut:
            del self._inflight[key]
        if not fut.cancelled():
            fut.exception()  # retrieved, so an unawaited failure is not reported as lost

    async def _fill(
        self, key: str, principal: Principal, scopes: tuple[str, ...], *, refresh: bool, held: Held | None
    ) -> TokenEntry:
        deadline = time.monotonic() + self.cfg.wait_timeout_sec
        lock_key = self._keys.lock(key)
        pause = 0.05
        claims = self._claims
        while True:
            if held is None and (claims is None or not self._breaker.closed):
                return await self._issuance.run(key, principal, scopes, refresh, None)
            assert claims is not None
            try:
                if held is None:
                    held = await claims.acquire(key, lock_key, principal, refresh)
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
            entry = await claims.wait_for_other(key, lock_key, deadline)
            if entry is not None:
                return entry


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
