"""Prometheus metrics (prometheus-client).

Multi-process safe: when ``PROMETHEUS_MULTIPROC_DIR`` is set (``vluna-bff serve --workers N``
sets it), every worker writes its samples to files there and a scrape of any worker (or of the
separate metrics port, served by the supervisor) aggregates all of them.

Labels are bounded: the route *template* (never the raw path), the method, the status code, an
operation or event name chosen by the code. Never a user, principal, token or secret.
"""

from __future__ import annotations

import bisect
import contextlib
import glob
import os
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from bff.stats import Stats

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# ``*_created`` series double the series count for little use.
disable_created_metrics()

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

HTTP_REQUESTS = Counter(
    "vluna_bff_http_requests",
    "HTTP requests by method, route template and status",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "vluna_bff_http_request_duration_seconds",
    "HTTP request latency by method and route template",
    ["method", "route"],
    buckets=_LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "vluna_bff_http_requests_in_flight", "HTTP requests being served", multiprocess_mode="livesum"
)
TOKEN_CACHE = Counter(
    "vluna_bff_token_cache_events",
    "Token cache: hit, miss, refresh_ahead (background renewal started), stale_served (a token past "
    "its refresh point served), single_flight_wait (joined an issuance under way in this process), "
    "cross_replica_wait (got the token another replica issued), wait_timeout, unreadable",
    ["event"],
)
TOKEN_REFRESHES = Counter(
    "vluna_bff_token_refreshes", "Background token renewals by outcome (ok, failed)", ["outcome"]
)
UPSTREAM_REQUESTS = Counter(
    "vluna_bff_upstream_requests",
    "Calls to Vluna by operation and outcome (ok, unavailable, rejected, error)",
    ["operation", "outcome"],
)
UPSTREAM_LATENCY = Histogram(
    "vluna_bff_upstream_request_duration_seconds",
    "Latency of calls to Vluna by operation (retries included)",
    ["operation"],
    buckets=_LATENCY_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "vluna_bff_upstream_errors", "Failed calls to Vluna by operation and kind", ["operation", "kind"]
)
BREAKER_STATE = Gauge(
    "vluna_bff_breaker_state",
    "Circuit breaker state by breaker: 0 closed, 1 half-open, 2 open (max over live workers)",
    ["breaker"],
    multiprocess_mode="livemax",
)
REDIS_ERRORS = Counter(
    "vluna_bff_redis_errors",
    "Redis commands that failed or timed out (the Redis breaker opens only if a PING fails too)",
)
REDIS_FALLBACKS = Counter(
    "vluna_bff_redis_fallbacks",
    "Cache operations served by the in-process cache because the Redis breaker was open",
)
EVENTS = Counter("vluna_bff_events", "Every internal event counter of the service, by name", ["event"])
AUTH_FAILURES = Counter(
    "vluna_bff_auth_failures",
    "Refused sign-ins by reason (bff/auth/diagnostics.py REASONS: issuer_mismatch, expired, ...)",
    ["reason"],
)
JWKS_FETCHES = Counter(
    "vluna_bff_jwks_fetches",
    "Fetches of the identity provider's keys (discovery included) by outcome: ok, refused, dns, "
    "timeout, tls, http_status, not_json, not_jwks, not_discovery, issuer_mismatch, ...",
    ["outcome"],
)
JWKS_KEYS = Gauge(
    "vluna_bff_jwks_keys",
    "Verification keys known from the JWKS (fewest of the live workers)",
    multiprocess_mode="livemin",
)
JWKS_FETCHED_AT = Gauge(
    "vluna_bff_jwks_fetched_timestamp_seconds",
    "Unix time of the last successful JWKS fetch (the oldest of the live workers); its age is "
    "time() minus this",
    multiprocess_mode="livemin",
)
START_TIME = Gauge(
    "vluna_bff_start_time_seconds",
    "Unix time this server process started (the newest worker's); its changes count restarts",
    multiprocess_mode="max",
)
READINESS = Gauge(
    "vluna_bff_readiness_check",
    "Last readiness result per check: 1 ok, 0.5 degraded, 0 failing",
    ["check"],
    multiprocess_mode="livemax",
)

# Internal counter name -> (metric, label value); everything is also in vluna_bff_events_total.
_TOKEN_EVENTS = {
    "cache_hits": "hit",
    "cache_misses": "miss",
    "refresh_ahead": "refresh_ahead",
    "stale_served": "stale_served",
    "single_flight_waits": "single_flight_wait",
    "waited_for_other": "cross_replica_wait",
    "wait_timeouts": "wait_timeout",
    "cache_unreadable": "unreadable",
}
# Request methods that get a label of their own; anything else a client makes up is "other".
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"})
OTHER = "other"
_EVENT_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_MAX_EVENT_NAMES = 256
PROXY_BREAKER = "vluna_api"
REDIS_BREAKER = "redis"
BREAKER_STATES = {"closed": 0.0, "half_open": 1.0, "half-open": 1.0, "open": 2.0}


