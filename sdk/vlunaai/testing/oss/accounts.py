"""Billing accounts and users (realm-wide, no binding), and what belongs to one bound account:
plan assignments, contracts and their terms, invoices, subscriptions, payments,
reconciliations, checkout and portal sessions."""

from __future__ import annotations

from typing import Any

from .admin import items
from .call import OssCall, Reply, limit_of, ok, page_meta, require_text
from .errors import OssError, invalid, not_found, unexpected
from .state import Account, BillingUser, Budget, RealmData, iso_ms, new_uuid


def _iso(ts: float | None) -> str | None:
    return iso_ms(ts) if ts is not None else None


# --- billing accounts -------------------------------------------------------------------------


def account_view(account: Account) -> dict[str, Any]:
    return {
        "billing_account_id": account.billing_account_id,
        "billing_principal_id": account.principal_id,
        "seat_limit": account.seat_limit,
        "seat_limit_source": account.seat_limit_source,
        "seat_limit_updated_at": _iso(account.seat_limit_updated_at),
        "metadata": account.metadata,
        "created_at": iso_ms(account.created_at),
    }


def _account(call: OssCall) -> Account:
    account = call.realm.accounts_by_id.get(call.params["billing_account_id"])
    if account is None:
        raise not_found("billing account not found")
    return account


def list_billing_accounts(call: OssCall) -> Reply:
    accounts = sorted(call.realm.accounts_by_id.values(), key=lambda a: a.billing_account_id)
    return ok(items([account_view(a) for a in accounts]))


def update_billing_account(call: OssCall) -> Reply:
    account = _account(call)
    body = call.json()
    if "seat_limit" in body:
        limit = body["seat_limit"]
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise invalid("seat_limit must be a non-negative integer or null")
        account.seat_limit = limit
        account.seat_limit_source = "ops.manual"
        account.seat_limit_updated_at = call.now
    if isinstance(body.get("metadata"), dict):
        account.metadata = body["metadata"]
    return ok(account_view(account))


def get_billing_account_seat_summary(call: OssCall) -> Reply:
    account = _account(call)
    counts = {s: sum(1 for u in account.users.values() if u.status == s) for s in ("active", "disabled")}
    available = None if account.seat_limit is None else max(account.seat_limit - counts["active"], 0)
    return ok(
        {
            "billing_account_id": account.billing_account_id,
            "seat_limit": account.seat_limit,
            "seat_limit_source": account.seat_limit_source,
            "seat_limit_updated_at": _iso(account.seat_limit_updated_at),
            "active_user_count": counts["active"],
            "disabled_user_count": counts["disabled"],
            "deleted_user_count": 0,
            "available_seats": available,
            "over_limit": account.seat_limit is not None and counts["active"] > account.seat_limit,
        }
    )


_DETAIL_FIELDS = ("billing_email", "legal_name", "entity_type", "default_address", "tax_ids")


def update_billing_account_billing_details(call: OssCall) -> Reply:
    account = _account(call)
    body = call.json()
    details = account.billing_details
    if details is None:
        details = account.billing_details = {f: None for f in _DETAIL_FIELDS} | {"created_at": call.now}
    for name in _DETAIL_FIELDS:
        if name in body:
            details[name] = body[name]
    details["metadata"] = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
    details["updated_at"] = call.now
    return ok(
        {
            "billing_account_id": account.billing_account_id,
            **{f: details[f] for f in _DETAIL_FIELDS},
            "metadata": details["metadata"],
            "last_updated_by": "ops",
            "source_updated_at": None,
            "created_at": iso_ms(details["created_at"]),
            "updated_at": iso_ms(details["updated_at"]),
        }
    )


# --- billing users ----------------------------------------------------------------------------


def user_view(user: BillingUser) -> dict[str, Any]:
    return {
        "billing_user_id": user.billing_user_id,
        "billing_account_id": user.billing_account_id,
        "billing_principal_id": user.principal_id,
        "business_user_id": user.user_id,
        "user_id": user.user_id,
        "status": user.status,
        "display_name": user.display_name,
        "email": user.email,
        "metadata": user.metadata,
        "created_at": iso_ms(user.created_at),
        "updated_at": iso_ms(user.updated_at),
    }


def list_billing_users(call: OssCall) -> Reply:
    account = _account(call)
    users = sorted(account.users.values(), key=lambda u: u.billing_user_id)
    return ok(items([user_view(u) for u in users]))


def create_billing_user(call: OssCall) -> Reply:
    account = _account(call)
    user_id = require_text(call.json(), "user_id")
    user = call.core.user_for(account, user_id, call.now)
    user.updated_at = call.now
    return ok(user_view(user), 201)


def _user(call: OssCall) -> BillingUser:
    # Any user of the realm, whatever the binding (recorded: bound to A, B's user is returned).
    user = call.realm.users_by_id.get(call.params["billing_user_id"])
    if user is None:
        raise not_found("billing user not found")
    return user


def get_billing_user(call: OssCall) -> Reply:
    return ok(user_view(_user(call)))


