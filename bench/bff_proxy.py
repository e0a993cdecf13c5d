"""Throughput of the BFF proxy (GET catalog through /vluna/api/v1) against a minimal pass-through.

    uv run python -m bench.bff_proxy [--seconds 5] [--connections 32] [--rounds 3]

Processes (all on 127.0.0.1, each its own process, started by tests/support and bench/_harness.py):
- the emulator (`python -m vlunaai.testing`), the upstream of everything below;
- a minimal pass-through (bench/_refservers.py `pass_through`) on the same server stack as the
  service (bench/_stacks.py `service`): GET /api/v1/catalog/products forwarded to the emulator with
  a fixed bearer token through one aiohttp ClientSession (the floor any Python proxy on this stack
  can reach);
- `vluna-bff serve` (one worker, Redis cache, the production-shaped configuration of
  tests/support/service.py) with the proxy, public catalog cache off: every request is
  authenticated (JWT, verification cached), mapped, rate-limited (Redis, in leases of
  rate_limit.lease_size slots), gets its token (cache, memoised for proxy.token_memo_sec), and is
  forwarded;
- the same with the public catalog cache on (answered by the BFF without an upstream call).
Load comes from a separate process per measurement (bench/_harness.py: wrk when installed, else
the Python generator). The pass-through and the proxy are measured in alternation --rounds times;
the summary gives medians and the median of the per-round ratios. Needs Redis at 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import uuid
from pathlib import Path

import httpx

from bench._harness import LoadResult, run_load, start_on_stack, wrk_available
from tests.support.emulator import start_emulator
from tests.support.keys import UserKeys
from tests.support.processes import Proc, stopping
from tests.support.redis_servers import cleanup_prefix
from tests.support.service import bff_config, start_bff, write_config

CATALOG = "/api/v1/catalog/products"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="measure the pass-through and the proxy this many times, interleaved (medians are reported)",
    )
    parser.add_argument(
        "--no-rate-limit", action="store_true", help="turn the per-user rate limit (a Redis call) off"
    )
    args = parser.parse_args()

    keys = UserKeys()
    prefix = f"bench-proxy-{uuid.uuid4().hex[:10]}:"
    configs: list[Path] = []
    try:
        with contextlib.ExitStack() as stack:
            emulator = start_emulator()
            stack.enter_context(stopping(emulator))
            services: dict[str, Proc] = {}
            for name, ttl in (("proxied", 0.0), ("proxied, catalog cache on", 30.0)):
                limits = {"enabled": not args.no_rate_limit, "requests": 10_000_000, "write_requests": 10}
                proxy = {"public_cache_ttl_sec": ttl}
                data = bff_config(emulator.url, keys.pem(), prefix=prefix, rate_limit=limits, proxy=proxy)
                configs.append(write_config(data))
                services[name] = start_bff(configs[-1])
                stack.enter_context(stopping(services[name]))
            auth = {"Authorization": f"Bearer {keys.token('bench-user')}"}
            # Warm: this issues and caches the user's platform token (one issuance, shared via Redis).
            for proc in services.values():
                httpx.get(proc.url + "/vluna" + CATALOG, headers=auth, timeout=30).raise_for_status()
            token = httpx.get(services["proxied"].url + "/vluna/token", headers=auth, timeout=30).json()
            upstream_token = token["access_token"]
            env = {"BENCH_UPSTREAM": emulator.url, "BENCH_TOKEN": upstream_token, "BENCH_REALM": "realm_demo"}
            passthrough = start_on_stack(
                "service",
                "bench._refservers:pass_through",
                name="aiohttp pass-through",
                env=env,
                ready=(CATALOG, {200}),
            )
            stack.enter_context(stopping(passthrough))
            upstream_headers = {"Authorization": f"Bearer {upstream_token}", "X-Realm-Id": "realm_demo"}
            targets = [
                ("emulator direct (upstream ceiling)", emulator.url + CATALOG, upstream_headers),
                ("aiohttp pass-through", passthrough.url + CATALOG, {}),
                *((name, proc.url + "/vluna" + CATALOG, auth) for name, proc in services.items()),
            ]
            report(targets, args.seconds, args.connections, args.rounds)
            return 0
    finally:
        for config in configs:
            config.unlink()
        cleanup_prefix(prefix)


def report(targets: list[tuple[str, str, dict[str, str]]], seconds: float, conns: int, rounds: int) -> None:
    gen = "wrk" if wrk_available() else "python load generator (separate process)"
    print(f"{seconds:g} s per target, {conns} connections, load: {gen}")
    # The pass-through and the proxy are measured in alternation, `--rounds` times: on a shared
    # machine a burst of other load then skews one pair, not the whole comparison. Every
    # figure printed last is a median; the ratio is the median of the per-round ratios.
    results: dict[str, list[LoadResult]] = {name: [] for name, *_ in targets}
    ratios: list[float] = []
    for round_no in range(max(1, rounds)):
        got: dict[str, float] = {}
        for name, url, headers in targets:
            if name.startswith("emulator") and round_no:
                continue  # the upstream ceiling, once
            load = run_load(url, headers=headers, seconds=seconds, connections=conns)
            if load.non_2xx:
                print(f"{name:36s} FAILED (non-200 answers: {load.statuses})")
                continue
            results[name].append(load)
            got[name] = load.rps
            print(
                f"  round {round_no + 1}: {name:36s} {load.rps:8.0f} req/s   "
                f"p50 {load.p50_ms:6.2f} ms   p99 {load.p99_ms:6.2f} ms"
            )
        if "aiohttp pass-through" in got and "proxied" in got:
            ratios.append(got["proxied"] / got["aiohttp pass-through"])
    print(f"medians of {max(1, rounds)} round(s):")
    for name, runs in results.items():
        if not runs:
            continue
        rps = statistics.median(r.rps for r in runs)
        p50 = statistics.median(r.p50_ms for r in runs)
        p99 = statistics.median(r.p99_ms for r in runs)
        print(f"{name:36s} {rps:8.0f} req/s   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms")
    if ratios:
        shown = ", ".join(f"{x:.2f}" for x in ratios)
        print(
            f"ratio proxied / aiohttp pass-through: {statistics.median(ratios):.2f} "
            f"(goal >= 0.50; per round: {shown})"
        )


if __name__ == "__main__":
    sys.exit(main())
