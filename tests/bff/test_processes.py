"""Three `vluna-bff serve` processes sharing the real Redis, one emulator process behind them:
500 concurrent cold requests for one user must cause exactly one issuance."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis
import yaml

from tests.support.emulator import CONTROL, start_emulator
from tests.support.ports import free_port
from tests.support.processes import REPO, stop
from tests.support.redis_servers import SHARED_REDIS_URL as REDIS_URL

from .support import ENC_KEY_1, HMAC_KEY, Keys, base_settings

EMULATOR_SECRET = "cHJvY2Vzcy10ZXN0LXNlY3JldC1wcm9jZXNzLXRlc3Qh"


@pytest.fixture
def emulator_url() -> Iterator[str]:
    emulator = start_emulator(secret=EMULATOR_SECRET)
    try:
        yield emulator.url
    finally:
        emulator.stop()


def start_bff(cfg: Path, port: int, env: dict[str, str]) -> subprocess.Popen[Any]:
    return subprocess.Popen(
        [sys.executable, "-m", "bff.cli", "serve", "--config", str(cfg), "--port", str(port)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_ready(client: httpx.AsyncClient, url: str, procs: list[subprocess.Popen[Any]]) -> None:
    for _ in range(600):
        for p in procs:
            assert p.poll() is None, "a bff process exited during start-up"
        try:
            if (await client.get(url)).status_code == 401:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{url} never became ready")


async def test_single_flight_across_three_processes(
    keys: Keys, prefix: str, redis_client: aioredis.Redis, emulator_url: str, tmp_path: Path
) -> None:
    data = base_settings(
        keys,
        vluna={
            "base_url": f"{emulator_url}/mgt/v1",
            "realm_id": "realm_demo",
            "service_key_id": "pk-emulator",
        },
        cache={"backend": "redis", "key_prefix": prefix, "redis": {"url": REDIS_URL}},
        server={"log_level": "warning"},
    )
    # Secrets reach the processes the production way: environment and *_FILE, not the YAML.
    del data["vluna"]["service_key_secret"]
    del data["cache"]["encryption_keys"]
    del data["cache"]["hmac_key"]
    cfg = tmp_path / "bff.yaml"
    cfg.write_text(yaml.safe_dump(data))
    key_file = tmp_path / "enc-keys.json"
    key_file.write_text(f'["{ENC_KEY_1}"]\n')
    env = {
        **os.environ,
        "VLUNA_BFF__VLUNA__SERVICE_KEY_SECRET": EMULATOR_SECRET,
        "VLUNA_BFF__CACHE__HMAC_KEY": HMAC_KEY,
        "VLUNA_BFF__CACHE__ENCRYPTION_KEYS": key_file.read_text().strip(),
    }
    ports = [free_port() for _ in range(3)]
    procs = [start_bff(cfg, port, env) for port in ports]
    try:
        # Fresh clients per phase: a pooled connection idle past uvicorn's keep-alive timeout
        # would be closed under our feet while a slow sibling process is still starting.
        async with httpx.AsyncClient(timeout=10) as probe:
            for port in ports:
                await wait_ready(probe, f"http://127.0.0.1:{port}/vluna/token", procs)
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
