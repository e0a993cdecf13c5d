"""Abuse limits: one user (or many) cannot make the service spend the realm's service key without
bound. Each new platform token counts against the user's own limit and the replica's budget; a
refused issuance is a 429 with Retry-After and reaches Vluna not at all; cached tokens and other
users are unaffected."""

from __future__ import annotations

import math
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.keys import UserKeys

from .support import Target, serving

PER_USER = 3
PER_REPLICA = 30
WINDOW = 3600


@pytest.fixture(scope="module")
def limited(user_keys: UserKeys) -> Iterator[Target]:
    limit = {"per_user": PER_USER, "per_replica": PER_REPLICA, "window_sec": WINDOW}
    with serving(user_keys, tokens={"issuance_limit": limit}) as t:
        yield t


def windows_between(started: float, ended: float) -> int:
    """Fixed windows touched by a run (a window boundary inside it restarts the counters)."""
    return math.floor(ended / WINDOW) - math.floor(started / WINDOW) + 1


def with_room_in_the_window(seconds: float = 30) -> None:
    """Counters restart with each fixed window: a test that expects refusals must not straddle a
    boundary. If less than `seconds` of this window are left, wait for the next one."""
    left = WINDOW - time.time() % WINDOW
    if left < seconds:
        time.sleep(left + 0.1)


def user(t: Target) -> dict[str, str]:
    tag = uuid.uuid4().hex[:8]
    return {"Authorization": f"Bearer {t.keys.token(f'ab-{tag}', org=f'ab-{tag}')}"}


def refused(r: httpx.Response, code: str) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["error"] == code and r.json()["message"]
    assert 1 <= int(r.headers["retry-after"]) <= WINDOW
    assert r.headers["cache-control"] == "no-store"


def test_a_sign_out_and_sign_in_loop_is_limited(limited: Target) -> None:
    """The reported case: one user looping DELETE + GET."""
    h = user(limited)
    issued = limited.emulator.issuances()
    statuses: Counter[str] = Counter()
    started = time.time()
    with httpx.Client(base_url=limited.bff.url, timeout=20) as c:
        for _ in range(40):
            assert c.delete("/vluna/token", headers=h).status_code == 204
            r = c.get("/vluna/token", headers=h)
            statuses[str(r.status_code)] += 1
            if r.status_code != 200:
                refused(r, "rate_limited")
    spent = limited.emulator.issuances() - issued
    assert spent == statuses["200"] <= PER_USER * windows_between(started, time.time())
    assert statuses["429"] >= 40 - PER_USER * windows_between(started, time.time())


def test_scope_sets_share_one_limit_and_held_tokens_stay(limited: Target) -> None:
    """Each scope set is a token of its own, but all of them count against the user's one limit;
    at the limit, the tokens the user holds keep being served."""
    with_room_in_the_window()
    h = user(limited)
    with httpx.Client(base_url=limited.bff.url, timeout=20) as c:
        held = {s: c.get("/vluna/token", headers=h, params={"scopes": s}) for s in ("checkout", "portal")}
        first = c.get("/vluna/token", headers=h)
        assert [r.status_code for r in (*held.values(), first)] == [200, 200, 200]  # PER_USER
        for _ in range(10):
            for scopes, r in held.items():
                again = c.get("/vluna/token", headers=h, params={"scopes": scopes})
                assert again.status_code == 200 and again.json()["access_token"] == r.json()["access_token"]
        assert c.delete("/vluna/token", headers=h).status_code == 204
        for scopes in ("checkout", "portal", "portal,checkout"):
            refused(c.get("/vluna/token", headers=h, params={"scopes": scopes}), "rate_limited")


def test_a_limited_user_never_reaches_vluna_through_the_proxy(limited: Target) -> None:
    with_room_in_the_window()
    h = user(limited)
    with httpx.Client(base_url=limited.bff.url, timeout=20) as c:
        for scopes in ("checkout", "portal", "checkout,portal"):
            c.get("/vluna/token", headers=h, params={"scopes": scopes})
        assert c.delete("/vluna/token", headers=h).status_code == 204
        before = limited.upstream_marks()
        r = c.get("/vluna/api/v1/wallet/balance", headers=h)
        refused(r, "rate_limited")
        assert limited.upstream_marks() == before


def test_concurrent_first_requests_cost_one_issuance(limited: Target) -> None:
    h = user(limited)
    issued = limited.emulator.issuances()

    def get(_: int) -> int:
        return httpx.get(f"{limited.bff.url}/vluna/token", headers=h, timeout=20).status_code

    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(get, range(32))) == {200}
    assert limited.emulator.issuances() == issued + 1


def test_many_users_meet_the_replica_budget_and_held_tokens_stay(limited: Target) -> None:
    """New users until the replica's budget refuses one (the tests above spent part of it; a
    window boundary may restart it once, hence the bound of two budgets)."""
    holder = user(limited)
    with httpx.Client(base_url=limited.bff.url, timeout=20) as c:
        held = c.get("/vluna/token", headers=holder)
        assert held.status_code == 200, held.text
        issued = limited.emulator.issuances()
        started = time.time()
        served = 0
        while (r := c.get("/vluna/token", headers=user(limited))).status_code == 200:
            served += 1
            assert served <= 2 * PER_REPLICA, "the replica budget never refused a new user"
        refused(r, "issuance_budget_exhausted")
        assert served < PER_REPLICA * windows_between(started, time.time())
        # Refused issuances never reached Vluna; tokens already held are served.
        assert limited.emulator.issuances() - issued == served
        again = c.get("/vluna/token", headers=holder)
        assert again.status_code == 200 and again.json()["access_token"] == held.json()["access_token"]
