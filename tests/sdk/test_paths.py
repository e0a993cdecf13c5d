"""Path parameters are percent-encoded: an id can never change the route it is sent to."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import unquote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vlunaai import RequestContext, ServiceClient

from .support import ACCESS_TOKEN, ScriptedTransport, assert_signed, make_service, ok

HOSTILE_IDS = [
    "a/b",
    "../../admin",
    "..",
    ".",
    "...",
    "?limit=1",
    "#frag",
    "a b",
    "%2F",
    "%2e%2e",
    "m?x=1#y",
    "é/ü",
    "\\..\\x",
    "a;b=c",
    "line\nbreak",
]


def _segments(raw_path: bytes) -> list[str]:
    path = raw_path.decode("ascii").split("?", 1)[0]
    assert "#" not in path
    return path.split("/")


@pytest.mark.parametrize("meter_id", HOSTILE_IDS)
async def test_hostile_id_stays_one_segment(service: Callable[..., ServiceClient], meter_id: str) -> None:
    transport = ScriptedTransport(ok({}))
    client = service(transport)
    await client.get_meter(meter_id)
    req = transport.last
    segments = _segments(req.url.raw_path)
    assert segments[:4] == ["", "mgt", "v1", "meters"]
    assert len(segments) == 5
    assert segments[4] not in {".", ".."}
    assert unquote(segments[4]) == meter_id
    assert req.url.query == b""
    assert req.url.fragment == ""
    assert_signed(req)


async def test_two_ids_in_one_route(service: Callable[..., ServiceClient]) -> None:
    transport = ScriptedTransport(ok({}))
    client = service(transport)
    await client.delete_billing_plan_entitlement("plan/../x", "..")
    segments = _segments(transport.last.url.raw_path)
    assert segments[3] == "billing-plans" and segments[5] == "entitlements"
    assert [unquote(segments[4]), unquote(segments[6])] == ["plan/../x", ".."]
    assert len(segments) == 7


async def test_bearer_ids_are_encoded(bearer: Callable[..., object]) -> None:
    transport = ScriptedTransport(ok({}))
    client = bearer(transport)
    await client.get_budget("../wallet/balance", context=RequestContext(access_token=ACCESS_TOKEN))  # type: ignore[attr-defined]
    segments = _segments(transport.last.url.raw_path)
    assert segments[:4] == ["", "api", "v1", "budgets"]
    assert unquote(segments[4]) == "../wallet/balance"


async def test_empty_id_is_refused_before_sending(service: Callable[..., ServiceClient]) -> None:
    transport = ScriptedTransport(ok({}))
    client = service(transport)
    with pytest.raises(ValueError, match="meter_id"):
        await client.get_meter("")
    assert transport.requests == []


async def test_plain_ids_are_unchanged(service: Callable[..., ServiceClient]) -> None:
    transport = ScriptedTransport(ok({}))
    client = service(transport)
    await client.get_meter("mtr_01HX-abc.def~1:2@3")
    assert transport.last.url.raw_path == b"/mgt/v1/meters/mtr_01HX-abc.def~1:2@3"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ident=st.text(min_size=1, max_size=25))
def test_property_any_id_round_trips_as_one_segment(ident: str) -> None:
    async def go() -> bytes:
        transport = ScriptedTransport(ok({}))
        client = make_service(transport)
        try:
            await client.get_billing_contract(ident)
        finally:
            await client.close()
        return transport.last.url.raw_path

    segments = _segments(asyncio.run(go()))
    assert segments[:4] == ["", "mgt", "v1", "contracts"]
    assert len(segments) == 5
    assert segments[4] not in {".", ".."}
    assert unquote(segments[4]) == ident
