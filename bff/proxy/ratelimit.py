"""Per-user rate limits kept in Redis, so that every replica counts against the same budget.

Fixed windows: one counter per (user, window), raised with INCRBY and given an expiry in the same
pipeline (one round trip). Keys are HMACs of the identity, like the token cache's: no user id
appears in Redis.

Leases (``rate_limit.lease_size``): a replica does not ask Redis on every request. It reserves a
few of the user's slots at once (INCRBY n: they are counted in Redis from then on, whoever uses
them) and spends them locally; when they are used up it reserves again. The lease shrinks as the
window's total nears the limit (a single slot in the last stretch), and a replica is only granted
the slots still under the limit. So:

- no user is ever served more than ``requests`` (or ``write_requests``) calls per window across
  all replicas: every served call spent a slot that Redis counted under the limit;
- a user may be refused up to ``(replicas - 1) * (lease_size - 1)`` calls early in a window, when
  other replicas hold slots that user has not spent yet (they lapse with the window);
- once the window's total reached the limit, the replica answers 429 without asking Redis again
  until the window ends (counters only grow within a window).

``lease_size: 1`` counts every request in Redis as it comes (one round trip per request). Writes
are always counted one by one on their own (smaller) counter. If Redis is unavailable, each
process counts on its own while the shared Redis breaker (bff/redis_client.py) is open, and for
the request whose count failed (limits get looser by the number of replicas, never stricter);
the failure is counted (``redis_errors``, as for every Redis command).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
from collections import deque
from collections.abc import Callable

from bff.redis_client import REDIS_ERRORS, RedisBreaker, RedisClient
from bff.settings import RateLimitSettings
from bff.stats import Stats

log = logging.getLogger("bff.proxy.ratelimit")

# A lease is at most 1/_SHARE of what the window has left (as last seen), so leases shrink near
# the limit and the last slots are handed out one at a time.
_SHARE = 8
_MAX_SUBJECTS = 100_000


class RateLimited(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__("rate limited")
        self.retry_after = retry_after


class _Lease:
    """One user's slots of the current window in this process."""

    __slots__ = ("exhausted", "left", "refill", "seen", "waiters")

    def __init__(self) -> None:
        self.left = 0  # slots reserved in Redis, not spent yet
        self.seen = 0  # the window's total as Redis last reported it
        self.exhausted = False  # the total reached the limit: nobody gets a slot this window
        # Requests waiting for a slot, served first come first served by one refill at a time.
        self.waiters: deque[asyncio.Future[bool]] = deque()
        self.refill: asyncio.Task[None] | None = None


class SharedCounters:
    """The window counters in Redis (INCRBY with an expiry, one round trip), behind the shared
    Redis breaker; ``None`` from ``incr`` when Redis failed."""

    def __init__(
        self, redis: RedisClient | None, breaker: RedisBreaker | None, stats: Stats, ttl_sec: int
    ) -> None:
        self._redis = redis
        # Shared with the token cache and lock: one view of whether Redis is down. None (unit
        # tests): Redis is always tried.
        self._breaker = breaker
        self._stats = stats
        self._ttl = ttl_sec

    @property
    def up(self) -> bool:
        return self._redis is not None and (self._breaker is None or self._breaker.closed)

    async def incr(self, increments: list[tuple[str, int]]) -> list[int] | None:
        """INCRBY each key (with its expiry) in one round trip; None when Redis failed."""
        assert self._redis is not None
        try:
            pipe = self._redis.pipeline(transaction=False)
            for key, n in increments:
                pipe.incrby(key, n)
                pipe.expire(key, self._ttl)
            result = await pipe.execute()
        except REDIS_ERRORS as exc:
            if self._breaker is not None:
                self._breaker.failed(exc)
            else:
                self._stats.inc("redis_errors")
            log.debug("rate limits: redis command failed (%s); counted per process", type(exc).__name__)
            return None
        if self._breaker is not None:
            self._breaker.succeeded()
        self._stats.inc("proxy.rate_limit.leases")
        return [int(result[i * 2]) for i in range(len(increments))]


