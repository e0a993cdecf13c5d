"""Client behaviour: lifecycle, User-Agent, request bodies, and lenient parsing of answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import vlunaai
from vlunaai import (
    BearerClient,
    BearerClientOptions,
    GatePreflightError,
    GatePreflightSuccess,
    RequestContext,
    ServiceClient,
    ServiceClientOptions,
    ServiceKeyCredentials,
)
from vlunaai.generated import billing_models as billing
from vlunaai.generated import gate_models as gate

from .support import (
    ACCESS_TOKEN,
    KEY_ID,
    SECRET_B64,
    ScriptedTransport,
    bearer_config,
    error,
    make_bearer,
    make_service,
    ok,
    service_config,
)

ServiceFactory = Callable[..., ServiceClient]

# -- lifecycle -----------------------------------------------------------------------------------


async def test_async_context_managers_close_their_pool() -> None:
    transport = ScriptedTransport(ok([]))
    async with make_service(transport) as client:
        assert isinstance(client, ServiceClient)
        await client.list_meters()
        assert not transport.closed
    assert transport.closed
    assert client._http._client.is_closed

    bearer_transport = ScriptedTransport(ok([]))
    async with make_bearer(bearer_transport) as bclient:
        assert isinstance(bclient, BearerClient)
    assert bearer_transport.closed


async def test_close_releases_the_pool_and_is_idempotent() -> None:
    transport = ScriptedTransport(ok([]))
    client = make_service(transport)
    await client.list_meters()
    await client.close()
    assert transport.closed
    await client.close()


async def test_injected_http_client_is_not_closed() -> None:
    transport = ScriptedTransport(ok([]))
    injected = httpx.AsyncClient(transport=transport)
    async with ServiceClient(
        ServiceClientOptions(
            config=service_config(),
            service_key=ServiceKeyCredentials(KEY_ID, SECRET_B64),
            http_client=injected,
        )
    ) as client:
        await client.list_meters()
    async with BearerClient(BearerClientOptions(config=bearer_config(), http_client=injected)) as bclient:
        await bclient.list_budgets(context=RequestContext(access_token=ACCESS_TOKEN))
    assert not injected.is_closed
    assert not transport.closed
    assert len(transport.requests) == 2
    await injected.aclose()


async def test_context_manager_closes_on_error() -> None:
    transport = ScriptedTransport(ok([]))
    with pytest.raises(RuntimeError):
        async with make_service(transport):
            raise RuntimeError("boom")
    assert transport.closed


def test_realm_is_required() -> None:
    with pytest.raises(ValueError, match="realm_id"):
        make_service(ScriptedTransport(), config=service_config(realm_id=""))


async def test_default_base_urls() -> None:
    transport = ScriptedTransport(ok([]))
    client = make_service(transport, config=service_config(base_url=None))
    bclient = make_bearer(transport, config=bearer_config(base_url="https://x.test/api/v1/"))
    try:
        await client.list_meters()
        await bclient.list_budgets(context=RequestContext(access_token=ACCESS_TOKEN))
    finally:
        await client.close()
        await bclient.close()
    assert str(transport.requests[0].url) == "https://us-central1.api.vluna.ai/mgt/v1/meters"
    assert str(transport.requests[1].url) == "https://x.test/api/v1/budgets"


# -- User-Agent ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("configured", "expected"),
    [
        ("vlunaai-python", f"vlunaai-python/{vlunaai.__version__}"),
        ("acme-billing/2.1", f"acme-billing/2.1 vlunaai-python/{vlunaai.__version__}"),
    ],
)
async def test_user_agent_carries_the_sdk_version(
    service: ServiceFactory, configured: str, expected: str
) -> None:
    transport = ScriptedTransport(ok([]))
    client = service(transport, config=service_config(user_agent=configured))
    await client.list_meters()
    assert transport.last.headers["user-agent"] == expected
    assert vlunaai.__version__ and vlunaai.__version__[0].isdigit()


# -- request bodies ------------------------------------------------------------------------------


async def test_model_and_dict_bodies_send_the_same_bytes(service: ServiceFactory) -> None:
    transport = ScriptedTransport(ok({"access_token": "t", "billing_account_id": "ba"}))
    client = service(transport)
    model = billing.PlatformTokenIssueRequest(principal_id="org:1", user_id="u-1", scopes=["checkout"])
    await client.issue_platform_token(body=model)
    as_dict = {"principal_id": "org:1", "scopes": ["checkout"], "session_ttl_sec": 900, "user_id": "u-1"}
    await client.issue_platform_token(body=as_dict)
    first, second = transport.requests
    assert first.content == second.content
    # json.dumps with its default separators and ASCII escaping, as the published client.
    assert (
        first.content == json.dumps(model.model_dump(mode="json", by_alias=True, exclude_none=True)).encode()
    )
    assert b'", "' in first.content and b'": ' in first.content


async def test_dict_body_is_sent_as_given(service: ServiceFactory) -> None:
    transport = ScriptedTransport(ok({}))
    client = service(transport)
    body: dict[str, Any] = {"z": 1, "a": "café ☕", "n": None, "list": [1, {"b": 2}]}
    await client.upsert_meter(body=body)
    assert transport.last.content == b'{"z": 1, "a": "caf\\u00e9 \\u2615", "n": null, "list": [1, {"b": 2}]}'


async def test_body_of_the_wrong_type_is_refused_before_sending(service: ServiceFactory) -> None:
    transport = ScriptedTransport(ok({}))
    client = service(transport)
    with pytest.raises(TypeError):
        await client.upsert_meter(body=["not", "an", "object"])  # type: ignore[arg-type]
    assert transport.requests == []


# -- lenient parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {"access_token": "t", "billing_account_id": "ba", "brand_new_field": {"x": 1}},  # added
        {"accessToken": "t", "billingAccountId": "ba"},  # renamed
        {"billing_account_id": "ba"},  # required field omitted
        {"access_token": 12345, "billing_account_id": ["wrong", "type"]},  # changed types
        "a string where an object was expected",
        None,
    ],
)
async def test_success_answers_never_raise_on_shape(service: ServiceFactory, data: Any) -> None:
    transport = ScriptedTransport(
        httpx.Response(200, json={"ok": True, "code": "OK", "data": data, "new": 1})
    )
    client = service(transport)
    result = await client.issue_platform_token(body={"principal_id": "p", "user_id": "u"})
    assert result.ok is True
    assert result.code == "OK"


async def test_success_answer_keeps_unknown_fields(service: ServiceFactory) -> None:
    data = {"access_token": "t", "billing_account_id": "ba", "brand_new_field": {"x": 1}}
    transport = ScriptedTransport(ok(data, server_version="9"))
    client = service(transport)
    result = await client.issue_platform_token(body={"principal_id": "p", "user_id": "u"})
    assert result.data is not None
    assert result.data.access_token == "t"
    assert result.data.model_extra == {"brand_new_field": {"x": 1}}
    assert result.model_extra is not None and result.model_extra["server_version"] == "9"


async def test_envelope_without_data_or_ok_does_not_raise(service: ServiceFactory) -> None:
    transport = ScriptedTransport(httpx.Response(200, json={"code": "OK"}), httpx.Response(204))
    client = service(transport)
    result = await client.get_meter("m")
    assert result.code == "OK"
    empty = await client.get_meter("m")
    assert empty is not None


@pytest.mark.parametrize("field", ["lease", "lease_token"])
async def test_authorize_lease_and_lease_token_both_work(service: ServiceFactory, field: str) -> None:
    data = {field: "lease-abc", "decision": "allow", "expires_at": "2026-11-24T19:20:31Z"}
    transport = ScriptedTransport(ok(data))
    client = service(transport)
    result = await client.gate_authorize(body=gate.AuthorizeRequest.model_validate({"feature_code": "f"}))
    assert result.ok is True
    assert result.data is not None
    assert result.data.lease == "lease-abc"
    assert result.data.lease_token == "lease-abc"


async def test_commit_accepts_either_generation(service: ServiceFactory) -> None:
    transport = ScriptedTransport(ok({"lease": "l"}))
    client = service(transport)
    await client.gate_commit(body={"lease_token": "tok", "feature_code": "f", "quantity_minor": "1"})
    await client.gate_commit(body={"lease": "l", "feature_code": "f", "quantity_minor": "1"})
    assert transport.json_bodies() == [
        {"lease_token": "tok", "feature_code": "f", "quantity_minor": "1"},
        {"lease": "l", "feature_code": "f", "quantity_minor": "1"},
    ]


async def test_preflight_results_are_typed(service: ServiceFactory) -> None:
    transport = ScriptedTransport(
        ok({"allowed": True, "as_of": "2026-11-24T19:20:31Z"}),
        error(402, "FUNDING.INSUFFICIENT", "no funds", trace_id="t"),
        ok({"unexpected": "shape"}),
    )
    client = service(transport)
    success = await client.gate_preflight(body={"feature_code": "f"})
    assert isinstance(success, GatePreflightSuccess)
    assert not isinstance(success, GatePreflightError)
    assert success.status == 200
    denial = await client.gate_preflight(body={"feature_code": "f"})
    assert isinstance(denial, GatePreflightError)
    assert not isinstance(denial, GatePreflightSuccess)
    assert (denial.status, denial.code, denial.message, denial.ok) == (
        402,
        "FUNDING.INSUFFICIENT",
        "no funds",
        False,
    )
    odd = await client.gate_preflight(body={"feature_code": "f"})
    assert isinstance(odd, GatePreflightSuccess)
