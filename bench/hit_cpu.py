"""CPU per request in-process: the service's app against the reference apps.

    uv run python -m bench.hit_cpu                  # token: N=3000 requests each, 32 at once
    uv run python -m bench.hit_cpu --only proxy     # the proxied catalog GET (public cache off)
    PROFILE=/tmp/hit.prof uv run python -m bench.hit_cpu   # + cProfile (CPU time) of the service
    uv run python -m bench.hit_cpu --help           # options: --only, --rounds, -n, --profile

Scenarios (``--only``, comma-separated; default ``token``):

- ``token``: ``GET /vluna/token``, cache hit, against bare Litestar JSON and Litestar + 1 Redis GET,
  and a proxied catalog GET answered from the proxy's public cache (the route's own work);
- ``proxy``: ``GET /vluna/api/v1/catalog/products``, public cache off, as ``python -m bench``
  measures it (rate limits off), and with rate limits on (default leases), against the aiohttp
  pass-through (bench._refservers ``pass_through``); both call the emulator (another process,
  whose CPU is not counted), so the difference is the proxy's own work per call; over the
  previous upstream client (``AiohttpUpstream``, to compare it with the production one); and with a
  canned upstream (answers from memory: the proxy's cost without its HTTP client or socket),
  also with the JSON access log on (to /dev/null; the bench runs with it off).

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

import asyncio
import cProfile
import json
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


class CannedUpstream:
    """An upstream that answers at once from memory (the proxy's ``Upstream`` protocol): what
    the proxy costs without its HTTP client and without waiting on a socket."""

    base_url = "http://canned/api/v1"
    body = (
        b'{"data":[' + b",".join(b'{"id":"prod_%d","name":"Product %d"}' % (i, i) for i in range(10)) + b"]}"
    )

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def send(self, method: str, path_and_query: str, headers: Any, body: Any, timeouts: Any) -> Any:
        from bff.proxy.upstream import UpstreamResponse

        return UpstreamResponse(200, "application/json", {}, self.body)


def _log_to_devnull() -> None:
    """The service's JSON log handler, writing to /dev/null (a real write per line)."""
    from bff.observability.logging import configure_logging

    configure_logging("INFO", "json", stream=open(os.devnull, "w"))  # noqa: SIM115 (lives with the process)


def _app(emulator_url: str, pem: str, prefix: str, upstream: Any = None, **sections: Any) -> Any:
    import yaml

    from bff.app import create_app
    from bff.settings import load_settings
    from tests.support.service import bff_config

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(bff_config(emulator_url, pem, prefix=prefix, **sections), f)
    try:
        settings = load_settings(f.name, environ={})
    finally:
        os.unlink(f.name)
    return create_app(settings, proxy_upstream=upstream)


async def main(only: set[str], rounds: int = 2, n: int = N, profile_to: str | None = PROFILE) -> None:
    from bench._aiohttp_upstream import AiohttpUpstream
    from bench._refservers import litestar_refs, pass_through
    from tests.support.emulator import start_emulator
    from tests.support.keys import UserKeys
    from tests.support.redis_servers import SHARED_REDIS_URL, cleanup_prefix

    keys = UserKeys()
    emulator = start_emulator()
    prefix = f"bench-{uuid.uuid4().hex[:10]}:"
    os.environ["BENCH_REDIS_URL"] = SHARED_REDIS_URL
    os.environ["BENCH_REF_KEY"] = prefix + "ref"
    auth = [(b"authorization", f"Bearer {keys.token('alice', org='acme')}".encode())]
    catalog = "/vluna/api/v1/catalog/products"
    # (name, app, path, headers, profiled)
    targets: list[tuple[str, Any, str, list[tuple[bytes, bytes]], bool]] = []
    stops: list[Callable[[], Awaitable[None]]] = []
    try:
        if "token" in only:
            # The proxy's rate limit as configured by default, with room for every measured request.
            limits = {"requests": 10**9, "write_requests": 10**9, "window_sec": 3600}
            app = _app(emulator.url, keys.pem(), prefix, rate_limit=limits)
            ref = litestar_refs()
            stops += [await lifespan(app), await lifespan(ref)]
            await one(app, "/vluna/token", auth)  # issued once: every measured request is a hit
            targets += [
                ("bare Litestar JSON", ref, "/bench/json", [], False),
                ("Litestar + 1 Redis GET", ref, "/bench/redis-get", [], False),
                ("GET /vluna/token, cache hit", app, "/vluna/token", auth, True),
                # The proxy's public cache (the answer kept per caller): the route's own work.
                ("proxied catalog GET, cache hit", app, catalog, auth, False),
            ]
        if "proxy" in only:
            off = {"public_cache_ttl_sec": 0}
            plain = _app(emulator.url, keys.pem(), prefix, rate_limit={"enabled": False}, proxy=off)
            # The default lease size and window, with a limit this run never reaches.
            limited = _app(emulator.url, keys.pem(), prefix, rate_limit={"requests": 10**9}, proxy=off)
            canned = _app(
                emulator.url, keys.pem(), prefix, CannedUpstream(), rate_limit={"enabled": False}, proxy=off
            )
            # The same over the previous client (aiohttp), to compare the two in one run.
            aio = _app(
                emulator.url,
                keys.pem(),
                prefix,
                AiohttpUpstream(
                    emulator.url + "/api/v1",
                    max_connections=100,
                    keepalive_timeout=30.0,
                    max_response_bytes=4 * 1024 * 1024,
                ),
                rate_limit={"enabled": False},
                proxy=off,
            )
            # The same with the JSON access log on (the production default; the bench turns it
            # off), written to /dev/null.
            logged = _app(
                emulator.url,
                keys.pem(),
                prefix,
                CannedUpstream(),
                rate_limit={"enabled": False},
                proxy=off,
                observability={"access_log": True, "log_format": "json"},
            )
            _log_to_devnull()
            stops += [await lifespan(app) for app in (plain, limited, aio, canned, logged)]
            token = await one(plain, "/vluna/token", auth)
            await one(aio, "/vluna/token", auth)
            await one(canned, "/vluna/token", auth)
            await one(logged, "/vluna/token", auth)
            os.environ["BENCH_UPSTREAM"] = emulator.url
            os.environ["BENCH_TOKEN"] = json.loads(token[1]["body"])["access_token"]
            os.environ["BENCH_REALM"] = "realm_demo"
            passthru = pass_through()
            stops.append(await lifespan(passthru))
            targets += [
                ("aiohttp pass-through", passthru, "/api/v1/catalog/products", [], False),
                ("proxied catalog GET", plain, catalog, auth, True),
                ("proxied, rate limits on", limited, catalog, auth, False),
                ("proxied, aiohttp client", aio, catalog, auth, False),
                ("proxied, canned upstream", canned, catalog, auth, False),
                ("canned upstream, access log on", logged, catalog, auth, False),
            ]
        results: dict[str, list[float]] = {}
        for round_ in range(rounds):
            for name, target, path, headers, profiled in targets:
                last = round_ == rounds - 1
                profiler = cProfile.Profile(time.process_time) if profile_to and last and profiled else None
                if profiler is not None:
                    profiler.enable()
                results.setdefault(name, []).append(await measure(target, path, headers, n))
                if profiler is not None and profile_to:
                    profiler.disable()
                    profiler.dump_stats(f"{profile_to}.{len(results)}" if len(only) > 1 else profile_to)
    finally:
        for stop in reversed(stops):
            await stop()
        emulator.stop()
        cleanup_prefix(prefix)
    best = {name: min(values) for name, values in results.items()}
    for name, cpu in best.items():
        print(f"{name:32} {cpu:7.1f} us CPU per request")
    if "token" in only:
        hit = best["GET /vluna/token, cache hit"]
        print(
            f"hit vs one Redis GET: {best['Litestar + 1 Redis GET'] / hit:.2f}; "
            f"vs bare JSON: {best['bare Litestar JSON'] / hit:.2f} (CPU ratios, in-process)"
        )
    if "proxy" in only:
        ref_us = best["aiohttp pass-through"]
        for name in ("proxied catalog GET", "proxied, rate limits on", "proxied, aiohttp client"):
            print(
                f"{name} vs the pass-through: {ref_us / best[name]:.2f} "
                f"(+{best[name] - ref_us:.0f} us per call; CPU ratio, in-process)"
            )
    if profile_to and len(only) == 1:
        pstats.Stats(profile_to).sort_stats("tottime").print_stats(25)


def cli(argv: list[str] | None = None) -> None:
    import argparse

    import uvloop

    summary = (__doc__ or "").split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m bench.hit_cpu", description=summary)
    parser.add_argument("--only", default="token", help="comma-separated: token, proxy (default: token)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements of each (the best counts)")
    parser.add_argument("-n", type=int, default=N, help="requests per measurement (default: $N or 3000)")
    parser.add_argument(
        "--profile", default=PROFILE, metavar="FILE", help="cProfile output (default: $PROFILE)"
    )
    args = parser.parse_args(argv)
    names = {n.strip() for n in args.only.split(",") if n.strip()}
    if not names or names - {"token", "proxy"}:
        parser.error("--only takes token and/or proxy")
    uvloop.run(main(names, max(1, args.rounds), args.n, args.profile))


if __name__ == "__main__":
    cli()
