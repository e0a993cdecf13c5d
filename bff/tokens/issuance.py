"""The lock holder's work (or a process's own, without Redis): re-check the cache, count the
issuance against the limits, call Vluna, and store the token unless its user signed out since
the call began.

Holding the lock outside a Cluster, the (re-)read and the user's count came with the lock (one
round trip, bff/tokens/claim.py) and the store goes with the release
(``RedisLock.store_and_release``): two round trips around the Vluna call. Otherwise, or when that
script fails, each is a command of its own. A release Redis refused is tried again in the
background (bff/tokens/release.py).
"""

from __future__ import annotations

from collections.abc import Callable

from bff.principals import Principal
from bff.redis_client import REDIS_ERRORS, RedisBreaker
from bff.stats import Stats
from bff.tokens.claim import Held
from bff.tokens.entry import BrokerConfig, TokenEntry, TokenRejected, TokenUnavailable
from bff.tokens.issuer import IssuerRejected, IssuerUnavailable, TokenIssuer
from bff.tokens.keys import CacheKeys
from bff.tokens.limits import IssuanceLimiter
from bff.tokens.lock import RedisLock
from bff.tokens.release import LateReleases
from bff.tokens.store import EntryStore


class Issuance:
    def __init__(
        self,
        *,
        config: BrokerConfig,
        store: EntryStore,
        issuer: TokenIssuer,
        keys: CacheKeys,
        breaker: RedisBreaker,
        stats: Stats,
        lock: RedisLock | None,
        releases: LateReleases | None,
        limiter: IssuanceLimiter | None,
        clock: Callable[[], float],
    ) -> None:
        self.cfg = config
        self._store = store
        self._issuer = issuer
        self._keys = keys
        self._breaker = breaker
        self.stats = stats
        self._lock = lock
        self._releases = releases
        self._limiter = limiter
        self._clock = clock

    def __repr__(self) -> str:
        return "Issuance()"

    async def run(
        self, key: str, principal: Principal, scopes: tuple[str, ...], refresh: bool, held: Held | None
    ) -> TokenEntry:
        """Issues and stores (holding the lock, or process-local without Redis) unless the cache
        has a token again."""
        released = held is None
        try:
            if held is not None and held.read:
                current = held.current
            else:
                current = await self._store.read(key, self._clock())
            if current is not None and not (refresh and self.cfg.due(current, self._clock())):
                return current
            started = self._clock()
            entry = await self._issue(principal, scopes, held.counted if held is not None else None)
            released = await self._keep(key, principal, entry, started, held)
            return entry
        finally:
            if not released and held is not None:
                await self.release(held, key)

    async def _issue(
        self, principal: Principal, scopes: tuple[str, ...], counted: tuple[int, int] | None
    ) -> TokenEntry:
        if self._limiter is not None:
            # IssuanceLimited
            await self._limiter.spend(principal.principal_id, principal.user_id, counted=counted)
        self.stats.inc("issuances")
        try:
            issued = await self._issuer.issue(
                principal.principal_id, principal.user_id, scopes, principal.traits
            )
        except IssuerUnavailable as exc:
            self.stats.inc("issue_failures")
            raise TokenUnavailable(str(exc), self.cfg.retry_after_sec) from None
        except IssuerRejected as exc:
            self.stats.inc("issue_rejections")
            raise TokenRejected(str(exc)) from None
        now = self._clock()
        # expires_in against our own clock: immune to skew between Vluna and this host.
        return TokenEntry(
            access_token=issued.access_token,
            token_type=issued.token_type,
            issued_at=now,
            expires_at=now + max(0, issued.expires_in),
            billing_account_id=issued.billing_account_id,
            billing_user_id=issued.billing_user_id,
            scopes=scopes,
        )

    async def _keep(
        self, key: str, principal: Principal, entry: TokenEntry, started: float, held: Held | None
    ) -> bool:
        """Stores ``entry`` unless its user signed out since ``started`` (an issuance under way must
        not put a token back after a sign-out). True when this released the lock too."""
        if held is not None and held.read and self._lock is not None:
            blob, ttl = self._store.seal(key, entry)
            marker = self._keys.signed_out(principal.principal_id, principal.user_id)
            try:
                stored = await self._lock.store_and_release(
                    held.lock_key, held.owner, key, blob, ttl, marker, started, self._store.l1_channel
                )
            except REDIS_ERRORS as exc:
                self._breaker.failed(exc)  # then command by command, each tried as the cache does
            else:
                self._breaker.succeeded()
                if not stored:
                    self.stats.inc("stores_skipped_after_sign_out")
                return True
        if await self._store.signed_out_since(principal, started):
            self.stats.inc("stores_skipped_after_sign_out")
        else:
            await self._store.store(key, entry)
        return False

    async def release(self, held: Held, key: str) -> None:
        assert self._lock is not None
        try:
            await self._lock.release(held.lock_key, held.owner, key)
        except REDIS_ERRORS as exc:
            # Tried again in the background (bff/tokens/release.py), so that the replicas waiting
            # for it are not kept waiting until it expires.
            self._breaker.failed(exc)
            if self._releases is not None:
                self._releases.start(held.lock_key, held.owner, key, held.expires_by)
