"""Usage gate: authorize -> commit (or cancel) with single-use leases that expire, preflight,
ingest and batch commits, per-feature quotas and rate limits, prepaid funding and budgets.

Denials:
- 429 `GATE.QUOTA_EXCEEDED` (hint `quota.remaining`) and 429 `GATE.RATE_LIMITED` (hint
  `rate.limit`), both with `Retry-After`;
- 402 `GATE.INSUFFICIENT_FUNDS` (hint `funding.xusd_shortfall`) and 402 `GATE.BUDGET_EXHAUSTED`
  (hint `budget.shortfall`);
- 409 `GATE.INVALID_LEASE` for unknown, used, cancelled or expired leases (hints
  `lease.expired` / `lease.closed_at_commit`), 422 for a feature that does not match its lease.
"""

from __future__ import annotations

import math
import secrets
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any

from ..core import Call, Reply
from ..errors import ApiError, invalid_input, not_found
from ..seed import Feature
from ..state import BillingAccount, Budget, Lease, iso, new_id
from ._util import int_string, ok, optional_str, paginate, require_str, sample_data


def window_bounds(window: str, now: float) -> tuple[float, float]:
    moment = datetime.fromtimestamp(now, timezone.utc)
    if window == "minute":
        start = moment.replace(second=0, microsecond=0)
        end = start + timedelta(minutes=1)
    elif window == "hour":
        start = moment.replace(minute=0, second=0, microsecond=0)
        end = start + timedelta(hours=1)
    elif window == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    else:
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = (
            start.replace(year=start.year + 1, month=1)
            if start.month == 12
            else start.replace(month=start.month + 1)
        )
    return start.timestamp(), end.timestamp()


def resolve_feature(call: Call, body: dict[str, Any], *, register: bool) -> Feature:
    code = require_str(body, "feature_code")
    family = body.get("feature_family_code")
    if family is not None and not isinstance(family, str):
        raise invalid_input("feature_family_code must be a string", reason="invalid_feature_family_code")
    feature = call.core.features.get(code)
    if feature is not None:
        return feature
    if not register:
        raise ApiError(
            404,
            "RESOURCE.NOT_FOUND",
            f"feature {code!r} is not configured in this realm",
            reason="feature_not_found",
            meta={"feature_code": code, "resource_type": "feature"},
        )
    # Like the service: unknown features are auto-registered (free, no quota) in the given
    # family, or in the realm's fallback family.
    feature = Feature(code=code, family_code=family or "default", name=code)
    call.core.features[code] = feature
    return feature


def _meta(feature: Feature, resource: str, now: float) -> dict[str, Any]:
    return {
        "feature_code": feature.code,
        "feature_family_code": feature.family_code,
        "resource_type": resource,
        "as_of": iso(now),
    }


def _quota_window(feature: Feature, now: float) -> tuple[float, float]:
    return window_bounds(feature.quota.window if feature.quota else "day", now)


def _used(call: Call, account: BillingAccount, feature: Feature, start: float) -> int:
    return call.state.usage.get((call.realm_id, account.billing_account_id, feature.code, start), 0)


def _budget(call: Call, account: BillingAccount, ref: str | None) -> Budget | None:
    if ref is None:
        return None
    budget = call.state.budgets_by_ref.get((call.realm_id, account.billing_account_id, ref))
    if budget is None:
        raise not_found("budget")
    return budget


