"""The "oss" flavour beyond the replay: its switches (strict_auth, flaky_account_creation), fault
injection and counters, the command line, and the SDK working against it."""

from __future__ import annotations

import json

import httpx
import pytest
from vlunaai import RequestContext
from vlunaai.testing import VlunaEmulator
from vlunaai.testing.app import CONTROL_HEADER, CONTROL_HEADER_VALUE

from tests.support.envelopes import data_of, extra

from .support import BASE, start_cli, stop_cli, wait_ready

WHO = RequestContext(principal_id="org:oss", user_id="user:oss")


async def _token(emu: VlunaEmulator) -> str:
    issued = await emu.service.issue_platform_token(body={"principal_id": "org:oss", "user_id": "user:oss"})
    assert issued.ok, issued
    return str(data_of(issued).access_token)


async def test_the_sdk_round_trip_against_the_open_source_server() -> None:
    async with VlunaEmulator(flavor="oss") as emu:
        # A new principal's first call fails once with 500; the SDK retries it with the same key.
        token = await _token(emu)
        assert emu.calls("issue_platform_token") == 2
        products = await emu.bearer.list_catalog_products(
            query={"expand": "default_price"}, context=RequestContext(access_token=token)
        )
        assert products.ok and len(products.data.root) == 3
        assert all(p.default_price is not None for p in products.data.root)
        plain = await emu.bearer.list_catalog_products(context=RequestContext(access_token=token))
        assert all(p.default_price is None for p in plain.data.root)  # no expand, no price
        authz = await emu.service.gate_authorize(body={"feature_code": "llm.x"}, context=WHO)
        lease = data_of(authz).lease_token
        assert lease is not None
        assert lease.startswith("lease.")
        refused = await emu.service.gate_commit(
            body={"lease": lease, "feature_code": "llm.x", "quantity_minor": "3"}, context=WHO
        )
        assert extra(refused, "status") == 422 and not refused.ok
        commit = await emu.service.gate_commit(
            body={"lease_token": lease, "feature_code": "llm.x", "quantity_minor": "3"}, context=WHO
        )
        assert commit.ok
        # A bodyless write, as the SDK sends it, is accepted.
        plans = await emu.service.list_billing_plans()
        assert plans.ok
        missing = await emu.service.gate_preflight(body={"feature_code": "llm.x"}, context=WHO)
        assert not missing.ok and missing.status == 404


async def test_flaky_account_creation_can_be_turned_off() -> None:
    async with VlunaEmulator(flavor="oss", flaky_account_creation=False) as emu:
        await _token(emu)
        assert emu.calls("issue_platform_token") == 1


async def test_strict_auth_refuses_what_the_server_accepts() -> None:
    lax = VlunaEmulator(flavor="oss")
    strict = VlunaEmulator(flavor="oss", strict_auth=True)
    async with lax, strict:
        for emu, accepted in ((lax, True), (strict, False)):
            token = await _token(emu)
            async with httpx.AsyncClient(transport=emu.transport(), base_url=BASE) as http:
                # A platform token on /mgt/v1.
                r = await http.get(
                    "/mgt/v1/wallet/balance",
                    headers={"authorization": f"Bearer {token}", "x-realm-id": emu.realm_id},
                )
                assert (r.status_code == 200) is accepted, r.text
                # An unverified SVC-AUTH header with binding headers on /api/v1.
                fake = "SVC-AUTH keyId=pk-fake,sig=AAAA,ts=2001-01-01T00:00:00Z,nonce=n,alg=HMAC-SHA256"
                r = await http.get(
                    "/api/v1/wallet/balance",
                    headers={
                        "authorization": fake,
                        "x-realm-id": emu.realm_id,
                        "x-principal-id": "org:oss",
                        "x-user-id": "user:oss",
                    },
                )
                assert (r.status_code == 200) is accepted, r.text
                if not accepted:
                    assert r.json()["code"] == "AUTH.UNAUTHORIZED"


async def test_strict_auth_refuses_replayed_nonces_and_old_timestamps() -> None:
    from vlunaai.signing import ServiceKeyAuth, ServiceKeyCredentials

    for strict in (False, True):
        async with VlunaEmulator(flavor="oss", strict_auth=strict, flaky_account_creation=False) as emu:
            auth = ServiceKeyAuth(ServiceKeyCredentials(emu.service_key_id, emu.service_key_secret))
            headers = auth.sign(
                method="GET",
                url=BASE + "/mgt/v1/feature-families",
                body=None,
                idempotency_key=None,
                realm_id=emu.realm_id,
            )
            async with httpx.AsyncClient(transport=emu.transport(), base_url=BASE) as http:
                first = await http.get("/mgt/v1/feature-families", headers=headers)
                again = await http.get("/mgt/v1/feature-families", headers=headers)
            assert first.status_code == 200
            assert again.status_code == (401 if strict else 200), again.text


async def test_faults_counters_and_envelopes_in_the_servers_style() -> None:
    async with VlunaEmulator(flavor="oss") as emu:
        emu.inject_fault("list_feature_families", status=503, retry_after=0, times=1)
        raw = await emu.service_client(max_retries=0).list_feature_families()
        assert extra(raw, "status") == 503 and raw.code == "SERVER.UNAVAILABLE"
        assert (await emu.service.list_feature_families()).ok
        assert emu.calls("service.list_feature_families") == 2
        async with httpx.AsyncClient(transport=emu.transport(), base_url=BASE) as http:
            r = await http.get("/api/v1/billing-state", headers={"x-realm-id": emu.realm_id})
            assert r.status_code == 404
            assert r.json() == {
                "ok": False,
                "code": "RESOURCE.NOT_FOUND",
                "message": "Cannot GET /api/v1/billing-state",
                "meta": {"status": 404},
            }
            assert r.headers["content-type"] == "application/json; charset=utf-8"
            assert "x-request-id" not in r.headers and "trace_id" not in r.json()
            cfg = await http.get("/__emulator__/config", headers={CONTROL_HEADER: CONTROL_HEADER_VALUE})
            assert cfg.json()["data"]["flavor"] == "oss"


async def test_the_command_serves_the_oss_flavour() -> None:
    server = start_cli("--flavor", "oss")
    try:
        assert "oss flavour" in server.banner
        await wait_ready(server.base)
        async with httpx.AsyncClient(base_url=server.base, timeout=10) as http:
            health = await http.get("/health")
            assert health.json()["data"] == {"service": "vluna", "status": "healthy"}
            empty = await http.post(
                "/mgt/v1/billing-users/x/disable", headers={"content-type": "application/json"}
            )
            assert empty.status_code == 400
            assert "Body cannot be empty" in json.loads(empty.text)["message"]
    finally:
        stop_cli(server)


@pytest.mark.parametrize("flavor", ["bogus", "0.1.2"])
def test_an_unknown_flavour_is_refused(flavor: str) -> None:
    with pytest.raises(ValueError, match="flavor must be one of"):
        VlunaEmulator(flavor=flavor)
