"""Cache-hit throughput of GET /vluna/token against two reference endpoints, in one run.

    uv run python -m bench.bff_token [--seconds 5] [--connections 32] [--stack service]

One server process (one worker, on a stack of bench/_stacks.py: by default `service`, what
`vluna-bff serve` runs) serves three routes from the same app and the same Redis pool:
- /bench/json        a bare Litestar JSON endpoint (bench/_refservers.py)
- /bench/redis-get   a Litestar endpoint doing one Redis GET (bench/_refservers.py)
- /vluna/token       the BFF: JWT verification (RS256), principal mapping, HMAC key, Redis GET,
                     AES-GCM decryption (a cache hit: the token is issued once before measuring)
The app is the service's own (`create_app` from a production-shaped configuration,
tests/support/service.py), with the emulator process (tests/support/emulator.py) as Vluna.
Load comes from a separate process (bench/_harness.py: wrk when installed, else the bounded
Python generator in bench/_loadgen.py). Needs Redis at 127.0.0.1:6379.
`uv run python -m bench` runs this scenario (and the others) with real `vluna-bff serve`
processes and writes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from typing import TYPE_CHECKING

import httpx

from bench._harness import LoadResult, run_load, start_on_stack
from bench._stacks import STACKS
from tests.support.emulator import start_emulator
from tests.support.keys import UserKeys
from tests.support.processes import stopping
from tests.support.redis_servers import cleanup_prefix
from tests.support.service import bff_config, write_config

if TYPE_CHECKING:
    from litestar import Litestar

REF_KEY_ENV = "BENCH_REF_KEY"


def token_and_references() -> Litestar:
    """The server's app factory: the service's app (settings from VLUNA_BFF_CONFIG) with the
    reference routes on its own Redis client."""
    from bench._refservers import reference_routes, seed_reference
    from bff.app import create_app
    from bff.redis_client import make_redis
    from bff.settings import load_settings

    settings = load_settings()
    redis = make_redis(settings.cache.redis)
    key = os.environ[REF_KEY_ENV]

    async def seed() -> None:
        await seed_reference(redis, key)

    app = create_app(settings, redis=redis, extra_routes=reference_routes(redis, key))
    app.on_startup.append(seed)
    return app


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--stack", choices=STACKS, default="service")
    args = parser.parse_args()

    from bff.settings import CONFIG_ENV

    keys = UserKeys()
    prefix = f"bench-bff-{uuid.uuid4().hex[:10]}:"
    emulator = start_emulator()
    config = write_config(bff_config(emulator.url, keys.pem(), prefix=prefix))
    try:
        with stopping(emulator):
            env = {CONFIG_ENV: str(config), REF_KEY_ENV: prefix + "bench-ref"}
            server = start_on_stack(
                args.stack,
                "bench.bff_token:token_and_references",
                name="vluna-bff + references",
                env=env,
                ready=("/vluna/token", {401}),
            )
            with stopping(server):
                return measure(server.url, keys.token("alice", org="acme"), args.seconds, args.connections)
    finally:
        config.unlink()
        cleanup_prefix(prefix)


def measure(url: str, user_jwt: str, seconds: float, conns: int) -> int:
    auth = {"Authorization": f"Bearer {user_jwt}"}
    r = httpx.get(url + "/vluna/token", headers=auth, timeout=30)  # issued once: then cache hits
    if r.status_code != 200:
        raise SystemExit(f"token request failed: {r.status_code} {r.text}")
    rows = [
        ("bare Litestar JSON", "/bench/json", {}),
        ("Litestar + 1 Redis GET", "/bench/redis-get", {}),
        ("GET /vluna/token (cache hit)", "/vluna/token", auth),
    ]
    results: dict[str, LoadResult] = {}
    for name, path, headers in rows:
        load = run_load(url + path, headers=headers, seconds=seconds, connections=conns)
        if load.non_2xx:
            raise SystemExit(f"{path}: non-200 answers: {load.statuses}")
        results[name] = load
    redis_ref = results["Litestar + 1 Redis GET"].rps
    bare_ref = results["bare Litestar JSON"].rps
    print(f"\n{conns} keep-alive connections, {seconds:.0f} s per endpoint, 1 worker, {os.cpu_count()} CPUs")
    print(f"{'endpoint':32} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs bare':>8} {'vs GET':>8}")
    for name, load in results.items():
        print(
            f"{name:32} {load.rps:9.0f} {load.p50_ms:8.2f} {load.p99_ms:8.2f} "
            f"{load.rps / bare_ref:8.2f} {load.rps / redis_ref:8.2f}"
        )
    ratio = results["GET /vluna/token (cache hit)"].rps / redis_ref
    print(f"\ncache-hit /vluna/token = {ratio:.2f} x the Redis-GET reference (aim: >= 0.50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
