"""What a realm holds before the first request: the server's built-ins (the fallback feature
family of the gate's auto-registry and the default billing plan), then the seed's catalog,
feature families and features, given the UUIDs this server uses for everything."""

from __future__ import annotations

from typing import Any

from ..seed import Seed
from .state import Family, Feature, Meter, Plan, RealmData, new_uuid, seed_uuid

FALLBACK_FAMILY = "auto.registry"
DEFAULT_PLAN = "default_billing_plan"


def seed_realm(realm: RealmData, seed: Seed, *, now: float) -> None:
    realm.families[FALLBACK_FAMILY] = Family(
        feature_family_id=new_uuid(),
        code=FALLBACK_FAMILY,
        name="Auto registry fallback",
        description="Fallback feature_family used for auto-registered features",
        entitlement_required=False,
        is_fallback=True,
        metadata={"auto": True, "fallback": True},
        created_at=now,
        updated_at=now,
    )
    realm.plans[DEFAULT_PLAN] = Plan(
        plan_id=new_uuid(),
        code=DEFAULT_PLAN,
        name="Default billing plan",
        metadata={"built_in": True},
        created_at=now,
        updated_at=now,
    )
    for product in seed.products:
        record = _product(realm.realm_id, product, now)
        realm.products[record["catalog_product_id"]] = record
    for price in seed.prices:
        record = _price(realm, price, now)
        realm.prices[record["catalog_price_id"]] = record
    for fam in seed.families:
        # Seeded families are open to everyone: no plan has to grant them.
        realm.families[fam.code] = Family(
            feature_family_id=seed_uuid("family", fam.code),
            code=fam.code,
            name=fam.name,
            description=fam.description or "",
            entitlement_required=False,
            created_at=now,
            updated_at=now,
        )
    for feat in seed.features:
        family = realm.families[feat.family_code]
        add_feature(realm, feat.code, family, now=now, name=feat.name)


def add_feature(
    realm: RealmData, code: str, family: Family, *, now: float, name: str | None = None
) -> Feature:
    """A feature with its own meter (same code), as the server creates them."""
    feature = Feature(
        feature_id=new_uuid(),
        code=code,
        family_id=family.feature_family_id,
        family_code=family.code,
        name=name or code,
        created_at=now,
        updated_at=now,
    )
    meter = realm.meters.get(code)
    if meter is None:
        meter = Meter(meter_id=new_uuid(), code=code, created_at=now, updated_at=now)
        realm.meters[code] = meter
    meter.feature_id, meter.feature_code = feature.feature_id, code
    feature.meter_ids.append(meter.meter_id)
    realm.features[code] = feature
    return feature


def _product(realm_id: str, raw: dict[str, Any], now: float) -> dict[str, Any]:
    seed_id = str(raw["catalog_product_id"])
    return {
        "catalog_product_id": seed_uuid("product", seed_id),
        "realm_id": realm_id,
        "product_code": seed_id,
        "provider": str(raw.get("provider") or "stripe"),
        "provider_product_id": raw.get("provider_product_id") or f"prod_{seed_id}",
        "kind": str(raw.get("kind") or "subscription"),
        "status": str(raw.get("status") or "active"),
        "display_priority": int(raw.get("display_priority") or 0),
        "presentation_config": dict(raw.get("presentation_config") or {}),
        "name": str(raw["name"]),
        "default_currency": str(raw.get("default_currency") or "USD"),
        "metadata": dict(raw.get("metadata") or {}),
        "created_at": now,
    }


def _price(realm: RealmData, raw: dict[str, Any], now: float) -> dict[str, Any]:
    seed_id = str(raw["catalog_price_id"])
    interval = raw.get("recurring_interval")
    group_key = raw.get("subscription_group_key") or (
        raw.get("billing_plan_code") or raw["catalog_product_id"] if interval else None
    )
    return {
        "catalog_price_id": seed_uuid("price", seed_id),
        "realm_id": realm.realm_id,
        "catalog_product_id": seed_uuid("product", str(raw["catalog_product_id"])),
        "price_code": seed_id,
        "provider_price_id": raw.get("provider_price_id") or f"price_{seed_id}",
        "status": str(raw.get("status") or "active"),
        "currency": str(raw.get("currency") or "USD"),
        "unit_amount": int(raw.get("unit_amount") or 0),
        "recurring_interval": interval,
        "recurring_count": raw.get("recurring_count") if interval else None,
        "display_priority": int(raw.get("display_priority") or 0),
        "metadata": dict(raw.get("metadata") or {}),
        "subscription_group_id": subscription_group(realm, group_key) if group_key else None,
        "subscription_group_key": group_key,
        "created_at": now,
    }


def subscription_group(realm: RealmData, key: str) -> str:
    group = realm.subscription_groups.get(key)
    if group is None:
        group = realm.subscription_groups[key] = new_uuid()
    return group
