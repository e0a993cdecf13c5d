"""Counters and fault injection (in-process handle and control endpoints); the SDK's retries."""

from __future__ import annotations

import httpx
import pytest
from vlunaai import RequestContext, VlunaAIError
from vlunaai.testing import CONTROL_HEADER, CONTROL_HEADER_VALUE, VlunaEmulator

from tests.support.emulator import core_of
from tests.support.envelopes import data_of

from .support import Raw, assert_error

CTX = RequestContext(principal_id="org:faults", user_id="user:faults")


async def test_counters_per_operation_and_reset(vluna_emulator: VlunaEmulator) -> None:
    svc = vluna_emulator.service_client()
    await svc.list_catalog_products()
    await svc.list_catalog_products()
    issued = await svc.issue_platform_token(body={"principal_id": "org:c", "user_id": "u"})
    bearer = vluna_emulator.bearer_client()
    await bearer.list_catalog_products(context=RequestContext(access_token=data_of(issued).access_token))
    assert vluna_emulator.calls("service.list_catalog_products") == 2
    assert vluna_emulator.calls("bearer.list_catalog_products") == 1
    assert vluna_emulator.calls("list_catalog_products") == 3
    assert vluna_emulator.calls()["service.issue_platform_token"] == 1
    vluna_emulator.reset_counters()
    assert vluna_emulator.calls() == {}


async def test_status_fault_with_retry_after_is_retried(vluna_emulator: VlunaEmulator) -> None:
    fault = vluna_emulator.inject_fault("list_catalog_products", status=429, retry_after=0, times=2)
    svc = vluna_emulator.service_client(max_retries=2)
    assert (await svc.list_catalog_products()).ok is True
    assert vluna_emulator.calls("list_catalog_products") == 3
    assert fault.hits == 2 and vluna_emulator.core.faults.list() == []
    # A write is retried too (same Idempotency-Key), on a 5xx.
    vluna_emulator.inject_fault("gate_authorize", status=503, retry_after=0, times=1)
    granted = await svc.gate_authorize(body={"feature_code": "openai.gpt-4o"}, context=CTX)
    assert granted.ok is True
    assert vluna_emulator.calls("gate_authorize") == 2


async def test_gate_denials_are_decisions_not_retried(vluna_emulator: VlunaEmulator) -> None:
    vluna_emulator.inject_fault("gate_authorize", status=429, retry_after=0, times=1)
    svc = vluna_emulator.service_client(max_retries=2)
    denied = await svc.gate_authorize(body={"feature_code": "openai.gpt-4o"}, context=CTX)
    assert denied.ok is False
    assert vluna_emulator.calls("gate_authorize") == 1


async def test_fault_answer_shape(raw: Raw) -> None:
    raw.emu.inject_fault("list_catalog_products", status=503, retry_after=7)
    response = await raw.svc("GET", "/mgt/v1/catalog/products")
    assert response.headers["retry-after"] == "7"
    assert_error(response, 503, "SERVER.UNAVAILABLE", "fault_injection")
    assert (await raw.svc("GET", "/mgt/v1/catalog/products")).status_code == 200


async def test_fault_on_every_call_exhausts_retries(vluna_emulator: VlunaEmulator) -> None:
    vluna_emulator.inject_fault("list_catalog_prices", status=500, retry_after=0, times=None)
    svc = vluna_emulator.service_client(max_retries=2, error_mode="raise")
    with pytest.raises(VlunaAIError) as caught:
        await svc.list_catalog_prices(query={})
    assert caught.value.status == 500
    assert vluna_emulator.calls("list_catalog_prices") == 3
    vluna_emulator.clear_faults()
    assert (await svc.list_catalog_prices(query={})).ok is True


async def test_client_errors_are_not_retried(vluna_emulator: VlunaEmulator) -> None:
    vluna_emulator.inject_fault("*", status=400, times=1)
    svc = vluna_emulator.service_client(max_retries=2)
    result = await svc.list_meters()
    assert result.ok is False
    assert vluna_emulator.calls("list_meters") == 1


async def test_latency_fault(vluna_emulator: VlunaEmulator) -> None:
    fault = vluna_emulator.inject_fault("list_catalog_products", latency=0.02)
    svc = vluna_emulator.service_client()
    assert (await svc.list_catalog_products()).ok is True
    assert fault.hits == 1


