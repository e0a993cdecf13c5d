"""CPU per request of a cache hit, in-process: the service's app against the reference apps.

    uv run python -m bench.hit_cpu                  # N=3000 requests each, 32 at once
    PROFILE=/tmp/hit.prof uv run python -m bench.hit_cpu   # + cProfile (CPU time) of the hit
    uv run python -m bench.hit_cpu --help           # the same as options (-n, --profile)

No server and no sockets on the client side: each app is called as ASGI with a prepared scope
(the service app built by create_app from the bench configuration; the references from
bench._refservers), on uvloop, with the real Redis at 127.0.0.1:6379 and an emulator process.
What it measures is the process CPU time (time.process_time) per request: the cost of the
application code alone, which wrk runs over a server (`python -m bench`) dilute with the server's
and the load generator's own work. The ratios it prints are not the bench's ratios; they show
where the application's own time goes and whether a change moved it (used for the figures in
bench/PROFILE.md).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

N = int(os.environ.get("N", "3000"))
PROFILE = os.environ.get("PROFILE")
CONCURRENCY = 32
TOKEN_HIT = "GET /vluna/token, cache hit"
PROXY_HIT = "proxied catalog GET, cache hit"


async def lifespan(app: Any) -> Callable[[], Awaitable[None]]:
    q_in: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    q_out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await q_in.put({"type": "lifespan.startup"})
    task = asyncio.ensure_future(
        app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, q_in.get, q_out.put)
    )
    msg = await q_out.get()
    if msg["type"] != "lifespan.startup.complete":
        raise RuntimeError(f"start-up failed: {msg}")

    async def stop() -> None:
        await q_in.put({"type": "lifespan.shutdown"})
        await q_out.get()
        await task

    return stop


def scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), *headers],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 5555),
        "state": {},
    }


async def one(app: Any, path: str, headers: list[tuple[bytes, bytes]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        out.append(message)

    await app(scope(path, headers), receive, send)
    if out[0]["status"] != 200:
        raise RuntimeError(f"{path}: {out}")
    return out


async def measure(app: Any, path: str, headers: list[tuple[bytes, bytes]], n: int = N) -> float:
    """Microseconds of process CPU per request, CONCURRENCY requests at a time."""
    for _ in range(200):
        await one(app, path, headers)
    each = n // CONCURRENCY
    started = time.process_time()

    async def worker() -> None:
        for _ in range(each):
            await one(app, path, headers)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return (time.process_time() - started) / (each * CONCURRENCY) * 1e6


async def main(n: int = N, profile_to: str | None = PROFILE) -> None:
    import yaml

    from bench._refservers import litestar_refs
    from bff.app import create_app
    from bff.settings import load_settings
    from tests.support.emulator import start_emulator
    from tests.support.keys import UserKeys
    from tests.support.redis_servers import SHARED_REDIS_URL, cleanup_prefix
    from tests.support.service import bff_config

    keys = UserKeys()
    emulator = start_emulator()
    prefix = f"bench-{uuid.uuid4().hex[:10]}:"
    os.environ["BENCH_REDIS_URL"] = SHARED_REDIS_URL
    os.environ["BENCH_REF_KEY"] = prefix + "ref"
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        # The proxy's rate limit as configured by default, with room for every measured request.
        limits = {"requests": 10**9, "write_requests": 10**9, "window_sec": 3600}
        yaml.safe_dump(bff_config(emulator.url, keys.pem(), prefix=prefix, rate_limit=limits), f)
    try:
        settings = load_settings(f.name, environ={})
    finally:
        os.unlink(f.name)
    app = create_app(settings)
    ref = litestar_refs()
    stops = [await lifespan(app), await lifespan(ref)]
    auth = [(b"authorization", f"Bearer {keys.token('alice', org='acme')}".encode())]
    await one(app, "/vluna/token", auth)  # issued once: every measured request is a hit
    results: dict[str, list[float]] = {}
    try:
        for round_ in range(2):
            for name, target, path, headers in (
                ("bare Litestar JSON", ref, "/bench/json", []),
                ("Litestar + 1 Redis GET", ref, "/bench/redis-get", []),
                (TOKEN_HIT, app, "/vluna/token", auth),
                # The proxy's public cache (the answer kept per caller): the route's own work.
                (PROXY_HIT, app, "/vluna/api/v1/catalog/products", auth),
            ):
                profile = profile_to and round_ == 1 and name == TOKEN_HIT
                profiler = cProfile.Profile(time.process_time) if profile else None
                if profiler is not None:
                    profiler.enable()
                results.setdefault(name, []).append(await measure(target, path, headers, n))
                if profiler is not None and profile_to:
                    profiler.disable()
                    profiler.dump_stats(profile_to)
    finally:
        for stop in stops:
            await stop()
        emulator.stop()
        cleanup_prefix(prefix)
    best = {name: min(values) for name, values in results.items()}
    hit = best[TOKEN_HIT]
    for name, cpu in best.items():
        print(f"{name:32} {cpu:7.1f} us CPU per request")
    print(
        f"hit vs one Redis GET: {best['Litestar + 1 Redis GET'] / hit:.2f}; "
        f"vs bare JSON: {best['bare Litestar JSON'] / hit:.2f} (CPU ratios, in-process)"
    )
    if profile_to:
        pstats.Stats(profile_to).sort_stats("tottime").print_stats(25)


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.hit_cpu", description="In-process CPU per request of the cache hits."
    )
    parser.add_argument("-n", type=int, default=N, help="requests per measurement (default: $N or 3000)")
    parser.add_argument(
        "--profile", default=PROFILE, metavar="FILE", help="cProfile of the token hit (default: $PROFILE)"
    )
    args = parser.parse_args(argv)
    import uvloop

    uvloop.run(main(args.n, args.profile))


if __name__ == "__main__":
    cli()
