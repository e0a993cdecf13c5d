"""Helpers of the observability tests: an emulator-backed app, metric parsing, header capture."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from vlunaai import ServiceClient
from vlunaai.testing import VlunaEmulator

from bff.settings import VlunaSettings
from bff.vluna import PropagatingTransport, create_vluna_client
from tests.support.emulator import start_emulator


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


@contextlib.contextmanager
def emulator_process() -> Iterator[str]:
    """``vlunaai-emulator`` on 127.0.0.1 (random port, controls on); yields its base URL."""
    emulator = start_emulator()
    try:
        yield emulator.url
    finally:
        # Killed, not stopped: a call held by an injected latency would hold its graceful stop.
        emulator.popen.kill()
        emulator.popen.wait()
