"""Token issuance, wallet, budgets, the usage gate and billing events, as the open-source server
answers them (its quirks included: see spec/vluna-api/recorded/README.md)."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import string
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgspec

from ..tokens import KNOWN_SCOPES
from .call import OssCall, Reply, ok, quantity, require_text
from .errors import OssError, invalid, not_found
from .seeding import FALLBACK_FAMILY, add_feature
from .state import WALLET_CASH, Account, Budget, Family, Feature, Grant, Lease, RealmData, iso_ms, new_uuid

DEFAULT_TTL = 900
MIN_TTL, MAX_TTL = 60, 3600
USD_PER_XUSD = Decimal("0.000001")
_LEASE_TOKEN = re.compile(r"^lease\.([0-9a-f-]{36})\.([0-9a-f]{16})$")


# --- tokens -----------------------------------------------------------------------------------


def _ttl(value: Any) -> int:
    """A positive number is clamped to 60..3600; anything else (0, negative, a string) is 900."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return DEFAULT_TTL
    return int(max(MIN_TTL, min(MAX_TTL, value)))


def _scopes(value: Any) -> tuple[str, ...]:
    """Known scopes only; none left (or not a list) means both."""
    if isinstance(value, list):
        known = tuple(s for s in KNOWN_SCOPES if s in value)
        if known:
            return known
    return KNOWN_SCOPES


def issue_platform_token(call: OssCall) -> Reply:
    body = call.json()
    principal = body.get("principal_id")
    if principal is None or principal == "":
        raise invalid("missing_principal")
    user_id = body.get("user_id")
    if not isinstance(user_id, str) or not user_id:
        raise invalid("missing_user_id")
    account = call.core.account_for(call.realm, str(principal))
    user = call.core.user_for(account, user_id, call.now)
    ttl = _ttl(body.get("session_ttl_sec"))
    token, claims = call.core.issue_token(call, account, user, _scopes(body.get("scopes")), ttl)
    return ok(
        {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": ttl,
            "expires_at": iso_ms(claims.expires_at),
            "billing_account_id": account.billing_account_id,
            "billing_user_id": user.billing_user_id,
        }
    )


# --- wallet -----------------------------------------------------------------------------------


def _usd(xusd: int) -> str:
    value = (Decimal(xusd) * USD_PER_XUSD).normalize()
    return format(value, "f")


def _money(xusd: int) -> dict[str, str]:
    return {"xusd": str(xusd), "usd": _usd(xusd)}


def _grant_view(grant: Grant) -> dict[str, Any]:
    return {
        "grant_id": grant.grant_id,
        "grant_program_code": WALLET_CASH,
        "name": "Wallet Cash",
        "origin": "cash",
        "on_ledger": False,
        "priority": 0,
        "status": "active",
        "issued": _money(grant.issued_xusd),
        "remaining": _money(grant.remaining_xusd),
        "consumed_xusd": str(grant.consumed_xusd),
        "metadata": {"system": WALLET_CASH},
    }


def get_credit_balance(call: OssCall) -> Reply:
    # The account of the binding or token, whatever billing_account_id the query or a header
    # names. The server reports twice the remaining credit as both balance and outstanding
    # balance (recorded after a 5,000,000 grant: 10000000); the emulator answers the same.
    account = call.bound_account()
    total = 2 * account.remaining_xusd
    return ok(
        {
            "billing_account_id": account.billing_account_id,
            "billing_user_id": call.bound_user().billing_user_id,
            "balances": _money(total),
            "outstanding_balances": _money(total),
            "conversion": {"as_of": iso_ms(call.now), "usd_per_xusd": str(USD_PER_XUSD)},
            "grants": [_grant_view(account.cash)] if account.cash else [],
        }
    )


def _wallet_answer(call: OssCall, account: Account, unit: str, **extra: Any) -> Reply:
    return ok(
        {
            "billing_account_id": account.billing_account_id,
            "billing_user_id": call.bound_user().billing_user_id,
            "unit": unit,
            "balance": str(account.remaining_xusd),
            **extra,
        },
        201,
    )


def wallet_adjust(call: OssCall) -> Reply:
    body = call.json()
    account = call.bound_account()
    delta = body.get("delta", body.get("amount"))
    if isinstance(delta, bool) or not isinstance(delta, (int, str)) or not str(delta).lstrip("-").isdigit():
        raise invalid("delta must be an integer string")
    if account.cash is None:
        account.cash = Grant(grant_id=new_uuid())
    account.cash.issued_xusd += int(delta)
    return _wallet_answer(call, account, str(body.get("unit") or "xusd"))


