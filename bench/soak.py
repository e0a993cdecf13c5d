"""Soak: replicas of the service under steady moderate load for minutes, with short-lived tokens
(60 s) so that refresh-ahead and expiry run many times over for every user.

    python -m bench --only soak                          # 10 minutes, 500 users, 2 replicas
    python -m bench --only soak --soak-seconds 5 --soak-users 20   # a smoke run

Each user asks for its token on a fixed schedule, alternating replicas: most users every
``STEADY_INTERVAL`` (7 s: every token is renewed ahead of its expiry by a request past half its
life), a tenth every ``SPARSE_INTERVAL`` (67 s: longer than a cache entry lives, so each request
finds it expired and causes an issuance). The intervals do not divide the token's refresh point
(30 s) or the entry's life (50 s), so no request lands on a boundary.

Expected issuances are computed from the requests as they were actually sent (times and
replica), replaying the service's rules: a request finds no entry (never issued, or past
``life - safety_margin``) -> one issuance; finds one past ``life * refresh_ahead_ratio`` -> one
renewal (the token is still served). Measured: the emulator's issuance counter. Also measured:
RSS of each replica's worker process after the first round of requests and at the end, and every
answer's status (5xx must be 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.emulator import Emulator
from tests.support.keys import UserKeys
from tests.support.processes import Proc, process_tree
from tests.support.redis_servers import SHARED_REDIS_URL, cleanup_prefix
from tests.support.service import bff_config, start_bff, write_config

TOKEN_LIFE_SEC = 60  # tokens.session_ttl_sec: the emulator issues tokens living this long
SAFETY_MARGIN_SEC = 10  # tokens.safety_margin_sec: an entry leaves the cache 50 s after issuance
REFRESH_AHEAD_RATIO = 0.5  # renewed by the first request 30 s or more after issuance
STEADY_INTERVAL = 7.0
SPARSE_INTERVAL = 67.0
SPARSE_SHARE = 10  # every tenth user is sparse
SETTINGS: dict[str, Any] = {
    "tokens": {
        "session_ttl_sec": TOKEN_LIFE_SEC,
        "safety_margin_sec": SAFETY_MARGIN_SEC,
        "refresh_ahead_ratio": REFRESH_AHEAD_RATIO,
    },
    "server": {"log_level": "warning"},
}


@dataclass
class SoakResult:
    seconds: float
    users: int
    replicas: int
    requests: int
    statuses: dict[int, int]
    client_errors: dict[str, int]
    issuances_measured: int
    issuances_expected: int
    renewals_expected: int
    misses_expected: int
    rss_start_mb: list[float]
    rss_end_mb: list[float]
    wall_seconds: float
    notes: list[str] = field(default_factory=list)
    events: dict[str, int] = field(default_factory=dict)

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    def tolerance(self) -> int:
        """Issuances may differ from the replay only for a request racing a renewal under way
        on the other replica; none is expected with these intervals. 0.5 %, at least 2."""
        return max(2, self.issuances_expected // 200)

    def issuances_ok(self) -> bool:
        return abs(self.issuances_measured - self.issuances_expected) <= self.tolerance()


def expected_issuances(times: list[float]) -> tuple[int, int]:
    """(misses, renewals) for one user's request times, by the service's rules."""
    life = TOKEN_LIFE_SEC
    misses = renewals = 0
    issued: float | None = None
    for t in sorted(times):
        if issued is None or t >= issued + life - SAFETY_MARGIN_SEC:
            misses += 1
            issued = t
        elif t >= issued + life * REFRESH_AHEAD_RATIO:
            renewals += 1
            issued = t
    return misses, renewals


# The services' own counters worth reading beside the figures (vluna_bff_events_total).
EVENTS = (
    "issuances",
    "refresh_ahead",
    "refreshes",
    "refresh_failures",
    "issue_failures",
    "wait_timeouts",
    "redis_errors",
    "redis_fallbacks",
    "redis_breaker.open",
    "redis_unsure",
    "lock_retries",
)


def service_events(procs: list[Proc]) -> dict[str, int]:
    """Sum over the replicas of their event counters (GET /metrics), the ones in EVENTS."""
    import urllib.request

    out = dict.fromkeys(EVENTS, 0)
    for p in procs:
        try:
            with urllib.request.urlopen(f"{p.url}/metrics", timeout=30) as r:
                text = r.read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith('vluna_bff_events_total{event="'):
                name = line.split('"')[1]
                if name in out:
                    out[name] += int(float(line.rsplit(" ", 1)[1]))
    return out


def rss_mb(proc: Proc) -> float:
    """Resident set of the largest process of the service's tree (the worker), in MiB."""
    best = 0
    for pid in process_tree(proc.pid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    best = max(best, int(line.split()[1]))
        except OSError:
            continue
    return round(best / 1024, 1)


async def _load(
    replicas: list[Proc],
    jwts: list[str],
    seconds: float,
    on_first_round: Any,
    notes: list[str],
) -> tuple[dict[int, list[float]], Counter[int], Counter[str]]:
    times: dict[int, list[float]] = {u: [] for u in range(len(jwts))}
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    # aiohttp: about a third of httpx's CPU per request, which matters on a shared machine where
    # this process would otherwise fall behind its own schedule.
    clients = [
        aiohttp.ClientSession(
            base_url=p.url,
            connector=aiohttp.TCPConnector(limit=64),
            timeout=aiohttp.ClientTimeout(total=30),
        )
        for p in replicas
    ]
    rng = random.Random(15)
    late = [0.0]  # the most a request was sent after its scheduled time
    start = time.monotonic() + 0.5
    end = start + seconds
    first_round = asyncio.Event()
    pending_first = {u for u in range(len(jwts)) if u % SPARSE_SHARE != 0}

    async def user(u: int) -> None:
        interval = SPARSE_INTERVAL if u % SPARSE_SHARE == 0 else STEADY_INTERVAL
        headers = {"Authorization": f"Bearer {jwts[u]}"}
        k = 0
        due = start + rng.uniform(0, min(interval, seconds))
        # Scheduled times, and never past the end in real time (a generator that fell behind
        # drops what it could not send; expectations use the requests actually sent).
        while due < end and time.monotonic() < end:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            client = clients[(u + k) % len(clients)]
            late[0] = max(late[0], time.monotonic() - due)
            sent = time.time()
            try:
                async with client.get("/vluna/token", headers=headers) as r:
                    await r.read()
                    statuses[r.status] += 1
                    if r.status == 200:
                        times[u].append(sent)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                errors[type(exc).__name__] += 1
            if k == 0 and u in pending_first:
                pending_first.discard(u)
                if not pending_first:
                    first_round.set()
            k += 1
            due += interval

    async def watch_first_round() -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(first_round.wait(), STEADY_INTERVAL * 3)
        on_first_round()

    try:
        await asyncio.gather(watch_first_round(), *(user(u) for u in range(len(jwts))))
    finally:
        for c in clients:
            await c.close()
    notes.append(f"the load generator sent each request at most {late[0]:.1f} s after its schedule")
    return times, statuses, errors


def run_soak(
    emulator: Emulator,
    keys: UserKeys,
    *,
    seconds: float = 600,
    users: int = 500,
    replicas: int = 2,
    redis_url: str = SHARED_REDIS_URL,
    log: Any = print,
) -> SoakResult:
    prefix = f"soak-{uuid.uuid4().hex[:10]}:"
    data = bff_config(emulator.url, keys.pem(), redis_url=redis_url, prefix=prefix, **SETTINGS)
    cfg = write_config(data)
    procs: list[Proc] = []
    try:
        for _ in range(replicas):
            procs.append(start_bff(cfg, ready_timeout=300))
    finally:
        cfg.unlink()
    try:
        jwts = [
            keys.token(f"soak-{i}", org=f"soak-{i % 50}", exp_in=int(seconds) + 3600) for i in range(users)
        ]
        emulator.reset("counters")
        rss_start: list[float] = []

        def first_round() -> None:
            rss_start.extend(rss_mb(p) for p in procs)
            log(f"soak: first round done, RSS {rss_start} MiB")

        log(f"soak: {users} users, {replicas} replicas, {seconds:g} s")
        t0 = time.monotonic()
        notes: list[str] = []
        times, statuses, errors = asyncio.run(_load(procs, jwts, seconds, first_round, notes))
        wall = time.monotonic() - t0
        rss_end = [rss_mb(p) for p in procs]
        measured = emulator.issuances()
        events = service_events(procs)
        misses = renewals = 0
        for user_times in times.values():
            m, r = expected_issuances(user_times)
            misses += m
            renewals += r
        return SoakResult(
            seconds=seconds,
            users=users,
            replicas=replicas,
            requests=sum(statuses.values()) + sum(errors.values()),
            statuses=dict(statuses),
            client_errors=dict(errors),
            issuances_measured=measured,
            issuances_expected=misses + renewals,
            renewals_expected=renewals,
            misses_expected=misses,
            rss_start_mb=rss_start or [0.0] * replicas,
            rss_end_mb=rss_end,
            wall_seconds=round(wall, 1),
            notes=notes,
            events=events,
        )
    finally:
        for p in procs:
            p.stop()
        cleanup_prefix(prefix, redis_url)


SECTION_START = "<!-- soak:start -->"
SECTION_END = "<!-- soak:end -->"


def render(result: SoakResult, when: str) -> str:
    r = result
    rows = [
        ("duration", f"{r.seconds:g} s (wall {r.wall_seconds:g} s)"),
        ("replicas / users", f"{r.replicas} / {r.users} ({r.users // SPARSE_SHARE} sparse)"),
        ("requests", f"{r.requests:,} ({r.requests / max(r.seconds, 1):.0f}/s)"),
        ("statuses", ", ".join(f"{s}: {n:,}" for s, n in sorted(r.statuses.items()))),
        ("5xx", str(r.server_errors)),
        ("client errors", ", ".join(f"{k}: {v}" for k, v in r.client_errors.items()) or "0"),
        (
            "issuances expected",
            f"{r.issuances_expected:,} ({r.misses_expected:,} on a miss, "
            f"{r.renewals_expected:,} renewals ahead)",
        ),
        ("issuances measured", f"{r.issuances_measured:,} (emulator counter)"),
        (
            "RSS per replica, start -> end",
            ", ".join(f"{a} -> {b} MiB" for a, b in zip(r.rss_start_mb, r.rss_end_mb, strict=True)),
        ),
    ]
    lines = [
        SECTION_START,
        "## Soak (`python -m bench --only soak`)",
        "",
        f"Measured {when}. Tokens live {TOKEN_LIFE_SEC} s (`tokens.session_ttl_sec`), cache "
        f"entries {TOKEN_LIFE_SEC - SAFETY_MARGIN_SEC} s (`safety_margin_sec: {SAFETY_MARGIN_SEC}`), "
        f"renewed ahead past {REFRESH_AHEAD_RATIO:g} of their life. Steady users ask every "
        f"{STEADY_INTERVAL:g} s, sparse ones every {SPARSE_INTERVAL:g} s (each of their requests "
        "finds the entry expired). Expected issuances replay "
        "the requests as sent through the service's rules (bench/soak.py). Shared Redis, loopback, "
        "the Python load generator in the bench process.",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in rows],
        *[f"Note: {n}." for n in r.notes],
        "",
        "The replicas' own counters (sum): " + ", ".join(f"`{k}` {v:,}" for k, v in r.events.items()) + ".",
        "",
        SECTION_END,
    ]
    return "\n".join(lines)


def splice(markdown: str, section: str) -> str:
    """``markdown`` with its soak section replaced by ``section`` (appended when it has none)."""
    if SECTION_START in markdown and SECTION_END in markdown:
        head, _, rest = markdown.partition(SECTION_START)
        _, _, tail = rest.partition(SECTION_END)
        return head + section + tail
    return markdown.rstrip("\n") + "\n\n" + section + "\n"


def section_of(markdown: str) -> str | None:
    if SECTION_START in markdown and SECTION_END in markdown:
        _, _, rest = markdown.partition(SECTION_START)
        body, _, _ = rest.partition(SECTION_END)
        return SECTION_START + body + SECTION_END
    return None
