"""The catalog: the ops admin API that writes it (`/mgt/v1/ops/catalog/...`, every field) and
the public view (`/catalog/...` on both planes: active products only, fewer fields, prices only
with `?expand=default_price` or `?expand=prices`)."""

from __future__ import annotations

import re
import uuid
from typing import Any

from .call import OssCall, Reply, limit_of, ok, page_meta
from .errors import OssError, invalid, not_found, unexpected
from .seeding import subscription_group
from .state import iso_ms, new_uuid

_CURRENCY = re.compile(r"^[A-Z]{3}$")
_PUBLIC_PRODUCT = (
    "catalog_product_id",
    "provider",
    "kind",
    "status",
    "display_priority",
    "name",
    "default_currency",
    "presentation_config",
)


def _ops_view(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "created_at": iso_ms(record["created_at"])}


def _public_price(price: dict[str, Any], *, expanded: bool) -> dict[str, Any]:
    view = {
        "catalog_price_id": price["catalog_price_id"],
        "catalog_product_id": price["catalog_product_id"],
        "provider_price_id": price["provider_price_id"],
        "currency": price["currency"],
        "unit_amount": price["unit_amount"],
    }
    if price["recurring_interval"] is not None:
        view["recurring_interval"] = price["recurring_interval"]
        view["recurring_count"] = price["recurring_count"]
    view["display_priority"] = price["display_priority"]
    view["metadata"] = price["metadata"]
    if expanded and price["subscription_group_id"] is not None:
        view["subscription_state"] = {
            "subscription_group_id": price["subscription_group_id"],
            "group_key": price["subscription_group_key"],
            "is_stackable": False,
            "has_active_subscription": False,
            "eligible_for_checkout": True,
            "action": "checkout",
        }
    return view


def _prices_of(call: OssCall, product_id: str) -> list[dict[str, Any]]:
    prices = [
        p
        for p in call.realm.prices.values()
        if p["catalog_product_id"] == product_id and p["status"] == "active"
    ]
    return sorted(prices, key=lambda p: (p["display_priority"], p["created_at"]))


def _paged(call: OssCall, items: list[dict[str, Any]], id_key: str) -> Reply:
    """Cursor pagination as the server does it: the cursor is the last id of the page."""
    limit = limit_of(call)
    cursor = call.query.get("cursor")
    if cursor:
        ids = [i[id_key] for i in items]
        items = items[ids.index(cursor) + 1 :] if cursor in ids else []
    page = items[:limit]
    more = len(items) > limit
    return ok(page, meta=page_meta(limit, page[-1][id_key] if more and page else None))


# --- public ---------------------------------------------------------------------------------


def list_catalog_products(call: OssCall) -> Reply:
    expand = set((call.query.get("expand") or "").split(","))
    kind = call.query.get("kind")
    products = [
        p for p in call.realm.products.values() if p["status"] == "active" and (not kind or p["kind"] == kind)
    ]
    products.sort(key=lambda p: (p["display_priority"], p["created_at"]))
    items = []
    for product in products:
        view = {key: product[key] for key in _PUBLIC_PRODUCT}
        prices = _prices_of(call, product["catalog_product_id"])
        if "prices" in expand:
            view["prices"] = [_public_price(p, expanded=True) for p in prices]
        if expand & {"prices", "default_price"}:
            view["default_price"] = _public_price(prices[0], expanded=True) if prices else None
        items.append(view)
    return _paged(call, items, "catalog_product_id")


def list_catalog_prices(call: OssCall) -> Reply:
    product_id = call.query.get("product_id") or ""
    try:
        uuid.UUID(product_id)
    except ValueError:
        raise invalid("product_id is required", bare=True) from None
    prices = [_public_price(p, expanded=False) for p in _prices_of(call, product_id)]
    return _paged(call, prices, "catalog_price_id")


# --- ops admin ------------------------------------------------------------------------------


def ops_create_product(call: OssCall) -> Reply:
    body = call.json()
    currency = body.get("default_currency", "USD")
    if not isinstance(body.get("name"), str) or not isinstance(currency, str):
        raise invalid("name and default_currency are required")
    if not _CURRENCY.match(currency):
        raise unexpected()  # a database check constraint on the server
    record: dict[str, Any] = {
        "catalog_product_id": new_uuid(),
        "realm_id": call.realm.realm_id,
        "product_code": body.get("product_code"),
        "provider": body.get("provider") or "stripe",
        "provider_product_id": body.get("provider_product_id"),
        "kind": body.get("kind") or "subscription",
        "status": body.get("status") or "active",
        "display_priority": body.get("display_priority") or 0,
        "presentation_config": body.get("presentation_config") or {},
        "name": body["name"],
        "default_currency": currency,
        "metadata": body.get("metadata") or {},
        "created_at": call.now,
    }
    call.realm.products[record["catalog_product_id"]] = record
    return ok(_ops_view(record), 201)


def ops_list_products(call: OssCall) -> Reply:
    items = sorted(call.realm.products.values(), key=lambda p: -p["created_at"])
    return _paged(call, [_ops_view(p) for p in items], "catalog_product_id")


def ops_get_product(call: OssCall) -> Reply:
    record = call.realm.products.get(call.params["product_id"])
    if record is None:
        raise not_found("product not found", code="RESOURCE.NOT_FOUND")
    return ok(_ops_view(record))


def ops_create_price(call: OssCall) -> Reply:
    body = call.json()
    product_id = body.get("catalog_product_id")
    if not isinstance(product_id, str) or product_id not in call.realm.products:
        raise not_found("product not found", code="RESOURCE.NOT_FOUND")
    interval = body.get("recurring_interval")
    group_key = body.get("subscription_group_key")
    if interval is not None and not group_key:
        raise invalid("subscription_group_key is required for recurring prices", 400)
    currency = body.get("currency", "USD")
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise unexpected()
    amount = body.get("unit_amount")
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise OssError(422, "VALIDATION.INVALID_INPUT", "unit_amount must be an integer")
    record: dict[str, Any] = {
        "catalog_price_id": new_uuid(),
        "realm_id": call.realm.realm_id,
        "catalog_product_id": product_id,
        "price_code": body.get("price_code"),
        "provider_price_id": body.get("provider_price_id"),
        "status": body.get("status") or "active",
        "currency": currency,
        "unit_amount": amount,
        "recurring_interval": interval,
        "recurring_count": body.get("recurring_count") if interval else None,
        "display_priority": body.get("display_priority") or 0,
        "metadata": body.get("metadata") or {},
        "subscription_group_id": subscription_group(call.realm, str(group_key)) if group_key else None,
        "subscription_group_key": group_key or None,
        "created_at": call.now,
    }
    call.realm.prices[record["catalog_price_id"]] = record
    return ok(_ops_view(record), 201)


def ops_list_prices(call: OssCall) -> Reply:
    items = sorted(call.realm.prices.values(), key=lambda p: p["created_at"])
    return _paged(call, [_ops_view(p) for p in items], "catalog_price_id")
