"""A circuit breaker per upstream: after repeated failures, fail fast instead of making callers wait.

closed    -> every call goes through; ``failure_threshold`` consecutive failures open it.
open      -> calls are refused at once (503 + Retry-After) for ``open_sec``.
half-open -> one probe goes through; success closes, failure opens again. A probe that never
             reports (its caller was cancelled) is given up after ``probe_timeout_sec``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from bff.stats import Stats


class BreakerOpen(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__("circuit open")
        self.retry_after = retry_after


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failure_threshold: int,
        open_sec: float,
        probe_timeout_sec: float,
        stats: Stats,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self._threshold = failure_threshold
        self._open_sec = open_sec
        self._probe_timeout = probe_timeout_sec
        self._stats = stats
        self._clock = clock
        self._failures = 0
        self._state = "closed"
        self._open_until = 0.0
        self._probe_started: float | None = None

    @property
    def state(self) -> str:
        if self._state == "open" and self._clock() >= self._open_until:
            return "half_open"
        return self._state

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        return {
            "upstream": self.name,
            "state": self.state,
            "consecutive_failures": self._failures,
            "retry_after": max(0, math.ceil(self._open_until - now)) if self._state == "open" else 0,
        }

    def before(self) -> bool:
        """Raises BreakerOpen, or returns whether this call is the half-open probe."""
        if self._state == "closed":
            return False
        now = self._clock()
        if self._state == "open":
            if now < self._open_until:
                self._stats.inc("proxy.breaker.rejected")
                raise BreakerOpen(max(1, math.ceil(self._open_until - now)))
            self._state = "half_open"
            self._probe_started = None
        # half-open: one probe at a time
        if self._probe_started is not None and now - self._probe_started < self._probe_timeout:
            self._stats.inc("proxy.breaker.rejected")
            raise BreakerOpen(1)
        self._probe_started = now
        return True

    def success(self) -> None:
        if self._state != "closed":
            self._stats.inc("proxy.breaker.closed")
        self._state = "closed"
        self._failures = 0
        self._probe_started = None

    def failure(self) -> None:
        self._failures += 1
        if self._state == "half_open" or (self._state == "closed" and self._failures >= self._threshold):
            self._state = "open"
            self._open_until = self._clock() + self._open_sec
            self._probe_started = None
            self._stats.inc("proxy.breaker.open")
