"""Slow clients and oversized heads against a real `vluna-bff serve` (issue 14, items 11 and 12).

- 500 connections whose request head never finishes, and 500 whose body never finishes: each is
  closed by the service once its configured timeout (server.header_read_timeout_sec,
  server.body_read_timeout_sec) has passed (a stalled body gets a JSON 408 first), while the
  service keeps answering other clients, within that same timeout, and nothing reaches Vluna.
- The 16 KiB head limit (server.max_header_bytes) holds alike whether the head arrives in one
  write or in pieces: a 40 kB JWT gets a JSON 431 either way, and the connection is closed.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from tests.support.keys import UserKeys
from tests.support.ports import LOOPBACK

from .support import Target, serving

TIMEOUT = 5.0  # both read timeouts of the service under test
STALLED = 500
# How long after its timeout a stalled connection may stay open before the test calls it a bug:
# a bound that keeps the test from hanging, not a speed figure.
LIVENESS = 60.0
P = "/vluna/api/v1"


@pytest.fixture(scope="module")
def slow_target(user_keys: UserKeys) -> Iterator[Target]:
    with serving(
        user_keys,
        auth={},  # the production-shaped defaults as they are (no extra leeway)
        server={"header_read_timeout_sec": TIMEOUT, "body_read_timeout_sec": TIMEOUT},
        rate_limit={"enabled": False},  # 500 writes from one user must reach the body read
    ) as target:
        yield target


@dataclass
class Stalled:
    sock: socket.socket
    opened: float
    closed: float | None = None
    received: bytes = b""
    reset: bool = False


@dataclass
class Watch:
    stalled: list[Stalled]
    answers: list[int] = field(default_factory=list)


def still_open(s: Stalled) -> bool:
    """Non-blocking: has the service closed this connection yet (EOF or reset)?"""
    try:
        return s.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def open_stalled(port: int, head: bytes, n: int) -> list[Stalled]:
    out = []
    for _ in range(n):
        sock = socket.create_connection((LOOPBACK, port), timeout=10)
        sock.sendall(head)
        sock.setblocking(False)
        out.append(Stalled(sock, time.monotonic()))
    return out


def wait_all_closed(watch: Watch, ordinary: httpx.Client, headers: dict[str, str]) -> None:
    """Until every stalled connection is closed: record when, and what it received; meanwhile ask
    the service an ordinary question every 0.25 s (answered within TIMEOUT, or the call fails)."""
    sel = selectors.DefaultSelector()
    for s in watch.stalled:
        sel.register(s.sock, selectors.EVENT_READ, s)
    deadline = time.monotonic() + TIMEOUT + LIVENESS
    next_ordinary = time.monotonic()
    try:
        while sel.get_map():
            assert time.monotonic() < deadline, f"{len(sel.get_map())} stalled connections never closed"
            for key, _ in sel.select(timeout=0.05):
                s = key.data  # a Stalled, registered above
                try:
                    chunk = s.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    chunk, s.reset = b"", True
                if chunk:
                    s.received += chunk
                    continue
                s.closed = time.monotonic()
                sel.unregister(s.sock)
            if time.monotonic() >= next_ordinary:
                watch.answers.append(ordinary.get("/vluna/token", headers=headers).status_code)
                next_ordinary = time.monotonic() + 0.25
    finally:
        sel.close()
        for s in watch.stalled:
            with contextlib.suppress(OSError):
                s.sock.close()


def check_timed_out(watch: Watch, slow_target: Target, before: tuple[int, int]) -> None:
    # Every connection was held until its timeout (the service did not refuse them outright),
    # then closed.
    early = [s for s in watch.stalled if s.closed is not None and s.closed - s.opened < TIMEOUT * 0.5]
    assert not early, f"{len(early)} closed long before the timeout: {early[0].received[:200]!r}"
    # The service kept answering all along, every answer within TIMEOUT (the client's own limit).
    assert len(watch.answers) >= 4 and set(watch.answers) == {200}, watch.answers
    # Nothing reached Vluna: no call counted, not one byte relayed.
    assert slow_target.upstream_marks() == before


def signed_in(slow_target: Target) -> dict[str, str]:
    """An ordinary user whose token is cached already (their requests need nothing from Vluna)."""
    headers = {"Authorization": f"Bearer {slow_target.keys.token('patient', org='patient')}"}
    assert httpx.get(f"{slow_target.bff.url}/vluna/token", headers=headers, timeout=30).status_code == 200
    return headers


def ask_while_stalled(client: httpx.Client, watch: Watch, headers: dict[str, str]) -> None:
    """One ordinary request right away: answered while all the stalled connections are open."""
    r = client.get("/vluna/token", headers=headers)
    assert r.status_code == 200, r.text
    open_now = sum(still_open(s) for s in watch.stalled)
    assert open_now == len(watch.stalled), f"only {open_now} of {len(watch.stalled)} were still open"
    watch.answers.append(r.status_code)


def test_500_stalled_heads_are_closed_and_others_still_served(slow_target: Target) -> None:
    headers = signed_in(slow_target)
    before = slow_target.upstream_marks()
    head = b"GET /vluna/token HTTP/1.1\r\nHost: x\r\nX-Never-Ending: "
    watch = Watch(open_stalled(slow_target.bff.port, head, STALLED))
    with httpx.Client(base_url=slow_target.bff.url, timeout=TIMEOUT) as client:
        ask_while_stalled(client, watch, headers)
        wait_all_closed(watch, client, headers)
    check_timed_out(watch, slow_target, before)
    # A head that never finished got no answer (nothing to answer), only the close.
    assert all(not s.received or s.received.startswith(b"HTTP/1.1 408") for s in watch.stalled)


def test_500_stalled_bodies_get_408_and_are_closed_and_others_still_served(slow_target: Target) -> None:
    headers = signed_in(slow_target)
    before = slow_target.upstream_marks()
    writer = slow_target.keys.token("slow-writer", org="slow-writer")
    head = (
        f"POST {P}/checkouts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {writer}\r\n"
        'Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"a":'
    ).encode()
    watch = Watch(open_stalled(slow_target.bff.port, head, STALLED))
    with httpx.Client(base_url=slow_target.bff.url, timeout=TIMEOUT) as client:
        ask_while_stalled(client, watch, headers)
        wait_all_closed(watch, client, headers)
    check_timed_out(watch, slow_target, before)
    for s in watch.stalled:
        head_part, _, body = s.received.partition(b"\r\n\r\n")
        assert head_part.startswith(b"HTTP/1.1 408"), s.received[:300]
        assert b"connection: close" in head_part.lower()
        assert json.loads(body) == {
            "error": "request_timeout",
            "message": f"the request body did not arrive within {TIMEOUT:g} s",
        }


# -- the head size limit, whatever the writes -------------------------------------------------------


def oversized_jwt(keys: UserKeys, size: int) -> str:
    return keys.token("big", org="big", pad="A" * size)


def exchange_in_pieces(port: int, data: bytes, piece: int) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=15) as s:
        with contextlib.suppress(OSError):  # the service may answer and close before the end
            for i in range(0, len(data), piece):
                s.sendall(data[i : i + piece])
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("piece", [1 << 20, 1024, 100], ids=["one-write", "1k-pieces", "100-byte-pieces"])
def test_a_40kb_jwt_is_refused_alike_in_one_write_or_in_pieces(slow_target: Target, piece: int) -> None:
    before = slow_target.upstream_marks()
    token = oversized_jwt(slow_target.keys, 30_000)
    assert len(token) > 40_000
    request = (
        f"GET /vluna/token HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        "Connection: keep-alive\r\n\r\n"
    ).encode()
    raw = exchange_in_pieces(slow_target.bff.port, request, piece)  # returns at the service's close
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431"), raw[:300]
    assert b"connection: close" in head.lower()
    assert json.loads(body) == {
        "error": "headers_too_large",
        "message": "the request line and headers exceed 16384 bytes",
    }
    assert raw.count(b"HTTP/1.1 ") == 1
    assert slow_target.upstream_marks() == before


def test_the_limit_is_the_whole_head_and_a_head_under_it_is_served(slow_target: Target) -> None:
    # Many headers that are each small add up; one under the limit goes through to the routes.
    many = "".join(f"X-Filler-{i}: {'f' * 90}\r\n" for i in range(200))
    raw = exchange_in_pieces(
        slow_target.bff.port, f"GET /vluna/token HTTP/1.1\r\nHost: x\r\n{many}\r\n".encode(), 1 << 20
    )
    assert raw.startswith(b"HTTP/1.1 431"), raw[:200]
    token = slow_target.keys.token("fits", org="fits")
    fits = f"GET /vluna/token HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
    fits += "X-Filler: " + "f" * (15_000 - len(fits)) + "\r\nConnection: close\r\n\r\n"
    raw = exchange_in_pieces(slow_target.bff.port, fits.encode(), 1000)
    assert raw.startswith(b"HTTP/1.1 200"), raw[:300]


def test_a_head_far_over_the_limit_is_refused_by_the_server_itself(slow_target: Target) -> None:
    # Past 4 x the limit the server stops reading and answers 431 itself (no JSON body: the app
    # never sees it), and closes.
    token = oversized_jwt(slow_target.keys, 100_000)
    request = f"GET /vluna/token HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    raw = exchange_in_pieces(slow_target.bff.port, request, 1 << 20)
    assert raw.startswith(b"HTTP/1.1 431"), raw[:300]
    assert raw.count(b"HTTP/1.1 ") == 1