def update_billing_user(call: OssCall) -> Reply:
    user = _user(call)
    body = call.json()
    for name in ("display_name", "email"):
        if name in body:
            setattr(user, name, body[name])
            user.metadata = {name: body[name], **user.metadata}
    if isinstance(body.get("metadata"), dict):
        user.metadata = {**user.metadata, **body["metadata"]}
    user.updated_at = call.now
    return ok(user_view(user))


def _set_status(call: OssCall, status: str) -> Reply:
    user = _user(call)
    user.status = status
    user.updated_at = call.now
    return ok(user_view(user), 201)


def disable_billing_user(call: OssCall) -> Reply:
    return _set_status(call, "disabled")


def restore_billing_user(call: OssCall) -> Reply:
    return _set_status(call, "active")


def _user_wallet(user: BillingUser, now: float) -> dict[str, Any]:
    # Per-user grants only; the account's wallet-cash grant is not one of them.
    return {
        "billing_user_id": user.billing_user_id,
        "billing_account_id": user.billing_account_id,
        "as_of": iso_ms(now),
        "ledger_balance_xusd": "0",
        "grant_total_xusd": "0",
        "grant_remaining_xusd": "0",
        "grant_available_xusd": "0",
        "outstanding_balance_xusd": "0",
        "grants": [],
    }


def get_billing_user_wallet(call: OssCall) -> Reply:
    return ok(_user_wallet(_user(call), call.now))


def _account_budgets(realm: RealmData, account_id: str) -> list[Budget]:
    return [b for b in realm.budgets.values() if b.billing_account_id == account_id]


def _activity(realm: RealmData, user: BillingUser) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for budget in _account_budgets(realm, user.billing_account_id):
        metadata: dict[str, Any] = {"budget_id": budget.budget_id, "scope_kind": "global", "scope_ref": None}
        if budget.close_reason is not None:
            metadata["close_reason"] = budget.close_reason
        rows.append(
            {
                "kind": "budget",
                "activity_id": f"budget:{budget.budget_id}",
                "occurred_at": budget.updated_at,
                "title": f"Budget {budget.name}" if budget.name else "Budget",
                "status": budget.status,
                "amount_xusd": None if budget.limit_xusd is None else str(budget.limit_xusd),
                "feature_code": None,
                "metadata": metadata,
            }
        )
    rows.sort(key=lambda r: -r["occurred_at"])
    return [{**r, "occurred_at": iso_ms(r["occurred_at"])} for r in rows]


def list_billing_user_activity(call: OssCall) -> Reply:
    return ok(items(_activity(call.realm, _user(call))))


def get_billing_user_summary(call: OssCall) -> Reply:
    user = _user(call)
    budgets = _account_budgets(call.realm, user.billing_account_id)
    activity = _activity(call.realm, user)
    return ok(
        {
            "user": user_view(user),
            "wallet": _user_wallet(user, call.now),
            "grants": {"total": 0, "active": 0},
            "grant_assignments": {"total": 0, "active": 0},
            "budgets": {"total": len(budgets), "active": sum(1 for b in budgets if b.status == "active")},
            "usage_30d": {"amount_xusd": "0", "cost_xusd": "0", "margin_xusd": "0", "commit_count": 0},
            "last_activity_at": activity[0]["occurred_at"] if activity else None,
        }
    )


# --- plan assignments -------------------------------------------------------------------------


def _assignment_view(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "created_at": iso_ms(record["created_at"]), "updated_at": iso_ms(record["updated_at"])}


def list_billing_plan_assignments(call: OssCall) -> Reply:
    account = call.bound_account()
    found = [
        a for a in call.realm.assignments.values() if a["billing_account_id"] == account.billing_account_id
    ]
    return ok(items([_assignment_view(a) for a in found]))


def create_billing_plan_assignment(call: OssCall) -> Reply:
    account = call.bound_account()
    body = call.json()
    plan = call.realm.plan_by_id(str(body.get("plan_id")))
    if plan is None:
        raise not_found("billing plan not found")
    scope = body.get("assignment_scope") or "account"
    record: dict[str, Any] = {
        "assignment_id": new_uuid(),
        "billing_account_id": account.billing_account_id,
        "assignment_scope": scope,
        "billing_user_id": body.get("billing_user_id") if scope == "user" else None,
        "plan_id": plan.plan_id,
        "plan_code": plan.code,
        "subscription_item_id": None,
        "source_kind": body.get("source_kind") or "ops.manual",
        "source_ref": body.get("source_ref"),
        "window_start": _normalize_time(body.get("window_start"), call.now),
        "window_end": _normalize_time(body.get("window_end"), None),
        "status": "active",
        "metadata": body.get("metadata") or {},
        "created_at": call.now,
        "updated_at": call.now,
    }
    call.realm.assignments[record["assignment_id"]] = record
    return ok(_assignment_view(record), 201)


