"""`POST /mgt/v1/token/issue`: platform access tokens for end users."""

from __future__ import annotations

from ..core import Call, Reply
from ..errors import invalid_input
from ..state import iso
from ..tokens import KNOWN_SCOPES
from ._util import ok, require_str


def issue_platform_token(call: Call) -> Reply:
    body = call.json_body()
    principal_id = require_str(body, "principal_id")
    user_id = require_str(body, "user_id")
    raw_scopes = body.get("scopes")
    scopes: tuple[str, ...]
    if raw_scopes is None or raw_scopes == []:
        scopes = KNOWN_SCOPES
    elif isinstance(raw_scopes, list) and all(isinstance(s, str) for s in raw_scopes):
        scopes = tuple(s for s in KNOWN_SCOPES if s in raw_scopes)
    else:
        raise invalid_input("scopes must be a list of strings", reason="invalid_scopes")
    settings = call.core.settings
    ttl = body.get("session_ttl_sec")
    if ttl is None:
        ttl = settings.token_ttl_default
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise invalid_input("session_ttl_sec must be an integer", reason="invalid_session_ttl_sec")
    ttl = max(settings.token_ttl_min, min(settings.token_ttl_max, ttl))
    for name in ("traits",):
        if body.get(name) is not None and not isinstance(body[name], dict):
            raise invalid_input(f"{name} must be an object", reason=f"invalid_{name}")
    state = call.state
    account = state.account_for_principal(call.realm_id, principal_id)
    user = state.user_for(account, user_id)
    now = call.now
    token, claims = call.core.tokens.issue(
        realm_id=call.realm_id,
        principal_id=principal_id,
        user_id=user_id,
        billing_account_id=account.billing_account_id,
        billing_user_id=user.billing_user_id,
        scopes=scopes,
        ttl_seconds=ttl,
        now=now,
    )
    return ok(
        {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": ttl,
            "expires_at": iso(claims.expires_at),
            "billing_account_id": account.billing_account_id,
            "billing_user_id": user.billing_user_id,
            "scopes": list(scopes),
        }
    )


HANDLERS = {"service.issue_platform_token": issue_platform_token}
