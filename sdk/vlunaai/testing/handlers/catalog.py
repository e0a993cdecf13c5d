"""Catalog products and prices, feature families and features, straight from the seed.

Catalog answers are the hot path of benchmarks: each distinct query is encoded once and the
bytes are reused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ..core import Call, Reply
from ..errors import not_found
from ._util import limit_of, ok, page_meta, paginate

_INTERNAL_PRICE_KEYS = frozenset({"credit_xusd"})


def _family_refs(call: Call, codes: list[str]) -> list[dict[str, Any]]:
    refs = []
    for code in codes:
        fam = call.core.families.get(code)
        refs.append(
            {
                "feature_family_code": code,
                "name": fam.name if fam else code,
                "description": fam.description if fam else None,
                "metadata": None,
            }
        )
    return refs


def _price(call: Call, raw: dict[str, Any]) -> dict[str, Any]:
    price = {k: v for k, v in raw.items() if k not in _INTERNAL_PRICE_KEYS}
    # The payment provider's id of the price (required by the 0.1.2 models); the emulator is it.
    price.setdefault("provider_price_id", f"emu_{raw['catalog_price_id']}")
    price.setdefault("billing_plan_code", None)
    price.setdefault("currency", "USD")
    price.setdefault("unit_amount", 0)
    price.setdefault("recurring_interval", None)
    price.setdefault("recurring_count", None)
    price.setdefault("display_priority", None)
    price.setdefault("metadata", None)
    price.setdefault("subscription_state", None)
    product = next(
        (p for p in call.core.seed.products if p["catalog_product_id"] == raw["catalog_product_id"]), {}
    )
    price["feature_families"] = _family_refs(call, list(product.get("feature_families") or []))
    return price


def _product(call: Call, raw: dict[str, Any]) -> dict[str, Any]:
    product = dict(raw)
    product.setdefault("provider", "emulator")
    product.setdefault("provider_product_id", f"emu_{raw['catalog_product_id']}")
    product.setdefault("kind", "subscription")
    product.setdefault("status", "active")
    product.setdefault("default_currency", "USD")
    product.setdefault("display_priority", 0)
    product.setdefault("billing_plan_code", None)
    product.setdefault("presentation_config", {})
    product.setdefault("subscription_state", None)
    product["feature_families"] = _family_refs(call, list(raw.get("feature_families") or []))
    prices = [p for p in call.core.seed.prices if p["catalog_product_id"] == raw["catalog_product_id"]]
    product["default_price"] = _price(call, prices[0]) if prices else None
    return product


def _filtered(call: Call, items: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    query = call.query
    for key in keys:
        wanted = query.get(key)
        if wanted:
            items = [i for i in items if str(i.get(key)) == wanted]
    return items


Builder = Callable[[], tuple[list[dict[str, Any]], dict[str, Any]]]


def _cached(call: Call, kind: str, build: Builder) -> Reply:
    cache_key = (kind, call.realm_id, call.query_string)
    raw = call.core.cache.get(cache_key)
    if raw is None:
        items, meta = build()
        raw = msgspec.json.encode({"ok": True, "code": "OK", "data": items, "meta": meta})
        if len(call.core.cache) < 1024:
            call.core.cache[cache_key] = raw
    return Reply(status=200, data=None, raw=raw)


def list_catalog_products(call: Call) -> Reply:
    def build() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        products = [_product(call, p) for p in call.core.seed.products]
        products = _filtered(call, products, ("kind", "status", "billing_plan_code"))
        products.sort(key=lambda p: p.get("display_priority") or 0)
        return paginate(call, products)

    return _cached(call, "products", build)


def list_catalog_prices(call: Call) -> Reply:
    def build() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        prices = [_price(call, p) for p in call.core.seed.prices]
        prices = _filtered(
            call, prices, ("catalog_product_id", "currency", "recurring_interval", "billing_plan_code")
        )
        prices.sort(key=lambda p: p.get("display_priority") or 0)
        return paginate(call, prices)

    return _cached(call, "prices", build)


_FAMILY_ENVELOPE = "billing_mgt.FeatureFamilyEnvelope"


def _family(call: Call, code: str) -> dict[str, Any]:
    """A feature family with the fields both published releases know (0.1.2 refuses others)."""
    fam = call.core.families[code]
    sample = call.core.samples.data(_FAMILY_ENVELOPE)
    base: dict[str, Any] = sample if isinstance(sample, dict) else {}
    return base | {
        "feature_family_id": fam.code,
        "feature_family_code": fam.code,
        "name": fam.name,
        "description": fam.description,
        "active": True,
    }


def list_feature_families(call: Call) -> Reply:
    limit = limit_of(call)
    items = [_family(call, code) for code in list(call.core.families)[:limit]]
    return ok({"items": items, "next_cursor": None}, meta=page_meta(limit))


def get_feature_family(call: Call) -> Reply:
    code = call.params["feature_family_id"]
    if code not in call.core.families:
        raise not_found("feature family")
    return ok(_family(call, code))


HANDLERS = {
    "list_catalog_products": list_catalog_products,
    "list_catalog_prices": list_catalog_prices,
    "service.list_feature_families": list_feature_families,
    "service.get_feature_family": get_feature_family,
}
