"""Cache-hit throughput of GET /vluna/token against two reference endpoints, in one run.

    uv run python -m bench.bff_token [--seconds 5] [--connections 32]

One uvicorn process (one worker; the app with an in-process emulator, which `vluna-bff serve`'s
worker processes cannot host: `python -m bench` measures the real stack) serves three routes
from the same app and the same Redis pool:
- /bench/json        a bare Litestar JSON endpoint
- /bench/redis-get   a Litestar endpoint doing one Redis GET
- /vluna/token       the BFF: JWT verification (RS256), principal mapping, HMAC key, Redis GET,
                     AES-GCM decryption (a cache hit: the token is issued once before measuring)
Load comes from a separate process (bench/_harness.py: wrk when installed, else the bounded
Python generator in bench/_loadgen.py). Needs Redis at 127.0.0.1:6379.
`uv run python -m bench` runs this scenario (and the others) with real `vluna-bff serve`
processes and writes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from bench._harness import run_load
from tests.support.ports import free_port
from tests.support.processes import REPO
from tests.support.redis_servers import SHARED_REDIS_URL as REDIS_URL
from tests.support.redis_servers import cleanup_prefix

# -- server side ---------------------------------------------------------------------------------


def serve(port: int, config_path: str) -> None:
    import redis.asyncio as aioredis
    import uvicorn
    from litestar import get
    from vlunaai.testing import VlunaEmulator

    from bff.app import create_app
    from bff.settings import load_settings
    from bff.tokens.issuer import SdkTokenIssuer

    settings = load_settings(config_path, environ={})
    emulator = VlunaEmulator()
    issuer = SdkTokenIssuer.create(
        base_url=emulator.service_base_url,
        realm_id=emulator.realm_id,
        key_id=emulator.service_key_id,
        secret=emulator.service_key_secret,
        session_ttl_sec=settings.tokens.session_ttl_sec,
        timeout_sec=5,
        max_retries=0,
        transport=emulator.transport(),
    )
    redis = aioredis.Redis.from_url(REDIS_URL, max_connections=64)
    ref_key = settings.cache.key_prefix + "bench-ref"

    @get("/bench/json")
    async def bare() -> dict[str, Any]:
        return {"ok": True, "value": "x" * 32}

    @get("/bench/redis-get")
    async def one_get() -> dict[str, Any]:
        value = await redis.get(ref_key)
        return {"ok": True, "len": len(value or b"")}

    async def seed_ref() -> None:
        await redis.set(ref_key, b"v" * 300)

    app = create_app(
        settings, issuer=issuer, redis=redis, realm_id=emulator.realm_id, extra_routes=[bare, one_get]
    )
    app.on_startup.append(seed_ref)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--serve", nargs=2, metavar=("PORT", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(int(args.serve[0]), args.serve[1])
        return 0

    import jwt
    import yaml
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    prefix = f"bench-bff-{os.getpid()}:"
    config = {
        "vluna": {
            "realm_id": "realm_demo",
            "service_key_id": "pk-emulator",
            "service_key_secret": "dW51c2Vk",
        },
        "auth": {
            "methods": ["bearer"],
            "jwt": {
                "public_keys_pem": [pem],
                "algorithms": ["RS256"],
                "issuer": "https://id.bench/",
                "audience": ["bench"],
            },
        },
        "mapping": {"principal": [{"claim": "org_id", "template": "org:{value}"}]},
        "cache": {
            "backend": "redis",
            "key_prefix": prefix,
            "redis": {"url": REDIS_URL},
            "encryption_keys": ["b1:" + base64.b64encode(os.urandom(32)).decode()],
            "hmac_key": base64.b64encode(os.urandom(32)).decode(),
        },
    }
    user_jwt = jwt.encode(
        {
            "sub": "alice",
            "org_id": "acme",
            "iss": "https://id.bench/",
            "aud": "bench",
            "exp": int(time.time()) + 3600,
        },
        key,
        algorithm="RS256",
    )
    port = free_port()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(config, f)
        cfg_path = f.name
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.bff_token", "--serve", str(port), cfg_path],
        cwd=REPO,
    )
    try:
        return asyncio.run(_run(port, user_jwt, args.seconds, args.connections, proc))
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        os.unlink(cfg_path)
        cleanup_prefix(prefix)


async def _run(port: int, user_jwt: str, seconds: float, conns: int, proc: subprocess.Popen[Any]) -> int:
    import httpx

    auth = {"Authorization": f"Bearer {user_jwt}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(400):
            if proc.poll() is not None:
                raise SystemExit("bench server exited")
            try:
                r = await client.get("/vluna/token", headers=auth)
                break
            except httpx.TransportError:
                await asyncio.sleep(0.05)
        else:
            raise SystemExit("bench server never answered")
        if r.status_code != 200:
            raise SystemExit(f"token request failed: {r.status_code} {r.text}")
        assert json.loads(r.text)["access_token"]
    rows = [
        ("bare Litestar JSON", "/bench/json", {}),
        ("Litestar + 1 Redis GET", "/bench/redis-get", {}),
        ("GET /vluna/token (cache hit)", "/vluna/token", auth),
    ]
    results = {}
    for name, path, headers in rows:
        load = await asyncio.to_thread(
            run_load, f"http://127.0.0.1:{port}{path}", headers=headers, seconds=seconds, connections=conns
        )
        if load.non_2xx:
            raise SystemExit(f"{path}: non-200 answers: {load.statuses}")
        results[name] = {"rps": load.rps, "p50": load.p50_ms, "p99": load.p99_ms, "n": load.requests}
    redis_ref = results["Litestar + 1 Redis GET"]["rps"]
    bare_ref = results["bare Litestar JSON"]["rps"]
    cpus = os.cpu_count()
    print(f"\n{conns} keep-alive connections, {seconds:.0f} s per endpoint, 1 uvicorn worker, {cpus} CPUs")
    print(f"{'endpoint':32} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs bare':>8} {'vs GET':>8}")
    for name, row in results.items():
        print(
            f"{name:32} {row['rps']:9.0f} {row['p50']:8.2f} {row['p99']:8.2f} "
            f"{row['rps'] / bare_ref:8.2f} {row['rps'] / redis_ref:8.2f}"
        )
    ratio = results["GET /vluna/token (cache hit)"]["rps"] / redis_ref
    print(f"\ncache-hit /vluna/token = {ratio:.2f} x the Redis-GET reference (aim: >= 0.50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
