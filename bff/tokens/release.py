"""Releases of the cross-replica lock that Redis refused, tried again in the background.

A holder whose release fails (Redis down, or a Cluster answering ``CLUSTERDOWN`` to the lock's
slot while it still answers ``PING``) would leave its lock until it expires
(``tokens.lock_ttl_sec``), and every replica waiting for it would wait that long (or give up at
``tokens.wait_timeout_sec`` with a 503). Instead the release is tried again, with a growing pause
(``FIRST_PAUSE_SEC`` doubling up to ``MAX_PAUSE_SEC``), until it succeeds, the lock has expired
anyway, or the process shuts down. Each attempt is ``RedisLock.release``: it deletes the lock only
while it still holds this holder's own value (never another holder's) and announces the release,
so the waiters wake at once.

Bounded: at most ``MAX_PENDING`` such releases per process (beyond that a lock is left to its
expiry, as before); all are cancelled on shutdown (``aclose``). Counted as
``lock_releases_retried`` (handed over here), ``lock_releases_late`` (released here) and
``lock_releases_abandoned`` (left to expire: the lock's TTL passed, too many pending, or shutdown).
A background attempt's failure is not reported to the Redis breaker: the requests' own commands
decide whether Redis is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from bff.redis_client import REDIS_ERRORS
from bff.stats import Stats
from bff.tokens.lock import RedisLock

log = logging.getLogger("bff.lock")

FIRST_PAUSE_SEC = 0.1
MAX_PAUSE_SEC = 1.0
MAX_PENDING = 256


class LateReleases:
    def __init__(self, lock: RedisLock, stats: Stats, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = lock
        self.stats = stats
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"LateReleases(pending={len(self._tasks)})"

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def start(self, lock_key: str, owner: str, token_key: str, expires_by: float) -> None:
        """Try the refused release of ``owner``'s lock again until it succeeds or ``expires_by``
        (this clock's time by which the lock has expired in Redis anyway)."""
        if self._closed or len(self._tasks) >= MAX_PENDING or self._clock() >= expires_by:
            self.stats.inc("lock_releases_abandoned")
            return
        self.stats.inc("lock_releases_retried")
        task = asyncio.create_task(
            self._retry(lock_key, owner, token_key, expires_by), name="bff-lock-late-release"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _retry(self, lock_key: str, owner: str, token_key: str, expires_by: float) -> None:
        pause = FIRST_PAUSE_SEC
        try:
            while True:
                left = expires_by - self._clock()
                if left <= 0:
                    break
                await asyncio.sleep(min(pause, left))
                if self._clock() >= expires_by:
                    break
                try:
                    await self._lock.release(lock_key, owner, token_key)
                except REDIS_ERRORS:
                    pause = min(pause * 2, MAX_PAUSE_SEC)
                    continue
                except Exception as exc:
                    # Not a Redis error: a bug, not worth retrying. The type only (an error's
                    # text could carry the Redis URL); the lock expires on its own.
                    log.warning("lock release failed unexpectedly (%s)", type(exc).__name__)
                    break
                self.stats.inc("lock_releases_late")
                return
        except asyncio.CancelledError:
            self.stats.inc("lock_releases_abandoned")
            raise
        self.stats.inc("lock_releases_abandoned")
        log.debug("a refused lock release was left to the lock's expiry")

    async def aclose(self) -> None:
        """Cancels the releases still being tried (their locks expire on their own)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
