"""Limits on issuing platform tokens (``tokens.issuance_limit``): every issuance spends the realm's
shared service key, so one user looping sign-out and sign-in, or a flood of new users, must not be
able to spend it all.

Fixed windows, checked in this order, each only for an issuance that passed the ones before
(so a user refused for their own limit spends nothing of the shared budgets):

- per user (principal and user, every scope set together): a Redis counter shared by every
  replica, keyed by an HMAC (no identity in Redis);
- per replica: a counter in this process;
- all replicas together: one Redis counter.

Only issuances count: cached tokens are served whatever the counters say. With Redis unavailable
(the shared Redis breaker open, or this one count failing) the per-user counter is kept per
process (looser by the number of replicas, never stricter) and the all-replica budget is not
enforced (the per-replica one still is).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from bff.errors import TooManyRequests
from bff.redis_client import REDIS_ERRORS, RedisBreaker, RedisClient
from bff.settings import IssuanceLimitSettings
from bff.stats import Stats
from bff.tokens.keys import CacheKeys

log = logging.getLogger("bff.limits")

_MAX_LOCAL_USERS = 100_000


class IssuanceLimited(TooManyRequests):
    """No new token now (429). ``budget``: False when the user's own limit was reached, True when
    a shared budget (this replica's or all replicas') was."""

    def __init__(self, retry_after: int, *, budget: bool) -> None:
        if budget:
            super().__init__(
                "the service is issuing too many billing tokens right now",
                retry_after=retry_after,
                code="issuance_budget_exhausted",
            )
        else:
            super().__init__(
                "too many new billing tokens for this user; a token already held stays valid",
                retry_after=retry_after,
            )
        self.budget = budget


class IssuanceLimiter:
    def __init__(
        self,
        settings: IssuanceLimitSettings,
        *,
        redis: RedisClient | None,
        keys: CacheKeys,
        breaker: RedisBreaker,
        stats: Stats,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s = settings
        self._redis = redis
        self._keys = keys
        self._breaker = breaker
        self._stats = stats
        self._clock = clock
        self._window = -1
        self._replica_count = 0
        self._local_users: dict[tuple[str, str], int] = {}

    def user_counter(self, principal_id: str, user_id: str) -> tuple[str, int, int] | None:
        """The user's Redis counter for an issuance now: (key, expiry in seconds, window), for
        the caller to increment in a round trip it makes anyway (bff/tokens/lock.py) and hand
        back to ``spend`` as ``counted``; None when it is not to be counted in Redis."""
        s = self._s
        if not s.per_user or self._redis is None or not self._breaker.closed:
            return None
        window = int(self._clock() // s.window_sec)
        return self._keys.issuances(principal_id, user_id, window), s.window_sec + 1, window

    async def spend(self, principal_id: str, user_id: str, *, counted: tuple[int, int] | None = None) -> None:
        """Counts one issuance for this user; raises ``IssuanceLimited`` when over a limit.
        ``counted``: (window, count) when the caller already incremented the user's counter
        (``user_counter``); used if the window is still the current one."""
        s = self._s
        now = self._clock()
        window = int(now // s.window_sec)
        if window != self._window:
            self._window = window
            self._replica_count = 0
            self._local_users.clear()
        retry_after = max(1, math.ceil((window + 1) * s.window_sec - now))
        if s.per_user:
            if counted is not None and counted[0] == window:
                count: int | None = counted[1]
            else:
                count = await self._count(self._keys.issuances(principal_id, user_id, window))
            if count is None:
                count = self._count_locally((principal_id, user_id))
            if count > s.per_user:
                self._stats.inc("issuances_limited_user")
                raise IssuanceLimited(retry_after, budget=False)
        if s.per_replica:
            if self._replica_count >= s.per_replica:
                self._stats.inc("issuances_limited_budget")
                raise IssuanceLimited(retry_after, budget=True)
            self._replica_count += 1
        if s.all_replicas:
            total = await self._count(self._keys.all_issuances(window))
            if total is not None and total > s.all_replicas:
                self._stats.inc("issuances_limited_budget")
                raise IssuanceLimited(retry_after, budget=True)

    async def _count(self, key: str) -> int | None:
        """INCR with the window's expiry, in one round trip; None without Redis."""
        if self._redis is None or not self._breaker.closed:
            return None
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.incr(key)
            pipe.expire(key, self._s.window_sec + 1)
            result = await pipe.execute()
        except REDIS_ERRORS as exc:
            self._breaker.failed(exc)
            return None
        return int(result[0])

    def _count_locally(self, user: tuple[str, str]) -> int:
        if user not in self._local_users and len(self._local_users) >= _MAX_LOCAL_USERS:
            self._local_users.clear()
        count = self._local_users.get(user, 0) + 1
        self._local_users[user] = count
        return count
