"""Steady token load on several service processes while Redis fails over, and what it showed.

Two kinds of users, every request to `GET /vluna/token`, spread over the processes:

- warm users: signed in before the failover (one token each, in Redis), each asking again every
  `warm_pause` seconds, one process after the other;
- cold users: a new user every `cold_every` seconds, asked by `cold_fanout` concurrent requests
  spread over all processes at once: the case single flight across replicas is for (each one
  should cause exactly one issuance).

Every request is recorded (start and end, status, the token served); `summary()` relates them to
the failover: when it was triggered (`t_event`), when Redis was whole again (`t_healthy`).
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.support.keys import UserKeys
from tests.support.processes import Proc


@dataclass
class Req:
    user: str
    cold: bool
    proc: int
    t0: float
    t1: float
    status: int  # 0: no answer (transport error or client timeout)
    token: str | None
    retry_after: str | None
    error: str | None = None


@dataclass
class FailoverLoad:
    procs: Sequence[Proc]
    user_keys: UserKeys
    tag: str
    warm_users: int = 12
    warm_pause: float = 0.1
    cold_every: float = 0.25
    cold_fanout: int = 9
    timeout: float = 30.0
    reqs: list[Req] = field(default_factory=list)
    cold_started: dict[str, float] = field(default_factory=dict)
    _clients: list[httpx.AsyncClient] = field(default_factory=list)
    _jwts: dict[str, str] = field(default_factory=dict)

    def jwt(self, user: str) -> str:
        if user not in self._jwts:
            self._jwts[user] = self.user_keys.token(user, org=f"org-{user}")
        return self._jwts[user]

    async def __aenter__(self) -> FailoverLoad:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=50)
        self._clients = [
            httpx.AsyncClient(base_url=p.url, timeout=self.timeout, limits=limits) for p in self.procs
        ]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for c in self._clients:
            await c.aclose()

    async def get(self, user: str, proc: int, *, cold: bool = False) -> Req:
        t0 = time.monotonic()
        try:
            r = await self._clients[proc].get(
                "/vluna/token", headers={"Authorization": f"Bearer {self.jwt(user)}"}
            )
        except httpx.HTTPError as exc:
            req = Req(user, cold, proc, t0, time.monotonic(), 0, None, None, type(exc).__name__)
        else:
            token = r.json().get("access_token") if r.status_code == 200 else None
            req = Req(
                user, cold, proc, t0, time.monotonic(), r.status_code, token, r.headers.get("retry-after")
            )
        self.reqs.append(req)
        return req

    def warm_names(self) -> list[str]:
        return [f"{self.tag}-w{i}" for i in range(self.warm_users)]

    async def warm_up(self) -> None:
        """One token per warm user, in Redis before the load starts."""
        for i, user in enumerate(self.warm_names()):
            req = await self.get(user, i % len(self.procs))
            assert req.status == 200, req

    async def run(self, stop: asyncio.Event) -> None:
        async def warm(user: str, offset: int) -> None:
            for k in itertools.count(offset):
                if stop.is_set():
                    return
                await self.get(user, k % len(self.procs))
                await asyncio.sleep(self.warm_pause)

        async def cold_stream() -> None:
            pending: set[asyncio.Task[Any]] = set()
            for n in itertools.count():
                if stop.is_set():
                    break
                user = f"{self.tag}-c{n}"
                self.cold_started[user] = time.monotonic()
                for k in range(self.cold_fanout):
                    task = asyncio.create_task(self.get(user, k % len(self.procs), cold=True))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                await asyncio.sleep(self.cold_every)
            if pending:
                await asyncio.gather(*pending)

        await asyncio.gather(cold_stream(), *[warm(u, i) for i, u in enumerate(self.warm_names())])

    # -- what it showed -----------------------------------------------------------------------

    def cold_tokens(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {u: set() for u in self.cold_started}
        for r in self.reqs:
            if r.cold and r.token is not None:
                out[r.user].add(r.token)
        return out

    def summary(self, t_event: float, t_healthy: float) -> dict[str, Any]:
        """Figures relative to the failover (seconds after `t_event`)."""

        def rel(t: float) -> float:
            return round(t - t_event, 2)

        bad = [r for r in self.reqs if r.status != 200]
        tokens = self.cold_tokens()
        dup = {u: len(t) for u, t in tokens.items() if len(t) > 1}
        statuses: dict[str, int] = {}
        for r in self.reqs:
            key = str(r.status) if r.status else (r.error or "no answer")
            statuses[key] = statuses.get(key, 0) + 1
        anomalies = [r.t1 for r in bad] + [max(x.t1 for x in self.reqs if x.user == u) for u in dup]
        return {
            "requests": len(self.reqs),
            "statuses": statuses,
            "failed_first_s": rel(min(r.t0 for r in bad)) if bad else None,
            "failed_last_s": rel(max(r.t1 for r in bad)) if bad else None,
            "healthy_after_s": rel(t_healthy),
            "cold_users": len(tokens),
            "cold_users_issued_twice_or_more": len(dup),
            "cold_duplicate_issuances": sum(n - 1 for n in dup.values()),
            "most_tokens_for_one_user": max((len(t) for t in tokens.values()), default=0),
            "cold_duplicates_started_s": sorted(rel(self.cold_started[u]) for u in dup),
            "window_s": rel(max(anomalies)) if anomalies else 0.0,
            "longest_request_s": round(max(r.t1 - r.t0 for r in self.reqs), 2),
        }


_EVENT_LINE = re.compile(r'^vluna_bff_events_total\{event="([^"]+)"\} ([0-9.e+]+)$', re.M)


def events(proc: Proc) -> dict[str, float]:
    """The process's internal counters, from its /metrics."""
    r = httpx.get(f"{proc.url}/metrics", timeout=10)
    r.raise_for_status()
    return {m.group(1): float(m.group(2)) for m in _EVENT_LINE.finditer(r.text)}


