"""Three service processes, one Redis: 500 concurrent cold requests per user for 20 users
(10,000 connections at once) -> exactly 20 issuances, one token per user."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from tests.support.emulator import Emulator
from tests.support.keys import UserKeys
from tests.support.ports import LOOPBACK
from tests.support.processes import Proc
from tests.support.service import ServiceStarter

USERS = 20
PER_USER = 500
BURST_BOUND_SEC = 240


def report(emulator: Emulator, procs: list[Proc], results: list[Any], elapsed: float) -> None:
    """For scripts/drill_loop.py (DRILL_REPORT=<file>): what this run measured, pass or fail."""
    path = os.environ.get("DRILL_REPORT")
    if not path:
        return
    redis_errors = []
    for p in procs:
        text = httpx.get(f"{p.url}/metrics", timeout=10).text
        redis_errors.append(
            sum(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("vluna_bff_redis_errors_total")
            )
        )
    data = {
        "issuances": emulator.issuances(),
        "users": USERS,
        "elapsed_sec": round(elapsed, 1),
        "statuses": dict(Counter(r[0] for r in results if not isinstance(r, BaseException))),
        "errors": dict(Counter(type(r).__name__ for r in results if isinstance(r, BaseException))),
        "redis_errors": redis_errors,
    }
    Path(path).write_text(json.dumps(data))


async def _get(port: int, jwt: str) -> tuple[int, str | None]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    try:
        writer.write(
            f"GET /vluna/token HTTP/1.1\r\nHost: {LOOPBACK}\r\nAuthorization: Bearer {jwt}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head[9:12])
    return status, json.loads(body)["access_token"] if status == 200 else None


# Once failing in some full-suite runs with exactly 2 issuances per user: under this burst the
# service processes' event loops stall for seconds (measured: 1-4.5 s with a CPU hog beside it),
# so a redis-py pool connect could time out client-side (connect_timeout_sec 1 s) while Redis was
# idle, and that ONE failure made the process skip Redis for `down_backoff_sec` (5 s): process-local
# cache and single flight, so it issued again for every user. Now one failed command is tried
# again and only a PING without answer (after breaker_failures in a row) opens the Redis breaker
# (bff/redis_client.py); tests/bff/test_broker.py reproduces the failure deterministically.
# scripts/drill_loop.py runs this drill N times beside a CPU hog.
#
# `server.header_read_timeout_sec: 60`: 10,000 connections at once on a loaded machine queue
# behind the server's concurrency limit (granian: backlog/workers = 1,024 per worker) and the
# kernel's accept queue; with the default 10 s some waited longer than that before their request
# was read and were closed without an answer (5,000+ empty replies with a CPU hog on both cores).
# That bound is for slow clients, which this drill is not about.
async def test_three_processes_one_redis_exact_issuances(
    emulator: Emulator, own_redis: Proc, start_service: ServiceStarter, user_keys: UserKeys
) -> None:
    procs = start_service.many(3, redis_url=own_redis.url, server={"header_read_timeout_sec": 60})
    jwts = [user_keys.token(f"u{i}", org=f"o{i}") for i in range(USERS)]
    emulator.reset("counters")
    # Issuances take 2 s, so that every request for a user arrives while its one issuance runs.
    emulator.fault("issue_platform_token", latency_seconds=2.0, times=None)
    burst = Path(os.environ["DRILL_REPORT"] + ".burst") if os.environ.get("DRILL_REPORT") else None
    if burst is not None:
        burst.touch()  # scripts/drill_loop.py: its CPU hog spins while this file exists
    t0 = time.monotonic()
    try:
        # Bounded: 34-64 s measured at load 9-13 on 2 cores, over 90 s at load 19 with a CPU hog.
        results = await asyncio.wait_for(
            asyncio.gather(
                *[_get(procs[(u + k) % 3].port, jwts[u]) for k in range(PER_USER) for u in range(USERS)],
                return_exceptions=True,
            ),
            BURST_BOUND_SEC,
        )
    except asyncio.TimeoutError:
        report(emulator, procs, [], time.monotonic() - t0)
        raise
    finally:
        if burst is not None:
            burst.unlink(missing_ok=True)
    elapsed = time.monotonic() - t0
    report(emulator, procs, results, elapsed)
    errors = Counter(type(r).__name__ for r in results if isinstance(r, BaseException))
    assert not errors, errors
    statuses = Counter(s for s, _ in results)  # type: ignore[misc]
    assert statuses == {200: USERS * PER_USER}, statuses
    per_user: dict[int, set[str | None]] = {}
    for i, (_, tok) in enumerate(results):  # type: ignore[misc]
        per_user.setdefault(i % USERS, set()).add(tok)
    assert all(len(t) == 1 for t in per_user.values()), (
        {u: len(t) for u, t in per_user.items()},
        emulator.counters(),
    )
    assert len({next(iter(t)) for t in per_user.values()}) == USERS
    assert emulator.issuances() == USERS, (emulator.counters(), elapsed)
