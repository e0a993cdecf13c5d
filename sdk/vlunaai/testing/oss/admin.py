"""Realm configuration, with no binding: feature families, meters, features, billing plans and
their entitlements, event-rating policies. Upserts by code answer 201 when they create and 200
when they update; lists are `{"items": [...], "next_cursor": null}`."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from .call import OssCall, Reply, ok, require_text
from .errors import invalid, not_found
from .seeding import add_feature
from .state import Entitlement, Family, Feature, Meter, Plan, RealmData, iso_ms, new_uuid


def items(values: list[dict[str, Any]]) -> dict[str, Any]:
    return {"items": values, "next_cursor": None}


def _apply(target: Any, body: dict[str, Any], fields: tuple[str, ...]) -> None:
    for name in fields:
        if name in body and body[name] is not None:
            setattr(target, name, body[name])


# --- feature families -------------------------------------------------------------------------


def family_view(family: Family, *, with_fallback: bool = True) -> dict[str, Any]:
    view: dict[str, Any] = {
        "feature_family_id": family.feature_family_id,
        "feature_family_code": family.code,
        "name": family.name,
        "description": family.description,
        "entitlement_required": family.entitlement_required,
    }
    if with_fallback:
        view["is_fallback"] = family.is_fallback
    view.update(
        {
            "active": family.active,
            "metadata": family.metadata,
            "created_at": iso_ms(family.created_at),
            "updated_at": iso_ms(family.updated_at),
        }
    )
    return view


def list_feature_families(call: OssCall) -> Reply:
    return ok(items([family_view(f) for f in call.realm.families.values()]))


def upsert_feature_family(call: OssCall) -> Reply:
    body = call.json()
    code = require_text(body, "feature_family_code")
    family = call.realm.families.get(code)
    status = 200
    if family is None:
        family = Family(
            feature_family_id=new_uuid(), code=code, name=code, created_at=call.now, updated_at=call.now
        )
        call.realm.families[code] = family
        status = 201
    _apply(family, body, ("name", "description", "entitlement_required", "active", "metadata"))
    family.updated_at = call.now
    return ok(family_view(family), status)


def _family(call: OssCall) -> Family:
    family = call.realm.family_by_id(call.params["feature_family_id"])
    if family is None:
        raise not_found("feature family not found")
    return family


def get_feature_family(call: OssCall) -> Reply:
    return ok(family_view(_family(call)))


def update_feature_family(call: OssCall) -> Reply:
    family = _family(call)
    _apply(family, call.json(), ("name", "description", "entitlement_required", "active", "metadata"))
    family.updated_at = call.now
    return ok(family_view(family, with_fallback=False))


# --- meters -----------------------------------------------------------------------------------


def meter_view(meter: Meter, *, owned: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {"meter_id": meter.meter_id, "meter_code": meter.code}
    if owned:
        view["feature_id"] = meter.feature_id
        view["feature_code"] = meter.feature_code
    view.update(
        {
            "unit": meter.unit,
            "scale": 0,
            "rounding": "round",
            "semantic_kind": "activity",
            "active": meter.active,
            "metadata": meter.metadata,
            "created_at": iso_ms(meter.created_at),
            "updated_at": iso_ms(meter.updated_at),
        }
    )
    return view


def list_meters(call: OssCall) -> Reply:
    return ok(items([meter_view(m) for m in call.realm.meters.values()]))


def upsert_meter(call: OssCall) -> Reply:
    body = call.json()
    code = require_text(body, "meter_code")
    meter = call.realm.meters.get(code)
    status = 200
    if meter is None:
        meter = Meter(meter_id=new_uuid(), code=code, created_at=call.now, updated_at=call.now)
        call.realm.meters[code] = meter
        status = 201
        _apply(meter, body, ("unit", "active", "metadata"))
    return ok(meter_view(meter), status)


def _meter(call: OssCall) -> Meter:
    meter = call.realm.meter_by_id(call.params["meter_id"])
    if meter is None:
        raise not_found("meter not found")
    return meter


def get_meter(call: OssCall) -> Reply:
    return ok(meter_view(_meter(call)))


def update_meter(call: OssCall) -> Reply:
    meter = _meter(call)
    _apply(meter, call.json(), ("unit", "active", "metadata"))
    meter.updated_at = call.now
    return ok(meter_view(meter))


# --- features ---------------------------------------------------------------------------------


def feature_view(realm: RealmData, feature: Feature, *, needs_config: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {
        "feature_id": feature.feature_id,
        "feature_family_id": feature.family_id,
        "feature_family_code": feature.family_code,
    }
    if needs_config:
        view["missing_price_reason"] = "missing_price"
    meters = [realm.meter_by_id(m) for m in feature.meter_ids]
    view.update(
        {
            "feature_code": feature.code,
            "name": feature.name,
            "description": feature.description,
            "active": feature.active,
            "metadata": feature.metadata,
            "meters": [meter_view(m, owned=True) for m in meters if m is not None],
            "created_at": iso_ms(feature.created_at),
            "updated_at": iso_ms(feature.updated_at),
        }
    )
    return view


def list_features(call: OssCall) -> Reply:
    return ok(items([feature_view(call.realm, f) for f in call.realm.features.values()]))


def list_features_needing_config(call: OssCall) -> Reply:
    """Features without a price (here: all of them; the emulator prices nothing)."""
    return ok(items([feature_view(call.realm, f, needs_config=True) for f in call.realm.features.values()]))


def upsert_feature(call: OssCall) -> Reply:
    body = call.json()
    code = require_text(body, "feature_code")
    realm = call.realm
    feature = realm.features.get(code)
    status = 200
    if feature is None:
        family_code = require_text(body, "feature_family_code")
        family = realm.families.get(family_code)
        if family is None:
            raise not_found("feature family not found")
        feature = add_feature(realm, code, family, now=call.now)
        status = 201
    _apply(feature, body, ("name", "description", "active", "metadata"))
    feature.updated_at = call.now
    return ok(feature_view(realm, feature), status)


def _feature(call: OssCall) -> Feature:
    feature = call.realm.feature_by_id(call.params["feature_id"])
    if feature is None:
        raise not_found("feature not found")
    return feature


def get_feature(call: OssCall) -> Reply:
    return ok(feature_view(call.realm, _feature(call)))


def update_feature(call: OssCall) -> Reply:
    feature = _feature(call)
    _apply(feature, call.json(), ("name", "description", "active", "metadata"))
    feature.updated_at = call.now
    return ok(feature_view(call.realm, feature))


# --- billing plans and entitlements -----------------------------------------------------------


def plan_view(realm: RealmData, plan: Plan) -> dict[str, Any]:
    allowed = [e.feature_code for e in realm.entitlements.values() if e.plan_id == plan.plan_id]
    return {
        "plan_id": plan.plan_id,
        "plan_code": plan.code,
        "name": plan.name,
        "kind": plan.kind,
        "priority": plan.priority,
        "active": plan.active,
        "metadata": plan.metadata,
        "feature_codes": allowed,
        "feature_family_codes": [],
        "created_at": iso_ms(plan.created_at),
        "updated_at": iso_ms(plan.updated_at),
    }


def list_billing_plans(call: OssCall) -> Reply:
    return ok(items([plan_view(call.realm, p) for p in call.realm.plans.values()]))


def upsert_billing_plan(call: OssCall) -> Reply:
    body = call.json()
    code = require_text(body, "plan_code")
    plan = call.realm.plans.get(code)
    status = 200
    if plan is None:
        plan = Plan(plan_id=new_uuid(), code=code, name=code, created_at=call.now, updated_at=call.now)
        call.realm.plans[code] = plan
        status = 201
    _apply(plan, body, ("name", "kind", "priority", "active", "metadata"))
    plan.updated_at = call.now
    return ok(plan_view(call.realm, plan), status)


def _plan(call: OssCall) -> Plan:
    plan = call.realm.plan_by_id(call.params["plan_id"])
    if plan is None:
        raise not_found("billing plan not found")
    return plan


def get_billing_plan(call: OssCall) -> Reply:
    return ok(plan_view(call.realm, _plan(call)))


def update_billing_plan(call: OssCall) -> Reply:
    plan = _plan(call)
    _apply(plan, call.json(), ("name", "kind", "priority", "active", "metadata"))
    plan.updated_at = call.now
    return ok(plan_view(call.realm, plan))


def entitlement_view(e: Entitlement) -> dict[str, Any]:
    return {
        "bpe_id": e.bpe_id,
        "plan_id": e.plan_id,
        "feature_id": e.feature_id,
        "feature_code": e.feature_code,
        "effect": e.effect,
        "created_at": iso_ms(e.created_at),
        "updated_at": iso_ms(e.updated_at),
    }


def _plan_entitlements(realm: RealmData, plan: Plan) -> list[dict[str, Any]]:
    return [entitlement_view(e) for e in realm.entitlements.values() if e.plan_id == plan.plan_id]


def list_billing_plan_entitlements(call: OssCall) -> Reply:
    return ok(items(_plan_entitlements(call.realm, _plan(call))))


def upsert_billing_plan_entitlements(call: OssCall) -> Reply:
    plan = _plan(call)
    realm = call.realm
    body = call.json()
    entries = body.get("items")
    if not isinstance(entries, list):
        raise invalid("items must be an array")
    if body.get("mode") == "replace":
        for key in [k for k, e in realm.entitlements.items() if e.plan_id == plan.plan_id]:
            del realm.entitlements[key]
    for entry in entries:
        if not isinstance(entry, dict):
            raise invalid("items must be objects")
        feature = realm.features.get(str(entry.get("feature_code")))
        if feature is None:
            raise not_found("feature not found")
        effect = str(entry.get("effect") or "allow")
        existing = next(
            (
                e
                for e in realm.entitlements.values()
                if e.plan_id == plan.plan_id and e.feature_id == feature.feature_id
            ),
            None,
        )
        if existing is None:
            existing = Entitlement(
                bpe_id=new_uuid(),
                plan_id=plan.plan_id,
                feature_id=feature.feature_id,
                feature_code=feature.code,
                effect=effect,
                created_at=call.now,
                updated_at=call.now,
            )
            realm.entitlements[existing.bpe_id] = existing
        existing.effect = effect
        existing.updated_at = call.now
    return ok(items(_plan_entitlements(realm, plan)), 201)


def delete_billing_plan_entitlement(call: OssCall) -> Reply:
    plan = _plan(call)
    entitlement = call.realm.entitlements.get(call.params["bpe_id"])
    if entitlement is None or entitlement.plan_id != plan.plan_id:
        raise not_found("billing plan entitlement not found")
    del call.realm.entitlements[entitlement.bpe_id]
    return ok(entitlement_view(entitlement))


# --- event-rating policies ----------------------------------------------------------------------


def _policy_view(policy: dict[str, Any]) -> dict[str, Any]:
    return {
        "policy_id": policy["policy_id"],
        "name": policy["name"],
        "status": policy["status"],
        "active_version": policy["active_version"],
        "created_at": iso_ms(policy["created_at"]),
        "updated_at": iso_ms(policy["updated_at"]),
    }


def list_event_rating_policies(call: OssCall) -> Reply:
    return ok(items([_policy_view(p) for p in call.realm.policies.values()]))


def upsert_event_rating_policy(call: OssCall) -> Reply:
    body = call.json()
    policy_id = require_text(body, "policy_id")
    policy = call.realm.policies.get(policy_id)
    status = 200
    if policy is None:
        policy = {
            "policy_id": policy_id,
            "name": policy_id,
            "status": "active",
            "active_version": None,
            "created_at": call.now,
            "versions": {},
        }
        call.realm.policies[policy_id] = policy
        status = 201
    if isinstance(body.get("name"), str):
        policy["name"] = body["name"]
    policy["updated_at"] = call.now
    return ok(_policy_view(policy), status)


def _policy(call: OssCall) -> dict[str, Any]:
    policy = call.realm.policies.get(call.params["policy_id"])
    if policy is None:
        raise not_found("policy not found")
    return policy


def get_event_rating_policy(call: OssCall) -> Reply:
    return ok(_policy_view(_policy(call)))


def update_event_rating_policy(call: OssCall) -> Reply:
    policy = _policy(call)
    body = call.json()
    if isinstance(body.get("name"), str):
        policy["name"] = body["name"]
    policy["updated_at"] = call.now
    return ok(_policy_view(policy), 201)


def _validate_dsl(dsl: Any) -> tuple[str, str | None]:
    """(hash of the DSL, compile error or None). The server compiles `dsl_json`; the emulator
    checks its outline: an object with a string `dsl_version` and a `rules` array."""
    raw = json.dumps(dsl, sort_keys=True, separators=(",", ":")).encode()
    digest = base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")
    if not isinstance(dsl, dict) or not isinstance(dsl.get("dsl_version"), str):
        return digest, "dsl.dsl_version must be a string"
    if not isinstance(dsl.get("rules"), list):
        return digest, "dsl.rules must be an array"
    return digest, None


def _version_view(policy: dict[str, Any], version: dict[str, Any]) -> dict[str, Any]:
    return {
        "policy_id": policy["policy_id"],
        "policy_version": version["policy_version"],
        "effective_at": version["effective_at"],
        "dsl_hash": version["dsl_hash"],
        "created_at": iso_ms(version["created_at"]),
    }


def list_event_rating_policy_versions(call: OssCall) -> Reply:
    policy = _policy(call)
    return ok(items([_version_view(policy, v) for v in policy["versions"].values()]))


def create_event_rating_policy_version(call: OssCall) -> Reply:
    policy = _policy(call)
    body = call.json()
    digest, error = _validate_dsl(body.get("dsl_json"))
    if error is not None:
        raise invalid("dsl_json invalid")
    name = require_text(body, "policy_version")
    version = {
        "policy_version": name,
        "effective_at": body.get("effective_at"),
        "dsl_hash": digest,
        "created_at": call.now,
    }
    policy["versions"][name] = version
    return ok(_version_view(policy, version), 201)


def get_event_rating_policy_version(call: OssCall) -> Reply:
    policy = _policy(call)
    version = policy["versions"].get(call.params["policy_version"])
    if version is None:
        raise not_found("policy version not found")
    return ok(_version_view(policy, version))


def validate_event_rating_policy_version(call: OssCall) -> Reply:
    digest, error = _validate_dsl(call.json().get("dsl_json"))
    result: dict[str, Any] = {"valid": error is None, "computed_dsl_hash": digest}
    if error is not None:
        result["summary"] = {"compile_error": error}
        result["errors"] = [{"code": "dsl_invalid", "message": error, "details": {}}]
    else:
        result["summary"] = {}
        result["errors"] = []
    return ok(result, 201)