def wallet_consume(call: OssCall) -> Reply:
    body = call.json()
    account = call.bound_account()
    amount = quantity(body.get("amount"), "amount")
    if account.remaining_xusd < amount:
        raise OssError(402, "GATE.INSUFFICIENT_FUNDS", "insufficient funds")
    assert account.cash is not None or amount == 0
    if account.cash is not None:
        account.cash.consumed_xusd += amount
    return _wallet_answer(call, account, str(body.get("unit") or "xusd"), replay=False)


# --- budgets ----------------------------------------------------------------------------------


def budget_view(budget: Budget) -> dict[str, Any]:
    view: dict[str, Any] = {"budget_id": budget.budget_id, "billing_account_id": budget.billing_account_id}
    if budget.name is not None:
        view["name"] = budget.name
    view["status"] = budget.status
    view["scope_kind"] = "global"
    if budget.limit_xusd is not None:
        view["limit_xusd"] = str(budget.limit_xusd)
    view.update(
        {
            "consumed_xusd": str(budget.consumed_xusd),
            "window_start": None,
            "window_end": None,
            "metadata": budget.metadata,
            "created_at": iso_ms(budget.created_at),
            "updated_at": iso_ms(budget.updated_at),
        }
    )
    if budget.limit_xusd is not None:
        view["remaining_xusd"] = str(max(budget.limit_xusd - budget.consumed_xusd, 0))
    return view


def create_budget(call: OssCall) -> Reply:
    body = call.json()
    account = call.bound_account()
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise invalid("name must be a string")
    limit = body.get("limit_xusd")
    budget = Budget(
        budget_id=new_uuid(),
        billing_account_id=account.billing_account_id,
        created_at=call.now,
        updated_at=call.now,
        name=name,
        limit_xusd=None if limit is None else quantity(limit, "limit_xusd"),
        metadata=dict(body["metadata"]) if isinstance(body.get("metadata"), dict) else {},
    )
    call.realm.budgets[budget.budget_id] = budget
    return ok(budget_view(budget), 201)


def list_budgets(call: OssCall) -> Reply:
    account = call.bound_account()
    found = [b for b in call.realm.budgets.values() if b.billing_account_id == account.billing_account_id]
    found.sort(key=lambda b: b.budget_id)
    return ok({"items": [budget_view(b) for b in found]})


def _budget(call: OssCall) -> Budget:
    budget = call.realm.budgets.get(call.params["budget_id"])
    if budget is None or budget.billing_account_id != call.bound_account().billing_account_id:
        raise not_found("budget not found", code="RESOURCE.NOT_FOUND")
    return budget


def get_budget(call: OssCall) -> Reply:
    return ok(budget_view(_budget(call)))


def close_budget(call: OssCall) -> Reply:
    budget = _budget(call)
    if budget.status != "closed":
        budget.status = "closed"
        budget.updated_at = call.now
        reason = call.json().get("reason")
        budget.close_reason = reason if isinstance(reason, str) else None
    view = budget_view(budget)
    return ok(
        {k: view[k] for k in ("budget_id", "consumed_xusd", "remaining_xusd") if k in view},
        201,
    )


# --- usage gate -------------------------------------------------------------------------------


