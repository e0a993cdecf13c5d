"""The answer of every operation without dedicated behaviour: a well-formed envelope built from
the response model's schema, with the call's path ids and simple body fields echoed back.
"""

from __future__ import annotations

import re
from typing import Any

from ..core import Call, Reply
from ._util import limit_of, ok, page_meta

_ECHO_TYPES = (str, int, bool)
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)
_DATE_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def _fits(sample: Any, value: Any) -> bool:
    """Whether `value` may replace `sample` without breaking the field's format (an id that is
    not a UUID never replaces a UUID, text never replaces a timestamp)."""
    if type(sample) is not type(value):
        return False
    if isinstance(sample, str):
        for fmt in (_UUID, _DATE_TIME):
            if fmt.match(sample) and not fmt.match(value):
                return False
    return True


def _echo(target: dict[str, Any], values: dict[str, Any]) -> None:
    for key, value in values.items():
        if key in target and isinstance(value, _ECHO_TYPES) and _fits(target[key], value):
            target[key] = value


def generic(call: Call) -> Reply:
    data = call.core.samples.data(call.route.returns)
    if call.token is not None:
        call.account()  # a token only ever sees its own account
        # A customer's own lists (invoices, payments, ...) start empty, as for a new account.
        if isinstance(data, list):
            data = []
        elif isinstance(data, dict) and isinstance(data.get("items"), list):
            data["items"] = []
    items = data.get("items") if isinstance(data, dict) else data if isinstance(data, list) else None
    objects: list[dict[str, Any]] = [data] if isinstance(data, dict) else []
    objects += [i for i in (items or []) if isinstance(i, dict)]
    for obj in objects:
        _echo(obj, call.params)
        if isinstance(call.body, dict):
            _echo(obj, call.body)
    meta = None
    if call.route.name.startswith("list_") or (call.route.method == "GET" and isinstance(items, list)):
        meta = page_meta(limit_of(call))
    status = 201 if call.route.name.startswith("create_") else 200
    return ok(data, status=status, meta=meta)
