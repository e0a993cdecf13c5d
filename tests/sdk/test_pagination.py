"""`vlunaai.paginate`: follows `meta.next_cursor` / `has_more`, raises on a failed page or a loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import vlunaai
from vlunaai import BearerClient, InternalServerError, RequestContext, ServiceClient, VlunaAIError

from .support import ACCESS_TOKEN, ScriptedTransport, error, ok


def page(items: list[dict[str, Any]], cursor: str | None, has_more: bool | None = None) -> httpx.Response:
    meta: dict[str, Any] = {"next_cursor": cursor, "limit": 2}
    if has_more is not None:
        meta["has_more"] = has_more
    return ok(items, meta=meta)


async def collect(it: Any) -> list[Any]:
    return [item async for item in it]


async def test_follows_cursors_until_has_more_is_false(service: Callable[..., ServiceClient]) -> None:
    transport = ScriptedTransport(
        page([{"id": "1"}, {"id": "2"}], "c2", True),
        page([{"id": "3"}, {"id": "4"}], "c3", True),
        page([{"id": "5"}], "c4", False),  # a cursor with has_more=false: stop anyway
    )
    client = service(transport)
    query = {"limit": 2, "status": "active"}
    items = await collect(vlunaai.paginate(client.list_meters, query=query))
    assert [i["id"] if isinstance(i, dict) else i.id for i in items] == ["1", "2", "3", "4", "5"]
    sent = [dict(httpx.QueryParams(r.url.query)) for r in transport.requests]
    assert sent == [
        {"limit": "2", "status": "active"},
        {"limit": "2", "status": "active", "cursor": "c2"},
        {"limit": "2", "status": "active", "cursor": "c3"},
    ]
    assert query == {"limit": 2, "status": "active"}  # the caller's dict is not modified


async def test_stops_when_no_cursor_is_given(service: Callable[..., ServiceClient]) -> None:
    transport = ScriptedTransport(page([{"id": "1"}], "c2"), page([{"id": "2"}], None), ok([]))
    client = service(transport)
    items = await collect(vlunaai.paginate(client.list_meters))
    assert len(items) == 2
    assert len(transport.requests) == 2


async def test_empty_first_page(service: Callable[..., ServiceClient]) -> None:
    transport = ScriptedTransport(ok([], meta={"next_cursor": None, "has_more": False}))
    client = service(transport)
    assert await collect(vlunaai.paginate(client.list_meters, query={"limit": 50})) == []
    assert len(transport.requests) == 1


async def test_failed_page_raises_in_result_mode(service: Callable[..., ServiceClient]) -> None:
    transport = ScriptedTransport(page([{"id": "1"}], "c2", True), error(500, "SERVER.UNEXPECTED", "db down"))
    client = service(transport, max_retries=0)
    seen: list[Any] = []
    with pytest.raises(VlunaAIError) as info:
        async for item in vlunaai.paginate(client.list_meters):
            seen.append(item)
    assert len(seen) == 1
    assert info.value.status == 500
    assert info.value.code == "SERVER.UNEXPECTED"
    assert info.value.message == "db down"


async def test_failed_page_raises_typed_error_in_raise_mode(service: Callable[..., ServiceClient]) -> None:
    transport = ScriptedTransport(page([{"id": "1"}], "c2", True), error(503))
    client = service(transport, error_mode="raise", max_retries=0)
    with pytest.raises(InternalServerError):
        await collect(vlunaai.paginate(client.list_meters))


async def test_repeated_cursor_raises_instead_of_looping(service: Callable[..., ServiceClient]) -> None:
    transport = ScriptedTransport(
        page([{"id": "1"}], "c2", True), page([{"id": "2"}], "c3", True), page([{"id": "3"}], "c2", True)
    )
    client = service(transport)
    with pytest.raises(VlunaAIError, match="repeated"):
        await collect(vlunaai.paginate(client.list_meters))
    assert len(transport.requests) == 3


async def test_bearer_list_with_context_and_path_argument(bearer: Callable[..., BearerClient]) -> None:
    transport = ScriptedTransport(page([{"id": "inv_1"}], "n", True), page([{"id": "inv_2"}], None))
    client = bearer(transport)
    ctx = RequestContext(access_token=ACCESS_TOKEN)
    items = await collect(
        vlunaai.paginate(client.list_invoices, query={"billing_account_id": "ba"}, context=ctx)
    )
    assert len(items) == 2
    assert all(r.headers["authorization"] == f"Bearer {ACCESS_TOKEN}" for r in transport.requests)
    assert dict(httpx.QueryParams(transport.last.url.query)) == {"billing_account_id": "ba", "cursor": "n"}


async def test_paginate_passes_positional_path_ids(service: Callable[..., ServiceClient]) -> None:
    transport = ScriptedTransport(page([{"id": "t1"}], None))
    client = service(transport)
    items = await collect(vlunaai.paginate(client.list_contract_terms, "ct/1"))
    assert len(items) == 1
    assert transport.last.url.raw_path.startswith(b"/mgt/v1/contracts/ct%2F1/terms")


# -- schema-valid answers: `data` parsed into the generated list models ---------------------------


def meter(i: int) -> dict[str, Any]:
    return {
        "meter_id": f"mtr_{i}",
        "meter_code": f"tokens.{i}",
        "active": True,
        "created_at": "2026-11-24T19:20:31+00:00",
        "updated_at": "2026-11-24T19:20:31+00:00",
        "metadata": {},
        "rounding": "round",
        "scale": 1.0,
        "semantic_kind": "activity",
        "unit": "token",
    }


def product(i: int) -> dict[str, Any]:
    return {
        "catalog_product_id": f"prod_{i}",
        "name": f"Plan {i}",
        "kind": "subscription",
        "status": "active",
        "default_currency": "USD",
        "display_priority": i,
        "presentation_config": {},
    }


async def test_items_object_with_cursor_in_data(service: Callable[..., ServiceClient]) -> None:
    # MeterList is `{"items": [...], "next_cursor": ...}`: the items are what is yielded, and
    # the cursor may come in `data` when `meta` has none.
    pages = (
        ok({"items": [meter(1), meter(2)], "next_cursor": "c2"}),
        ok({"items": [meter(3)], "next_cursor": None}, meta={"has_more": False}),
    )
    probe = service(ScriptedTransport(*pages))
    assert type((await probe.list_meters()).data).__name__ == "MeterList"  # strict parse: the real shape
    transport2 = ScriptedTransport(*pages)
    client2 = service(transport2)
    items = await collect(vlunaai.paginate(client2.list_meters, query={"limit": 2}))
    assert [item.meter_id for item in items] == ["mtr_1", "mtr_2", "mtr_3"]
    assert len(transport2.requests) == 2
    assert dict(httpx.QueryParams(transport2.last.url.query)) == {"limit": "2", "cursor": "c2"}


async def test_root_list_model_yields_its_items(bearer: Callable[..., BearerClient]) -> None:
    transport = ScriptedTransport(
        ok([product(1), product(2)], meta={"next_cursor": "n2", "has_more": True}),
        ok([product(3)], meta={"next_cursor": None, "has_more": False}),
    )
    client = bearer(transport)
    ctx = RequestContext(access_token=ACCESS_TOKEN)
    items = await collect(vlunaai.paginate(client.list_catalog_products, context=ctx))
    assert [item.catalog_product_id for item in items] == ["prod_1", "prod_2", "prod_3"]