def admit(
    call: Call,
    account: BillingAccount,
    feature: Feature,
    budget: Budget | None,
    estimated: int | None,
    *,
    record_rate: bool,
) -> tuple[tuple[float, float], list[dict[str, Any]]]:
    """Admission decision shared by authorize and preflight; raises the denial."""
    now = call.now
    start, end = _quota_window(feature, now)
    hints: list[dict[str, Any]] = []
    if feature.rate_limit is not None:
        rate = feature.rate_limit
        hits = call.state.rate_hits.setdefault(
            (call.realm_id, account.billing_account_id, feature.code), deque()
        )
        while hits and hits[0] <= now - rate.window_seconds:
            hits.popleft()
        if len(hits) >= rate.requests:
            retry = max(1, math.ceil(hits[0] + rate.window_seconds - now))
            raise ApiError(
                429,
                "GATE.RATE_LIMITED",
                f"rate limit of {rate.requests} calls per {rate.window_seconds} s reached",
                reason="rate_limited",
                hints=[{"type": "rate.limit", "message": f"retry in {retry} s"}],
                meta=_meta(feature, "rate_limit", now),
                error={"type": "rate_limited", "retry_after": retry},
                headers={"retry-after": str(retry)},
            )
        if record_rate:
            hits.append(now)
    if feature.quota is not None:
        used = _used(call, account, feature, start)
        remaining = max(feature.quota.limit_minor - used, 0)
        if remaining <= 0:
            retry = max(1, math.ceil(end - now))
            raise ApiError(
                429,
                "GATE.QUOTA_EXCEEDED",
                f"the {feature.quota.window} quota of {feature.code} is used up",
                reason="quota_exceeded",
                hints=[{"type": "quota.remaining", "max_quantity_minor": 0}],
                meta=_meta(feature, "quota", now) | {"window_start": iso(start), "window_end": iso(end)},
                error={"type": "quota_exceeded", "retry_after": retry},
                headers={"retry-after": str(retry)},
            )
        hints.append({"type": "quota.remaining", "max_quantity_minor": remaining})
    unit_cost = feature.cost_xusd(1)
    if call.core.seed.billing_mode == "prepaid" and unit_cost > 0 and account.balance_xusd < unit_cost:
        raise ApiError(
            402,
            "GATE.INSUFFICIENT_FUNDS",
            "the wallet balance does not cover this feature",
            reason="insufficient_funds",
            hints=[{"type": "funding.xusd_shortfall", "shortfall_xusd": unit_cost - account.balance_xusd}],
            meta=_meta(feature, "wallet", now),
            error={"type": "insufficient_funds"},
        )
    if budget is not None:
        remaining_budget = None if budget.limit_xusd is None else budget.limit_xusd - budget.consumed_xusd
        if budget.status != "active" or (
            remaining_budget is not None and remaining_budget < max(unit_cost, 1)
        ):
            raise ApiError(
                402,
                "GATE.BUDGET_EXHAUSTED",
                "the budget is closed or exhausted",
                reason="insufficient_budget",
                hints=[
                    {
                        "type": "budget.shortfall",
                        "budget_id": budget.budget_id,
                        "shortfall_xusd": max(unit_cost - max(remaining_budget or 0, 0), 0),
                    }
                ],
                meta=_meta(feature, "budget", now),
                error={"type": "insufficient_budget"},
            )
    if estimated:
        shortfall = feature.cost_xusd(estimated) - max(account.balance_xusd, 0)
        if shortfall > 0 and call.core.seed.billing_mode == "prepaid":
            hints.append({"type": "funding.xusd_shortfall", "shortfall_xusd": shortfall})
    return (start, end), hints


def gate_authorize(call: Call) -> Reply:
    body = call.json_body()
    account, user = call.require_bindings()
    feature = resolve_feature(call, body, register=True)
    estimated = int_string(body, "estimated_quantity_minor", required=False)
    budget = _budget(call, account, optional_str(body, "budget"))
    (start, end), hints = admit(call, account, feature, budget, estimated, record_rate=True)
    lease_id = optional_str(body, "lease") or f"lease_{secrets.token_hex(12)}"
    existing = call.state.leases.get(lease_id)
    if existing is not None and existing.state != "open":
        raise ApiError(
            409,
            "GATE.INVALID_LEASE",
            "this lease reference was already used",
            reason="lease_reused",
            error={"type": "conflict"},
        )
    expires = call.now + call.core.settings.lease_ttl_seconds
    call.state.leases[lease_id] = Lease(
        lease=lease_id,
        realm_id=call.realm_id,
        billing_account_id=account.billing_account_id,
        billing_user_id=user.billing_user_id,
        feature_code=feature.code,
        feature_family_code=feature.family_code,
        expires_at=expires,
        budget_id=budget.budget_id if budget else None,
    )
    data = {
        "lease": lease_id,
        "lease_token": lease_id,  # 0.1.2 name of the same reference
        "lease_id": lease_id,
        "lease_expires_at": iso(expires),
        "feature_code": feature.code,
        "feature_family_code": feature.family_code,
        "window_start": iso(start),
        "window_end": iso(end),
        "budget_id": budget.budget_id if budget else None,
    }
    return ok(data, hints=hints or None)