def initialise_series() -> None:
    """Create the series of the bounded label sets at 0, so that rates and alerts see them from the
    first scrape instead of after the first event (an absent series is not a zero)."""
    for event in _TOKEN_EVENTS.values():
        TOKEN_CACHE.labels(event=event)
    for outcome in ("ok", "failed"):
        TOKEN_REFRESHES.labels(outcome=outcome)
    START_TIME.set(time.time())


class _Tally:
    """One event's count as a plain int, shared by the Prometheus children that report it (the
    token-cache or other specific counter and ``vluna_bff_events_total``): an event is one
    unlocked addition, the scrape reads the int. Single-process mode only (the value interface
    of prometheus_client's ``MutexValue``); with ``PROMETHEUS_MULTIPROC_DIR`` the children keep
    their own values, written to the workers' files."""

    __slots__ = ("value",)

    def __init__(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount

    def set(self, value: float, timestamp: float | None = None) -> None:
        self.value = value

    def get(self) -> float:
        return self.value

    def set_exemplar(self, exemplar: Any) -> None:
        pass

    def get_exemplar(self) -> None:
        return None


# Event name -> its tally, once every child of the name reads it (single-process mode). Names
# admitted to their own events label are process-wide (the series bound is per process).
_TALLIES: dict[str, _Tally] = {}
_EVENT_NAMES: set[str] = set()


def _plain_values() -> bool:
    """True when this process's metric values are in-memory (not multi-process files)."""
    return values.ValueClass is values.MutexValue


def _share_tally(name: str, children: tuple[Any, ...]) -> _Tally | None:
    """Point every child of ``name`` at one tally, when each is a plain in-memory counter value
    holding the same count (else None: the children are incremented one by one)."""
    current = [getattr(child, "_value", None) for child in children]
    if not all(type(v) is values.MutexValue for v in current):
        return None
    counts = {v.get() for v in current}  # type: ignore[union-attr]
    if len(counts) != 1:
        return None
    tally = _Tally(counts.pop())
    for child in children:
        child._value = tally
    return tally


def _as_tally(value: Any) -> _Tally | None:
    if type(value) is _Tally:
        return value
    if type(value) is values.MutexValue and _plain_values():
        return _Tally(value.get())
    return None


def fast(child: Any) -> Any:
    """What to call ``inc()`` (and, for a gauge, ``dec()``) on for a resolved counter or gauge
    child: in single-process mode its value as a plain tally (no validation, no lock; the scrape
    reads it the same), else the child itself."""
    tally = _as_tally(getattr(child, "_value", None))
    if tally is None:
        return child
    child._value = tally
    return tally


class _FastHistogram:
    """``observe()`` on a histogram child's plain tallies: the sum and the one bucket the amount
    falls in (the first upper bound not below it, as prometheus_client's own observe)."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __init__(self, bounds: list[float], buckets: list[_Tally], total: _Tally) -> None:
        self._bounds = bounds
        self._buckets = buckets
        self._sum = total

    def observe(self, amount: float) -> None:
        self._sum.value += amount
        if amount == amount:
            self._buckets[bisect.bisect_left(self._bounds, amount)].value += 1


def fast_histogram(child: Any) -> Any:
    """What to call ``observe()`` on for a resolved histogram child (see ``fast``)."""
    bounds = getattr(child, "_upper_bounds", None)
    buckets = getattr(child, "_buckets", None)
    total = getattr(child, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        return child
    tallies = [_as_tally(v) for v in (*buckets, total)]
    if any(t is None for t in tallies):
        return child
    plain = [t for t in tallies if t is not None]
    child._buckets = plain[:-1]
    child._sum = plain[-1]
    return _FastHistogram(list(bounds), plain[:-1], plain[-1])


class MeteredStats(Stats):
    """The process counters, mirrored into Prometheus as they are incremented."""

    def __init__(self) -> None:
        super().__init__()
        # The Prometheus children each name increments, resolved once per name (labels()
        # validates and locks on every call); used when a name has no shared tally.
        self._children: dict[str, tuple[Any, ...]] = {}

    def inc(self, name: str, n: int = 1) -> None:
        self._counts[name] += n
        tally = _TALLIES.get(name)
        if tally is not None:
            tally.value += n
            return
        children = self._children.get(name)
        if children is None:
            children = self._resolve(name)
            tally = _TALLIES.get(name)
            if tally is not None:
                tally.value += n
                return
        for child in children:
            child.inc(n)

    def _resolve(self, name: str) -> tuple[Any, ...]:
        children: list[Any] = []
        cacheable = True
        event = _TOKEN_EVENTS.get(name)
        if event is not None:
            children.append(TOKEN_CACHE.labels(event=event))
        elif name == "redis_errors":
            children.append(REDIS_ERRORS)
        elif name == "redis_fallbacks":
            children.append(REDIS_FALLBACKS)
        elif name == "refreshes":
            children.append(TOKEN_REFRESHES.labels(outcome="ok"))
        elif name == "refresh_failures":
            children.append(TOKEN_REFRESHES.labels(outcome="failed"))
        elif name in ("proxy.breaker.open", "proxy.breaker.closed"):
            # A state change, not only a count: applied on every increment.
            set_breaker_state(PROXY_BREAKER, name.rsplit(".", 1)[1])
            cacheable = False
        elif name in ("redis_breaker.open", "redis_breaker.closed"):
            set_breaker_state(REDIS_BREAKER, name.rsplit(".", 1)[1])
            cacheable = False
        # The catch-all: bounded, so a name built from data can never blow up the series count.
        label = name
        if name not in _EVENT_NAMES:
            if len(_EVENT_NAMES) >= _MAX_EVENT_NAMES or not _EVENT_NAME.match(name):
                label = "other"
                cacheable = False
            else:
                _EVENT_NAMES.add(name)
        children.append(EVENTS.labels(event=label))
        resolved = tuple(children)
        if cacheable:
            self._children[name] = resolved
            if _plain_values() and name not in _TALLIES:
                tally = _share_tally(name, resolved)
                if tally is not None:
                    _TALLIES[name] = tally
        return resolved


def method_label(method: str) -> str:
    """The request method as a label value: one of HTTP_METHODS, else "other" (a client can send
    any token as its method; each distinct one would otherwise be a series of its own)."""
    return method if method in HTTP_METHODS else OTHER


def status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else OTHER


_UPSTREAM_CHILDREN: dict[tuple[str, str], tuple[Any, Any]] = {}


def observe_upstream(operation: str, outcome: str, seconds: float, error_kind: str | None = None) -> None:
    """One call to Vluna (the proxy records its calls through this too)."""
    # Children by (operation, outcome), resolved once: labels() validates and locks on every call.
    # Both are names chosen by the code (bounded); the bound below is a net all the same.
    children = _UPSTREAM_CHILDREN.get((operation, outcome))
    if children is None:
        if len(_UPSTREAM_CHILDREN) >= _MAX_EVENT_NAMES:
            _UPSTREAM_CHILDREN.clear()
        children = _UPSTREAM_CHILDREN[(operation, outcome)] = (
            fast(UPSTREAM_REQUESTS.labels(operation=operation, outcome=outcome)),
            fast_histogram(UPSTREAM_LATENCY.labels(operation=operation)),
        )
    children[0].inc()
    children[1].observe(seconds)
    if outcome != "ok":
        UPSTREAM_ERRORS.labels(operation=operation, kind=error_kind or outcome).inc()


@contextlib.contextmanager
def timed() -> Iterator[list[float]]:
    """``with timed() as t: ...``; afterwards ``t[0]`` holds the elapsed seconds."""
    out = [0.0]
    started = time.perf_counter()
    try:
        yield out
    finally:
        out[0] = time.perf_counter() - started


def set_breaker_state(breaker: str, state: str) -> None:
    """closed / half_open / open -> 0 / 1 / 2 (the proxy calls this on every transition)."""
    BREAKER_STATE.labels(breaker=breaker).set(BREAKER_STATES.get(state, 2.0))


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_dead_workers(path: str) -> list[int]:
    """Drop the live gauges of workers that are gone (crashed or replaced); their counters stay."""
    from prometheus_client import multiprocess

    dead: set[int] = set()
    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid_text = os.path.basename(file).rsplit("_", 1)[-1][: -len(".db")]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            dead.add(int(pid_text))
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)
    return sorted(dead)


class _MultiProcess(Collector):
    def __init__(self, path: str) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self._path = path
        self._inner = MultiProcessCollector(None, path=path)

    def collect(self) -> Iterable[Metric]:
        reap_dead_workers(self._path)
        metrics: Iterable[Metric] = self._inner.collect()
        return metrics


def scrape_registry() -> CollectorRegistry:
    """What a scrape reads: every worker's files in multi-process mode, else this process."""
    path = multiprocess_dir()
    if path is None:
        return REGISTRY
    registry = CollectorRegistry()
    registry.register(_MultiProcess(path))
    return registry


def render() -> tuple[bytes, str]:
    return generate_latest(scrape_registry()), CONTENT_TYPE_LATEST


def mark_this_worker_dead() -> None:
    """On a worker's shutdown: its live gauges (in-flight, breaker state) stop counting."""
    path = multiprocess_dir()
    if path is not None:
        from prometheus_client import multiprocess

        with contextlib.suppress(Exception):
            multiprocess.mark_process_dead(os.getpid(), path)
