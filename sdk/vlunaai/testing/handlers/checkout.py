"""Checkouts (`/checkouts` of 0.3.2 and `/checkout/sessions` of 0.1.2), portal sessions and
subscription-management sessions. Each answer carries a hosted URL served by the emulator
itself (`/hosted/...`), where a checkout can be completed or cancelled by hand.
"""

from __future__ import annotations

import secrets
from typing import Any

from ..core import Call, Reply
from ..errors import invalid_input, not_found
from ..state import BillingAccount, Checkout, State, iso, new_id
from ._util import ok, require_payment_provider, require_scope, url_field


def _items(call: Call, body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    raw_items = body.get("items")
    if not isinstance(raw_items, list) or not raw_items:
        raise invalid_input("items must be a non-empty list", reason="invalid_items")
    prices = {p["catalog_price_id"]: p for p in call.core.seed.prices}
    items: list[dict[str, Any]] = []
    recurring = False
    for item in raw_items:
        if not isinstance(item, dict):
            raise invalid_input("each item must be an object", reason="invalid_items")
        price_id = item.get("catalog_price_id") or item.get("price_id")
        quantity = item.get("quantity", 1)
        if not isinstance(price_id, str) or price_id not in prices:
            raise invalid_input(f"unknown catalog_price_id {price_id!r}", reason="unknown_price")
        if isinstance(quantity, bool) or not isinstance(quantity, int) or quantity < 1:
            raise invalid_input("quantity must be an integer >= 1", reason="invalid_quantity")
        recurring = recurring or bool(prices[price_id].get("recurring_interval"))
        items.append({"catalog_price_id": price_id, "quantity": quantity})
    return items, "subscription" if recurring else "one_time"


def _checkout_account(call: Call, body: dict[str, Any]) -> BillingAccount:
    if call.token is None and isinstance(body.get("billing_account_id"), str):
        account = call.state.accounts_by_id.get(body["billing_account_id"])
        if account is None or account.realm_id != call.realm_id:
            raise not_found("billing account")
        return account
    return call.account()


def _new_checkout(call: Call, body: dict[str, Any], return_url: str, cancel_url: str | None) -> Checkout:
    require_scope(call, "checkout")
    items, kind = _items(call, body)
    account = _checkout_account(call, body)
    require_payment_provider(call)
    now = call.now
    checkout = Checkout(
        checkout_id=new_id(),
        realm_id=call.realm_id,
        billing_account_id=account.billing_account_id,
        items=items,
        kind=kind,
        return_url=return_url,
        cancel_url=cancel_url,
        created_at=now,
        expires_at=now + call.core.settings.checkout_ttl_seconds,
    )
    call.state.checkouts[checkout.checkout_id] = checkout
    return checkout


def checkout_url(call_or_base: Call | str, checkout_id: str) -> str:
    base = call_or_base if isinstance(call_or_base, str) else call_or_base.core.settings.public_url
    return f"{base.rstrip('/')}/hosted/checkout/{checkout_id}"


def checkout_view(base_url: str, checkout: Checkout, now: float) -> dict[str, Any]:
    status = checkout.status
    if status == "open" and now >= checkout.expires_at:
        status = "expired"
    return {
        "checkout_id": checkout.checkout_id,
        "status": status,
        "kind": checkout.kind,
        "items": checkout.items,
        "launch_url": checkout_url(base_url, checkout.checkout_id),
        "return_url": checkout.return_url,
        "created_at": iso(checkout.created_at),
        "expires_at": iso(checkout.expires_at),
        "updated_at": iso(checkout.completed_at or checkout.created_at),
        "completed_at": iso(checkout.completed_at) if checkout.completed_at else None,
        "payment_id": f"pay_{checkout.checkout_id[:8]}" if checkout.status == "completed" else None,
        "subscription_id": None,
        "failure_code": None,
        "billing_account_id": checkout.billing_account_id,
    }


def create_checkout(call: Call) -> Reply:
    body = call.json_body()
    return_url = url_field(body, "return_url")
    checkout = _new_checkout(call, body, return_url, None)
    return ok(checkout_view(call.core.settings.public_url, checkout, call.now), status=201)


def create_checkout_session(call: Call) -> Reply:
    body = call.json_body()
    success_url = url_field(body, "success_url")
    cancel_url = url_field(body, "cancel_url")
    checkout = _new_checkout(call, body, success_url, cancel_url)
    url = checkout_url(call, checkout.checkout_id)
    return ok(
        {"checkout_url": url, "checkout_id": checkout.checkout_id, "expires_at": iso(checkout.expires_at)},
        status=201,
    )


def get_checkout(call: Call) -> Reply:
    checkout = call.state.checkouts.get(call.params["checkout_id"])
    if checkout is None or checkout.realm_id != call.realm_id:
        raise not_found("checkout")
    if call.token is not None and checkout.billing_account_id != call.token.billing_account_id:
        raise not_found("checkout")
    return ok(checkout_view(call.core.settings.public_url, checkout, call.now))


def complete_checkout(state: State, prices: list[dict[str, Any]], checkout: Checkout, *, now: float) -> None:
    """What a successful payment does: credit packs fund the wallet, plans become the base plan."""
    if checkout.status != "open":
        return
    by_id = {p["catalog_price_id"]: p for p in prices}
    account = state.accounts_by_id[checkout.billing_account_id]
    for item in checkout.items:
        price = by_id.get(item["catalog_price_id"], {})
        account.balance_xusd += int(price.get("credit_xusd", 0)) * int(item["quantity"])
        if price.get("recurring_interval"):
            account.plan_code = price.get("billing_plan_code") or account.plan_code
            account.subscriptions.append(
                {
                    "subscription_id": new_id(),
                    "catalog_price_id": price["catalog_price_id"],
                    "plan_code": price.get("billing_plan_code"),
                    "status": "active",
                    "started_at": iso(now),
                }
            )
    checkout.status = "completed"
    checkout.completed_at = now


def create_portal_session(call: Call) -> Reply:
    require_scope(call, "portal")
    body = call.json_body()
    return_url = url_field(body, "return_url")
    account = call.account()
    require_payment_provider(call)
    session = secrets.token_urlsafe(12)
    base = call.core.settings.public_url.rstrip("/")
    return ok(
        {
            "portal_url": f"{base}/hosted/portal/{session}?account={account.billing_account_id}",
            "return_url": return_url,
            "expires_at": iso(call.now + 3600),
        },
        status=201,
    )


def create_subscription_management_session(call: Call) -> Reply:
    require_scope(call, "portal")
    body = call.json_body()
    return_url = url_field(body, "return_url")
    subscription_id = body.get("subscription_id")
    if not isinstance(subscription_id, str) or not subscription_id:
        raise invalid_input("subscription_id is required", reason="invalid_subscription_id")
    account = call.account()
    require_payment_provider(call)
    base = call.core.settings.public_url.rstrip("/")
    session = secrets.token_urlsafe(12)
    return ok(
        {
            "launch_url": f"{base}/hosted/subscription/{session}?account={account.billing_account_id}",
            "return_url": return_url,
            "expires_at": iso(call.now + 3600),
        },
        status=201,
    )


HANDLERS = {
    "create_checkout": create_checkout,
    "create_checkout_session": create_checkout_session,
    "get_checkout": get_checkout,
    "create_portal_session": create_portal_session,
    "create_subscription_management_session": create_subscription_management_session,
}