def gate_preflight(call: Call) -> Reply:
    body = call.json_body()
    account, _ = call.require_bindings()
    feature = resolve_feature(call, body, register=False)
    estimated = int_string(body, "estimated_quantity_minor", required=False)
    budget = _budget(call, account, optional_str(body, "budget"))
    (start, end), hints = admit(call, account, feature, budget, estimated, record_rate=False)
    data = {
        "as_of": iso(call.now),
        "feature_code": feature.code,
        "feature_family_code": feature.family_code,
        "window_start": iso(start),
        "window_end": iso(end),
        "budget_id": budget.budget_id if budget else None,
    }
    return ok(data, hints=hints or None)


def _lease_for(call: Call, body: dict[str, Any], account: BillingAccount) -> Lease:
    ref = body.get("lease") or body.get("lease_token")
    if not isinstance(ref, str) or not ref:
        raise invalid_input("lease is required", reason="invalid_lease")
    lease = call.state.leases.get(ref)
    if (
        lease is None
        or lease.realm_id != call.realm_id
        or lease.billing_account_id != account.billing_account_id
    ):
        raise ApiError(
            409,
            "GATE.INVALID_LEASE",
            "unknown lease",
            reason="unknown_lease",
            error={"type": "invalid_lease"},
        )
    if lease.state != "open":
        raise ApiError(
            409,
            "GATE.INVALID_LEASE",
            f"this lease is already {lease.state}",
            reason="lease_closed",
            hints=[{"type": "lease.closed_at_commit"}],
            error={"type": "invalid_lease"},
        )
    if call.now >= lease.expires_at:
        raise ApiError(
            409,
            "GATE.INVALID_LEASE",
            "this lease has expired",
            reason="lease_expired",
            hints=[{"type": "lease.expired"}],
            error={"type": "invalid_lease"},
        )
    return lease


def _charge(
    call: Call, account: BillingAccount, feature: Feature, quantity: int, budget: Budget | None
) -> dict[str, Any]:
    now = call.now
    start, _ = _quota_window(feature, now)
    usage_key = (call.realm_id, account.billing_account_id, feature.code, start)
    call.state.usage[usage_key] = call.state.usage.get(usage_key, 0) + quantity
    cost = feature.cost_xusd(quantity)
    account.balance_xusd -= cost
    commit_id = new_id()
    result: dict[str, Any] = {
        "commit_id": commit_id,
        "amount_xusd": str(cost),
        "cost_xusd": str(cost),
        "lines": [],
        "budget_id": None,
        "budget_consumed_delta_xusd": None,
        "budget_remaining_xusd": None,
        "balance_xusd": str(account.balance_xusd),
    }
    if budget is not None:
        budget.consumed_xusd += cost
        budget.updated_at = now
        result["budget_id"] = budget.budget_id
        result["budget_consumed_delta_xusd"] = str(cost)
        if budget.limit_xusd is not None:
            result["budget_remaining_xusd"] = str(max(budget.limit_xusd - budget.consumed_xusd, 0))
    call.state.commits.append(
        {
            "commit_id": commit_id,
            "billing_account_id": account.billing_account_id,
            "feature_code": feature.code,
            "quantity_minor": quantity,
            "cost_xusd": cost,
            "at": now,
        }
    )
    return result