async def check_promises(
    load: FailoverLoad, t_event: float, t_healthy: float, *, backoff: float, tail: int
) -> None:
    """What a failover may cost, and what it may not:

    - nothing stuck: every request was answered, with a token or a 503 with Retry-After;
    - before the event: every request served, each new user issued exactly one token;
    - during the window: at most two issuances per key per process: one by its own single flight
      while it keeps to its in-process cache, one more (for all processes together) under the
      Redis lock once it uses Redis again, since tokens issued in-process are then not served;
    - after it: the last `tail` new users (all started once Redis was whole again and `backoff`
      more had passed) were served every time with exactly one issuance each;
    - the replicas agree again: every user asked on every process gets one and the same token.
    """
    reqs = load.reqs
    assert not [r for r in reqs if r.status == 0], [r for r in reqs if r.status == 0][:5]
    assert {r.status for r in reqs} <= {200, 503}, ({r.status for r in reqs}, service_errors(load.procs))
    assert all(r.retry_after for r in reqs if r.status == 503)
    before = [r for r in reqs if r.t1 < t_event]
    assert before and {r.status for r in before} == {200}
    tokens = load.cold_tokens()
    last_answer: dict[str, float] = {}
    for r in reqs:
        last_answer[r.user] = max(last_answer.get(r.user, 0.0), r.t1)
    done_before = [u for u in load.cold_started if last_answer[u] < t_event]
    assert done_before and all(len(tokens[u]) == 1 for u in done_before), {
        u: len(tokens[u]) for u in done_before
    }
    assert all(len(t) <= 2 * len(load.procs) for t in tokens.values()), max(len(t) for t in tokens.values())
    last = sorted(load.cold_started, key=load.cold_started.__getitem__)[-tail:]
    assert all(load.cold_started[u] > t_healthy + backoff for u in last), "the load did not run long enough"
    assert all(len(tokens[u]) == 1 for u in last), {u: len(tokens[u]) for u in last}
    assert {r.status for r in reqs if r.user in last} == {200}
    everyone = [*load.warm_names(), *load.cold_started]
    n = len(load.procs)
    final = await asyncio.gather(*[load.get(u, k) for u in everyone for k in range(n)])
    assert {r.status for r in final} == {200}
    served: dict[str, set[str | None]] = {}
    for r in final:
        served.setdefault(r.user, set()).add(r.token)
    assert all(len(t) == 1 for t in served.values()), {u: len(t) for u, t in served.items() if len(t) > 1}


def process_figures(procs: Sequence[Proc]) -> dict[str, list[float]]:
    counters = [events(p) for p in procs]
    return {
        name: [c.get(name, 0) for c in counters]
        for name in (
            "issuances",
            "redis_errors",
            "redis_fallbacks",
            "lock_wakeups",
            "waited_for_other",
            "l1_hits",
            "wait_timeouts",
            "lock_releases_retried",
            "lock_releases_late",
            "lock_releases_abandoned",
        )
    }


def service_errors(procs: Sequence[Proc], limit: int = 4000) -> str:
    """The ERROR lines (and what follows them: tracebacks) the services logged, for a failed
    promise's message."""
    out = []
    for p in procs:
        path = p.extra.get("log")
        if path is None:
            continue
        text = path.read_text(errors="replace")
        at = text.find("ERROR")
        if at >= 0:
            out.append(f"--- {p.url}:\n{text[at : at + limit]}")
    return "\n".join(out)
