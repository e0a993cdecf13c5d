"""A route of the open-source server, the call a handler sees, and what it answers."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .errors import OssError, invalid
from .state import Account, BillingUser, RealmData

if TYPE_CHECKING:
    from ..tokens import TokenClaims
    from .core import OssCore

# How a route finds the billing account it works on (the server's binding rules):
# - "none": a realm-wide admin route (feature families, meters, plans, billing accounts and
#   users, ...): binding headers are ignored, and a platform token is refused;
# - "service": X-Principal-Id or X-Billing-Account-ID (401 AUTH.MISSING_SERVICE_BINDINGS);
# - "runtime": X-Principal-Id and X-User-Id (401 AUTH.MISSING_RUNTIME_BINDINGS);
# - "token": token issuance, where the body names the principal;
# - "caller": /api/v1, the platform token's account and user;
# - "open": no authentication at all (health).
Binding = Literal["none", "service", "runtime", "token", "caller", "open"]


@dataclass
class Reply:
    status: int
    data: Any
    meta: dict[str, Any] | None = None
    hints: list[dict[str, Any]] | None = None

    def envelope(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": True, "code": "OK", "data": self.data}
        if self.meta is not None:
            body["meta"] = self.meta
        if self.hints:
            body["hints"] = self.hints
        return body


Handler = Callable[["OssCall"], Reply]


@dataclass
class OssRoute:
    plane: str  # "/mgt/v1", "/api/v1" or "" (outside both)
    method: str
    template: str
    handler: Handler
    binding: Binding
    name: str  # the SDK operation it serves (counters and faults), or the server's own name
    pattern: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        parts = []
        for segment in re.split(r"(\{[a-z_]+\})", self.template):
            if segment.startswith("{") and segment.endswith("}"):
                parts.append(f"(?P<{segment[1:-1]}>[^/]+)")
            else:
                parts.append(re.escape(segment))
        self.pattern = re.compile("^" + "".join(parts) + "$")

    @property
    def qualified(self) -> str:
        return ("bearer." if self.plane == "/api/v1" else "service.") + self.name

    @property
    def literal_weight(self) -> int:
        return len(re.sub(r"\{[a-z_]+\}", "", self.template))


@dataclass
class Identity:
    """Who is calling: a verified service key, a platform token, or (on /api/v1, where the server
    does not verify it) whatever an SVC-AUTH header and binding headers claim."""

    kind: Literal["service", "bearer", "unverified", "anonymous"]
    key_id: str | None = None
    claims: TokenClaims | None = None


class OssCall:
    """One authenticated call, its bindings resolved, as a handler sees it."""

    def __init__(
        self,
        core: OssCore,
        route: OssRoute,
        realm: RealmData | None,
        params: dict[str, str],
        query: dict[str, str],
        headers: dict[str, str],
        body: Any,
        identity: Identity,
    ) -> None:
        self.core = core
        self.route = route
        self._realm = realm
        self.params = params
        self.query = query
        self.headers = headers
        self.body = body
        self.identity = identity
        self.account: Account | None = None
        self.user: BillingUser | None = None
        self.now = core.clock()

    @property
    def realm(self) -> RealmData:
        assert self._realm is not None, "a realm-less route has no realm data"
        return self._realm

    def json(self) -> dict[str, Any]:
        return self.body if isinstance(self.body, dict) else {}

    def bound_account(self) -> Account:
        if self.account is None:
            raise OssError(
                401, "AUTH.MISSING_SERVICE_BINDINGS", "principal_id or billing_account_id required"
            )
        return self.account

    def bound_user(self) -> BillingUser:
        if self.user is None:
            raise OssError(401, "AUTH.MISSING_RUNTIME_BINDINGS", "x-principal-id and x-user-id are required")
        return self.user


def ok(data: Any, status: int = 200, **extra: Any) -> Reply:
    return Reply(status=status, data=data, **extra)


def page_meta(limit: int, next_cursor: str | None = None) -> dict[str, Any]:
    return {"next_cursor": next_cursor, "has_more": next_cursor is not None, "limit": limit}


def limit_of(call: OssCall, default: int = 50) -> int:
    raw = call.query.get("limit")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid("limit must be an integer") from None
    return max(1, min(value, 200))


def require_text(body: dict[str, Any], name: str, message: str | None = None) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise invalid(message or f"{name} must be a string")
    return value


def quantity(value: Any, name: str = "quantity_minor") -> int:
    """A non-negative integer given as a decimal string or a JSON number."""
    if isinstance(value, bool):
        raise invalid(f"{name} must be an integer")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    raise invalid(f"{name} must be an integer")


def not_in_realm(what: str) -> OssError:
    return OssError(404, "NOT_FOUND", f"{what} not found")