def _commit_one(call: Call, body: dict[str, Any], account: BillingAccount) -> dict[str, Any]:
    lease = _lease_for(call, body, account)
    feature_code = require_str(body, "feature_code")
    if feature_code != lease.feature_code:
        raise ApiError(
            422,
            "VALIDATION.INVALID_INPUT",
            "feature_code does not match the lease",
            reason="feature_mismatch",
            error={"type": "feature_mismatch"},
        )
    quantity = int_string(body, "quantity_minor", required=True)
    assert quantity is not None
    feature = call.core.features[lease.feature_code]
    budget = call.state.budgets.get(lease.budget_id) if lease.budget_id else None
    lease.state = "committed"
    return _charge(call, account, feature, quantity, budget)


def gate_commit(call: Call) -> Reply:
    body = call.json_body()
    account, _ = call.require_bindings()
    return ok(_commit_one(call, body, account))


def gate_ingest(call: Call) -> Reply:
    """Usage without a prior authorize (e.g. measured after the fact)."""
    body = call.json_body()
    account, _ = call.require_bindings()
    feature = resolve_feature(call, body, register=True)
    quantity = int_string(body, "quantity_minor", required=True)
    assert quantity is not None
    budget = _budget(call, account, optional_str(body, "budget"))
    return ok(_charge(call, account, feature, quantity, budget))


def gate_commit_batch(call: Call) -> Reply:
    body = call.json_body()
    account, _ = call.require_bindings()
    raw_items = body.get("items", body.get("commits"))
    if not isinstance(raw_items, list) or not raw_items:
        raise invalid_input("items must be a non-empty list", reason="invalid_items")
    results: list[dict[str, Any]] = []
    committed = failed = 0
    for index, item in enumerate(raw_items):
        if not isinstance(item, dict):
            raise invalid_input("each item must be an object", reason="invalid_items")
        try:
            outcome = _commit_one(call, item, account)
            results.append({"index": index, "ok": True, "code": "OK", "data": outcome})
            committed += 1
        except ApiError as exc:
            results.append(
                {"index": index, "ok": False, "code": exc.code, "message": exc.message, "status": exc.status}
            )
            failed += 1
    return ok(sample_data(call, committed_count=committed, failed_count=failed, items=results))


def gate_cancel(call: Call) -> Reply:
    body = call.json_body()
    account, _ = call.require_bindings()
    lease = _lease_for(call, body, account)
    lease.state = "cancelled"
    return ok(sample_data(call, cancelled=True, released_cap=None))


def gate_list_feature_limits(call: Call) -> Reply:
    """Quota and rate windows of each feature, with this principal's usage in them."""
    account, _ = call.require_bindings()
    wanted = call.query.get("feature_code")
    family = call.query.get("feature_family_code")
    now = call.now
    limits: list[dict[str, Any]] = []
    for feature in call.core.features.values():
        if (wanted and feature.code != wanted) or (family and feature.family_code != family):
            continue
        quotas = []
        if feature.quota is not None:
            start, end = _quota_window(feature, now)
            quotas.append(
                {
                    "limit_minor": str(feature.quota.limit_minor),
                    "used_minor": str(_used(call, account, feature, start)),
                    "window_start": iso(start),
                    "window_end": iso(end),
                }
            )
        rates = []
        if feature.rate_limit is not None:
            rate = feature.rate_limit
            hits = call.state.rate_hits.get(
                (call.realm_id, account.billing_account_id, feature.code), deque()
            )
            recent = [t for t in hits if t > now - rate.window_seconds]
            rates.append(
                {
                    "limit_minor": str(rate.requests),
                    "used_minor": str(len(recent)),
                    "window_start": iso(now - rate.window_seconds),
                    "window_end": iso(now),
                }
            )
        limits.append(
            {
                "feature_code": feature.code,
                "feature_family_code": feature.family_code,
                "unit": "unit",
                "meters": [],
                "quotas": quotas,
                "rates": rates,
            }
        )
    page, meta = paginate(call, limits)
    return ok(page, meta=meta)


HANDLERS = {
    "service.gate_list_feature_limits": gate_list_feature_limits,
    "service.gate_authorize": gate_authorize,
    "service.gate_preflight": gate_preflight,
    "service.gate_commit": gate_commit,
    "service.gate_ingest": gate_ingest,
    "service.gate_commit_batch": gate_commit_batch,
    "service.gate_cancel": gate_cancel,
}