async def test_dropped_connection_in_process(vluna_emulator: VlunaEmulator) -> None:
    vluna_emulator.inject_fault("list_catalog_products", drop_connection=True)
    async with httpx.AsyncClient(transport=vluna_emulator.transport()) as client:
        raw = Raw(vluna_emulator, client)
        with pytest.raises(httpx.RemoteProtocolError):
            await raw.svc("GET", "/mgt/v1/catalog/products")
    # The SDK sees a transport error and retries a GET.
    vluna_emulator.inject_fault("list_catalog_products", drop_connection=True)
    svc = vluna_emulator.service_client()
    assert (await svc.list_catalog_products()).ok is True
    assert vluna_emulator.calls("list_catalog_products") == 3


async def test_dropped_write_is_retried_with_the_same_idempotency_key(vluna_emulator: VlunaEmulator) -> None:
    svc = vluna_emulator.service_client()
    issued = await svc.issue_platform_token(body={"principal_id": "org:w", "user_id": "u"})
    bearer = vluna_emulator.bearer_client()
    ctx = RequestContext(access_token=data_of(issued).access_token)
    # Dropped after the write happened? Either way the retry must not create a second checkout.
    vluna_emulator.inject_fault("create_checkout", drop_connection=True)
    body = {
        "items": [{"catalog_price_id": "price_credits_10", "quantity": 1}],
        "return_url": "https://a.example/",
    }
    result = await bearer.create_checkout(body=body, context=ctx)
    assert result.ok is True
    assert vluna_emulator.calls("create_checkout") == 2
    assert len(core_of(vluna_emulator).state.checkouts) == 1


async def test_control_endpoints(vluna_emulator: VlunaEmulator) -> None:
    async with httpx.AsyncClient(
        transport=vluna_emulator.transport(),
        base_url="http://emu",
        headers={CONTROL_HEADER: CONTROL_HEADER_VALUE},
    ) as client:
        raw = Raw(vluna_emulator, client)
        created = await client.post(
            "/__emulator__/faults", json={"operation": "list_catalog_products", "status": 502, "times": 1}
        )
        assert created.status_code == 201 and created.json()["data"]["status"] == 502
        listed = (await client.get("/__emulator__/faults")).json()["data"]["faults"]
        assert [f["target"] for f in listed] == ["list_catalog_products"]
        assert_error(await raw.svc("GET", "/mgt/v1/catalog/products"), 502, "SERVER.UPSTREAM")
        counters = (await client.get("/__emulator__/counters")).json()["data"]["calls"]
        assert counters == {"service.list_catalog_products": 1}
        await client.post("/__emulator__/faults", json={"status": 500, "times": None})
        assert (await client.delete("/__emulator__/faults")).json()["data"]["faults"] == []
        bad = await client.post("/__emulator__/faults", json={"operation": "x"})
        assert bad.status_code == 422
        assert (await client.post("/__emulator__/reset?what=counters")).status_code == 200
        assert (await client.get("/__emulator__/counters")).json()["data"]["calls"] == {}
        token = (await raw.token())["access_token"]
        await client.post("/__emulator__/clock/advance", json={"seconds": 3600})
        assert (await raw.bearer("GET", "/api/v1/catalog/products", token)).status_code == 401
        assert (await client.post("/__emulator__/reset")).json()["data"] == {"reset": "all"}
        config = (await client.get("/__emulator__/config")).json()["data"]
        assert config["service_key_id"] == "pk-emulator" and "secret" not in str(config).lower()