def update_billing_plan_assignment(call: OssCall) -> Reply:
    account = call.bound_account()
    record = call.realm.assignments.get(call.params["assignment_id"])
    if record is None or record["billing_account_id"] != account.billing_account_id:
        raise not_found("billing plan assignment not found")
    body = call.json()
    for name in ("status", "window_end", "metadata", "source_ref"):
        if name in body:
            record[name] = _normalize_time(body[name], None) if name == "window_end" else body[name]
    record["updated_at"] = call.now
    return ok(_assignment_view(record))


def _normalize_time(value: Any, default: float | None) -> str | None:
    """An ISO timestamp as the server stores it (milliseconds, Z)."""
    from datetime import datetime

    if isinstance(value, str):
        try:
            return iso_ms(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except ValueError:
            raise invalid("invalid timestamp") from None
    return iso_ms(default) if default is not None else None


# --- contracts and terms ------------------------------------------------------------------------


def _contract_view(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "created_at": iso_ms(record["created_at"]), "updated_at": iso_ms(record["updated_at"])}


def list_billing_contracts(call: OssCall) -> Reply:
    account = call.bound_account()
    found = [
        c for c in call.realm.contracts.values() if c["billing_account_id"] == account.billing_account_id
    ]
    return ok(items([_contract_view(c) for c in found]))


def upsert_billing_contract(call: OssCall) -> Reply:
    account = call.bound_account()
    body = call.json()
    record: dict[str, Any] = {
        "contract_id": new_uuid(),
        "billing_account_id": account.billing_account_id,
        "status": "active",
        "effective_at": _normalize_time(body.get("effective_at"), call.now),
        "name": body.get("name"),
        "metadata": body.get("metadata") or {},
        "created_at": call.now,
        "updated_at": call.now,
    }
    call.realm.contracts[record["contract_id"]] = record
    return ok(_contract_view(record), 201)


def _contract(call: OssCall) -> dict[str, Any]:
    account = call.bound_account()
    record = call.realm.contracts.get(call.params["contract_id"])
    if record is None or record["billing_account_id"] != account.billing_account_id:
        raise not_found("contract not found")
    return record


def get_billing_contract(call: OssCall) -> Reply:
    return ok(_contract_view(_contract(call)))


def update_billing_contract(call: OssCall) -> Reply:
    record = _contract(call)
    body = call.json()
    for name in ("name", "status", "metadata"):
        if name in body:
            record[name] = body[name]
    if "effective_at" in body:
        record["effective_at"] = _normalize_time(body["effective_at"], call.now)
    record["updated_at"] = call.now
    return ok(_contract_view(record), 201)


def list_contract_terms(call: OssCall) -> Reply:
    record = _contract(call)
    return ok(items(list(call.realm.terms.get(record["contract_id"], []))))


def upsert_contract_term(call: OssCall) -> Reply:
    record = _contract(call)
    body = call.json()
    term = {
        "contract_id": record["contract_id"],
        "kind": require_text(body, "kind"),
        "term_key": require_text(body, "term_key"),
        "effective_at": _normalize_time(body.get("effective_at"), call.now),
        "value_json": body.get("value_json") if isinstance(body.get("value_json"), dict) else {},
    }
    terms = call.realm.terms.setdefault(record["contract_id"], [])
    terms[:] = [t for t in terms if (t["kind"], t["term_key"]) != (term["kind"], term["term_key"])]
    terms.append(term)
    return ok(term, 201)


# --- invoices, subscriptions, payments ---------------------------------------------------------
# Nothing is ever billed in the emulator (no payment provider): lists are empty, ids unknown.


def _caller_account_check(call: OssCall) -> None:
    """On /api/v1 the account is named in the query and must be the caller's own (a header
    does not count); otherwise 403 without meta, as the server answers."""
    if call.route.plane != "/api/v1":
        return
    claims = call.identity.claims
    own = claims.billing_account_id if claims is not None else call.headers.get("x-billing-account-id")
    if not own or call.query.get("billing_account_id") != own:
        raise OssError(403, "AUTH.INSUFFICIENT_SCOPE", "billing_account_id mismatch", bare=True)


def _empty_list(call: OssCall) -> Reply:
    _caller_account_check(call)
    return ok([], meta=page_meta(limit_of(call)))


list_invoices = list_subscriptions = list_payments = _empty_list


def _missing(what: str) -> Any:
    def handler(call: OssCall) -> Reply:
        _caller_account_check(call)
        raise not_found(f"{what} not found", code="RESOURCE.NOT_FOUND", bare=True)

    return handler


get_invoice = _missing("invoice")
get_subscription = _missing("subscription")
get_payment = _missing("payment")


def list_reconciliations(call: OssCall) -> Reply:
    account = call.bound_account()
    return ok(
        items(
            [
                {
                    "id": "rec_1",
                    "billing_account_id": account.billing_account_id,
                    "kind": "usage_mismatch",
                    "status": "pending",
                    "diff": {},
                    "provider_state_snapshot_id": None,
                    "created_at": iso_ms(call.now),
                    "resolved_at": None,
                }
            ]
        )
    )


def payment_provider_missing(call: OssCall) -> Reply:
    """Checkout and portal sessions: the server of the recordings has no payment provider
    configured, so whatever the body, it fails (its log says stripe_config_missing)."""
    raise unexpected()