class LocalCounters:
    """The same counters in this process only, while Redis cannot count."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._window = -1

    def count(self, keys: list[str], window: int) -> list[int]:
        if window != self._window:
            self._counts.clear()
            self._window = window
        out = []
        for key in keys:
            self._counts[key] = self._counts.get(key, 0) + 1
            out.append(self._counts[key])
        return out


class Leases:
    """Every user's slots of the current window in this process: spent locally, reserved from
    the shared counters as they run out (see the module's docstring)."""

    def __init__(
        self, settings: RateLimitSettings, shared: SharedCounters, local: LocalCounters, prefix: str
    ) -> None:
        self._s = settings
        self._shared = shared
        self._local = local
        self._prefix = prefix
        self._leases: dict[str, _Lease] = {}
        self._write_exhausted: set[str] = set()
        self.window = -1

    def lease(self, subject: str, window: int) -> _Lease:
        if window != self.window:
            self._leases.clear()
            self._write_exhausted.clear()
            self.window = window
        lease = self._leases.get(subject)
        if lease is None:
            if len(self._leases) >= _MAX_SUBJECTS:
                self._leases.clear()  # forgetting unspent slots only makes limits stricter
            lease = self._leases[subject] = _Lease()
        return lease

    def spend(self, subject: str, window: int) -> bool:
        """Spends a slot already leased, if there is one and nobody is queued for one; no I/O."""
        if window != self.window:
            return False
        lease = self._leases.get(subject)
        if lease is not None and lease.left > 0 and not lease.waiters:
            lease.left -= 1
            return True
        return False

    def _lease_size(self, lease: _Lease) -> int:
        return min(self._s.lease_size, max(1, (self._s.requests - lease.seen) // _SHARE))

    def _granted(self, lease: _Lease, total: int, n: int) -> None:
        limit = self._s.requests
        lease.seen = total
        lease.left += max(0, min(n, limit - (total - n)))
        if total >= limit:
            lease.exhausted = True

    async def take(self, subject: str, lease: _Lease, window: int) -> bool:
        if lease.left > 0 and not lease.waiters:
            lease.left -= 1
            return True
        if lease.exhausted and lease.left == 0:
            return False
        if not self._shared.up and not lease.waiters:
            return self._local.count([f"{self._prefix}{subject}:{window}"], window)[0] <= self._s.requests
        # Queue behind the requests already waiting, so nobody starves while newer requests
        # take the slots of each refill.
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        lease.waiters.append(waiter)
        if lease.refill is None:
            lease.refill = asyncio.get_running_loop().create_task(self._refill(subject, lease, window))
        return await waiter

    async def _refill(self, subject: str, lease: _Lease, window: int) -> None:
        key = f"{self._prefix}{subject}:{window}"
        waiters = lease.waiters
        try:
            while waiters:
                if lease.left == 0 and not lease.exhausted:
                    if self._shared.up:
                        n = self._lease_size(lease)
                        counts = await self._shared.incr([(key, n)])
                        if counts is not None:
                            self._granted(lease, counts[0], n)
                    if lease.left == 0 and not lease.exhausted:
                        # Redis is down: this process counts on its own for now.
                        while waiters:
                            w = waiters.popleft()
                            if not w.done():
                                w.set_result(self._local.count([key], window)[0] <= self._s.requests)
                        break
                while waiters and (lease.left > 0 or lease.exhausted):
                    w = waiters.popleft()
                    if w.done():  # its request was cancelled
                        continue
                    if lease.left > 0:
                        lease.left -= 1
                        w.set_result(True)
                    else:
                        w.set_result(False)
        except BaseException as exc:
            # Not Redis (that is handled above): the waiting requests fail as this task did.
            while waiters:
                w = waiters.popleft()
                if not w.done():
                    if isinstance(exc, asyncio.CancelledError):
                        w.cancel()
                    else:
                        w.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            lease.refill = None

    async def take_write(self, subject: str, lease: _Lease, window: int) -> bool:
        if (lease.left == 0 and lease.exhausted) or subject in self._write_exhausted:
            return False
        total_key = f"{self._prefix}{subject}:{window}"
        write_key = f"{self._prefix}{subject}:w:{window}"
        if self._shared.up:
            # Writes are counted one by one; the general budget's slot comes from the lease when
            # there is one, else one more slot is reserved in the same round trip.
            n = 0 if lease.left > 0 else 1
            counts = await self._shared.incr([(write_key, 1), *([(total_key, n)] if n else [])])
            if counts is not None:
                if n:
                    self._granted(lease, counts[1], n)
                if counts[0] >= self._s.write_requests:
                    self._write_exhausted.add(subject)
                if counts[0] > self._s.write_requests or lease.left == 0:
                    return False
                lease.left -= 1
                return True
        if lease.left > 0:
            lease.left -= 1
            return self._local.count([write_key], window)[0] <= self._s.write_requests
        write_count, total_count = self._local.count([write_key, total_key], window)
        return write_count <= self._s.write_requests and total_count <= self._s.requests


class RateLimiter:
    """The per-user limits of the proxy: who the caller is (a keyed hash), then a slot of the
    window's budget from this process's leases (``Leases``), reserved from the counters in Redis
    (``SharedCounters``), or counted in this process while Redis is down (``LocalCounters``)."""

    def __init__(
        self,
        settings: RateLimitSettings,
        *,
        redis: RedisClient | None,
        hmac_key: bytes,
        prefix: str,
        realm_id: str,
        stats: Stats,
        breaker: RedisBreaker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s = settings
        self.enabled = settings.enabled
        self._key = hmac_key
        self._realm = realm_id
        self._stats = stats
        self._clock = clock
        self._subjects: dict[tuple[str, str], str] = {}
        shared = SharedCounters(redis, breaker, stats, settings.window_sec + 1)
        self._leases = Leases(settings, shared, LocalCounters(), f"{prefix}rl:")

    def subject(self, principal_id: str, user_id: str) -> str:
        ident = (principal_id, user_id)
        subject = self._subjects.get(ident)
        if subject is None:
            msg = "\x1f".join(("rl", self._realm, principal_id, user_id)).encode()
            subject = hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:40]
            if len(self._subjects) >= _MAX_SUBJECTS:
                self._subjects.clear()
            self._subjects[ident] = subject
        return subject

    def spend_leased(self, subject: str, *, write: bool) -> bool:
        """Counts this request against a slot this process already holds, without I/O; False
        when that is not possible (then ``check`` decides). Writes are always counted in Redis."""
        if write or not self.enabled:
            return False
        return self._leases.spend(subject, int(self._clock() // self._s.window_sec))

    async def check(self, subject: str, *, write: bool) -> None:
        """Counts this request; raises RateLimited when the user is over a limit."""
        s = self._s
        if not s.enabled:
            return
        now = self._clock()
        window = int(now // s.window_sec)
        lease = self._leases.lease(subject, window)
        if write:
            ok = await self._leases.take_write(subject, lease, window)
        else:
            ok = await self._leases.take(subject, lease, window)
        if not ok:
            self._stats.inc("proxy.rate_limited")
            raise RateLimited(max(1, math.ceil((window + 1) * s.window_sec - now)))
