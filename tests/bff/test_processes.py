"""Three `vluna-bff serve` processes sharing the real Redis, one emulator process behind them:
500 concurrent cold requests for one user must cause exactly one issuance."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx
import redis.asyncio as aioredis

from tests.support.emulator import CONTROL
from tests.support.ports import free_port
from tests.support.processes import await_url, stop
from tests.support.service import spawn_serve

from .support import Keys, serve_config


async def test_single_flight_across_three_processes(
    keys: Keys, prefix: str, redis_client: aioredis.Redis, emulator_url: str, tmp_path: Path
) -> None:
    cfg, env = serve_config(tmp_path, keys, emulator_url, redis_prefix=prefix)
    ports = [free_port() for _ in range(3)]
    procs = [spawn_serve(cfg, port, env, subprocess.DEVNULL) for port in ports]
    try:
        # Fresh clients per phase: a pooled connection idle past uvicorn's keep-alive timeout
        # would be closed under our feet while a slow sibling process is still starting.
        async with httpx.AsyncClient(timeout=10) as probe:
            for port in ports:
                await await_url(f"http://127.0.0.1:{port}/vluna/token", {401}, procs)
            # Slow the one issuance down so that all 500 requests really overlap with it.
            r = await probe.post(
                f"{emulator_url}/__emulator__/faults",
                json={"operation": "issue_platform_token", "latency_seconds": 0.5, "times": 1},
                headers=CONTROL,
            )
            assert r.status_code == 201
            reset = await probe.post(
                f"{emulator_url}/__emulator__/reset", params={"what": "counters"}, headers=CONTROL
            )
            assert reset.status_code == 200
        headers = {"Authorization": f"Bearer {keys.token('alice', org_id='acme')}"}
        limits = httpx.Limits(max_connections=600, max_keepalive_connections=600)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            responses = await asyncio.gather(
                *[
                    client.get(f"http://127.0.0.1:{ports[i % 3]}/vluna/token", headers=headers)
                    for i in range(500)
                ]
            )
        async with httpx.AsyncClient(timeout=10) as probe:
            counters = (await probe.get(f"{emulator_url}/__emulator__/counters", headers=CONTROL)).json()[
                "data"
            ]["calls"]
    finally:
        for p in procs:
            stop(p)
    assert [r.status_code for r in responses] == [200] * 500
    assert len({r.json()["access_token"] for r in responses}) == 1
    issued = sum(v for k, v in counters.items() if k.endswith("issue_platform_token"))
    assert issued == 1
