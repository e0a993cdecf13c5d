"""Three service processes, one Redis: 500 concurrent cold requests per user for 20 users
(10,000 connections at once) -> exactly 20 issuances, one token per user."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import pytest

from tests.support.emulator import Emulator
from tests.support.keys import UserKeys
from tests.support.ports import LOOPBACK
from tests.support.processes import Proc

USERS = 20
PER_USER = 500


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


# With the default settings: a shorter cache.redis.socket_timeout_sec (0.5 s, then 2 s) let a
# process whose event loop lagged under this burst count a late reply as a Redis outage, fall
# back to process-local single flight and issue again (40-60 issuances for 20 users).
@pytest.mark.parametrize(
    "redis_settings",
    [
        pytest.param(
            {},
            id="defaults",
            # Known open bug, kept running so a fix shows as XPASS: in some full-suite runs one of
            # the three replicas issues on its own for every user (exactly 2 issuances per user).
            # Not the socket timeout (seen at 5 s), and a blocking connection pool made it worse.
            marks=pytest.mark.xfail(strict=False, reason="intermittent: one replica bypasses the lock"),
        )
    ],
)
async def test_three_processes_one_redis_exact_issuances(
    emulator: Emulator, own_redis: Proc, start_service, user_keys: UserKeys, redis_settings: dict[str, Any]
) -> None:
    first = start_service(redis_url=own_redis.url, cache={"redis": redis_settings})
    procs = [first, start_service(like=first), start_service(like=first)]
    jwts = [user_keys.token(f"u{i}", org=f"o{i}") for i in range(USERS)]
    emulator.reset("counters")
    # Issuances take 2 s, so that every request for a user arrives while its one issuance runs.
    emulator.fault("issue_platform_token", latency_seconds=2.0, times=None)
    t0 = time.monotonic()
    results = await asyncio.wait_for(
        asyncio.gather(
            *[_get(procs[(u + k) % 3].port, jwts[u]) for k in range(PER_USER) for u in range(USERS)],
            return_exceptions=True,
        ),
        90,
    )
    elapsed = time.monotonic() - t0
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
