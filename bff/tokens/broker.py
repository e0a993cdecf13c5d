"""From (principal, user, scopes) to a platform token: cache, single flight, refresh ahead, failures.

- Hit: served from the first level (bff/tokens/l1.py) or decrypted from the shared cache
  (bff/tokens/store.py); past ``refresh_ahead_ratio`` of its life, renewed in the background.
- Miss: one upstream call per key per process and one across replicas (bff/tokens/flight.py).
- Vluna down: a cached, still valid token keeps being served (refresh failures are swallowed);
  with none, ``TokenUnavailable`` (503).
- Redis down (the shared ``RedisBreaker`` is open): the in-process cache and a process-local
  single flight carry on. While the breaker is closed, a failed lock command is tried again (or
  the request ends in ``TokenUnavailable`` at its deadline): never an issuance without the
  cross-replica lock on the guess that Redis is down.
- A lock release Redis refused is tried again in the background until it succeeds or the lock
  expires (bff/tokens/release.py): the replicas waiting for it need not wait for its expiry.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from bff.principals import Principal
from bff.redis_client import RedisBreaker
from bff.stats import Stats
from bff.telemetry.tracing import span
from bff.tokens.cache import ResilientCache
from bff.tokens.crypto import TokenCipher
from bff.tokens.entry import (
    BrokerConfig,
    SignOutIncomplete,
    TokenEntry,
    TokenRejected,
    TokenUnavailable,
)
from bff.tokens.flight import Renewals, SingleFlight
from bff.tokens.issuance import Issuance
from bff.tokens.issuer import TokenIssuer
from bff.tokens.keys import CacheKeys, canonical_scopes
from bff.tokens.l1 import L1Cache
from bff.tokens.limits import IssuanceLimiter
from bff.tokens.lock import RedisLock, Waiters
from bff.tokens.release import LateReleases
from bff.tokens.signout import SignOut
from bff.tokens.store import EntryStore

__all__ = [
    "BrokerConfig",
    "SignOutIncomplete",
    "TokenBroker",
    "TokenEntry",
    "TokenRejected",
    "TokenUnavailable",
]

log = logging.getLogger("bff.broker")


class TokenBroker:
    """Serves tokens (first level, shared cache), starts the fills and renewals, and signs out."""

    def __init__(
        self,
        *,
        config: BrokerConfig,
        issuer: TokenIssuer,
        cache: ResilientCache,
        cipher: TokenCipher,
        keys: CacheKeys,
        breaker: RedisBreaker,
        stats: Stats,
        lock: RedisLock | None = None,
        notifier: Waiters | None = None,
        limiter: IssuanceLimiter | None = None,
        l1: L1Cache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._l1 = l1
        self._keys = keys
        self.stats = stats
        self._store = EntryStore(
            config=config, cache=cache, cipher=cipher, keys=keys, stats=stats, l1=l1, clock=clock
        )
        self._releases = LateReleases(lock, stats) if lock is not None else None
        self._issuance = Issuance(
            config=config,
            store=self._store,
            issuer=issuer,
            keys=keys,
            breaker=breaker,
            stats=stats,
            lock=lock,
            releases=self._releases,
            limiter=limiter,
            clock=clock,
        )
        self._flight = SingleFlight(
            config=config,
            store=self._store,
            issuance=self._issuance,
            keys=keys,
            breaker=breaker,
            stats=stats,
            lock=lock,
            notifier=notifier,
            limiter=limiter,
            clock=clock,
        )
        self._sign_out = SignOut(cache=cache, keys=keys, l1=l1, breaker=breaker, stats=stats, clock=clock)
        self._config = config
        self._renewals = Renewals(self._flight, stats)
        # key -> the shared-cache read under way for it (see _lookup)
        self._reading: dict[str, asyncio.Future[Any]] = {}

    def __repr__(self) -> str:
        return f"TokenBroker(realm={self._config.realm_id!r})"

    @property
    def _cfg(self) -> BrokerConfig:
        return self._config

    @_cfg.setter
    def _cfg(self, config: BrokerConfig) -> None:
        # One configuration for every part (tests change it on a running broker).
        self._config = self._store.cfg = self._issuance.cfg = config
        self._flight.configure(config)

    # -- public ---------------------------------------------------------------------------------

    def now(self) -> float:
        return self._clock()

    @property
    def has_l1(self) -> bool:
        """A first-level cache answers repeated reads in-process and honours sign-outs on every
        replica (bff/tokens/l1.py): callers need no memo of their own."""
        return self._l1 is not None

    async def drain(self) -> None:
        """Wait for background refreshes started so far (tests, graceful shutdown)."""
        await self._renewals.drain()

    async def get_token(self, principal: Principal, scopes: Sequence[str]) -> TokenEntry:
        scopes_c = canonical_scopes(scopes)
        key = self._keys.token(principal.principal_id, principal.user_id, scopes_c)
        now = self._clock()
        # The first level (bff/tokens/l1.py): served only before the entry's refresh point.
        entry = self._l1.get(key, now) if self._l1 is not None else None
        if entry is not None:
            with span("bff.token_cache.get") as sp:
                sp.set_attribute("bff.cache.hit", True)
                sp.set_attribute("bff.cache.l1", True)
            self.stats.inc("cache_hits")
            self.stats.inc("l1_hits")
            return entry
        # The request's context without the cache span: a read or fill started for this request
        # runs in it, so the issuance's span is the request's child, as it was before reads and
        # fills became tasks (copied on this path only: a first-level hit starts no task).
        outer = contextvars.copy_context()
        with span("bff.token_cache.get") as sp:
            found = await self._lookup(key, principal, scopes_c, now, outer)
            sp.set_attribute("bff.cache.hit", isinstance(found, TokenEntry))
        if isinstance(found, TokenEntry):
            self.stats.inc("cache_hits")
            if self._config.due(found, now):
                self.stats.inc("stale_served")
                self._renewals.start(key, principal, scopes_c)
            return found
        self.stats.inc("cache_misses")
        # Shielded: a caller that disconnects must not cancel the fill the others are waiting on.
        return await asyncio.shield(found)

    async def _lookup(
        self,
        key: str,
        principal: Principal,
        scopes: tuple[str, ...],
        now: float,
        context: contextvars.Context,
    ) -> TokenEntry | asyncio.Future[TokenEntry]:
        """The entry in the shared cache, else the fill that every request for it awaits.

        A key found missing moments ago and still being filled is not read again: its fill
        answers (it reads the cache and issues only after that miss). Nor is a key being read by
        another request, at first: this one waits for that read, then joins the fill it started
        on a miss, or takes the entry that read put into the first level (which it keeps only
        if no sign-out was heard since the read began, bff/tokens/l1.py); else it reads itself."""
        reading = self._reading.get(key)
        if reading is not None and self._flight.missing(key) is None:
            await asyncio.wait({reading})
            entry = self._l1.get(key, self._clock()) if self._l1 is not None else None
            if entry is not None:
                self.stats.inc("l1_hits")
                return entry
        if self._flight.missing(key) is not None:
            return self._flight.start(key, principal, scopes, refresh=False)
        # A task of its own: the read may take the lock for the fill, which a caller that
        # disconnects must not leave unused. Its fill is started before it completes, so the
        # requests waiting on it find that fill.
        # (Created in ``context``: the task copies it, and a fill the read starts copies the read's.)
        task = context.run(asyncio.ensure_future, self._flight.read_or_fill(key, principal, scopes, now))
        if key not in self._reading:
            self._reading[key] = task
            task.add_done_callback(lambda t: self._read_done(key, t))
        return await asyncio.shield(task)

    def _read_done(self, key: str, task: asyncio.Future[Any]) -> None:
        if self._reading.get(key) is task:
            del self._reading[key]
        if not task.cancelled():
            task.exception()  # its caller may have gone: retrieved, so it is not logged as lost

    async def forget(self, principal: Principal, *, strict: bool = True) -> None:
        """Sign-out: drop every cached token of this identity, whatever its scopes
        (bff/tokens/signout.py; ``strict``: a user's, raising ``SignOutIncomplete`` unless
        every replica will see it)."""
        await self._sign_out.run(principal, self._config, strict=strict)

    async def aclose(self) -> None:
        await self._renewals.aclose()
        if self._releases is not None:
            await self._releases.aclose()
