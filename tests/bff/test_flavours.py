"""The service against both Vluna servers the emulator plays: the 0.3.2 API and the open-source
server as recorded (spec/vluna-api/recorded). Readiness, a new principal's first token, the
proxy's routes for each (proxy.upstream_flavor), and the headers that server would trust."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from vlunaai.testing import VlunaEmulator

from bff.vluna_probe import PROBE_OPERATION

from .observability_support import emulator_client, emulator_vluna
from .proxy_support import EmulatorServer, emulator_server, in_own_task, proxy_client, proxy_settings
from .support import AppClient, Keys, client_for, make_settings

P = "/vluna/api/v1"
FLAVORS = ["0.3.2", "oss"]


def auth(keys: Keys, user: str = "alice", org: str = "acme") -> dict[str, str]:
    return {"Authorization": f"Bearer {keys.token(user, org_id=org)}"}


@pytest.fixture(params=FLAVORS)
def flavor(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def server(flavor: str) -> AsyncIterator[EmulatorServer]:
    async with emulator_server(flavor=flavor) as s:
        yield s


@pytest.fixture
async def client(keys: Keys, server: EmulatorServer, prefix: str, flavor: str) -> AsyncIterator[AppClient]:
    settings = proxy_settings(keys, server, prefix, proxy={"upstream_flavor": flavor})
    async with in_own_task(proxy_client(settings, server)) as c:
        yield c


# -- readiness and issuance ------------------------------------------------------------------------


async def test_readyz_is_ready_against_both_servers(keys: Keys, flavor: str) -> None:
    async with VlunaEmulator(flavor=flavor) as emu:
        settings = make_settings(keys, vluna=emulator_vluna(emu))
        async with client_for(settings, None, vluna=emulator_client(emu)) as client:
            r = await client.get("/readyz")
            assert r.status_code == 200, r.text
            assert r.json()["checks"]["vluna"] == "ok" and r.json()["status"] == "ready"
            assert emu.calls(PROBE_OPERATION) == 1
        # What readiness used to send (an unbound catalog call) the open-source server refuses.
        async with httpx.AsyncClient(
            transport=emu.transport(), base_url="http://vluna-emulator.test"
        ) as http:
            from vlunaai.signing import ServiceKeyAuth, ServiceKeyCredentials

            signer = ServiceKeyAuth(ServiceKeyCredentials(emu.service_key_id, emu.service_key_secret))
            url = "http://vluna-emulator.test/mgt/v1/catalog/products?limit=1"
            headers = signer.sign(
                method="GET", url=url, body=None, idempotency_key=None, realm_id=emu.realm_id
            )
            old = await http.get("/mgt/v1/catalog/products?limit=1", headers=headers)
        if flavor == "oss":
            assert old.status_code == 401 and old.json()["code"] == "AUTH.MISSING_SERVICE_BINDINGS"
        else:
            assert old.status_code == 200


async def test_a_new_principals_first_token_never_fails(keys: Keys, flavor: str) -> None:
    # vluna.max_retries 0 (the issuer of these tests): the open-source server's first-call 500 is
    # still absorbed by one keyed retry.
    async with VlunaEmulator(flavor=flavor) as emu:
        settings = make_settings(keys, vluna={**emulator_vluna(emu), "max_retries": 0})
        async with client_for(settings, None, vluna=emulator_client(emu)) as client:
            r = await client.get("/vluna/token", headers=auth(keys, "nina", "newco"))
            assert r.status_code == 200, r.text
            assert r.json()["access_token"]
            assert emu.calls("issue_platform_token") == (2 if flavor == "oss" else 1)
            r = await client.get("/vluna/token", headers=auth(keys, "nick", "newco"))
            assert r.status_code == 200  # an existing principal: one call
            assert emu.calls("issue_platform_token") == (3 if flavor == "oss" else 2)


# -- the proxy's routes ------------------------------------------------------------------------------


async def test_the_calls_both_servers_have(client: AppClient, keys: Keys, server: EmulatorServer) -> None:
    h = auth(keys)
    token = (await client.get("/vluna/token", headers=h)).json()
    r = await client.get(f"{P}/catalog/products", headers=h, params={"expand": "default_price"})
    assert r.status_code == 200, r.text
    products = r.json()["data"]
    assert len(products) == 3 and all(p["default_price"] for p in products)
    product_id = products[0]["catalog_product_id"]
    r = await client.get(f"{P}/catalog/prices", headers=h, params={"product_id": product_id})
    assert r.status_code == 200 and r.json()["data"], r.text
    r = await client.get(f"{P}/wallet/balance", headers=h)
    assert r.status_code == 200 and r.json()["data"]["billing_account_id"] == token["billing_account_id"]
    for path in ("/invoices", "/subscriptions"):
        r = await client.get(f"{P}{path}", headers=h)
        assert r.status_code == 200, (path, r.text)  # the proxy adds the caller's billing_account_id
    price_id = products[0]["default_price"]["catalog_price_id"]
    body = {
        "items": [{"catalog_price_id": price_id, "quantity": 1}],
        "success_url": "https://a/",
        "cancel_url": "https://a/c",
    }
    checkout = await client.post(f"{P}/checkout/sessions", headers=h, json=body)
    portal = await client.post(f"{P}/portal/sessions", headers=h, json={"return_url": "https://a/"})
    if server.emulator.settings.flavor == "oss":
        # That server has no payment provider configured: its 500 is passed on (a JSON answer).
        assert checkout.status_code == 500 and checkout.json()["code"] == "SERVER.UNEXPECTED"
        assert portal.status_code == 500
    else:
        assert checkout.status_code == 201 and "checkout_url" in checkout.json()["data"], checkout.text
        assert portal.status_code == 201 and "portal_url" in portal.json()["data"]
    assert server.emulator.calls("create_checkout_session") == 1
    assert server.emulator.calls("create_portal_session") == 1


async def test_routes_the_upstream_lacks_are_a_json_404_from_us(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    h = auth(keys)
    await client.get("/vluna/token", headers=h)
    server.recorder.seen.clear()
    calls = [
        ("GET", "/billing-state", None),
        (
            "POST",
            "/checkouts",
            {"items": [{"catalog_price_id": "p", "quantity": 1}], "return_url": "https://a/"},
        ),
        ("GET", "/checkouts/ck_1", None),
    ]
    for method, path, body in calls:
        r = await client.request(method, f"{P}{path}", headers=h, json=body)
        if server.emulator.settings.flavor == "oss":
            assert r.status_code == 404, (path, r.text)
            assert r.headers["content-type"].startswith("application/json")
            assert set(r.json()) == {"error", "message"} and r.json()["error"] == "not_found"
        else:  # forwarded: whatever the 0.3.2 API answers (the checkout ids here are unknown)
            assert r.headers["content-type"].startswith("application/json"), (path, r.text)
    forwarded = [s.path for s in server.recorder.api_calls()]
    if server.emulator.settings.flavor == "oss":
        assert forwarded == []
    else:
        assert forwarded == ["/api/v1/billing-state", "/api/v1/checkouts", "/api/v1/checkouts/ck_1"]


# -- what the open-source server would trust ---------------------------------------------------------


async def test_headers_that_server_trusts_never_reach_it(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    # The victim exists upstream; the recorded server hands out any principal's wallet to an
    # unverified SVC-AUTH header with X-Principal-Id / X-User-Id, honours x-realm-admin, and
    # accepts platform tokens on /mgt/v1. Through the proxy none of that gets there.
    victim = (await client.get("/vluna/token", headers=auth(keys, "vic", "victim"))).json()
    mine = (await client.get("/vluna/token", headers=auth(keys))).json()
    server.recorder.seen.clear()
    session = keys.token("alice", org_id="acme")
    hostile = {
        "Cookie": f"vluna_session={session}",
        "X-Vluna-CSRF": "1",
        "Authorization": "SVC-AUTH keyId=pk-fake,sig=AAAA,ts=2001-01-01T00:00:00Z,nonce=n,alg=HMAC-SHA256",
        "X-Principal-Id": "org:victim",
        "X-User-Id": "vic",
        "X-Billing-Account-ID": victim["billing_account_id"],
        "x-realm-admin": "true",
    }
    r = await client.get(f"{P}/wallet/balance", headers=hostile)
    assert r.status_code == 200, r.text
    assert r.json()["data"]["billing_account_id"] == mine["billing_account_id"]
    r = await client.get(
        f"{P}/invoices", headers=hostile, params={"billing_account_id": victim["billing_account_id"]}
    )
    assert r.status_code == 200, r.text
    for seen in server.recorder.api_calls():
        assert seen.path.startswith("/api/v1/")
        h = seen.headers
        assert h["authorization"] == f"Bearer {mine['access_token']}"
        assert h["x-billing-account-id"] == mine["billing_account_id"]
        for name in ("x-principal-id", "x-user-id", "x-realm-admin", "cookie"):
            assert name not in h, name
        assert victim["billing_account_id"] not in seen.query + json.dumps(dict(h))
    # A platform token (even the caller's own) never goes to /mgt/v1 through the proxy.
    for path in (f"{P}/../../mgt/v1/wallet/balance", f"{P}/mgt/v1/token/issue"):
        r = await client.get(path, headers={"Authorization": f"Bearer {mine['access_token']}"})
        assert r.status_code in (400, 401, 404), (path, r.status_code)
    assert all(not s.path.startswith("/mgt/") for s in server.recorder.seen)
