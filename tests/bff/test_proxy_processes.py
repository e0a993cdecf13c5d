"""Two `vluna-bff serve` processes and one emulator process: the rate limit is one budget across
both replicas (Redis), and the proxy's upstream is derived from `vluna.base_url`."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx

from tests.support.emulator import CONTROL
from tests.support.ports import free_port
from tests.support.processes import stop, wait_url
from tests.support.service import spawn_serve

from .support import Keys, serve_config


def raw_get(port: int, raw_path: str, headers: dict[str, str]) -> int:
    import socket

    head = f"GET {raw_path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_rate_limit_across_two_service_processes(
    keys: Keys, prefix: str, emulator_url: str, tmp_path: Path
) -> None:
    window = 3600
    left = window - time.time() % window
    if left < 20:
        time.sleep(left + 0.05)
    cfg, env = serve_config(
        tmp_path,
        keys,
        emulator_url,
        redis_prefix=prefix,
        rate_limit={"requests": 5, "window_sec": window},
        proxy={"public_cache_ttl_sec": 0},
    )
    ports = [free_port(), free_port()]
    procs = [spawn_serve(cfg, port, env, subprocess.DEVNULL) for port in ports]
    try:
        for port in ports:
            wait_url(f"http://127.0.0.1:{port}/vluna/api/v1/catalog/products", {401}, procs, name="vluna-bff")
        httpx.post(
            f"{emulator_url}/__emulator__/reset", params={"what": "counters"}, headers=CONTROL
        ).raise_for_status()
        headers = {"Authorization": f"Bearer {keys.token('alice', org_id='acme')}"}
        statuses = []
        with httpx.Client(timeout=10) as client:
            for i in range(8):
                r = client.get(
                    f"http://127.0.0.1:{ports[i % 2]}/vluna/api/v1/catalog/products", headers=headers
                )
                statuses.append(r.status_code)
                if r.status_code == 429:
                    assert r.json()["error"] == "rate_limited" and int(r.headers["retry-after"]) > 0
            # Refused paths never reach Vluna, whichever process is asked.
            for port in ports:
                r = client.get(f"http://127.0.0.1:{port}/vluna/api/v1/budgets", headers=headers)
                assert r.status_code in (404, 429)
        # Through uvicorn's own parsing, as written on the wire (no client-side normalisation).
        other = {"Authorization": f"Bearer {keys.token('bob', org_id='b')}"}
        for raw in (
            "/vluna/api/v1/../../mgt/v1/token/issue",
            "/vluna/api/v1/%2e%2e/%2e%2e/mgt/v1/meters",
            "/vluna/api/v1/catalog%2Fproducts",
            "/vluna/api/v1/catalog/..%2F..%2Fmgt/v1/meters",
            "/vluna/api/v1/checkouts/..;/..",
            "/vluna/api/v1//catalog/products",
        ):
            status = raw_get(ports[0], raw, other)
            assert status in (400, 404), (raw, status)
        counters = httpx.get(f"{emulator_url}/__emulator__/counters", headers=CONTROL).json()["data"]["calls"]
    finally:
        for p in procs:
            stop(p)
    assert statuses == [200] * 5 + [429] * 3
    assert counters.get("bearer.list_catalog_products") == 5
    assert not any("budget" in k for k in counters)
