"""Throughput of the BFF proxy (GET catalog through /vluna/api/v1) against a minimal pass-through.

    uv run python -m bench.bff_proxy [--seconds 5] [--connections 32] [--rounds 3]

Processes (all on 127.0.0.1, each its own process):
- the emulator (`python -m vlunaai.testing`), the upstream of everything below;
- a minimal pass-through (bench/_refservers.py `pass_through`) on the same server stack as the
  service (bench/_stacks.py `service`): GET /api/v1/catalog/products forwarded to the emulator with
  a fixed bearer token through one aiohttp ClientSession (the floor any Python proxy on this stack
  can reach);
- `vluna-bff serve` (one worker, Redis cache) with the proxy, public catalog cache off: every
  request is authenticated (JWT, verification cached), mapped, rate-limited (Redis, in leases
  of rate_limit.lease_size slots), gets its token (cache, memoised for proxy.token_memo_sec),
  and is forwarded;
- the same with the public catalog cache on (answered by the BFF without an upstream call).
Load comes from a separate process per measurement: wrk when installed, else a keep-alive
HTTP/1.1 load generator on raw asyncio streams. The pass-through and the proxy are measured in
alternation --rounds times; the summary gives medians and the median of the per-round ratios.
Needs Redis at 127.0.0.1:6379.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.ports import free_port
from tests.support.processes import REPO, read_listening
from tests.support.redis_servers import SHARED_REDIS_URL as REDIS_URL

SECRET = base64.b64encode(b"bench-proxy-service-secret-32by!").decode()
HS = "bench-proxy-hs-secret-0123456789abcdef"


# -- load generation -----------------------------------------------------------------------------


async def _worker(port: int, request: bytes, deadline: float, lat: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            lat.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


async def _load(
    port: int, path: str, headers: dict[str, str], seconds: float, conns: int
) -> dict[str, float]:
    head = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    request = (head + "\r\n").encode()
    lat: list[float] = []
    errors: list[int] = []
    await asyncio.gather(
        *[_worker(port, request, time.perf_counter() + 1.0, [], errors) for _ in range(conns)]
    )
    if errors:
        return {"error": float(errors[0])}
    start = time.perf_counter()
    await asyncio.gather(*[_worker(port, request, start + seconds, lat, errors) for _ in range(conns)])
    elapsed = time.perf_counter() - start
    if errors:
        return {"error": float(errors[0])}
    q = statistics.quantiles(lat, n=100)
    return {"rps": len(lat) / elapsed, "p50": q[49] * 1000, "p99": q[98] * 1000, "n": len(lat)}


def _wrk(port: int, path: str, headers: dict[str, str], seconds: float, conns: int) -> dict[str, float]:
    args = ["wrk", "-t2", f"-c{conns}", f"-d{max(1, int(seconds))}s", "--latency"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    subprocess.run(
        [*args[:4], "-d1s", *args[5:], f"http://127.0.0.1:{port}{path}"], capture_output=True, check=True
    )
    out = subprocess.run(
        [*args, f"http://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True
    ).stdout
    if "Non-2xx" in out:
        return {"error": 1.0}

    def ms(label: str) -> float:
        m = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "p50": ms("50"), "p99": ms("99")}


def measure(port: int, path: str, headers: dict[str, str], seconds: float, conns: int) -> dict[str, float]:
    if shutil.which("wrk"):
        return _wrk(port, path, headers, seconds, conns)
    # A separate process, so that the load generator does not share an event loop or a GIL with
    # anything measured.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.bff_proxy",
            "--load",
            str(port),
            path,
            json.dumps(headers),
            str(seconds),
            str(conns),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    return dict(json.loads(out))


# -- orchestration -------------------------------------------------------------------------------


def wait_http(url: str, headers: dict[str, str] | None = None, want: int = 200) -> None:
    import httpx

    for _ in range(400):
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == want:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"{url} did not come up")


def bff_config(tmp: Path, emulator: str, prefix: str, cache_ttl: float, rate_limit: bool = True) -> Path:
    import yaml

    data = {
        "vluna": {
            "base_url": f"{emulator}/mgt/v1",
            "realm_id": "realm_demo",
            "service_key_id": "pk-emulator",
            "service_key_secret": SECRET,
        },
        "auth": {
            "methods": ["bearer"],
            "jwt": {"hs_secret": HS, "algorithms": ["HS256"], "issuer": "bench", "audience": ["bench"]},
        },
        "cache": {
            "backend": "redis",
            "redis": {"url": REDIS_URL},
            "key_prefix": prefix,
            "encryption_keys": ["k1:" + base64.b64encode(os.urandom(32)).decode()],
            "hmac_key": "bench-hmac-key-0123456789abcdef0123",
        },
        "server": {"log_level": "warning"},
        "rate_limit": {"enabled": rate_limit, "requests": 10_000_000, "write_requests": 10},
        "proxy": {"public_cache_ttl_sec": cache_ttl},
    }
    path = tmp / f"bff-{cache_ttl:g}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


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
    parser.add_argument("--load", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.load:
        port, path, headers, seconds, conns = args.load
        print(
            json.dumps(asyncio.run(_load(int(port), path, json.loads(headers), float(seconds), int(conns))))
        )
        return 0

    import httpx
    import jwt

    procs: list[subprocess.Popen[Any]] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    prefix = f"bench-proxy-{os.getpid()}:"
    try:
        emu = subprocess.Popen(
            [sys.executable, "-m", "vlunaai.testing", "--port", "0", "--service-key-secret", SECRET],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
        )
        procs.append(emu)
        _, emulator = read_listening(emu)
        user_jwt = jwt.encode(
            {"sub": "bench-user", "iss": "bench", "aud": "bench", "exp": int(time.time()) + 3600},
            HS,
            algorithm="HS256",
        )
        auth = {"Authorization": f"Bearer {user_jwt}"}
        ports: dict[str, int] = {}
        for name, ttl in (("proxied", 0.0), ("proxied, catalog cache on", 30.0)):
            ports[name] = free_port()
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bff.cli",
                        "serve",
                        "--config",
                        str(bff_config(tmp, emulator, prefix, ttl, not args.no_rate_limit)),
                        "--port",
                        str(ports[name]),
                        "--workers",
                        "1",
                    ],
                    cwd=REPO,
                    env={k: v for k, v in os.environ.items() if not k.startswith("VLUNA_BFF")},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        # Warm: this issues and caches the user's platform token (one issuance, shared via Redis).
        for name in ports:
            wait_http(f"http://127.0.0.1:{ports[name]}/vluna/api/v1/catalog/products", auth)
        token = httpx.get(f"http://127.0.0.1:{ports['proxied']}/vluna/token", headers=auth).json()[
            "access_token"
        ]
        passthrough = subprocess.Popen(
            [sys.executable, "-m", "bench._stacks", "service", "bench._refservers:pass_through"],
            cwd=REPO,
            env={**os.environ, "BENCH_UPSTREAM": emulator, "BENCH_TOKEN": token, "BENCH_REALM": "realm_demo"},
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(passthrough)
        assert passthrough.stdout is not None
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", passthrough.stdout.readline())
        assert m, "the pass-through did not start"
        ports["aiohttp pass-through"] = int(m.group(1))
        wait_http(f"http://127.0.0.1:{ports['aiohttp pass-through']}/api/v1/catalog/products")
        gen = "wrk" if shutil.which("wrk") else "python asyncio load generator (separate process)"
        print(f"{args.seconds:g} s per target, {args.connections} connections, load: {gen}")
        upstream_headers = {"Authorization": f"Bearer {token}", "X-Realm-Id": "realm_demo"}
        targets = [
            (
                "emulator direct (upstream ceiling)",
                int(emulator.rsplit(":", 1)[1]),
                "/api/v1/catalog/products",
                upstream_headers,
            ),
            ("aiohttp pass-through", ports["aiohttp pass-through"], "/api/v1/catalog/products", {}),
            ("proxied", ports["proxied"], "/vluna/api/v1/catalog/products", auth),
            (
                "proxied, catalog cache on",
                ports["proxied, catalog cache on"],
                "/vluna/api/v1/catalog/products",
                auth,
            ),
        ]
        # The pass-through and the proxy are measured in alternation, `--rounds` times: on a shared
        # machine a burst of other load then skews one pair, not the whole comparison. Every
        # figure printed last is a median; the ratio is the median of the per-round ratios.
        results: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in targets}
        ratios: list[float] = []
        for round_no in range(max(1, args.rounds)):
            got: dict[str, float] = {}
            for name, port, path, headers in targets:
                if name.startswith("emulator") and round_no:
                    continue  # the upstream ceiling, once
                r = measure(port, path, headers, args.seconds, args.connections)
                if "error" in r:
                    print(f"{name:36s} FAILED (non-200 answers)")
                    continue
                results[name].append(r)
                got[name] = r["rps"]
                print(
                    f"  round {round_no + 1}: {name:36s} {r['rps']:8.0f} req/s   "
                    f"p50 {r['p50']:6.2f} ms   p99 {r['p99']:6.2f} ms"
                )
            if "aiohttp pass-through" in got and "proxied" in got:
                ratios.append(got["proxied"] / got["aiohttp pass-through"])
        print(f"medians of {max(1, args.rounds)} round(s):")
        for name, runs in results.items():
            if not runs:
                continue
            med = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50", "p99")}
            print(f"{name:36s} {med['rps']:8.0f} req/s   p50 {med['p50']:6.2f} ms   p99 {med['p99']:6.2f} ms")
        if ratios:
            shown = ", ".join(f"{x:.2f}" for x in ratios)
            print(
                f"ratio proxied / aiohttp pass-through: {statistics.median(ratios):.2f} "
                f"(goal >= 0.50; per round: {shown})"
            )
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
