"""The API proxy against the emulator on a real socket (aiohttp path) and the real Redis."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bff.proxy.breaker import CircuitBreaker
from tests.support.ports import free_port

from .proxy_support import (
    EmulatorServer,
    proxy_client,
    proxy_settings,
    raw_request,
)
from .support import AppClient, Keys

P = "/vluna/api/v1"
ORIGIN = "https://app.example.test"


def auth(keys: Keys, user: str = "alice", org: str = "acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {keys.token(user, org_id=org)}"}


def error(resp: Any) -> str:
    body = resp.json() if hasattr(resp, "json") else json.loads(resp.body)
    assert set(body) == {"error", "message"}
    return str(body["error"])


async def warm(client: AppClient, keys: Keys, server: EmulatorServer) -> None:
    """Issue alice's token and forget what reached the emulator so far."""
    r = await client.get("/vluna/token", headers=auth(keys))
    assert r.status_code == 200
    server.recorder.seen.clear()
    server.emulator.reset_counters()


# -- every allowlisted call ------------------------------------------------------------------------


async def test_catalog_products_and_prices(client: AppClient, keys: Keys, server: EmulatorServer) -> None:
    r = await client.get(f"{P}/catalog/products", headers=auth(keys))
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["ok"] is True and r.json()["data"]
    r = await client.get(f"{P}/catalog/prices", headers=auth(keys), params={"limit": "5"})
    assert r.status_code == 200 and r.json()["data"]
    assert server.emulator.calls("list_catalog_products") == 1
    assert server.emulator.calls("list_catalog_prices") == 1
    assert server.recorder.api_calls()[-1].query == "limit=5"


async def test_checkout_create_get_and_portal(client: AppClient, keys: Keys, server: EmulatorServer) -> None:
    h = auth(keys)
    body = {
        "items": [{"catalog_price_id": "price_starter_monthly", "quantity": 1}],
        "return_url": "https://a/",
    }
    r = await client.post(f"{P}/checkouts", headers=h, json=body)
    assert r.status_code in (200, 201), r.text
    data = r.json()["data"]
    checkout_id = data["checkout_id"]
    assert "/hosted/checkout/" in json.dumps(data)
    r = await client.get(f"{P}/checkouts/{checkout_id}", headers=h)
    assert r.status_code == 200 and r.json()["data"]["checkout_id"] == checkout_id
    # Another user cannot read it: the upstream sees their own token.
    r = await client.get(f"{P}/checkouts/{checkout_id}", headers=auth(keys, "mallory", "evil"))
    assert r.status_code == 404
    r = await client.post(f"{P}/portal/sessions", headers=h, json={"return_url": "https://a/"})
    assert r.status_code in (200, 201) and "portal_url" in r.json()["data"]
    assert server.emulator.calls("create_checkout") == 1
    assert server.emulator.calls("create_portal_session") == 1
    assert r.headers["cache-control"] == "no-store"


