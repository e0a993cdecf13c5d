"""Sign-out: every cached token of an identity dropped, on every replica."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bff.principals import Principal
from bff.redis_client import REDIS_ERRORS, RedisBreaker
from bff.stats import Stats
from bff.tokens.cache import ResilientCache, SharedCacheUnavailable
from bff.tokens.entry import BrokerConfig, SignOutIncomplete
from bff.tokens.keys import CacheKeys
from bff.tokens.l1 import L1Cache


class SignOut:
    def __init__(
        self,
        *,
        cache: ResilientCache,
        keys: CacheKeys,
        l1: L1Cache | None,
        breaker: RedisBreaker,
        stats: Stats,
        clock: Callable[[], float],
    ) -> None:
        self._cache = cache
        self._keys = keys
        self._l1 = l1
        self._breaker = breaker
        self.stats = stats
        self._clock = clock

    def __repr__(self) -> str:
        return "SignOut()"

    async def run(self, principal: Principal, cfg: BrokerConfig, *, strict: bool = True) -> None:
        """Sign-out: drop every cached token of this identity, whatever its scopes.

        ``strict`` (a user's sign-out): once this returns, no replica serves those tokens again,
        so the deletion and the marker must both reach Redis; if they cannot, this raises
        ``SignOutIncomplete`` (the in-process copies are dropped anyway). Not strict: best
        effort (the proxy dropping a token Vluna refused)."""
        keys = self._keys.all_tokens(principal.principal_id, principal.user_id, cfg.allowed_scopes)
        # An issuance already under way (here or on another replica) must not put a token back
        # after the sign-out: it checks this marker before storing. It only needs to outlive
        # such an issuance.
        marker = self._keys.signed_out(principal.principal_id, principal.user_id)
        try:
            await self._cache.delete(keys, strict=strict)
            await self._cache.set(
                marker, repr(self._clock()).encode(), cfg.lock_ttl_sec + cfg.wait_timeout_sec, strict=strict
            )
        except SharedCacheUnavailable:
            self.stats.inc("sign_outs_incomplete")
            raise SignOutIncomplete(cfg.retry_after_sec) from None
        l1 = self._l1
        if l1 is not None:
            # Every replica's first-level cache drops these keys. A replica serves from it only
            # while it holds a heartbeat sent less than the window ago, received on the same
            # connection after this message: once the window has passed, none serves them.
            try:
                await l1.invalidate(keys)
            except REDIS_ERRORS as exc:
                self._breaker.failed(exc)
                if strict:
                    self.stats.inc("sign_outs_incomplete")
                    raise SignOutIncomplete(cfg.retry_after_sec) from None
                return
            if strict:
                await asyncio.sleep(l1.window_sec)
