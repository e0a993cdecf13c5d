"""Cache keyed by identity: with an upstream that personalises its answers (catalog items carry the
caller's `subscription_state`), no user ever receives what was fetched with another user's token,
whatever they vary (query, ETag, language, cookie or header, concurrency)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from tests.support.keys import UserKeys
from tests.support.processes import Proc, start_server

from .support import Target, serving

P = "/vluna/api/v1"


class Personal:
    def __init__(self, target: Target, upstream: Proc) -> None:
        self.target = target
        self.upstream = upstream

    def calls(self, path: str) -> int:
        counts: dict[str, int] = httpx.get(f"{self.upstream.url}/__calls", timeout=10).json()
        return counts.get(f"/api/v1{path}", 0)

    def user(self) -> tuple[dict[str, str], str]:
        """A new user of a new organisation: their headers and their own billing account."""
        tag = uuid.uuid4().hex[:8]
        headers = {"Authorization": f"Bearer {self.target.keys.token(f'u-{tag}', org=f'o-{tag}')}"}
        return headers, self.account(headers)

    def account(self, headers: dict[str, str]) -> str:
        r = httpx.get(f"{self.target.bff.url}/vluna/token", headers=headers, timeout=10)
        assert r.status_code == 200, r.text
        account: str = r.json()["billing_account_id"]
        return account

    def get(self, path: str, headers: dict[str, str], **params: str) -> httpx.Response:
        return httpx.get(f"{self.target.bff.url}{P}{path}", headers=headers, params=params, timeout=10)


@pytest.fixture(scope="module")
def personal(user_keys: UserKeys) -> Iterator[Personal]:
    upstream = start_server("tests/hostile/personal_upstream.py", name="personalising upstream")
    try:
        with serving(user_keys, upstream=f"{upstream.url}/api/v1") as target:
            yield Personal(target, upstream)
    finally:
        upstream.stop()


def subscription_ids(resp: httpx.Response) -> set[str]:
    assert resp.status_code == 200, resp.text
    data: list[dict[str, Any]] = resp.json()["data"]
    return {item["subscription_state"]["subscription_id"] for item in data}


def only_account(resp: httpx.Response, account: str) -> None:
    ids = subscription_ids(resp)
    assert ids and all(i.startswith(f"sub-of-{account}-") for i in ids), (account, ids)


def test_a_second_user_never_gets_the_first_users_catalog(personal: Personal) -> None:
    """The reported case: `GET /catalog/prices?limit=7` by user 1, then by user 2."""
    (h1, a1), (h2, a2) = personal.user(), personal.user()
    assert a1 != a2
    before = personal.calls("/catalog/prices")
    only_account(personal.get("/catalog/prices", h1, limit="7"), a1)
    only_account(personal.get("/catalog/prices", h2, limit="7"), a2)
    assert personal.calls("/catalog/prices") == before + 2
    # The cache still works for each user on their own.
    again = personal.get("/catalog/prices", h1, limit="7")
    only_account(again, a1)
    assert personal.calls("/catalog/prices") == before + 2
    assert again.headers["cache-control"].startswith("private, max-age=")
    assert again.headers["vary"] == "Accept-Language, Authorization, Cookie"


def test_another_users_etag_is_not_a_match(personal: Personal) -> None:
    (h1, _), (h2, a2) = personal.user(), personal.user()
    etag = personal.get("/catalog/products", h1).headers["etag"]
    r = personal.get("/catalog/products", {**h2, "If-None-Match": etag})
    assert r.status_code == 200
    only_account(r, a2)
    # Nor a wildcard: it only ever matches the caller's own copy.
    r = personal.get("/catalog/products", {**h2, "If-None-Match": "*"})
    assert r.status_code == 304 and r.headers["etag"] != etag


def test_two_users_of_one_organisation_each_get_their_own(personal: Personal) -> None:
    tag = uuid.uuid4().hex[:8]
    keys = personal.target.keys
    h1 = {"Authorization": f"Bearer {keys.token(f'ann-{tag}', org=f'shared-{tag}')}"}
    h2 = {"Authorization": f"Bearer {keys.token(f'ben-{tag}', org=f'shared-{tag}')}"}
    users = []
    for h in (h1, h2):
        r = personal.get("/catalog/products", h)
        users.append({item["billing_user_seen"] for item in r.json()["data"]})
    assert len(users[0]) == len(users[1]) == 1 and users[0] != users[1]


def test_varying_the_request_never_crosses_users(personal: Personal) -> None:
    """Dropped parameters, a smuggled billing_account_id, languages, cookie vs header."""
    (h1, a1), (h2, a2) = personal.user(), personal.user()
    personal.get("/catalog/prices", h1, limit="2")
    r = personal.get("/catalog/prices", h2, limit="2", billing_account_id=a1, evil="1")
    only_account(r, a2)
    for lang in ("en", "de", "*"):
        personal.get("/catalog/prices", {**h1, "Accept-Language": lang})
        only_account(personal.get("/catalog/prices", {**h2, "Accept-Language": lang}), a2)
    cookie = {"Cookie": f"vluna_session={h2['Authorization'].split()[1]}", "X-Vluna-CSRF": "1"}
    only_account(personal.get("/catalog/prices", cookie, limit="2"), a2)


def test_concurrent_users_each_get_their_own(personal: Personal) -> None:
    users = [personal.user() for _ in range(12)]

    def fetch(user: tuple[dict[str, str], str]) -> tuple[str, httpx.Response]:
        return user[1], personal.get("/catalog/products", user[0], limit="4")

    with ThreadPoolExecutor(12) as pool:
        for account, resp in pool.map(fetch, users * 2):
            only_account(resp, account)