async def test_controls_refuse_calls_without_the_control_header(vluna_emulator: VlunaEmulator) -> None:
    """A cross-site form (or any simple request) cannot set a custom header: it gets 403, and
    nothing changes (counters, faults, clock, state)."""
    vluna_emulator.inject_fault("list_catalog_products", status=503, times=None)
    async with httpx.AsyncClient(transport=vluna_emulator.transport(), base_url="http://emu") as client:
        raw = Raw(vluna_emulator, client)
        await raw.token()
        calls_before = vluna_emulator.calls()
        offset_before = vluna_emulator.core.time_offset
        attempts = [
            client.get("/__emulator__/counters"),
            client.get("/__emulator__/config"),
            client.post("/__emulator__/reset"),
            # What an HTML form on another site would send.
            client.post(
                "/__emulator__/reset",
                content=b"what=all",
                headers={"content-type": "application/x-www-form-urlencoded", "origin": "https://evil.test"},
            ),
            client.post("/__emulator__/clock/advance", json={"seconds": 3600}),
            client.delete("/__emulator__/faults"),
            client.post("/__emulator__/faults", json={"status": 500, "times": None}),
            # A wrong value is no better than none.
            client.post("/__emulator__/reset", headers={CONTROL_HEADER: "yes"}),
        ]
        for attempt in attempts:
            response = await attempt
            assert response.status_code == 403, response.text
            body = response.json()
            assert body["code"] == "AUTH.FORBIDDEN" and CONTROL_HEADER in body["message"]
        assert vluna_emulator.calls() == calls_before
        assert len(vluna_emulator.core.faults.list()) == 1
        assert vluna_emulator.core.time_offset == offset_before
        assert core_of(vluna_emulator).state.accounts_by_id  # the reset did not happen


async def test_controls_are_off_unless_enabled() -> None:
    async with (
        VlunaEmulator(controls_enabled=False) as emu,
        httpx.AsyncClient(transport=emu.transport(), base_url="http://e") as c,
    ):
        response = await c.get("/__emulator__/counters")
        assert response.status_code == 404 and response.json()["code"] == "RESOURCE.NOT_FOUND"
        assert (await c.post("/__emulator__/faults", json={"status": 500})).status_code in (404, 405)
        # The in-process handle still has its controls.
        emu.inject_fault("list_catalog_products", status=500)
        assert emu.core.faults.armed


async def test_unknown_route_and_method(raw: Raw) -> None:
    assert_error(await raw.svc("GET", "/mgt/v1/nothing/here"), 404, "RESOURCE.NOT_FOUND", "unknown_route")
    assert_error(
        await raw.svc("DELETE", "/mgt/v1/catalog/products"), 405, "RESOURCE.NOT_FOUND", "method_not_allowed"
    )
    # Both spellings of the rating-policy routes exist.
    assert (await raw.svc("GET", "/mgt/v1/event-rating-policies")).status_code == 200
    assert (await raw.svc("GET", "/mgt/v1/event_rating_policies")).status_code == 200


async def test_flaky_account_creation_is_survived_by_retries() -> None:
    async with VlunaEmulator(flaky_account_creation=True) as emu:
        svc = emu.service_client(max_retries=2)
        issued = await svc.issue_platform_token(body={"principal_id": "org:new", "user_id": "u"})
        assert issued.ok is True
        assert emu.calls("issue_platform_token") == 2
        again = await svc.issue_platform_token(body={"principal_id": "org:new", "user_id": "u2"})
        assert again.ok is True and data_of(again).billing_account_id == data_of(issued).billing_account_id
        assert emu.calls("issue_platform_token") == 3


async def test_drop_after_processing_then_retry_replays_the_write(vluna_emulator: VlunaEmulator) -> None:
    svc = vluna_emulator.service_client()
    lease = data_of(await svc.gate_authorize(body={"feature_code": "openai.gpt-4o"}, context=CTX)).lease
    vluna_emulator.inject_fault("gate_commit", drop_connection=True, after_processing=True)
    commit = await svc.gate_commit(
        body={"lease": lease, "feature_code": "openai.gpt-4o", "quantity_minor": "1000"}, context=CTX
    )
    # The first attempt committed (and used the lease); the retry got the stored answer.
    assert commit.ok is True and data_of(commit).amount_xusd == "5"
    assert vluna_emulator.calls("gate_commit") == 2
    assert len(core_of(vluna_emulator).state.commits) == 1


async def test_ready_clients_on_the_handle(vluna_emulator: VlunaEmulator) -> None:
    token = await vluna_emulator.issue_token("org:ready", "user:ready", scopes=["portal"])
    assert vluna_emulator.service is vluna_emulator.service
    products = await vluna_emulator.bearer.list_catalog_products(context=RequestContext(access_token=token))
    assert products.ok is True
