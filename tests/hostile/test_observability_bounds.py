"""Bounded observability: nothing a client sends can grow `/metrics` or the log without bound.
Every label value comes from a bounded set (known methods else `other`, route templates, status
numbers); access log lines carry the bounded values too; none of it reaches Vluna."""

from __future__ import annotations

import json
import random
import re
import secrets
import string
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import IO, Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bff.telemetry.metrics import HTTP_METHODS
from tests.support.keys import UserKeys
from tests.support.ports import LOOPBACK

from .support import Target, exchange, serving

P = "/vluna/api/v1"
KNOWN = HTTP_METHODS | {"other"}


class Observed:
    def __init__(self, target: Target, log: IO[str]) -> None:
        self.target = target
        self.log = log

    def series(self) -> dict[str, set[tuple[tuple[str, str], ...]]]:
        text = httpx.get(f"{self.target.bff.url}/metrics", timeout=10).text
        out: dict[str, set[tuple[tuple[str, str], ...]]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out.setdefault(sample.name, set()).add(tuple(sorted(sample.labels.items())))
        return out

    def count(self) -> int:
        return sum(len(v) for v in self.series().values())

    def label_values(self, label: str) -> set[str]:
        return {v for samples in self.series().values() for s in samples for k, v in s if k == label}

    def send(self, method: str, path: str, headers: str = "") -> int:
        status, _ = exchange(
            self.target.bff.port,
            f"{method} {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\n{headers}Connection: close\r\n\r\n".encode(),
        )
        return status

    def access_lines(self) -> list[dict[str, Any]]:
        self.log.seek(0)
        out = []
        for line in self.log.read().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if record.get("logger") == "bff.access":
                    out.append(record)
        return out


@pytest.fixture(scope="module")
def observed(user_keys: UserKeys) -> Iterator[Observed]:
    with (
        tempfile.TemporaryFile("w+") as log,
        serving(
            user_keys,
            stderr=log,
            server={"log_level": "info"},
            observability={"access_log": True, "log_format": "json"},
        ) as t,
    ):
        yield Observed(t, log)


def junk_method(n: int = 1500) -> str:
    return "".join(random.choice(string.ascii_uppercase) for _ in range(n))


def warm(o: Observed, method: str, paths: list[str]) -> None:
    """One request of each shape first (and one scrape), so the series they create exist before
    counting."""
    for path in paths:
        o.send(method, path)
    o.count()


def test_made_up_methods_add_no_series(observed: Observed) -> None:
    """The reported case: 60 unauthenticated requests with made-up 1.5 kB methods."""
    paths = ["/vluna/token", f"{P}/catalog/products", "/nowhere"]
    warm(observed, junk_method(), paths)
    marks = observed.target.upstream_marks()
    series = observed.count()
    size = len(httpx.get(f"{observed.target.bff.url}/metrics", timeout=10).content)
    for i in range(60):
        assert observed.send(junk_method(), paths[i % 3]) in (400, 404, 405)
    assert observed.count() == series
    assert len(httpx.get(f"{observed.target.bff.url}/metrics", timeout=10).content) < size + 2048
    assert observed.label_values("method") <= KNOWN
    assert observed.target.upstream_marks() == marks


def test_odd_but_short_methods_are_other_too(observed: Observed) -> None:
    for method in ("get", "Get", "PROPFIND", "M-SEARCH", "PURGE", "X" * 20, "BREW"):
        observed.send(method, "/vluna/token")
    assert observed.label_values("method") <= KNOWN


def test_random_paths_queries_and_headers_add_no_series(observed: Observed) -> None:
    shapes: list[Callable[[], str]] = [
        lambda: f"/{secrets.token_hex(8)}/{secrets.token_hex(4)}",
        lambda: f"{P}/{secrets.token_hex(6)}",
        lambda: f"{P}/checkouts/{secrets.token_hex(6)}",
        lambda: f"/vluna/token?scopes={secrets.token_hex(4)}&x={secrets.token_hex(30)}",
        lambda: f"/vluna/token/{secrets.token_hex(5)}",
    ]
    methods = ["GET", "POST", "DELETE"]
    for method in methods:
        warm(observed, method, [shape() for shape in shapes])
    marks = observed.target.upstream_marks()
    series = observed.count()
    for i in range(150):
        headers = f"X-Request-Id: {secrets.token_hex(20)}\r\n"
        headers += f"X-{secrets.token_hex(4)}: {secrets.token_hex(9)}\r\n"
        observed.send(methods[i % 3], shapes[i % len(shapes)](), headers)
    assert observed.count() == series
    routes = observed.label_values("route")
    # Route templates of the app only: never a raw path.
    assert routes <= {"<unmatched>", "/vluna/token", f"{P}/{{sub}}", "/metrics", "/vluna/client.js"}
    assert observed.target.upstream_marks() == marks


def test_access_log_lines_stay_bounded(observed: Observed) -> None:
    method = junk_method(1200)
    path = "/" + secrets.token_hex(600)
    _, raw = exchange(
        observed.target.bff.port,
        f"{method} {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nX-Request-Id: {'a' * 5000}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    # The over-long id was replaced; the answer carries the one the log line has.
    found = re.search(rb"\r\nx-request-id: ([^\r]+)\r\n", raw, re.IGNORECASE)
    assert found is not None, raw[:500]
    request_id = found.group(1).decode()
    assert len(request_id) <= 128
    # The worker writes the line after the answer has gone out, and lines of earlier requests may
    # still be on their way: wait for this request's own line (bounded).
    deadline = time.monotonic() + 10
    while not (mine := [r for r in observed.access_lines() if r.get("request_id") == request_id]):
        assert time.monotonic() < deadline, "the access log line for the request was not written"
        time.sleep(0.05)
    assert len(mine) == 1
    line = mine[0]
    assert line["method"] == "other" and line["route"] == "<unmatched>" and line["status"] == 404
    observed.log.seek(0)
    text = observed.log.read()
    assert method not in text and path[1:] not in text
    assert max(len(line) for line in text.splitlines()) < 2048
