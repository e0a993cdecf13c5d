"""Per-user rate limits kept in Redis, so that every replica counts against the same budget.

Fixed windows: one counter per (user, window) created with INCR and given an expiry in the same
pipeline (one round trip). Keys are HMACs of the identity, like the token cache's: no user id
appears in Redis. If Redis is unavailable, each process counts on its own for a while (limits
get looser by the number of replicas, never stricter) and the failure is counted.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from bff.proxy.config import RateLimitSettings
from bff.stats import Stats
from bff.tokens.cache import REDIS_ERRORS

log = logging.getLogger("bff.proxy.ratelimit")


class RateLimited(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__("rate limited")
        self.retry_after = retry_after


class RateLimiter:
    def __init__(
        self,
        settings: RateLimitSettings,
        *,
        redis: Any | None,
        hmac_key: bytes,
        prefix: str,
        realm_id: str,
        stats: Stats,
        down_backoff_sec: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s = settings
        self._redis = redis
        self._key = hmac_key
        self._prefix = f"{prefix}rl:"
        self._realm = realm_id
        self._stats = stats
        self._backoff = down_backoff_sec
        self._down_until = 0.0
        self._clock = clock
        self._local: dict[str, int] = {}
        self._local_window = -1

    def subject(self, principal_id: str, user_id: str) -> str:
        msg = "\x1f".join(("rl", self._realm, principal_id, user_id)).encode()
        return hmac.new(self._key, msg, hashlib.sha256).hexdigest()[:40]

    async def check(self, subject: str, *, write: bool) -> None:
        """Counts this request; raises RateLimited when the user is over a limit."""
        if not self._s.enabled:
            return
        now = self._clock()
        window = int(now // self._s.window_sec)
        retry_after = max(1, math.ceil((window + 1) * self._s.window_sec - now))
        keys = [f"{self._prefix}{subject}:{window}"]
        if write:
            keys.append(f"{self._prefix}{subject}:w:{window}")
        counts = await self._count(keys, window)
        if counts[0] > self._s.requests or (write and counts[1] > self._s.write_requests):
            self._stats.inc("proxy.rate_limited")
            raise RateLimited(retry_after)

    async def _count(self, keys: list[str], window: int) -> list[int]:
        if self._redis is not None and time.monotonic() >= self._down_until:
            try:
                pipe = self._redis.pipeline(transaction=False)
                for key in keys:
                    pipe.incr(key)
                    pipe.expire(key, self._s.window_sec + 1)
                result = await pipe.execute()
                return [int(result[i * 2]) for i in range(len(keys))]
            except REDIS_ERRORS as exc:
                self._stats.inc("proxy.rate_limit.redis_errors")
                if time.monotonic() >= self._down_until:
                    log.warning(
                        "rate limits: redis unavailable (%s); counting per process", type(exc).__name__
                    )
                self._down_until = time.monotonic() + self._backoff
        if window != self._local_window:
            self._local.clear()
            self._local_window = window
        out = []
        for key in keys:
            self._local[key] = self._local.get(key, 0) + 1
            out.append(self._local[key])
        return out
