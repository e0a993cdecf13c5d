"""Wallet balance, billing state, budgets, 0.1.2 wallet consume/adjust, billing accounts."""

from __future__ import annotations

from typing import Any

from ..core import Call, Reply
from ..errors import ApiError, invalid_input, not_found
from ..state import BillingAccount, Budget, iso, new_id
from ._util import int_string, limit_of, ok, optional_str, page_meta, paginate, sample_data


def _amounts(account: BillingAccount) -> tuple[dict[str, str], dict[str, str]]:
    balance = account.balance_xusd
    return {"xusd": str(max(balance, 0))}, {"xusd": str(max(-balance, 0))}


def _runtime_account(call: Call) -> tuple[BillingAccount, str | None]:
    """Service calls bind principal+user; bearer calls use the token."""
    if call.token is None and (
        call.headers.get("x-billing-account-id") and not call.headers.get("x-principal-id")
    ):
        return call.account(), None
    account, user = call.require_bindings()
    return account, user.billing_user_id


def get_credit_balance(call: Call) -> Reply:
    account, billing_user_id = _runtime_account(call)
    available, outstanding = _amounts(account)
    return ok(
        sample_data(
            call,
            as_of=iso(call.now),
            billing_account_id=account.billing_account_id,
            billing_user_id=billing_user_id or "",
            available_balance=available,
            outstanding_balance=outstanding,
            grants=[],
        )
    )


def _billing_state(
    call: Call, account: BillingAccount, user_scoped: bool, user_id: str | None
) -> dict[str, Any]:
    available, outstanding = _amounts(account)
    billing_user_id = None
    if user_id is not None:
        billing_user_id = call.state.user_for(account, user_id).billing_user_id
    data = sample_data(
        call,
        as_of=iso(call.now),
        billing_account_id=account.billing_account_id,
        billing_mode=call.core.seed.billing_mode,
        billing_user_id=billing_user_id,
        next_change_at=None,
        subscriptions=[],
        user_id=user_id if user_scoped else None,
        view_scope="user" if user_scoped else "account",
        wallet_balance={"available_balance": available, "outstanding_balance": outstanding}
        if user_scoped
        else None,
        active_plan_code=account.plan_code,
        provider_subscriptions=account.subscriptions,
    )
    source = data.get("billing_mode_source")
    if isinstance(source, dict):
        source.update(
            {"kind": "plan" if account.plan_code else "realm_default", "plan_code": account.plan_code}
        )
    plans = data.get("plans")
    if isinstance(plans, dict):
        plans.update({"add_ons": [], "promotions": [], "base": None})
    return data


def get_current_billing_state(call: Call) -> Reply:
    account = call.account()
    assert call.token is not None
    return ok(_billing_state(call, account, True, call.token.user_id))


def get_billing_account_billing_state(call: Call) -> Reply:
    account = call.state.accounts_by_id.get(call.params["billing_account_id"])
    if account is None or account.realm_id != call.realm_id:
        raise not_found("billing account")
    user_id = call.query.get("user_id") or call.headers.get("x-user-id")
    return ok(_billing_state(call, account, user_id is not None, user_id))


# --- budgets ----------------------------------------------------------------------------------


def budget_view(budget: Budget) -> dict[str, Any]:
    remaining = None if budget.limit_xusd is None else str(max(budget.limit_xusd - budget.consumed_xusd, 0))
    return {
        "budget_id": budget.budget_id,
        "budget": budget.budget,
        "billing_account_id": budget.billing_account_id,
        "name": budget.name,
        "status": budget.status,
        "limit_xusd": None if budget.limit_xusd is None else str(budget.limit_xusd),
        "consumed_xusd": str(budget.consumed_xusd),
        "remaining_xusd": remaining,
        "metadata": budget.metadata,
        "scope_kind": None,
        "scope_payload": None,
        "window_start": None,
        "window_end": None,
        "created_at": iso(budget.created_at),
        "updated_at": iso(budget.updated_at or budget.created_at),
    }


def _budget_account(call: Call) -> BillingAccount:
    if call.token is not None:
        return call.account()
    account, _ = call.require_bindings()
    return account


def _find_budget(call: Call, account: BillingAccount) -> Budget:
    budget = call.state.budgets.get(call.params["budget_id"])
    if budget is None or budget.billing_account_id != account.billing_account_id:
        raise not_found("budget")
    return budget


