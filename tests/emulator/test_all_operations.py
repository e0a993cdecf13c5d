"""Every operation of both SDK generations answers an ok envelope the SDK's models accept."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from vlunaai import GatePreflightSuccess, RequestContext
from vlunaai.generated.operations import OPERATIONS
from vlunaai.testing import VlunaEmulator

RUNTIME = RequestContext(principal_id="org:all-ops", user_id="user:all-ops")
ASSIGNMENT = {
    "plan_id": "plan_pro",
    "source_kind": "ops.manual",
    "source_ref": "all-ops",
    "window_start": "2026-01-01T00:00:00Z",
}
FEATURE = "openai.gpt-4o"


async def _fixtures(emu: VlunaEmulator, svc: Any, bearer: Any) -> dict[str, Any]:
    token = await svc.issue_platform_token(
        body={"principal_id": "org:all-ops", "user_id": "user:all-ops"}, context=RUNTIME
    )
    access = token.data.access_token
    checkout = await svc.create_checkout(
        body={
            "items": [{"catalog_price_id": "price_pro_monthly", "quantity": 1}],
            "return_url": "https://app.example/return",
        },
        context=RUNTIME,
    )
    svc_budget = await svc.create_budget(
        body={"budget": "svc-budget", "limit_xusd": "100000"}, context=RUNTIME
    )
    bearer_ctx = RequestContext(access_token=access)
    bearer_budget = await bearer.create_budget(
        body={"budget": "user-budget", "limit_xusd": "100000"}, context=bearer_ctx
    )
    bearer_checkout = await bearer.create_checkout(
        body={
            "items": [{"catalog_price_id": "price_credits_10", "quantity": 1}],
            "return_url": "https://app.example/return",
        },
        context=bearer_ctx,
    )
    assignment = await svc.create_billing_plan_assignment(body=ASSIGNMENT, context=RUNTIME)
    return {
        "assignment_id": assignment.data.assignment_id,
        "access": access,
        "billing_account_id": token.data.billing_account_id,
        "billing_user_id": token.data.billing_user_id,
        "checkout_id": {
            "service": str(checkout.data.checkout_id),
            "bearer": str(bearer_checkout.data.checkout_id),
        },
        "budget_id": {"service": svc_budget.data.budget_id, "bearer": bearer_budget.data.budget_id},
    }


async def _lease(svc: Any) -> str:
    result = await svc.gate_authorize(body={"feature_code": FEATURE}, context=RUNTIME)
    assert result.ok, result
    return str(result.data.lease)


async def _body(name: str, svc: Any, n: int) -> dict[str, Any]:
    items = [{"catalog_price_id": "price_credits_10", "quantity": 1}]
    if name == "issue_platform_token":
        return {"principal_id": "org:all-ops", "user_id": "user:all-ops"}
    if name == "create_checkout":
        return {"items": items, "return_url": "https://app.example/return"}
    if name == "create_checkout_session":
        return {
            "items": items,
            "success_url": "https://app.example/ok",
            "cancel_url": "https://app.example/cancel",
        }
    if name == "create_billing_plan_assignment":
        return ASSIGNMENT
    if name == "create_portal_session":
        return {"return_url": "https://app.example/account"}
    if name == "create_subscription_management_session":
        return {"return_url": "https://app.example/account", "subscription_id": "sub_1"}
    if name == "create_budget":
        return {"budget": f"budget-{n}", "limit_xusd": "5000"}
    if name in ("gate_authorize", "gate_preflight"):
        return {"feature_code": FEATURE, "estimated_quantity_minor": "10"}
    if name == "gate_commit":
        return {"lease": await _lease(svc), "feature_code": FEATURE, "quantity_minor": "10"}
    if name == "gate_cancel":
        return {"lease_token": await _lease(svc)}
    if name == "gate_commit_batch":
        lease = await _lease(svc)
        return {
            "items": [
                {"lease": lease, "feature_code": FEATURE, "quantity_minor": "5", "idempotency_key": "i1"}
            ]
        }
    if name == "gate_ingest":
        return {"feature_code": FEATURE, "quantity_minor": "3"}
    if name == "wallet_consume":
        return {"amount": "1", "unit": "xusd"}
    if name == "wallet_adjust":
        return {"delta": "100", "unit": "xusd", "kind": "adjustment"}
    return {}


@pytest.mark.parametrize("release", ["0.1.2", "0.3.2"])
async def test_every_operation_answers_ok(vluna_emulator: VlunaEmulator, release: str) -> None:
    emu = vluna_emulator
    svc = emu.service_client(max_retries=0)
    bearer = emu.bearer_client(max_retries=0)
    fx = await _fixtures(emu, svc, bearer)
    ops = [op for op in OPERATIONS if release in op.releases]
    assert ops
    failures: list[str] = []
    for n, op in enumerate(ops):
        client = svc if op.client == "service" else bearer
        method = getattr(client, op.name)
        params = inspect.signature(method).parameters
        kwargs: dict[str, Any] = {}
        for name in op.path_params:
            if name in ("checkout_id", "budget_id"):
                kwargs[name] = fx[name][op.client]
            elif name == "billing_account_id":
                kwargs[name] = fx["billing_account_id"]
            elif name == "billing_user_id":
                kwargs[name] = fx["billing_user_id"]
            elif name == "assignment_id":
                kwargs[name] = fx["assignment_id"]
            elif name == "feature_family_id":
                kwargs[name] = "llm.standard"
            else:
                kwargs[name] = f"{name}-1"
        if "body" in params:
            kwargs["body"] = await _body(op.name, svc, n)
        if "query" in params and params["query"].default is inspect.Parameter.empty:
            kwargs["query"] = {}
        kwargs["context"] = RUNTIME if op.client == "service" else RequestContext(access_token=fx["access"])
        try:
            result = await method(**kwargs)
        except Exception as exc:  # collect all failures, not just the first
            failures.append(f"{op.client}.{op.name}: {type(exc).__name__}: {str(exc)[:300]}")
            continue
        if op.name == "gate_preflight":
            ok = isinstance(result, GatePreflightSuccess)
        else:
            ok = getattr(result, "ok", None) is True
        if not ok:
            failures.append(f"{op.client}.{op.name}: {str(result)[:300]}")
    assert not failures, "\n".join(failures)
    assert sum(emu.calls().values()) >= len(ops)
