"""CPU per cold issuance, in-process: the service's app against the SDK-direct reference app.

    uv run python -m bench.cold_cpu                   # USERS=1000 users, 2 runs
    PROFILE=/tmp/cold.prof uv run python -m bench.cold_cpu   # + cProfile (CPU time) of the service
    NO_REF=1 uv run python -m bench.cold_cpu        # the service only (e.g. under py-spy)

The cold scenario of `python -m bench` without the server and the load generator: each app is
called as ASGI with a prepared scope, on uvloop, against an emulator process and a Redis of its
own (started here, so its command counts are this run's only). The service gets every user twice
at once (64 requests in flight, as in the bench); the reference (bench._refservers `sdk_issuer`)
once per user, 32 at once. Printed per user: the process CPU time (time.process_time), the Redis
round trips (one per command sent, one per pipeline or script) and the commands Redis executed
(INFO commandstats; a script's own commands included). What it shows is the application's own
cost of a cold issuance, which the bench's ratio dilutes with the server's, the emulator's and
the load generator's (figures in bench/PROFILE.md).
"""

from __future__ import annotations

import asyncio
import cProfile
import os
import pstats
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from bench.hit_cpu import lifespan, scope

USERS = int(os.environ.get("USERS", "1000"))
RUNS = int(os.environ.get("RUNS", "2"))
PROFILE = os.environ.get("PROFILE")


class RoundTrips:
    """Counts what redis-py sends: one per command, pipeline or script call."""

    def __init__(self) -> None:
        from redis.asyncio.connection import AbstractConnection

        self.count = 0
        original = AbstractConnection.send_packed_command

        async def counted(conn: Any, command: Any, check_health: bool = True) -> None:
            self.count += 1
            await original(conn, command, check_health)

        AbstractConnection.send_packed_command = counted  # type: ignore[method-assign,assignment]


async def call(app: Any, path: str, query: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    s = scope(path, headers)
    s["query_string"] = query
    await app(s, receive, send)
    if out[0]["status"] != 200:
        raise RuntimeError(f"{path}: {out}")


async def run_all(jobs: list[Callable[[], Any]], concurrency: int) -> float:
    """Process CPU seconds to run every job, ``concurrency`` at a time."""
    queue = list(reversed(jobs))
    started = time.process_time()

    async def worker() -> None:
        while queue:
            await queue.pop()()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.process_time() - started


async def main() -> None:
    import redis.asyncio as aioredis
    import yaml

    from bench._refservers import sdk_issuer
    from bff.app import create_app
    from bff.settings import load_settings
    from tests.support.emulator import EMULATOR_SECRET, start_emulator
    from tests.support.keys import UserKeys
    from tests.support.redis_servers import start_redis
    from tests.support.service import bff_config

    trips = RoundTrips()
    keys = UserKeys()
    emulator = start_emulator()
    own = start_redis()
    admin = aioredis.Redis.from_url(own.url)
    os.environ.update(
        BENCH_VLUNA_URL=emulator.url + "/mgt/v1",
        BENCH_REALM="realm_demo",
        BENCH_KEY_ID="pk-emulator",
        BENCH_SECRET=EMULATOR_SECRET,
    )
    config = bff_config(
        emulator.url, keys.pem(), redis_url=own.url, tokens={"issuance_limit": {"per_replica": 0}}
    )
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
    try:
        settings = load_settings(f.name, environ={})
    finally:
        os.unlink(f.name)
    app = create_app(settings)
    ref = sdk_issuer()
    os.environ["BENCH_SDK_TRANSPORT"] = "http1"
    ref_h1 = sdk_issuer()  # the same SDK calls over the service's own transport
    del os.environ["BENCH_SDK_TRANSPORT"]
    stops = [await lifespan(app), await lifespan(ref), await lifespan(ref_h1)]
    await call(ref, "/issue", b"user=warm", [])
    await call(ref_h1, "/issue", b"user=warm", [])
    warm = [(b"authorization", f"Bearer {keys.token('warm', org='warm')}".encode())]
    await call(app, "/vluna/token", b"", warm)
    try:
        for run in range(RUNS):
            rid = uuid.uuid4().hex[:6]
            tokens = [keys.token(f"c-{rid}-{n}", org=f"c-{rid}-{n}") for n in range(USERS)]
            svc_jobs: list[Callable[[], Any]] = []
            for token in tokens:
                h = [(b"authorization", f"Bearer {token}".encode())]
                svc_jobs += [partial(call, app, "/vluna/token", b"", h)] * 2
            ref_jobs: list[Callable[[], Any]] = [
                partial(call, ref, "/issue", f"user=r-{rid}-{n}".encode(), []) for n in range(USERS)
            ]
            h1_jobs: list[Callable[[], Any]] = [
                partial(call, ref_h1, "/issue", f"user=h-{rid}-{n}".encode(), []) for n in range(USERS)
            ]
            await admin.config_resetstat()
            before = trips.count
            profiler = cProfile.Profile(time.process_time) if PROFILE and run == RUNS - 1 else None
            if profiler is not None:
                profiler.enable()
            svc_cpu = await run_all(svc_jobs, 64)
            if profiler is not None:
                profiler.disable()
                assert PROFILE
                profiler.dump_stats(PROFILE)
            svc_trips = trips.count - before
            stats = await admin.info("commandstats")
            ref_cpu = await run_all(ref_jobs, 32) if not os.environ.get("NO_REF") else 1.0
            h1_cpu = await run_all(h1_jobs, 32) if not os.environ.get("NO_REF") else 1.0
            commands = {
                k.removeprefix("cmdstat_"): v["calls"]
                for k, v in stats.items()
                if k not in ("cmdstat_config", "cmdstat_info")
            }
            print(
                f"run {run + 1}: service {svc_cpu / USERS * 1e6:6.0f} us CPU per user (2 requests), "
                f"SDK direct {ref_cpu / USERS * 1e6:6.0f} us per user; ratio {ref_cpu / svc_cpu:.2f}; "
                f"SDK direct over the service's transport {h1_cpu / USERS * 1e6:6.0f} us per user, "
                f"ratio {h1_cpu / svc_cpu:.2f}"
            )
            print(
                f"       Redis round trips per user {svc_trips / USERS:.2f}; commands executed per user: "
                + ", ".join(f"{k} {v / USERS:.2f}" for k, v in sorted(commands.items()) if v >= USERS / 20)
            )
    finally:
        for stop in stops:
            await stop()
        await admin.aclose()
        own.stop()
        emulator.stop()
    if PROFILE:
        pstats.Stats(PROFILE).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    import uvloop

    uvloop.run(main())