def create_budget(call: Call) -> Reply:
    body = call.json_body()
    account = _budget_account(call)
    ref = optional_str(body, "budget") or f"budget-{new_id()[:8]}"
    limit = int_string(body, "limit_xusd", required=False)
    name = body.get("name")
    if name is not None and not isinstance(name, str):
        raise invalid_input("name must be a string", reason="invalid_name")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise invalid_input("metadata must be an object", reason="invalid_metadata")
    key = (call.realm_id, account.billing_account_id, ref)
    existing = call.state.budgets_by_ref.get(key)
    if existing is not None and existing.status == "active":
        raise ApiError(
            409, "WRITE.CONFLICT", "an active budget with this reference exists", reason="budget_exists"
        )
    budget = Budget(
        budget_id=new_id(),
        budget=ref,
        realm_id=call.realm_id,
        billing_account_id=account.billing_account_id,
        limit_xusd=limit,
        created_at=call.now,
        name=name,
        metadata=metadata,
    )
    call.state.budgets[budget.budget_id] = budget
    call.state.budgets_by_ref[key] = budget
    return ok(budget_view(budget), status=201)


def list_budgets(call: Call) -> Reply:
    account = _budget_account(call)
    status = call.query.get("status")
    items = [
        budget_view(b)
        for b in call.state.budgets.values()
        if b.billing_account_id == account.billing_account_id and (not status or b.status == status)
    ]
    page, meta = paginate(call, items)
    return ok({"items": page, "next_cursor": meta["next_cursor"]}, meta=meta)


def get_budget(call: Call) -> Reply:
    return ok(budget_view(_find_budget(call, _budget_account(call))))


def close_budget(call: Call) -> Reply:
    budget = _find_budget(call, _budget_account(call))
    if budget.status == "active":
        budget.status = "closed"
        budget.updated_at = call.now
    view = budget_view(budget)
    return ok(
        {
            "budget_id": budget.budget_id,
            "consumed_xusd": view["consumed_xusd"],
            "remaining_xusd": view["remaining_xusd"],
            "status": budget.status,
        }
    )


# --- 0.1.2 wallet writes -----------------------------------------------------------------------


def wallet_consume(call: Call) -> Reply:
    body = call.json_body()
    account, _ = call.require_bindings()
    amount = int_string(body, "amount", required=True, minimum=1)
    assert amount is not None
    if call.core.seed.billing_mode == "prepaid" and account.balance_xusd < amount:
        raise ApiError(
            402,
            "GATE.INSUFFICIENT_FUNDS",
            "the wallet balance does not cover this amount",
            reason="insufficient_funds",
            hints=[
                {"type": "funding.xusd_shortfall", "shortfall_xusd": amount - max(account.balance_xusd, 0)}
            ],
        )
    account.balance_xusd -= amount
    return ok(
        sample_data(
            call,
            balance=str(account.balance_xusd),
            billing_account_id=account.billing_account_id,
            unit=body.get("unit") or "xusd",
            replay=False,
        )
    )


def wallet_adjust(call: Call) -> Reply:
    body = call.json_body()
    account, _ = call.require_bindings()
    raw = body.get("delta", body.get("amount_xusd", body.get("amount")))
    try:
        amount = int(raw) if not isinstance(raw, bool) and isinstance(raw, (int, str)) else None
    except ValueError:
        amount = None
    if amount is None:
        raise invalid_input("amount must be an integer string", reason="invalid_amount")
    account.balance_xusd += amount
    available, outstanding = _amounts(account)
    return ok(
        sample_data(
            call,
            billing_account_id=account.billing_account_id,
            balance=available["xusd"],
            available_balance=available,
            outstanding_balance=outstanding,
        )
    )


def list_billing_accounts(call: Call) -> Reply:
    limit = limit_of(call)
    sample = call.core.samples.data("billing_mgt.BillingAccountEnvelope")
    base: dict[str, Any] = sample if isinstance(sample, dict) else {}
    items = [
        base
        | {
            "billing_account_id": a.billing_account_id,
            "billing_principal_id": a.principal_id,
            "principal_id": a.principal_id,
            "created_at": iso(a.created_at),
        }
        for a in call.state.accounts_by_id.values()
        if a.realm_id == call.realm_id
    ][:limit]
    return ok({"items": items, "next_cursor": None}, meta=page_meta(limit))


HANDLERS = {
    "get_credit_balance": get_credit_balance,
    "bearer.get_current_billing_state": get_current_billing_state,
    "service.get_billing_account_billing_state": get_billing_account_billing_state,
    "create_budget": create_budget,
    "list_budgets": list_budgets,
    "get_budget": get_budget,
    "close_budget": close_budget,
    "service.wallet_consume": wallet_consume,
    "service.wallet_adjust": wallet_adjust,
    "service.list_billing_accounts": list_billing_accounts,
}
