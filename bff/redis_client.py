"""Redis for the whole service: the pooled client from settings (redis://, rediss://, Sentinel or
Cluster), the errors a down or slow Redis raises, and the one breaker that decides when this
process stops asking Redis (token cache, cross-replica lock, issuance and rate limits alike).

The breaker (``RedisBreaker``):

- closed: Redis is used. A failed command is counted (``redis_errors``); once
  ``cache.redis.breaker_failures`` commands in a row failed, one ``PING`` (answer within
  ``ping_timeout_sec``) decides: no answer opens the breaker, an answer keeps it closed. One slow
  or failed command therefore never switches a process to its in-process fallbacks: under a burst
  a busy event loop can make a connect or a reply late (see ``tests/drills/test_three_processes``)
  while Redis itself is fine.
- open: Redis is skipped (in-process cache, process-local single flight and limits), and a
  ``PING`` every ``probe_interval_sec`` looks for its return. Any successful command or probe
  closes it.

Its state is the gauge ``vluna_bff_breaker_state{breaker="redis"}`` (0 closed, 2 open) and the
``redis_breaker`` check of ``/readyz``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, TypeAlias

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

from bff import netdiag
from bff.redis_cluster import SafeRedisCluster
from bff.settings import RedisSettings
from bff.stats import Stats

log = logging.getLogger("bff.redis")

# The service's Redis client: one server (or the master Sentinel names) or a Redis Cluster
# (make_redis gives a SafeRedisCluster, which is one).
RedisClient: TypeAlias = "Redis | RedisCluster"

# What a down, slow or misbehaving Redis raises through redis-py.
REDIS_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)


def redis_target(s: RedisSettings) -> str:
    """Where Redis is, for log lines and probe results: host:port, db, TLS, user; no password."""
    if s.sentinels:
        return f"Redis via Sentinel master {s.sentinel_service!r} at {', '.join(s.sentinels)}"
    address = netdiag.redis_address(s.url.get_secret_value()) if s.url else "?"
    return f"Redis Cluster {address}" if s.cluster else f"Redis {address}"


def make_redis(s: RedisSettings, **extra: Any) -> RedisClient:
    """``extra``: more client arguments (the start-up probe passes ``retry``)."""
    common: dict[str, Any] = {
        "socket_timeout": s.socket_timeout_sec,
        "socket_connect_timeout": s.connect_timeout_sec,
        "max_connections": s.max_connections,
        "health_check_interval": 30,
        **extra,
    }
    if s.sentinels:
        assert s.sentinel_service is not None
        hosts = []
        for hp in s.sentinels:
            host, _, port = hp.rpartition(":")
            hosts.append((host, int(port)))
        sentinel_kwargs: dict[str, Any] = {"socket_timeout": s.socket_timeout_sec}
        if s.sentinel_password is not None:
            sentinel_kwargs["password"] = s.sentinel_password.get_secret_value()
        master_kwargs = dict(common)
        if s.url is not None:
            # With Sentinel the URL only contributes credentials/db for the master.
            from redis.asyncio.connection import parse_url

            parsed = parse_url(s.url.get_secret_value())
            for k in ("password", "username", "db"):
                if k in parsed:
                    master_kwargs[k] = parsed[k]
        sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_kwargs, socket_timeout=s.socket_timeout_sec)
        master: Redis = sentinel.master_for(s.sentinel_service, **master_kwargs)
        return master
    assert s.url is not None
    url = s.url.get_secret_value()
    if s.cluster:
        cluster: RedisCluster = SafeRedisCluster.from_url(
            url, socket_timeout=s.socket_timeout_sec, socket_connect_timeout=s.connect_timeout_sec, **extra
        )
        return cluster
    client: Redis = Redis.from_url(url, **common)
    return client


class RedisBreaker:
    """Whether this process uses Redis now (closed) or its in-process fallbacks (open); see the
    module docstring. Without a Redis client it is always open (nothing to ask)."""

    def __init__(
        self,
        stats: Stats,
        redis: RedisClient | None,
        *,
        failures: int = 3,
        ping_timeout_sec: float = 2.0,
        probe_interval_sec: float = 1.0,
        target: str = "Redis",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stats = stats
        self._redis = redis
        self._failures = max(1, failures)
        self._ping_timeout = ping_timeout_sec
        self._probe_interval = probe_interval_sec
        self._target = target
        self._clock = clock
        self._open = redis is None
        self._consecutive = 0
        self._check: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None
        self.opened_at: float | None = None

    # -- state ----------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Redis is to be used."""
        return not self._open

    @property
    def state(self) -> str:
        return "open" if self._open else "closed"

    def succeeded(self) -> None:
        """A Redis command answered: the breaker is (again) closed."""
        self._consecutive = 0
        if self._open and self._redis is not None:
            self._open = False
            self.opened_at = None
            self._stats.inc("redis_breaker.closed")
            log.info("%s available again; the breaker is closed", self._target)

    def failed(self, exc: BaseException) -> None:
        """A Redis command failed (or did not answer in time). Counted; after ``failures`` in a
        row, one PING decides whether the breaker opens (``verdict`` waits for it)."""
        self._stats.inc("redis_errors")
        if self._open:
            return
        self._consecutive += 1
        log.debug("redis command failed (%s; %d in a row)", type(exc).__name__, self._consecutive)
        if self._consecutive >= self._failures and self._check is None:
            self._check = asyncio.ensure_future(self._ping_check(exc))

    async def verdict(self) -> bool:
        """After ``failed``: True when the breaker is open (now, or once the PING under way has
        failed); False when Redis is to be used (tried) again."""
        check = self._check
        if check is not None and not self._open:
            with contextlib.suppress(Exception):
                await asyncio.shield(check)
        return self._open

    def fell_back(self) -> None:
        """A cache operation was served by the in-process cache because the breaker is open."""
        self._stats.inc("redis_fallbacks")

    async def aclose(self) -> None:
        for task in (self._check, self._probe):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._check = self._probe = None

    # -- PING ---------------------------------------------------------------------------------

    async def _ping(self) -> BaseException | None:
        assert self._redis is not None
        try:
            await asyncio.wait_for(self._redis.ping(), self._ping_timeout)
        except asyncio.TimeoutError as exc:
            return exc
        except REDIS_ERRORS as exc:
            return exc
        return None

    async def _ping_check(self, first: BaseException) -> None:
        try:
            error = await self._ping()
            if error is None:
                # Redis answers: the failures were this process's (a late connect or read under
                # load), not an outage. Keep using Redis.
                self._consecutive = 0
                self._stats.inc("redis_breaker.ping_ok")
                return
            if not self._open:
                self._open = True
                self.opened_at = self._clock()
                self._stats.inc("redis_breaker.open")
                # Where (no password) and the cause in words; never the exception's own text,
                # which could carry the URL.
                log.warning(
                    "%s unavailable: %s; %d commands failed in a row and PING got no answer: the "
                    "breaker is open, serving from the in-process cache",
                    self._target,
                    netdiag.cause(error if not isinstance(error, asyncio.TimeoutError) else first).text,
                    self._consecutive,
                )
                if self._probe is None or self._probe.done():
                    self._probe = asyncio.ensure_future(self._probe_until_closed())
        finally:
            self._check = None

    async def _probe_until_closed(self) -> None:
        while self._open:
            await asyncio.sleep(self._probe_interval)
            if not self._open:
                break
            if await self._ping() is None:
                self.succeeded()
