"""Helpers shared by the handlers: sample overlays, validation, scope checks."""

from __future__ import annotations

import base64
from typing import Any

from ..core import Call, Reply
from ..errors import ApiError, invalid_input
from ..state import iso


def sample_data(call: Call, **values: Any) -> dict[str, Any]:
    """The operation's sample `data` object with `values` laid over it."""
    data = call.core.samples.data(call.route.returns)
    if not isinstance(data, dict):
        data = {}
    data.update(values)
    return data


def ok(
    data: Any,
    *,
    status: int = 200,
    meta: dict[str, Any] | None = None,
    hints: list[dict[str, Any]] | None = None,
) -> Reply:
    return Reply(status=status, data=data, meta=meta, hints=hints)


def page_meta(limit: int = 50) -> dict[str, Any]:
    return {"next_cursor": None, "has_more": False, "limit": limit}


def limit_of(call: Call, default: int = 50) -> int:
    raw = call.query.get("limit")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid_input("limit must be an integer", reason="invalid_limit") from None
    if not 1 <= value <= 500:
        raise invalid_input("limit must be between 1 and 500", reason="invalid_limit")
    return value


def paginate(call: Call, items: list[Any], default_limit: int = 50) -> tuple[list[Any], dict[str, Any]]:
    """One page of `items` by `?limit=` and `?cursor=` (opaque; from the previous `meta.next_cursor`)."""
    limit = limit_of(call, default_limit)
    offset = 0
    cursor = call.query.get("cursor")
    if cursor:
        try:
            kind, _, number = base64.urlsafe_b64decode(cursor.encode() + b"==").decode().partition(":")
            offset = int(number)
        except (ValueError, UnicodeDecodeError):
            raise invalid_input("cursor is not valid", reason="invalid_cursor") from None
        if kind != "o" or offset < 0:
            raise invalid_input("cursor is not valid", reason="invalid_cursor")
    page = items[offset : offset + limit]
    more = offset + limit < len(items)
    next_cursor = (
        base64.urlsafe_b64encode(f"o:{offset + limit}".encode()).decode().rstrip("=") if more else None
    )
    return page, {"next_cursor": next_cursor, "has_more": more, "limit": limit}


def require_str(body: dict[str, Any], name: str, *, max_len: int = 255) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise invalid_input(f"{name} is required and must be a non-empty string", reason=f"invalid_{name}")
    if len(value) > max_len:
        raise invalid_input(f"{name} is too long", reason=f"invalid_{name}")
    return value


def optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise invalid_input(f"{name} must be a non-empty string", reason=f"invalid_{name}")
    return value


def int_string(body: dict[str, Any], name: str, *, required: bool, minimum: int = 0) -> int | None:
    """An integer given as a decimal string (the API's money/quantity format) or an int."""
    value = body.get(name)
    if value is None:
        if required:
            raise invalid_input(f"{name} is required", reason=f"invalid_{name}")
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise invalid_input(f"{name} must be an integer string", reason=f"invalid_{name}")
    try:
        number = int(value)
    except ValueError:
        raise invalid_input(f"{name} must be an integer string", reason=f"invalid_{name}") from None
    if number < minimum:
        raise invalid_input(f"{name} must be >= {minimum}", reason=f"invalid_{name}")
    return number


def url_field(body: dict[str, Any], name: str) -> str:
    value = require_str(body, name, max_len=2048)
    if not value.startswith(("http://", "https://")):
        raise invalid_input(f"{name} must be an absolute http(s) URL", reason=f"invalid_{name}")
    return value


def require_scope(call: Call, scope: str) -> None:
    if call.token is not None and scope not in call.token.scopes:
        raise ApiError(
            403,
            "AUTH.INSUFFICIENT_SCOPE",
            f"this token lacks the {scope!r} scope",
            reason="insufficient_scope",
        )


def require_payment_provider(call: Call) -> None:
    if not call.realm.payment_provider:
        raise ApiError(
            500,
            "SERVER.UNEXPECTED",
            "no payment provider is configured for this realm",
            reason="payment_provider_not_configured",
        )


def now_iso(call: Call) -> str:
    return iso(call.now)
