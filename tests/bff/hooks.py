"""Hooks loaded by `module:callable` in the tests, as a team would write them."""

from __future__ import annotations

from typing import Any

from bff.auth.identity import Identity


async def auth_from_header(request: Any) -> dict[str, Any] | None:
    user = request.headers.get("x-test-user")
    if not user:
        return None
    return {"sub": user, "org_id": request.headers.get("x-test-org")}


def map_to_team(identity: Identity) -> dict[str, Any] | None:
    team = identity.claims.get("org_id")
    if not team:
        return None
    return {"principal_id": f"team:{team}", "user_id": identity.claims["sub"], "traits": {"via": "hook"}}


seen_by_hook: list[tuple[str, str, str | None]] = []
"""(method, path, x-test-user) of each request ``auth_recording_the_request`` was asked about."""


async def auth_recording_the_request(request: Any) -> dict[str, Any] | None:
    """``auth_from_header``, noting what the request looked like to the hook."""
    seen_by_hook.append((request.method, request.url.path, request.headers.get("x-test-user")))
    return await auth_from_header(request)