async def test_account_reads_use_the_callers_own_account(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    tok = (await client.get("/vluna/token", headers=auth(keys))).json()
    account = tok["billing_account_id"]
    for path, op in [
        ("/wallet/balance", "get_credit_balance"),
        ("/billing-state", "get_current_billing_state"),
        ("/invoices", "list_invoices"),
        ("/subscriptions", "list_subscriptions"),
    ]:
        r = await client.get(
            f"{P}{path}", headers=auth(keys), params={"billing_account_id": "someone-else", "limit": "3"}
        )
        assert r.status_code == 200, (path, r.text)
        assert r.headers["cache-control"] == "no-store"
        assert server.emulator.calls(op) == 1
        seen = server.recorder.api_calls()[-1]
        assert seen.headers["x-billing-account-id"] == account
        assert "someone-else" not in seen.query
        if path in ("/invoices", "/subscriptions"):
            assert seen.query == f"limit=3&billing_account_id={account}"


async def test_rewrite_to_another_generation_of_routes(
    keys: Keys, server: EmulatorServer, prefix: str
) -> None:
    routes = [{"method": "POST", "path": "/checkouts", "upstream_path": "/checkout/sessions"}]
    settings = proxy_settings(keys, server, prefix, proxy={"routes": routes})
    async with proxy_client(settings, server) as c:
        body = {
            "items": [{"catalog_price_id": "price_starter_monthly"}],
            "success_url": "https://a/",
            "cancel_url": "https://a/c",
        }
        r = await c.post(f"{P}/checkouts", headers=auth(keys), json=body)
        assert r.status_code in (200, 201), r.text
        assert "checkout_url" in r.json()["data"]
        assert server.emulator.calls("create_checkout_session") == 1
        assert server.recorder.api_calls()[-1].path == "/api/v1/checkout/sessions"
        # Not allowlisted any more in this configuration:
        r = await c.get(f"{P}/catalog/products", headers=auth(keys))
        assert r.status_code == 404


# -- refusals: nothing reaches Vluna -----------------------------------------------------------------

REFUSED = [
    ("GET", f"{P}/../../mgt/v1/token/issue"),
    ("POST", f"{P}/../../mgt/v1/token/issue"),
    ("GET", f"{P}/catalog/../../../mgt/v1/meters"),
    ("GET", f"{P}/%2e%2e/%2e%2e/mgt/v1/meters"),
    ("GET", f"{P}/%2E%2E/token"),
    ("GET", f"{P}/checkouts/%2e%2e"),
    ("GET", f"{P}/checkouts/.."),
    ("GET", f"{P}/checkouts/."),
    ("GET", f"{P}/./catalog/products"),
    ("GET", f"{P}/catalog/products/."),
    ("GET", f"{P}/catalog%2Fproducts"),
    ("GET", f"{P}/catalog%2fproducts"),
    ("GET", f"{P}/catalog%252Fproducts"),
    ("GET", f"{P}/catalog//products"),
    ("GET", f"{P}//catalog/products"),
    ("GET", f"{P}/catalog\\products"),
    ("GET", f"{P}/catalog/products%00"),
    ("GET", f"{P}/catalog/products\x01"),
    ("GET", f"{P}/catalog/products\t"),
    ("GET", f"{P}/catalog/pr\u00e9ducts"),
    ("GET", f"{P}/checkouts/ck_1;x=1"),
    ("GET", f"{P}/checkouts/ck%5F1"),
    ("GET", f"{P}/checkouts/" + "a" * 200),
    ("GET", f"{P}/checkouts/-leading-dash"),
    ("GET", f"{P}/" + "a/" * 400 + "b"),
    ("GET", f"{P}/catalog/products/"),
    ("GET", f"{P}/CATALOG/products"),
    ("GET", f"{P}/mgt/v1/token/issue"),
    ("POST", f"{P}/mgt/v1/token/issue"),
    ("GET", f"{P}/budgets"),
    ("POST", f"{P}/budgets"),
    ("POST", f"{P}/subscriptions/sub_1/cancel"),
    ("DELETE", f"{P}/checkouts/ck_1"),
    ("PUT", f"{P}/checkouts"),
    ("POST", f"{P}/catalog/products"),
    ("GET", f"{P}/checkouts"),
    ("GET", f"{P}"),
    ("GET", f"{P}/"),
    ("GET", "/vluna/api/v1%2Fcatalog/products"),
    ("GET", "/vluna/api/v2/catalog/products"),
]


@pytest.mark.parametrize(("method", "path"), REFUSED, ids=[f"{m} {p[:60]}" for m, p in REFUSED])
async def test_refused_paths_never_reach_vluna(
    client: AppClient, keys: Keys, server: EmulatorServer, method: str, path: str
) -> None:
    await warm(client, keys, server)
    headers = {**auth(keys), "content-type": "application/json"}
    body = b"{}" if method in ("POST", "PUT") else b""
    answer = await raw_request(client.app, method, path, headers, body)
    assert answer.status in (400, 404, 405, 414), (answer.status, answer.body)
    assert set(json.loads(answer.body)) == {"error", "message"}
    assert server.recorder.seen == []
    assert server.emulator.calls() == {}


async def test_unauthenticated_and_bad_tokens_never_reach_vluna(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    r = await client.get(f"{P}/catalog/products")
    assert r.status_code == 401 and error(r) == "unauthenticated"
    assert "www-authenticate" in r.headers
    r = await client.get(f"{P}/catalog/products", headers={"Authorization": "Bearer a.b.c"})
    assert r.status_code == 401
    r = await client.get(f"{P}/budgets")
    assert r.status_code == 401  # anonymous callers learn nothing about the allowlist
    assert server.recorder.seen == []


# -- headers -------------------------------------------------------------------------------------


async def test_client_headers_never_pass_upstream(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    tok = (await client.get("/vluna/token", headers=auth(keys))).json()
    session = keys.token("alice", org_id="acme")
    hostile = {
        # Cookie-authenticated, so that the client can put anything in Authorization.
        "Cookie": f"vluna_session={session}; other=1",
        "X-Vluna-CSRF": "1",
        "Authorization": "SVC-AUTH keyId=pk-emulator,sig=AAAA,ts=2026-01-01T00:00:00+00:00,nonce=00",
        "X-Principal-Id": "org:victim",
        "X-User-Id": "victim",
        "X-Billing-Account-ID": "ba_victim",
        "X-Billing-User-Id": "bu_victim",
        "X-Realm-Id": "realm_other",
        "x-realm-admin": "true",
        "Connection": "keep-alive, X-Secret",
        "X-Secret": "1",
        "Proxy-Authorization": "Basic eDp5",
        "TE": "trailers",
        "Upgrade": "h2c",
        "X-Forwarded-For": "10.0.0.1",
        "X-Forwarded-Host": "evil.test",
        "Forwarded": "for=10.0.0.1",
        "Host": "evil.test",
        "Accept-Language": "fr-CH, fr;q=0.9",
        "X-Request-Id": "req-123",
    }
    r = await client.get(f"{P}/wallet/balance", headers=hostile)
    assert r.status_code == 200, r.text
    assert r.headers["x-request-id"] == "req-123"
    seen = server.recorder.api_calls()[-1]
    h = seen.headers
    assert h["authorization"] == f"Bearer {tok['access_token']}"
    assert h["x-realm-id"] == server.emulator.realm_id
    assert h["x-billing-account-id"] == tok["billing_account_id"]
    assert h["accept-language"] == "fr-CH, fr;q=0.9"
    assert h["x-request-id"] == "req-123"
    for name in (
        "cookie",
        "x-principal-id",
        "x-user-id",
        "x-billing-user-id",
        "x-realm-admin",
        "x-secret",
        "proxy-authorization",
        "te",
        "upgrade",
        "x-forwarded-for",
        "x-forwarded-host",
        "forwarded",
        "x-vluna-csrf",
    ):
        assert name not in h, name
    assert h["host"].startswith("127.0.0.1")
    assert "victim" not in json.dumps(h) and "SVC-AUTH" not in json.dumps(h)


async def test_bad_request_ids_are_replaced(client: AppClient, keys: Keys, server: EmulatorServer) -> None:
    r = await client.get(
        f"{P}/wallet/balance", headers={**auth(keys), "X-Request-Id": "a b\u00e9"[:2] + "<>"}
    )
    assert r.status_code == 200
    rid = server.recorder.api_calls()[-1].headers["x-request-id"]
    assert rid == r.headers["x-request-id"] and rid != "a<>" and len(rid) >= 32


async def test_upstream_cookies_and_internal_headers_stay_behind(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    server.recorder.extra_response_headers = [
        (b"set-cookie", b"upstream_session=1; Path=/"),
        (b"x-internal-node", b"pod-7"),
        (b"server", b"vluna-internal/1.2"),
    ]
    r = await client.get(f"{P}/wallet/balance", headers=auth(keys))
    assert r.status_code == 200
    assert "set-cookie" not in r.headers
    assert "x-internal-node" not in r.headers
    assert "x-trace-id" not in r.headers
    assert "vluna-internal" not in r.headers.get("server", "")


async def test_non_json_upstream_answer_is_a_502(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    await warm(client, keys, server)
    server.recorder.replace_answer = (200, b"text/html", b"<html>login</html>")
    r = await client.get(f"{P}/wallet/balance", headers=auth(keys))
    assert r.status_code == 502 and error(r) == "upstream_invalid"
    assert b"login" not in r.content
    # A server without the route answers its own HTML 404: ours is a JSON 404 that says so.
    server.recorder.replace_answer = (404, b"text/html; charset=utf-8", b"<pre>Cannot GET</pre>")
    r = await client.get(f"{P}/wallet/balance", headers=auth(keys))
    assert r.status_code == 404 and error(r) == "upstream_route_missing"
    assert r.headers["content-type"].startswith("application/json") and b"<pre>" not in r.content


# -- bodies and idempotency ----------------------------------------------------------------------


async def test_body_limits_and_json_only(client: AppClient, keys: Keys, server: EmulatorServer) -> None:
    await warm(client, keys, server)
    h = {**auth(keys), "Content-Type": "application/json"}
    big = json.dumps({"return_url": "https://a/", "pad": "x" * (64 * 1024)}).encode()
    r = await client.post(f"{P}/portal/sessions", headers=h, content=big)
    assert r.status_code == 413 and error(r) == "body_too_large"
    # Without Content-Length (chunked), the cap holds while reading.

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b" " * 1024

    r = await client.post(f"{P}/portal/sessions", headers=h, content=chunks())
    assert r.status_code == 413
    r = await client.post(f"{P}/portal/sessions", headers=h, content=b"{not json")
    assert r.status_code == 400 and error(r) == "invalid_json"
    r = await client.post(f"{P}/portal/sessions", headers=h, content=b"[1, 2]")
    assert r.status_code == 400 and error(r) == "invalid_json"
    r = await client.post(f"{P}/portal/sessions", headers=h, content=b"[" * 100_000 + b"]" * 100_000)
    assert r.status_code in (400, 413)
    r = await client.post(
        f"{P}/portal/sessions", headers={**auth(keys), "Content-Type": "text/plain"}, content=b"{}"
    )
    assert r.status_code == 415 and error(r) == "unsupported_media_type"
    r = await client.request("GET", f"{P}/wallet/balance", headers=h, content=b"{}")
    assert r.status_code == 400 and error(r) == "unexpected_body"
    assert server.recorder.seen == []


async def test_body_limit_is_configurable(keys: Keys, server: EmulatorServer, prefix: str) -> None:
    settings = proxy_settings(keys, server, prefix, proxy={"max_body_bytes": 64})
    async with proxy_client(settings, server) as c:
        r = await c.post(
            f"{P}/portal/sessions", headers=auth(keys), json={"return_url": "https://a/" + "x" * 64}
        )
        assert r.status_code == 413
        r = await c.post(f"{P}/portal/sessions", headers=auth(keys), json={"return_url": "https://a/"})
        assert r.status_code == 201


async def test_writes_always_carry_an_idempotency_key(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    h = auth(keys)
    r1 = await client.post(f"{P}/portal/sessions", headers=h, json={"return_url": "https://a/"})
    assert r1.status_code == 201
    generated = server.recorder.api_calls()[-1].headers["idempotency-key"]
    assert len(generated) == 32
    hk = {**h, "Idempotency-Key": "client-key-1"}
    r2 = await client.post(f"{P}/portal/sessions", headers=hk, json={"return_url": "https://a/"})
    r3 = await client.post(f"{P}/portal/sessions", headers=hk, json={"return_url": "https://a/"})
    assert server.recorder.api_calls()[-1].headers["idempotency-key"] == "client-key-1"
    assert r2.json() == r3.json() and r3.headers["idempotent-replayed"] == "true"
    r = await client.post(
        f"{P}/portal/sessions",
        headers={**h, "Idempotency-Key": "bad key!"},
        json={"return_url": "https://a/"},
    )
    assert r.status_code == 400 and error(r) == "invalid_idempotency_key"


# -- retries, 401, timeouts, breaker -------------------------------------------------------------


async def test_reads_are_retried_on_503_and_dropped_connections(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    await warm(client, keys, server)
    emu = server.emulator
    emu.inject_fault("get_credit_balance", status=503, retry_after=0, times=2)
    r = await client.get(f"{P}/wallet/balance", headers=auth(keys))
    assert r.status_code == 200 and emu.calls("get_credit_balance") == 3
    emu.inject_fault("get_credit_balance", drop_connection=True, times=1)
    r = await client.get(f"{P}/wallet/balance", headers=auth(keys))
    assert r.status_code == 200 and emu.calls("get_credit_balance") == 5
    stats = client.app.state.services.stats
    assert stats.get("proxy.upstream.retries") == 3


async def test_keyed_writes_are_retried_and_replayed(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    await warm(client, keys, server)
    emu = server.emulator
    # The write happens, the answer is lost: the retry (same key) gets the stored answer.
    emu.inject_fault("create_portal_session", drop_connection=True, after_processing=True, times=1)
    r = await client.post(f"{P}/portal/sessions", headers=auth(keys), json={"return_url": "https://a/"})
    assert r.status_code == 201 and r.headers["idempotent-replayed"] == "true"
    calls = server.recorder.api_calls()
    assert len(calls) == 2 and calls[0].headers["idempotency-key"] == calls[1].headers["idempotency-key"]


async def test_retries_give_up_and_500_is_not_retried(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    await warm(client, keys, server)
    emu = server.emulator
    emu.inject_fault("get_current_billing_state", status=503, retry_after=0, times=None)
    r = await client.get(f"{P}/billing-state", headers=auth(keys))
    assert r.status_code == 503 and r.json()["ok"] is False
    assert emu.calls("get_current_billing_state") == 3  # proxy.max_retries = 2
    emu.clear_faults()
    emu.inject_fault("get_current_billing_state", status=500, times=1)
    r = await client.get(f"{P}/billing-state", headers=auth(keys))
    assert r.status_code == 500 and r.json()["code"] == "SERVER.UNEXPECTED"
    assert emu.calls("get_current_billing_state") == 4


async def test_upstream_unreachable_is_a_502(keys: Keys, server: EmulatorServer, prefix: str) -> None:
    settings = proxy_settings(
        keys, server, prefix, proxy={"upstream_base_url": f"http://127.0.0.1:{free_port()}/api/v1"}
    )
    async with proxy_client(settings, server) as c:
        r = await c.get(f"{P}/wallet/balance", headers=auth(keys))
        assert r.status_code == 502 and error(r) == "upstream_unavailable"
        assert c.app.state.services.stats.get("proxy.upstream.errors") == 3


async def test_slow_upstream_times_out(keys: Keys, server: EmulatorServer, prefix: str) -> None:
    settings = proxy_settings(
        keys,
        server,
        prefix,
        proxy={
            "read_timeout_sec": 0.2,
            "total_timeout_sec": 0.5,
            "connect_timeout_sec": 0.2,
            "max_retries": 1,
        },
    )
    async with proxy_client(settings, server) as c:
        await warm(c, keys, server)
        server.emulator.inject_fault("get_credit_balance", latency=2.0, times=None)
        r = await c.get(f"{P}/wallet/balance", headers=auth(keys))
        assert r.status_code == 504 and error(r) == "upstream_timeout"
        server.emulator.clear_faults()


async def test_a_401_drops_the_token_and_reissues_once(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    first = (await client.get("/vluna/token", headers=auth(keys))).json()["access_token"]
    emu = server.emulator
    issued_before = emu.calls("issue_platform_token")
    # Vluna's clock moves past the token's expiry; the BFF still holds it as valid.
    emu.advance_time(3600)
    r = await client.get(f"{P}/wallet/balance", headers=auth(keys))
    assert r.status_code == 200, r.text
    assert emu.calls("issue_platform_token") == issued_before + 1
    assert emu.calls("get_credit_balance") == 2
    second = (await client.get("/vluna/token", headers=auth(keys))).json()["access_token"]
    assert second != first
    assert client.app.state.services.stats.get("proxy.token.reissued") == 1


async def test_a_persistent_401_is_a_502_not_a_401(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    await warm(client, keys, server)
    server.emulator.inject_fault("get_credit_balance", status=401, times=None)
    r = await client.get(f"{P}/wallet/balance", headers=auth(keys))
    assert r.status_code == 502 and error(r) == "upstream_rejected"
    assert server.emulator.calls("get_credit_balance") == 2
    server.emulator.clear_faults()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_breaker_opens_fails_fast_and_a_probe_closes_it(
    keys: Keys, server: EmulatorServer, prefix: str
) -> None:
    settings = proxy_settings(
        keys, server, prefix, proxy={"max_retries": 0, "breaker_failure_threshold": 3, "breaker_open_sec": 30}
    )
    async with proxy_client(settings, server) as c:
        proxy = c.app.state.services.proxy
        clock = Clock()
        proxy.forwarder.breaker = CircuitBreaker(
            "test", failure_threshold=3, open_sec=30, probe_timeout_sec=15, stats=proxy.stats, clock=clock
        )
        await warm(c, keys, server)
        emu = server.emulator
        emu.inject_fault("list_invoices", status=503, times=None)
        for _ in range(3):
            r = await c.get(f"{P}/invoices", headers=auth(keys))
            assert r.status_code == 503 and r.json()["ok"] is False  # Vluna's own answer
        assert proxy.breaker_state()["state"] == "open"
        r = await c.get(f"{P}/wallet/balance", headers=auth(keys))
        assert r.status_code == 503 and error(r) == "upstream_unavailable"
        assert r.headers["retry-after"] == "30"
        assert emu.calls("list_invoices") == 3 and emu.calls("get_credit_balance") == 0
        clock.now += 31
        emu.clear_faults()
        assert proxy.breaker_state()["state"] == "half_open"
        r = await c.get(f"{P}/wallet/balance", headers=auth(keys))
        assert r.status_code == 200
        assert proxy.breaker_state() == {
            "upstream": "test",
            "state": "closed",
            "consecutive_failures": 0,
            "retry_after": 0,
        }
        stats = proxy.stats
        assert stats.get("proxy.breaker.open") == 1 and stats.get("proxy.breaker.rejected") == 1


async def test_a_failed_probe_opens_the_breaker_again(
    keys: Keys, server: EmulatorServer, prefix: str
) -> None:
    settings = proxy_settings(keys, server, prefix, proxy={"max_retries": 0})
    async with proxy_client(settings, server) as c:
        proxy = c.app.state.services.proxy
        clock = Clock()
        proxy.forwarder.breaker = CircuitBreaker(
            "t", failure_threshold=1, open_sec=10, probe_timeout_sec=15, stats=proxy.stats, clock=clock
        )
        await warm(c, keys, server)
        server.emulator.inject_fault("get_credit_balance", drop_connection=True, times=None)
        r = await c.get(f"{P}/wallet/balance", headers=auth(keys))
        assert r.status_code == 502
        clock.now += 11
        r = await c.get(f"{P}/wallet/balance", headers=auth(keys))
        assert r.status_code == 502  # the probe
        r = await c.get(f"{P}/wallet/balance", headers=auth(keys))
        assert r.status_code == 503 and r.headers["retry-after"] == "10"
        assert server.emulator.calls("get_credit_balance") == 2
        server.emulator.clear_faults()


# -- browsers: CORS, CSRF ------------------------------------------------------------------------


async def test_cors_preflight_is_answered_locally(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    pre = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, idempotency-key, x-vluna-csrf",
    }
    r = await client.options(f"{P}/checkouts", headers=pre)
    assert r.status_code in (200, 204)
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "POST" in r.headers["access-control-allow-methods"]
    r = await client.options(f"{P}/checkouts", headers={**pre, "Origin": "https://evil.test"})
    assert r.headers.get("access-control-allow-origin") not in ("https://evil.test", "*")
    assert "access-control-allow-credentials" not in r.headers
    assert server.recorder.seen == []


async def test_cors_answers_only_for_configured_origins(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    r = await client.get(f"{P}/wallet/balance", headers={**auth(keys), "Origin": ORIGIN})
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-allow-credentials"] == "true"
    assert "retry-after" in r.headers["access-control-expose-headers"].lower()
    r = await client.get(f"{P}/wallet/balance", headers={**auth(keys), "Origin": "https://evil.test"})
    # No Access-Control-Allow-Origin: the browser withholds the answer from the other origin's script.
    assert "access-control-allow-origin" not in r.headers
    # And no grant of credentials to an origin that is not configured.
    assert "access-control-allow-credentials" not in r.headers


async def test_cookie_calls_need_the_anti_forgery_header(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    cookie = {"Cookie": f"vluna_session={keys.token('alice', org_id='acme')}"}
    body = {"return_url": "https://a/"}
    r = await client.post(f"{P}/portal/sessions", headers=cookie, json=body)
    assert r.status_code == 403 and error(r) == "csrf_header_missing"
    r = await client.post(f"{P}/portal/sessions", headers={**cookie, "X-Vluna-CSRF": "0"}, json=body)
    assert r.status_code == 403
    r = await client.get(f"{P}/wallet/balance", headers=cookie)
    assert r.status_code == 403
    assert server.recorder.seen == []
    r = await client.post(f"{P}/portal/sessions", headers={**cookie, "X-Vluna-CSRF": "1"}, json=body)
    assert r.status_code == 201


# -- caching -------------------------------------------------------------------------------------


async def test_public_catalog_is_cached_with_etags(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    r1 = await client.get(f"{P}/catalog/products", headers=auth(keys))
    r2 = await client.get(f"{P}/catalog/products", headers=auth(keys))
    assert r1.status_code == r2.status_code == 200 and r1.content == r2.content
    assert server.emulator.calls("list_catalog_products") == 1
    etag = r1.headers["etag"]
    assert r1.headers["cache-control"].startswith("private, max-age=")
    assert r1.headers["vary"] == "Accept-Language, Authorization, Cookie"
    r3 = await client.get(f"{P}/catalog/products", headers={**auth(keys), "If-None-Match": etag})
    assert r3.status_code == 304 and r3.content == b"" and r3.headers["etag"] == etag
    r4 = await client.get(f"{P}/catalog/products", headers={**auth(keys), "If-None-Match": '"other"'})
    assert r4.status_code == 200
    # Another query is another entry.
    await client.get(f"{P}/catalog/products", headers=auth(keys), params={"limit": "1"})
    assert server.emulator.calls("list_catalog_products") == 2
    # Another user never gets this user's copy (answers are personalised): their own call.
    r5 = await client.get(f"{P}/catalog/products", headers=auth(keys, "bob", "other"))
    assert r5.status_code == 200
    assert server.emulator.calls("list_catalog_products") == 3
    # Still authenticated, even from the cache.
    assert (await client.get(f"{P}/catalog/products")).status_code == 401


async def test_cache_can_be_turned_off(keys: Keys, server: EmulatorServer, prefix: str) -> None:
    settings = proxy_settings(keys, server, prefix, proxy={"public_cache_ttl_sec": 0})
    async with proxy_client(settings, server) as c:
        for _ in range(2):
            r = await c.get(f"{P}/catalog/products", headers=auth(keys))
            assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        assert server.emulator.calls("list_catalog_products") == 2


# -- misc ----------------------------------------------------------------------------------------


async def test_stats_and_disabled_proxy(keys: Keys, server: EmulatorServer, prefix: str) -> None:
    async with proxy_client(proxy_settings(keys, server, prefix, proxy={"enabled": False}), server) as c:
        r = await c.get(f"{P}/catalog/products", headers=auth(keys))
        assert r.status_code == 404
        assert c.app.state.services.proxy is None
    assert server.recorder.seen == []


async def test_token_unavailable_is_a_503(keys: Keys, server: EmulatorServer, prefix: str) -> None:
    async with proxy_client(proxy_settings(keys, server, prefix), server) as c:
        server.emulator.inject_fault("issue_platform_token", status=503, times=None)
        r = await c.get(f"{P}/wallet/balance", headers=auth(keys))
        assert r.status_code in (502, 503) and r.headers.get("cache-control") == "no-store"
        assert error(r) in ("token_unavailable", "upstream_rejected")
        server.emulator.clear_faults()
        assert server.emulator.calls("get_credit_balance") == 0


# -- rate limits (Redis, shared by replicas) -------------------------------------------------------


def _away_from_window_end(window: int) -> None:
    import time

    left = window - time.time() % window
    if left < 5:  # a fixed window rolling over mid-test would reset the counts
        time.sleep(left + 0.05)


async def test_rate_limits_are_shared_by_two_replicas(
    keys: Keys, server: EmulatorServer, prefix: str
) -> None:
    settings = proxy_settings(
        keys, server, prefix, rate_limit={"requests": 4, "write_requests": 2, "window_sec": 3600}
    )
    _away_from_window_end(3600)
    async with proxy_client(settings, server) as a, proxy_client(settings, server) as b:
        statuses = []
        for i in range(6):
            r = await (a if i % 2 else b).get(f"{P}/wallet/balance", headers=auth(keys))
            statuses.append(r.status_code)
        assert statuses == [200, 200, 200, 200, 429, 429]
        r = await a.get(f"{P}/wallet/balance", headers=auth(keys))
        assert r.status_code == 429 and error(r) == "rate_limited"
        assert 0 < int(r.headers["retry-after"]) <= 3600
        assert server.emulator.calls("get_credit_balance") == 4
        # Another user has a budget of their own.
        r = await b.get(f"{P}/wallet/balance", headers=auth(keys, "bob", "other"))
        assert r.status_code == 200
        # Writes have a smaller budget.
        for expected in (201, 201, 429):
            r = await a.post(
                f"{P}/portal/sessions", headers=auth(keys, "carol", "c"), json={"return_url": "https://a/"}
            )
            assert r.status_code == expected
        assert (
            a.app.state.services.stats.get("proxy.rate_limited")
            + b.app.state.services.stats.get("proxy.rate_limited")
            == 4
        )


async def test_rate_limit_keys_hold_no_identity(
    keys: Keys, server: EmulatorServer, prefix: str, redis_client: Any
) -> None:
    settings = proxy_settings(keys, server, prefix, rate_limit={"requests": 100})
    async with proxy_client(settings, server) as c:
        assert (await c.get(f"{P}/wallet/balance", headers=auth(keys))).status_code == 200
    names = [k.decode() async for k in redis_client.scan_iter(match=f"{prefix}rl:*")]
    assert len(names) == 1
    assert "alice" not in names[0] and "acme" not in names[0]
    assert 0 < await redis_client.ttl(names[0]) <= 61


@pytest.mark.parametrize(("memo_sec", "l1", "reads"), [(5, False, 1), (0, False, 3), (5, True, 3)])
async def test_token_memo_saves_cache_reads(
    keys: Keys, server: EmulatorServer, prefix: str, memo_sec: float, l1: bool, reads: int
) -> None:
    # With the broker's first level (cache.l1) the proxy keeps no memo: every call asks the
    # broker, which answers in-process and honours a sign-out made on another replica.
    settings = proxy_settings(
        keys, server, prefix, proxy={"token_memo_sec": memo_sec}, cache={"l1": {"enabled": l1}}
    )
    import redis.asyncio as aioredis

    # A client with pub/sub when the first level is wanted (proxy_client's own has none).
    redis = aioredis.Redis.from_url("redis://127.0.0.1:6379/0") if l1 else None
    async with proxy_client(settings, server, **({"redis": redis} if l1 else {})) as c:
        assert (c.app.state.services.l1 is not None) == l1
        await warm(c, keys, server)
        stats = c.app.state.services.stats
        before = stats.get("cache_hits")
        for _ in range(3):
            assert (await c.get(f"{P}/wallet/balance", headers=auth(keys))).status_code == 200
        assert stats.get("cache_hits") - before == reads
        assert server.emulator.calls("issue_platform_token") == 0
    if redis is not None:
        await redis.aclose()


async def test_a_sign_out_stops_the_proxy_using_the_token_at_once(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    def bearer_seen() -> str:
        return [s for s in server.recorder.api_calls() if s.path.endswith("/wallet/balance")][-1].headers[
            "authorization"
        ]

    assert (await client.get(f"{P}/wallet/balance", headers=auth(keys))).status_code == 200
    before = bearer_seen()
    assert (await client.delete("/vluna/token", headers=auth(keys))).status_code == 204
    assert (await client.get(f"{P}/wallet/balance", headers=auth(keys))).status_code == 200
    assert bearer_seen() != before  # not the memoised (signed-out) token


async def test_proxied_calls_are_measured_as_upstream_calls(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    from bff.telemetry.metrics import UPSTREAM_REQUESTS

    operation = "proxy GET /catalog/products"
    before = UPSTREAM_REQUESTS.labels(operation=operation, outcome="ok")._value.get()
    r = await client.get(f"{P}/catalog/products", headers=auth(keys))
    assert r.status_code == 200
    after = UPSTREAM_REQUESTS.labels(operation=operation, outcome="ok")._value.get()
    assert after == before + 1
    # Tracing is off here: no trace context is made up and sent upstream.
    assert "traceparent" not in server.recorder.api_calls()[-1].headers
