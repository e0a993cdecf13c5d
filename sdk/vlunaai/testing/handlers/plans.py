"""Billing plan assignments, stored: an assignment is answered with the fields it was created
with. That is what lets both published releases read them: 0.3.2 requires `assignment_scope`
(and its create request always sends it), while 0.1.2 refuses that field (and never sends it)."""

from __future__ import annotations

from typing import Any

from ..core import Call, Reply
from ..errors import not_found
from ..state import iso, new_id
from ._util import limit_of, ok, page_meta, require_str, sample_data

_ENVELOPE = "billing_mgt.BillingPlanAssignmentEnvelope"
_REQUIRED = ("plan_id", "source_kind", "source_ref", "window_start")
# Optional fields, answered only when the assignment has them.
_OPTIONAL = ("assignment_scope", "billing_user_id", "subscription_item_id", "window_end")
_UPDATABLE = ("metadata", "status", "subscription_item_id", "window_end", "window_start")


def create_billing_plan_assignment(call: Call) -> Reply:
    body = call.json_body()
    account_id = body.get("billing_account_id")
    if not isinstance(account_id, str) or not account_id:
        account_id = call.account().billing_account_id
    values = {name: require_str(body, name) for name in _REQUIRED}
    now = iso(call.now)
    record: dict[str, Any] = sample_data(call) | values
    record.update(
        {
            "assignment_id": new_id(),
            "billing_account_id": account_id,
            "plan_code": values["plan_id"],
            "status": body.get("status") if isinstance(body.get("status"), str) else "active",
            "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
            "created_at": now,
            "updated_at": now,
        }
    )
    record.update({name: body[name] for name in _OPTIONAL if body.get(name) is not None})
    call.state.plan_assignments[record["assignment_id"]] = record
    return ok(record, status=201)


def list_billing_plan_assignments(call: Call) -> Reply:
    limit = limit_of(call)
    wanted = call.query.get("billing_account_id") or call.headers.get("x-billing-account-id")
    items = [
        r for r in call.state.plan_assignments.values() if not wanted or r["billing_account_id"] == wanted
    ][:limit]
    return ok({"items": items, "next_cursor": None}, meta=page_meta(limit))


def update_billing_plan_assignment(call: Call) -> Reply:
    record = call.state.plan_assignments.get(call.params["assignment_id"])
    if record is None:
        raise not_found("billing plan assignment")
    body = call.json_body()
    record.update({name: body[name] for name in _UPDATABLE if name in body})
    record["updated_at"] = iso(call.now)
    return ok(record)


HANDLERS = {
    "service.create_billing_plan_assignment": create_billing_plan_assignment,
    "service.list_billing_plan_assignments": list_billing_plan_assignments,
    "service.update_billing_plan_assignment": update_billing_plan_assignment,
}
