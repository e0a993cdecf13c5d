"""Real `vluna-bff serve` processes: graceful shutdown with requests in flight, and metrics
aggregated over two workers (prometheus multi-process mode)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from bff.observability.serving import multiprocess_metrics
from bff.telemetry.metrics import MULTIPROC_ENV
from tests.support.emulator import CONTROL, EMULATOR_SECRET
from tests.support.ports import free_port
from tests.support.processes import REPO, await_url, stop
from tests.support.service import spawn_serve

from .observability_support import emulator_process, sample
from .support import ENC_KEY_1, HMAC_KEY, Keys, serve_config


async def wait_in_flight(client: httpx.AsyncClient, base: str, at_least: int) -> None:
    """Until the service's in-flight gauge (which counts the scrape itself too) reaches `at_least`."""
    for _ in range(400):
        text = (await client.get(f"{base}/metrics")).text
        if sample(text, "vluna_bff_http_requests_in_flight") >= at_least:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("requests never got in flight")


def refused(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
    return False


async def test_sigterm_lets_requests_in_flight_finish_then_exits_zero(keys: Keys, tmp_path: Path) -> None:
    n = 4
    with emulator_process() as emulator_url:
        cfg, env = serve_config(
            tmp_path,
            keys,
            emulator_url,
            server={"log_level": "debug"},
            observability={"shutdown_grace_sec": 60},
        )
        port = free_port()
        log_path = tmp_path / "stderr.log"
        with log_path.open("wb") as log_file:
            proc = spawn_serve(cfg, port, env, log_file)
            try:
                base = f"http://127.0.0.1:{port}"
                await await_url(f"{base}/healthz", {200}, [proc])
                async with httpx.AsyncClient(timeout=30) as control:
                    r = await control.post(
                        f"{emulator_url}/__emulator__/faults",
                        json={"operation": "issue_platform_token", "latency_seconds": 2.5, "times": None},
                        headers=CONTROL,
                    )
                    assert r.status_code == 201
                # One connection per request, each a cold token: every one waits on Vluna.
                clients = [httpx.AsyncClient(timeout=60) for _ in range(n)]
                tokens = [keys.token(f"inflight-{i}", org_id="acme") for i in range(n)]
                tasks = [
                    asyncio.create_task(
                        c.get(f"{base}/vluna/token", headers={"Authorization": f"Bearer {t}"})
                    )
                    for c, t in zip(clients, tokens, strict=True)
                ]
                # In flight = the service says so (its gauge counts the scrape itself too).
                async with httpx.AsyncClient(timeout=5) as scraper:
                    await wait_in_flight(scraper, base, n + 1)
                proc.send_signal(signal.SIGTERM)
                refused_while_in_flight = False
                for _ in range(400):
                    if refused(port):
                        refused_while_in_flight = not all(t.done() for t in tasks)
                        break
                    await asyncio.sleep(0.01)
                responses = await asyncio.gather(*tasks)
                for c in clients:
                    await c.aclose()
                code = proc.wait(timeout=60)
            finally:
                stop(proc, timeout=15)
    assert [r.status_code for r in responses] == [200] * n
    assert refused_while_in_flight, "new connections were still accepted while draining"
    assert code == 0
    assert refused(port)
    logs = log_path.read_text()
    assert "Application shutdown complete" in logs
    # Debug logs of a whole process life: no secret, no key, no token.
    for secret in [EMULATOR_SECRET, ENC_KEY_1.split(":", 1)[1], HMAC_KEY, *tokens]:
        assert secret not in logs
    for r in responses:
        assert r.json()["access_token"] not in logs


async def test_the_drain_is_bounded_by_the_grace_period(keys: Keys, tmp_path: Path) -> None:
    with emulator_process() as emulator_url:
        cfg, env = serve_config(tmp_path, keys, emulator_url, server={"log_level": "warning"})
        port = free_port()
        proc = spawn_serve(cfg, port, env, subprocess.DEVNULL, "--graceful-timeout", "1")
        try:
            base = f"http://127.0.0.1:{port}"
            await await_url(f"{base}/healthz", {200}, [proc])
            async with httpx.AsyncClient(timeout=120) as client:
                r = await client.post(
                    f"{emulator_url}/__emulator__/faults",
                    json={"operation": "issue_platform_token", "latency_seconds": 600, "times": None},
                    headers=CONTROL,
                )
                assert r.status_code == 201
                token = keys.token("stuck", org_id="acme")
                stuck = asyncio.create_task(
                    client.get(f"{base}/vluna/token", headers={"Authorization": f"Bearer {token}"})
                )
                await wait_in_flight(client, base, 2)
                proc.send_signal(signal.SIGTERM)
                # A request that would take 10 minutes does not hold the process: it is cut off
                # after the grace period and the process still exits cleanly.
                code = await asyncio.to_thread(proc.wait, 60)
                try:
                    answer = await stuck
                    status: int | None = answer.status_code
                except httpx.TransportError:
                    status = None
        finally:
            stop(proc, timeout=15)
    assert code == 0
    assert status != 200


def per_pid_counts(mp_dir: Path, work: Path, route: str) -> dict[int, float]:
    """Requests to `route` as each worker process recorded them (its own counter file alone)."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    out: dict[int, float] = {}
    for file in mp_dir.glob("counter_*.db"):
        pid = int(file.stem.rsplit("_", 1)[1])
        one = work / str(pid)
        one.mkdir(exist_ok=True)
        shutil.copy(file, one / file.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(one))
        text = generate_latest(registry).decode()
        count = sample(text, "vluna_bff_http_requests_total", {"route": route})
        if count:
            out[pid] = count
    return out


async def test_two_workers_metrics_aggregate_both_on_a_separate_port(keys: Keys, tmp_path: Path) -> None:
    mp_dir = tmp_path / "prom"
    work = tmp_path / "per-pid"
    work.mkdir()
    cfg, env = serve_config(tmp_path, keys, "http://127.0.0.1:9", server={"log_level": "warning"})
    port, metrics_port = free_port(), free_port()
    proc = spawn_serve(
        cfg,
        port,
        {**env, MULTIPROC_ENV: str(mp_dir)},
        subprocess.DEVNULL,
        "--workers",
        "2",
        "--metrics-port",
        str(metrics_port),
    )
    sent = 0
    try:
        base = f"http://127.0.0.1:{port}"
        await await_url(f"{base}/healthz", {200}, [proc])
        sent += 1
        limits = httpx.Limits(max_keepalive_connections=0)  # a new connection per request
        async with httpx.AsyncClient(timeout=10, limits=limits) as client:
            for _ in range(100):
                batch = await asyncio.gather(*[client.get(f"{base}/healthz") for _ in range(10)])
                assert all(r.status_code == 200 for r in batch)
                sent += len(batch)
                if len(per_pid_counts(mp_dir, work, "/healthz")) >= 2:
                    break
            assert (await client.get(f"{base}/metrics")).status_code == 404  # moved to its own port
            total = 0.0
            for _ in range(200):
                text = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
                total = sample(text, "vluna_bff_http_requests_total", {"route": "/healthz", "status": "200"})
                if total == sent:
                    break
                await asyncio.sleep(0.02)
        per_pid = per_pid_counts(mp_dir, work, "/healthz")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        stop(proc, timeout=15)
    # Both workers served some, and the one scrape reported them all.
    assert len(per_pid) == 2 and all(v > 0 for v in per_pid.values()), per_pid
    assert proc.pid not in per_pid
    assert total == sent == sum(per_pid.values())
    assert code == 0


async def test_one_worker_metrics_on_a_separate_port_are_the_workers(keys: Keys, tmp_path: Path) -> None:
    """With one worker the separate port is still served by the supervisor, another process: it
    reports what the worker recorded (multi-process mode is on for it too)."""
    cfg, env = serve_config(tmp_path, keys, "http://127.0.0.1:9", server={"log_level": "warning"})
    port, metrics_port = free_port(), free_port()
    proc = spawn_serve(cfg, port, env, subprocess.DEVNULL, "--metrics-port", str(metrics_port))
    try:
        base = f"http://127.0.0.1:{port}"
        await await_url(f"{base}/healthz", {200}, [proc])
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(5):
                assert (await client.get(f"{base}/healthz")).status_code == 200
            assert (await client.get(f"{base}/metrics")).status_code == 404
            text = (await client.get(f"http://127.0.0.1:{metrics_port}/metrics")).text
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        stop(proc, timeout=15)
    assert sample(text, "vluna_bff_http_requests_total", {"route": "/healthz", "status": "200"}) >= 6
    assert code == 0


def test_dead_workers_live_gauges_are_dropped(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    from bff.telemetry.metrics import reap_dead_workers

    mp_dir = tmp_path / "prom"
    mp_dir.mkdir()
    code = (
        "from bff.telemetry import metrics as m\n"
        "m.HTTP_IN_FLIGHT.inc(); m.HTTP_REQUESTS.labels(method='GET', route='/x', status='200').inc()\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, MULTIPROC_ENV: str(mp_dir)}, cwd=REPO, check=True
    )

    def scrape() -> str:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(mp_dir))
        return generate_latest(registry).decode()

    assert sample(scrape(), "vluna_bff_http_requests_in_flight") == 1
    assert reap_dead_workers(str(mp_dir))
    after = scrape()
    assert sample(after, "vluna_bff_http_requests_in_flight") == 0
    # Counters of a dead worker stay: a counter must never go backwards.
    assert sample(after, "vluna_bff_http_requests_total", {"route": "/x"}) == 1


def test_serve_makes_and_removes_the_multiprocess_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    with multiprocess_metrics(1, None) as path:
        assert path is None and MULTIPROC_ENV not in os.environ
    with multiprocess_metrics(2, None) as path:
        assert path is not None and os.path.isdir(path) and os.environ[MULTIPROC_ENV] == path
    assert not os.path.exists(path) and MULTIPROC_ENV not in os.environ
    configured = tmp_path / "mp"
    configured.mkdir()
    (configured / "counter_1.db").write_bytes(b"stale")
    with multiprocess_metrics(2, str(configured)) as path:
        assert path == str(configured) and not list(configured.glob("*.db"))
    assert configured.exists()
    assert MULTIPROC_ENV not in os.environ, "the configured directory leaked into the environment"