def _day(now: float) -> tuple[str, str]:
    start = datetime.fromtimestamp(now, timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return iso_ms(start.timestamp()), iso_ms((start + timedelta(days=1)).timestamp())


def _feature(call: OssCall, code: str, family_code: Any) -> Feature:
    """A feature of the realm, auto-registered on first sight (in the named family, created if
    needed, or the fallback family), as the server's gate auto-registry does."""
    realm = call.realm
    feature = realm.features.get(code)
    if feature is not None:
        return feature
    wanted = family_code if isinstance(family_code, str) and family_code else FALLBACK_FAMILY
    family = realm.families.get(wanted)
    if family is None:
        family = Family(
            feature_family_id=new_uuid(),
            code=wanted,
            name=wanted,
            entitlement_required=False,
            metadata={"auto": True},
            created_at=call.now,
            updated_at=call.now,
        )
        realm.families[wanted] = family
    return add_feature(realm, code, family, now=call.now)


def _entitled(realm: RealmData, account: Account, feature: Feature) -> None:
    family = realm.families.get(feature.family_code)
    if family is None or not family.entitlement_required:
        return
    for assignment in realm.assignments.values():
        if assignment["billing_account_id"] != account.billing_account_id or assignment["status"] != "active":
            continue
        for e in realm.entitlements.values():
            if (
                e.plan_id == assignment["plan_id"]
                and e.feature_id == feature.feature_id
                and e.effect == "allow"
            ):
                return
    raise OssError(403, "ENTITLEMENT.REQUIRED", "entitlement required")


def _meters(realm: RealmData, feature: Feature) -> list[str]:
    return [m.code for m in (realm.meter_by_id(i) for i in feature.meter_ids) if m is not None]


def _pricing_hint(realm: RealmData, feature: Feature) -> dict[str, Any]:
    return {"type": "pricing.not_configured", "feature_code": feature.code, "meters": _meters(realm, feature)}


def _used(account: Account, feature: Feature) -> None:
    if feature.code not in account.features_used:
        account.features_used.append(feature.code)


def gate_authorize(call: OssCall) -> Reply:
    body = call.json()
    code = body.get("feature_code")
    if not isinstance(code, str) or not code:
        raise invalid("feature_code must be a string")
    account = call.bound_account()
    feature = _feature(call, code, body.get("feature_family_code"))
    _entitled(call.realm, account, feature)
    _used(account, feature)
    lease_id = new_uuid()
    token = f"lease.{lease_id}.{secrets.token_hex(8)}"
    call.realm.leases[token] = Lease(
        lease_id=lease_id,
        token=token,
        billing_account_id=account.billing_account_id,
        billing_user_id=call.bound_user().billing_user_id,
        feature_code=feature.code,
    )
    hints = []
    if body.get("estimated_quantity_minor") is not None:
        hints.append(_pricing_hint(call.realm, feature))
    if account.remaining_xusd < 1:
        hints.append({"type": "funding.xusd_shortfall", "shortfall_xusd": 1})
    start, end = _day(call.now)
    data = {
        "lease_token": token,
        "lease_id": lease_id,
        "feature_code": feature.code,
        "feature_family_code": feature.family_code,
        "window_start": start,
        "window_end": end,
    }
    return ok(data, hints=hints or None)


def _fingerprint(parts: Any) -> str:
    return hashlib.sha256(msgspec.json.encode(parts) + secrets.token_bytes(8)).hexdigest()


def _snapshot(feature: Feature, meter: str, now: float) -> dict[str, Any]:
    return {
        "computed_at": iso_ms(now),
        "unit": "unit",
        "fingerprint": _fingerprint([feature.code, meter]),
        "unit_price_xusd": "0",
        "unit_quantity_minor": "1",
        "rounding": "floor",
        "effective_at": iso_ms(now),
        "provenance": {"source": "missing", "inputs": {"feature_code": feature.code, "meter_code": meter}},
    }


def _commit(call: OssCall, feature: Feature, amount: int) -> dict[str, Any]:
    """A commit of `amount` units; nothing is priced, so it costs 0."""
    lines = []
    for meter in _meters(call.realm, feature):
        pricing, cost = _snapshot(feature, meter, call.now), _snapshot(feature, meter, call.now)
        lines.append(
            {
                "line_id": new_uuid(),
                "meter_code": meter,
                "quantity_minor": str(amount),
                "unit_price_xusd": "0",
                "amount_xusd": "0",
                "pricing_snapshot": pricing,
                "pricing_fingerprint": pricing["fingerprint"],
                "cost_xusd": "0",
                "unit_cost_xusd": "0",
                "cost_unit_quantity_minor": "1",
                "cost_rounding": "floor",
                "cost_snapshot": cost,
                "cost_fingerprint": cost["fingerprint"],
            }
        )
    return {"commit_id": new_uuid(), "amount_xusd": "0", "cost_xusd": "0", "lines": lines}


def _lease(call: OssCall, body: dict[str, Any]) -> Lease:
    token = body.get("lease_token")
    if not isinstance(token, str) or not token:
        raise invalid("lease_token is required")
    if not _LEASE_TOKEN.match(token):
        raise invalid("invalid lease token format")
    lease = call.realm.leases.get(token)
    if (
        lease is None
        or lease.billing_account_id != call.bound_account().billing_account_id
        or lease.billing_user_id != call.bound_user().billing_user_id
    ):
        raise OssError(422, "RESOURCE.NOT_FOUND", "lease not found")
    return lease


def _commit_lease(call: OssCall, body: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(commit, hints). A lease can be committed again, closed or cancelled: it says so in a
    hint, and the usage counts again (recorded)."""
    lease = _lease(call, body)
    if body.get("feature_code") != lease.feature_code:
        raise OssError(422, "WRITE.INVALID_PAYLOAD", "feature mismatch for lease")
    amount = quantity(body.get("quantity_minor"))
    feature = call.realm.features[lease.feature_code]
    hints = []
    if lease.state != "open":
        hints.append({"type": "lease.closed_at_commit", "state": lease.state})
    lease.state = "closed"
    hints.append(_pricing_hint(call.realm, feature))
    return _commit(call, feature, amount), hints


def gate_commit(call: OssCall) -> Reply:
    commit, hints = _commit_lease(call, call.json())
    return ok(commit, hints=hints)


def gate_commit_batch(call: OssCall) -> Reply:
    entries = call.json().get("items")
    if not isinstance(entries, list):
        raise invalid("items must be an array")
    results: list[dict[str, Any]] = []
    for index, entry in enumerate(entries):
        try:
            commit, _ = _commit_lease(call, entry if isinstance(entry, dict) else {})
        except OssError as exc:
            results.append(
                {"index": index, "status": "invalid", "error": {"type": exc.code, "details": exc.message}}
            )
        else:
            results.append({"index": index, "status": "committed", "commit": commit})
    committed = sum(1 for r in results if r["status"] == "committed")
    return ok({"items": results, "committed_count": committed, "failed_count": len(results) - committed})


def gate_cancel(call: OssCall) -> Reply:
    lease = _lease(call, call.json())
    was_open = lease.state == "open"
    if was_open:
        lease.state = "canceled"
    trace = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    return ok({"cancelled": was_open, "released_cap": "0", "trace_id": f"cancel_{trace}"})


def gate_ingest(call: OssCall) -> Reply:
    body = call.json()
    code = require_text(body, "feature_code", "feature_code must be a string")
    account = call.bound_account()
    feature = _feature(call, code, body.get("feature_family_code"))
    _entitled(call.realm, account, feature)
    _used(account, feature)
    return ok(_commit(call, feature, quantity(body.get("quantity_minor"))))


def gate_list_feature_limits(call: OssCall) -> Reply:
    account, realm = call.bound_account(), call.realm
    out = []
    for code in sorted(account.features_used):
        feature = realm.features[code]
        out.append(
            {
                "feature_code": code,
                "feature_family_code": feature.family_code,
                "unit": "unit",
                "meters": _meters(realm, feature),
            }
        )
    return ok(out)


def gate_list_meter_limits(call: OssCall) -> Reply:
    account, realm = call.bound_account(), call.realm
    out = []
    for code in sorted(account.features_used):
        feature = realm.features[code]
        for meter in _meters(realm, feature):
            out.append(
                {
                    "meter_code": meter,
                    "unit": "unit",
                    "features": [code],
                    "feature_family_codes": [feature.family_code],
                }
            )
    return ok(out)


# --- billing events ---------------------------------------------------------------------------


def _event(call: OssCall, body: dict[str, Any]) -> dict[str, Any]:
    for name in ("event_key", "semantic_kind", "event_type"):
        require_text(body, name, f"{name} is required")
    occurred = body.get("occurred_at")
    try:
        at = datetime.fromisoformat(str(occurred).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise invalid("occurred_at must be an ISO timestamp") from None
    request_hash = base64.urlsafe_b64encode(hashlib.sha256(msgspec.json.encode(body)).digest())
    record = {
        "event_id": new_uuid(),
        "semantic_kind": body["semantic_kind"],
        "occurred_at": iso_ms(at),
        "event_type": body["event_type"],
        "request_hash": request_hash.decode().rstrip("="),
        "payload": body.get("payload") if isinstance(body.get("payload"), dict) else {},
        "created_at": iso_ms(call.now),
    }
    call.realm.events[record["event_id"]] = record
    return record


def record_billing_event(call: OssCall) -> Reply:
    return ok(_event(call, call.json()), 201)


def record_billing_event_batch(call: OssCall) -> Reply:
    events = call.json().get("events")
    if not isinstance(events, list):
        raise invalid("events must be an array")
    results: list[dict[str, Any]] = []
    for index, entry in enumerate(events):
        try:
            record = _event(call, entry if isinstance(entry, dict) else {})
        except OssError as exc:
            results.append({"index": index, "status": "failed", "error": exc.message})
        else:
            results.append({"index": index, "status": "accepted", "event_id": record["event_id"]})
    accepted = sum(1 for r in results if r["status"] == "accepted")
    return ok({"results": results, "accepted_count": accepted, "failed_count": len(results) - accepted}, 207)


# --- the rest ---------------------------------------------------------------------------------


def save_consent(call: OssCall) -> Reply:
    return ok({"saved": True}, 201)


def health(call: OssCall) -> Reply:
    return ok({"service": "vluna", "status": "healthy"})


def demo_read(call: OssCall) -> Reply:
    claims = call.identity.claims
    if claims is None:
        raise OssError(401, "AUTH.UNAUTHORIZED", "missing_token")
    scope = "billing:read" + (" billing:write" if "checkout" in claims.scopes else "")
    return ok(
        {
            "realmId": claims.realm_id,
            "sub": claims.user_id,
            "principal": {"id": claims.principal_id, "type": "platform"},
            "billingAccountId": claims.billing_account_id,
            "scope": scope,
            "note": "Requires billing:read",
        }
    )
