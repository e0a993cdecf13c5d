"""From (principal, user, scopes) to a platform token: cache, single flight, refresh ahead, failures.

- Hit: decrypt and serve; past ``refresh_ahead_ratio`` of its life, renew in the background.
- Miss: one upstream call per key per process (an in-process future every request awaits) and
  one across replicas (a Redis lock; the others wait for its release notification, then read
  the cache).
- Vluna down: a cached, still valid token keeps being served (refresh failures are swallowed);
  with none, ``TokenUnavailable`` (503).
- Redis down (the shared ``RedisBreaker`` is open): the in-process cache and a process-local
  single flight carry on. While the breaker is closed, a failed lock command is tried again (or
  the request ends in ``TokenUnavailable`` at its deadline): never an issuance without the
  cross-replica lock on the guess that Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bff.errors import ServiceUnavailable, UpstreamRejected
from bff.principals import Principal
from bff.redis_client import REDIS_ERRORS, RedisBreaker
from bff.stats import Stats
from bff.telemetry.tracing import span
from bff.tokens.cache import ResilientCache, SharedCacheUnavailable
from bff.tokens.crypto import TokenCipher
from bff.tokens.issuer import IssuedToken, IssuerRejected, IssuerUnavailable, TokenIssuer
from bff.tokens.keys import CacheKeys, canonical_scopes
from bff.tokens.l1 import L1Cache
from bff.tokens.limits import IssuanceLimited, IssuanceLimiter
from bff.tokens.lock import RedisLock, Waiters

log = logging.getLogger("bff.broker")


@dataclass(frozen=True)
class TokenEntry:
    access_token: str = field(repr=False)
    token_type: str
    issued_at: float
    expires_at: float
    billing_account_id: str | None
    billing_user_id: str | None
    scopes: tuple[str, ...]

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "t": self.access_token,
                "ty": self.token_type,
                "iat": self.issued_at,
                "exp": self.expires_at,
                "ba": self.billing_account_id,
                "bu": self.billing_user_id,
                "sc": list(self.scopes),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> TokenEntry:
        d = json.loads(raw)
        return cls(
            access_token=d["t"],
            token_type=d["ty"],
            issued_at=float(d["iat"]),
            expires_at=float(d["exp"]),
            billing_account_id=d["ba"],
            billing_user_id=d["bu"],
            scopes=tuple(d["sc"]),
        )

    def expires_in(self, now: float) -> int:
        return max(0, int(self.expires_at - now))


class TokenUnavailable(ServiceUnavailable):
    """No valid token can be served now (503); the client should retry after ``retry_after``
    seconds. ``reason`` is for the operator only."""

    code = "token_unavailable"

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__("billing tokens are temporarily unavailable", retry_after=retry_after)
        self.reason = reason


class TokenRejected(UpstreamRejected):
    """Vluna refused to issue for this principal or this service key (502). ``reason`` is for
    the operator only."""

    def __init__(self, reason: str) -> None:
        super().__init__("the billing service refused to issue a token for this user")
        self.reason = reason


class SignOutIncomplete(ServiceUnavailable):
    """The sign-out could not be recorded where every replica sees it (Redis): the tokens might
    still be served, so the caller must not be told it is signed out (503: send it again)."""

    code = "sign_out_incomplete"

    def __init__(self, retry_after: int) -> None:
        super().__init__("the sign-out could not be recorded; send it again", retry_after=retry_after)


@dataclass(frozen=True)
class BrokerConfig:
    realm_id: str
    allowed_scopes: tuple[str, ...]
    refresh_ahead_ratio: float = 0.5
    safety_margin_sec: float = 30
    lock_ttl_sec: float = 10
    wait_timeout_sec: float = 10
    retry_after_sec: int = 5
    # Upper bound on one wait for a release notification; a safety net if one is lost.
    recheck_interval_sec: float = 1.0


class TokenBroker:
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
        self._limiter = limiter
        self._cfg = config
        self._issuer = issuer
        self._cache = cache
        self._cipher = cipher
        self._keys = keys
        self._breaker = breaker
        self._lock = lock
        self._notifier = notifier
        self.stats = stats
        self._inflight: dict[str, asyncio.Future[TokenEntry]] = {}
        self._background: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"TokenBroker(realm={self._cfg.realm_id!r})"

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
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)

    async def get_token(self, principal: Principal, scopes: Sequence[str]) -> TokenEntry:
        scopes_c = canonical_scopes(scopes)
        key = self._keys.token(principal.principal_id, principal.user_id, scopes_c)
        now = self._clock()
        with span("bff.token_cache.get") as sp:
            # The first level (bff/tokens/l1.py): served only before the entry's refresh point.
            entry = self._l1.get(key, now) if self._l1 is not None else None
            if entry is not None:
                sp.set_attribute("bff.cache.hit", True)
                sp.set_attribute("bff.cache.l1", True)
                self.stats.inc("cache_hits")
                self.stats.inc("l1_hits")
                return entry
            entry = await self._read(key, now)
            sp.set_attribute("bff.cache.hit", entry is not None)
        if entry is not None:
            self.stats.inc("cache_hits")
            if self._due(entry, now):
                self.stats.inc("stale_served")
                self._refresh_in_background(key, principal, scopes_c)
            return entry
        self.stats.inc("cache_misses")
        return await self._single_flight(key, principal, scopes_c)

    async def forget(self, principal: Principal, *, strict: bool = True) -> None:
        """Sign-out: drop every cached token of this identity, whatever its scopes.

        ``strict`` (a user's sign-out): once this returns, no replica serves those tokens again,
        so the deletion and the marker must both reach Redis; if they cannot, this raises
        ``SignOutIncomplete`` (the in-process copies are dropped anyway). Not strict: best
        effort (the proxy dropping a token Vluna refused)."""
        keys = self._keys.all_tokens(principal.principal_id, principal.user_id, self._cfg.allowed_scopes)
        # An issuance already under way (here or on another replica) must not put a token back
        # after the sign-out: it checks this marker before storing. It only needs to outlive
        # such an issuance.
        marker = self._keys.signed_out(principal.principal_id, principal.user_id)
        try:
            await self._cache.delete(keys, strict=strict)
            await self._cache.set(
                marker,
                repr(self._clock()).encode(),
                self._cfg.lock_ttl_sec + self._cfg.wait_timeout_sec,
                strict=strict,
            )
        except SharedCacheUnavailable:
            self.stats.inc("sign_outs_incomplete")
            raise SignOutIncomplete(self._cfg.retry_after_sec) from None
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
                    raise SignOutIncomplete(self._cfg.retry_after_sec) from None
                return
            if strict:
                await asyncio.sleep(l1.window_sec)

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        for task in list(self._background):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- cache ----------------------------------------------------------------------------------

    async def _read(self, key: str, now: float) -> TokenEntry | None:
        l1 = self._l1
        epoch = l1.epoch if l1 is not None else 0
        # Only what Redis answered goes into L1, never an entry of the in-process fallback: the
        # breaker must be closed before the read (so it went to Redis) and still after it.
        redis_before = self._cache.uses_redis
        blob = await self._shared_get(key)
        if blob is None:
            return None
        raw = self._cipher.open(blob, key.encode())
        if raw is None:
            self.stats.inc("cache_unreadable")
            return None
        try:
            entry = TokenEntry.from_bytes(raw)
        except (ValueError, KeyError, TypeError):
            self.stats.inc("cache_unreadable")
            return None
        if now >= entry.expires_at - self._cfg.safety_margin_sec:
            return None
        if l1 is not None and redis_before and self._cache.uses_redis:
            # Until the earliest of: its refresh point (then Redis is read and the renewal starts),
            # when Redis drops it (expiry minus the margin), the L1 bound after this read.
            until = min(
                entry.issued_at + (entry.expires_at - entry.issued_at) * self._cfg.refresh_ahead_ratio,
                entry.expires_at - self._cfg.safety_margin_sec,
                now + l1.max_ttl_sec,
            )
            if until > now:
                l1.put(key, entry, until, epoch)
        return entry

    async def _store(self, key: str, entry: TokenEntry) -> None:
        ttl = entry.expires_at - self._cfg.safety_margin_sec - self._clock()
        await self._cache.set(key, self._cipher.seal(entry.to_bytes(), key.encode()), ttl)

    # -- single flight --------------------------------------------------------------------------

    async def _single_flight(self, key: str, principal: Principal, scopes: tuple[str, ...]) -> TokenEntry:
        fut = self._inflight.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._fill(key, principal, scopes, refresh=False))
            self._inflight[key] = fut
            fut.add_done_callback(lambda f: self._settle(key, f))
        else:
            self.stats.inc("single_flight_waits")
        # Shielded: a caller that disconnects must not cancel the fill the others are waiting on.
        return await asyncio.shield(fut)

    def _settle(self, key: str, fut: asyncio.Future[Any]) -> None:
        if self._inflight.get(key) is fut:
            del self._inflight[key]
        if not fut.cancelled():
            fut.exception()  # retrieved, so an unawaited failure is not reported as lost

    def _refresh_in_background(self, key: str, principal: Principal, scopes: tuple[str, ...]) -> None:
        if key in self._inflight:
            return
        self.stats.inc("refresh_ahead")
        fut = asyncio.ensure_future(self._fill(key, principal, scopes, refresh=True))
        self._inflight[key] = fut
        fut.add_done_callback(lambda f: self._settle(key, f))

        async def watch() -> None:
            try:
                await fut
                self.stats.inc("refreshes")
            except (TokenUnavailable, TokenRejected, IssuanceLimited):
                # The current token stays in the cache and keeps being served until it expires.
                self.stats.inc("refresh_failures")

        task = asyncio.create_task(watch())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _fill(
        self, key: str, principal: Principal, scopes: tuple[str, ...], *, refresh: bool
    ) -> TokenEntry:
        deadline = time.monotonic() + self._cfg.wait_timeout_sec
        lock_key = self._keys.lock(key)
        pause = 0.05
        while True:
            owner: str | None = None
            local_only = True
            if self._lock is not None and self._breaker.closed:
                try:
                    owner = await self._lock.acquire(lock_key, self._cfg.lock_ttl_sec)
                    local_only = False
                except REDIS_ERRORS as exc:
                    self._breaker.failed(exc)
                    if not await self._breaker.verdict():
                        # Redis answers (or has not been found down): the lock is tried again,
                        # never skipped on a guess; at the deadline the request gets a 503.
                        self.stats.inc("lock_retries")
                        if time.monotonic() + pause >= deadline:
                            self.stats.inc("wait_timeouts")
                            raise TokenUnavailable(
                                "the token lock did not answer", self._cfg.retry_after_sec
                            ) from None
                        await asyncio.sleep(pause)
                        pause = min(pause * 2, 1.0)
                        continue
            if local_only or owner is not None:
                try:
                    # Another replica may have filled the key between our miss and our lock.
                    current = await self._read(key, self._clock())
                    if current is not None and not (refresh and self._due(current, self._clock())):
                        return current
                    return await self._issue_and_store(key, principal, scopes)
                finally:
                    if owner is not None and self._lock is not None:
                        await self._release(lock_key, owner, key)
            if refresh:
                # Another replica is already renewing this token.
                current = await self._read(key, self._clock())
                if current is not None:
                    return current
            entry = await self._wait_for_other(key, lock_key, deadline)
            if entry is not None:
                return entry

    def _due(self, entry: TokenEntry, now: float) -> bool:
        """Past the configured share of its life: time to renew it in the background."""
        life = entry.expires_at - entry.issued_at
        return now >= entry.issued_at + life * self._cfg.refresh_ahead_ratio

    async def _release(self, lock_key: str, owner: str, key: str) -> None:
        assert self._lock is not None
        try:
            await self._lock.release(lock_key, owner, key)
        except REDIS_ERRORS as exc:
            # Its expiry frees it anyway; waiters find the token on their next check.
            self._breaker.failed(exc)

    async def _wait_for_other(self, key: str, lock_key: str, deadline: float) -> TokenEntry | None:
        """Wait until the holder publishes (or its lock expires); None means: try to lock again."""
        assert self._lock is not None
        notifier = self._notifier
        with notifier.subscription(key) if notifier else contextlib.nullcontext(asyncio.Event()) as woke:
            while True:
                entry = await self._read(key, self._clock())
                if entry is not None:
                    self.stats.inc("waited_for_other")
                    return entry
                left = deadline - time.monotonic()
                if left <= 0:
                    self.stats.inc("wait_timeouts")
                    raise TokenUnavailable("timed out waiting for a token", self._cfg.retry_after_sec)
                try:
                    lock_left = await self._lock.remaining_sec(lock_key)
                except REDIS_ERRORS as exc:
                    # None: lock again (which waits while Redis is unsure, see _fill).
                    self._breaker.failed(exc)
                    return None
                if lock_left <= 0:
                    return None
                connected = notifier is not None and notifier.connected
                step = min(left, lock_left, self._cfg.recheck_interval_sec if connected else 0.05)
                woke.clear()
                try:
                    await asyncio.wait_for(woke.wait(), step)
                    self.stats.inc("lock_wakeups")
                except asyncio.TimeoutError:
                    pass

    async def _shared_get(self, key: str) -> bytes | None:
        try:
            return await self._cache.get(key)
        except SharedCacheUnavailable:
            self.stats.inc("redis_unsure")
            raise TokenUnavailable("the token cache did not answer", self._cfg.retry_after_sec) from None

    async def _signed_out_since(self, principal: Principal, since: float) -> bool:
        raw = await self._shared_get(self._keys.signed_out(principal.principal_id, principal.user_id))
        try:
            return raw is not None and float(raw) >= since
        except ValueError:
            return False

    async def _issue_and_store(self, key: str, principal: Principal, scopes: tuple[str, ...]) -> TokenEntry:
        if self._limiter is not None:
            await self._limiter.spend(principal.principal_id, principal.user_id)  # IssuanceLimited
        self.stats.inc("issuances")
        started = self._clock()
        try:
            issued = await self._issuer.issue(
                principal.principal_id, principal.user_id, scopes, principal.traits
            )
        except IssuerUnavailable as exc:
            self.stats.inc("issue_failures")
            raise TokenUnavailable(str(exc), self._cfg.retry_after_sec) from None
        except IssuerRejected as exc:
            self.stats.inc("issue_rejections")
            raise TokenRejected(str(exc)) from None
        entry = self._entry_from(issued, scopes)
        if await self._signed_out_since(principal, started):
            self.stats.inc("stores_skipped_after_sign_out")
        else:
            await self._store(key, entry)
        return entry

    def _entry_from(self, issued: IssuedToken, scopes: tuple[str, ...]) -> TokenEntry:
        now = self._clock()
        # expires_in against our own clock: immune to skew between Vluna and this host.
        expires_at = now + max(0, issued.expires_in)
        return TokenEntry(
            access_token=issued.access_token,
            token_type=issued.token_type,
            issued_at=now,
            expires_at=expires_at,
            billing_account_id=issued.billing_account_id,
            billing_user_id=issued.billing_user_id,
            scopes=scopes,
        )
