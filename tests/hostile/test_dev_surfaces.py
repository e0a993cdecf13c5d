"""Hostile input against the dev-only surfaces of a real `vluna-bff dev` process: the embedded
emulator's hosted pages and API on the dev port, its controls, the dev sign-in and sign-out.

Any web page the developer visits can send requests to 127.0.0.1, so the emulator's
``/__emulator__`` controls (reset, faults, clock) must never be reachable through the dev service,
whatever the path encoding. Every case asserts its status, that no control answered, and that the
emulator's state survived: a checkout made before is still there and still open (a reset would
drop it, a clock jump would expire it)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.support.ports import LOOPBACK
from tests.support.processes import Proc
from tests.support.service import start_dev

from .support import exchange


@dataclass
class Dev:
    proc: Proc
    session: str
    checkout_id: str

    def checkout_state(self, checkout_id: str | None = None) -> tuple[int, str | None]:
        r = httpx.get(
            f"{self.proc.url}/vluna/api/v1/checkouts/{checkout_id or self.checkout_id}",
            headers={"Authorization": f"Bearer {self.session}"},
            timeout=30,
        )
        return r.status_code, (r.json().get("data") or {}).get("status") if r.status_code == 200 else None


def new_checkout(url: str, session: str) -> str:
    auth = {"Authorization": f"Bearer {session}"}
    with httpx.Client(base_url=url, timeout=30) as c:
        price = c.get("/vluna/api/v1/catalog/prices", headers=auth).json()["data"][0]["catalog_price_id"]
        made = c.post(
            "/vluna/api/v1/checkouts",
            headers=auth,
            json={"items": [{"catalog_price_id": price, "quantity": 1}], "return_url": "http://x.test/"},
        )
    assert made.status_code in (200, 201), made.text
    checkout_id: str = made.json()["data"]["checkout_id"]
    return checkout_id


@pytest.fixture(scope="module")
def dev() -> Iterator[Dev]:
    proc = start_dev()
    try:
        login = httpx.get(f"{proc.url}/dev/login", params={"user": "sentinel", "org": "sentinel"}, timeout=30)
        session = login.json()["token"]
        d = Dev(proc, session, new_checkout(proc.url, session))
        assert d.checkout_state() == (200, "open")
        yield d
    finally:
        proc.stop()


CONTROL = "X-Emulator-Control: 1\r\n"
FORM = "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 8\r\n"
JSON_BODY = "Content-Type: application/json\r\nContent-Length: 17\r\n"


def req(method: str, target: str, headers: str = "", body: str = "") -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\nHost: {LOOPBACK}\r\n{headers}Connection: close\r\n\r\n{body}"
    ).encode("latin-1")


CASES = [
    # The two from the attack report, and their relatives: encoded slashes and dots.
    ("hosted-encoded-slash-counters", req("GET", "/hosted/..%2F__emulator__/counters"), (404,)),
    (
        "hosted-encoded-slash-reset-form",
        req("POST", "/hosted/..%2F__emulator__%2Freset", FORM + "Origin: https://evil.test\r\n", "what=all"),
        (404,),
    ),
    ("hosted-literal-dotdot", req("GET", "/hosted/../__emulator__/counters"), (404,)),
    ("hosted-encoded-dots", req("GET", "/hosted/%2e%2e/__emulator__/config"), (404,)),
    ("hosted-upper-encoded-dots", req("GET", "/hosted/%2E%2E%2F__emulator__%2Fconfig"), (404,)),
    ("hosted-deep-encoded", req("GET", "/hosted/checkout/..%2F..%2F__emulator__%2Fcounters"), (404,)),
    ("hosted-double-encoded", req("GET", "/hosted/%252e%252e%252f__emulator__/counters"), (404,)),
    ("hosted-overlong-utf8-dot", req("GET", "/hosted/%c0%ae%c0%ae/__emulator__/counters"), (400, 404)),
    ("hosted-backslashes", req("GET", "/hosted\\..\\__emulator__\\counters"), (400, 404)),
    ("hosted-semicolon", req("GET", "/hosted/checkout/..;/__emulator__/counters"), (404,)),
    ("hosted-nul", req("GET", "/hosted/checkout/abc%00/../../__emulator__/counters"), (400, 404)),
    (
        "hosted-clock-via-complete",
        req(
            "POST", "/hosted/checkout/..%2F..%2F__emulator__%2Fclock%2Fadvance", JSON_BODY, '{"seconds":9999}'
        ),
        (404,),
    ),
    ("hosted-query-not-forwarded", req("GET", "/hosted/checkout/abc?x=/../../__emulator__/counters"), (404,)),
    ("hosted-uppercase-prefix", req("GET", "/HOSTED/..%2F__emulator__/counters"), (404,)),
    # Straight at the controls, even with the header a page could not send cross-site anyway.
    ("controls-direct", req("GET", "/__emulator__/counters", CONTROL), (404,)),
    ("controls-reset-direct", req("POST", "/__emulator__/reset", CONTROL), (404, 405)),
    (
        "controls-clock-direct",
        req("POST", "/__emulator__/clock/advance", CONTROL + JSON_BODY, '{"seconds":9999}'),
        (404, 405),
    ),
    ("controls-double-slash", req("GET", "//__emulator__/counters", CONTROL), (404,)),
    (
        "controls-preflight",
        req("OPTIONS", "/__emulator__/reset", "Origin: https://evil.test\r\n"),
        (400, 404, 405),
    ),
    # Through the API mounts: the emulator's API core knows API routes only.
    ("api-dotdot", req("GET", "/api/v1/../__emulator__/counters", CONTROL), (404,)),
    ("api-encoded", req("GET", "/api/v1/..%2F..%2F__emulator__%2Fcounters", CONTROL), (404,)),
    ("mgt-encoded-reset", req("POST", "/mgt/v1/%2e%2e/__emulator__/reset", CONTROL), (400, 401, 404)),
    (
        "absolute-form-target",
        req("GET", "http://vluna-emulator.test/__emulator__/counters", CONTROL),
        (400, 404),
    ),
    (
        "host-header-of-the-emulator",
        b"GET /__emulator__/counters HTTP/1.1\r\nHost: vluna-emulator.test\r\n"
        + CONTROL.encode()
        + b"Connection: close\r\n\r\n",
        (404,),
    ),
    (
        "smuggled-behind-a-hosted-post",
        b"POST /hosted/checkout/x/complete HTTP/1.1\r\nHost: x\r\nContent-Length: 60\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nPOST /__emulator__/reset HTTP/1.1\r\nHost: x\r\n"
        b"X-Emulator-Control: 1\r\nConnection: close\r\n\r\n",
        (400,),
    ),
    # The dev sign-in and sign-out.
    ("dev-logout-cross-site-form", req("POST", "/dev/logout", FORM, "what=all"), (403,)),
    ("dev-login-bad-user", req("GET", "/dev/login?user=%3Cscript%3E"), (400,)),
    ("dev-login-long-user", req("GET", "/dev/login?user=" + "a" * 500), (400,)),
]


@pytest.mark.parametrize(("raw", "statuses"), [pytest.param(r, s, id=i) for i, r, s in CASES])
def test_dev_surface_attack(dev: Dev, raw: bytes, statuses: tuple[int, ...]) -> None:
    status, answer = exchange(dev.proc.port, raw)
    assert status in statuses, answer[:600]
    assert answer.count(b"HTTP/1.1 ") == 1, "a second (smuggled) request was answered"
    _head, _, body = answer.partition(b"\r\n\r\n")
    # No control answered: not the counters, the reset, the clock, the faults or the config.
    for marker in (b'"calls"', b'"reset"', b'"time_offset"', b'"faults"', b'"service_key_id"', b"Traceback"):
        assert marker not in body, body[:600]
    # And nothing changed: the sentinel checkout is still there, still open.
    assert dev.checkout_state() == (200, "open")


def test_the_sentinel_can_fail(dev: Dev) -> None:
    """The state check above reads live state: a legitimate payment on the hosted page (another
    checkout, same kind) shows up in it."""
    other = new_checkout(dev.proc.url, dev.session)
    assert dev.checkout_state(other) == (200, "open")
    paid = httpx.post(f"{dev.proc.url}/hosted/checkout/{other}/complete", timeout=30)
    assert paid.status_code == 303
    assert dev.checkout_state(other) == (200, "completed")
