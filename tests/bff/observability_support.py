"""Helpers of the observability tests: an emulator-backed app, metric parsing, header capture."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from vlunaai import ServiceClient
from vlunaai.testing import VlunaEmulator

from bff.settings import VlunaSettings
from bff.vluna import PropagatingTransport, create_vluna_client


class RecordingTransport(httpx.AsyncBaseTransport):
    """Passes requests on, keeping the headers each one carried (what Vluna received)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.seen: list[tuple[str, httpx.Headers]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.url.path, request.headers.copy()))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def emulator_client(
    emu: VlunaEmulator, *, secret: str | None = None, record: RecordingTransport | None = None
) -> ServiceClient:
    """The app's one Vluna client (issuer and readiness) as build_services builds it, to the
    emulator in process."""
    inner: httpx.AsyncBaseTransport = record if record is not None else emu.transport()
    v = VlunaSettings(
        **{**emulator_vluna(emu), "service_key_secret": secret or emu.service_key_secret, "max_retries": 0}
    )
    client = create_vluna_client(v, transport=PropagatingTransport(inner))
    assert client is not None
    return client


def emulator_vluna(emu: VlunaEmulator) -> dict[str, Any]:
    return {
        "base_url": emu.service_base_url,
        "realm_id": emu.realm_id,
        "service_key_id": emu.service_key_id,
        "service_key_secret": emu.service_key_secret,
    }


def sample(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """The value of one series in a Prometheus text exposition (0 if absent)."""
    want = dict(labels or {})
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in want.items()):
                total += s.value
    return total


def series_labels(text: str) -> list[dict[str, str]]:
    return [dict(s.labels) for f in text_string_to_metric_families(text) for s in f.samples]


# -- processes ------------------------------------------------------------------------------------

import contextlib  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
EMULATOR_SECRET = "b2JzZXJ2YWJpbGl0eS10ZXN0LXNlY3JldC1ieXRlcyE="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def emulator_process() -> Iterator[str]:
    """``vlunaai-emulator`` on 127.0.0.1 (random port, controls on); yields its base URL."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vlunaai.testing",
            "--port",
            "0",
            "--enable-controls",
            "--service-key-secret",
            EMULATOR_SECRET,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", first)
        assert match, f"emulator did not start: {first!r}"
        yield match.group(1)
    finally:
        # Killed, not stopped: a call held by an injected latency would hold its graceful stop.
        proc.kill()
        proc.wait()


def start_serve(cfg: Path, port: int, env: dict[str, str], stderr: Any, *extra: str) -> subprocess.Popen[Any]:
    return subprocess.Popen(
        [sys.executable, "-m", "bff.cli", "serve", "--config", str(cfg), "--port", str(port), *extra],
        env={**os.environ, **env},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
