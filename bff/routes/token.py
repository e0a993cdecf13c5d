"""``GET /vluna/token`` hands out the caller's platform token; ``DELETE`` forgets it (sign-out)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Annotated, Any, TypedDict

from litestar import Request, Response, delete, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter
from litestar.types import ControllerRouterHandler

from bff.errors import BadRequest, ErrorBody, ServiceUnavailable, TooManyRequests, UpstreamRejected
from bff.tokens.broker import (
    Principal,
    SignOutIncomplete,
    TokenBroker,
    TokenEntry,
    TokenRejected,
    TokenUnavailable,
)
from bff.tokens.limits import IssuanceLimited

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_MAX_SCOPES_PARAM = 256


class TokenBody(TypedDict):
    """The caller's platform token (``Cache-Control: no-store``)."""

    access_token: str
    token_type: str
    expires_in: int
    expires_at: str
    lifetime_sec: int
    issued_at: str
    billing_account_id: str | None
    billing_user_id: str | None
    scopes: list[str]
    realm_id: str
    api_base_url: str


def _errors(**described: str) -> dict[int, ResponseSpec]:
    return {
        int(status[1:]): ResponseSpec(data_container=ErrorBody, description=text, generate_examples=False)
        for status, text in described.items()
    }


_AUTH_ERRORS = {
    "s401": "no valid credential (unauthenticated; WWW-Authenticate says why)",
    "s403": "cookie without the anti-forgery header, or no principal for this user",
}


def parse_scopes(raw: str | None, allowed: list[str], default: list[str]) -> tuple[str, ...]:
    if raw is None or not raw.strip():
        return tuple(sorted(set(default or allowed)))
    if len(raw) > _MAX_SCOPES_PARAM:
        raise BadRequest("scopes parameter too long", code="invalid_scopes")
    wanted = {s.strip() for s in raw.split(",") if s.strip()}
    unknown = sorted(wanted - set(allowed))
    if unknown:
        raise BadRequest(
            f"scopes not allowed: {', '.join(unknown)}; allowed: {', '.join(allowed)}", code="invalid_scopes"
        )
    if not wanted:
        return tuple(sorted(set(default or allowed)))
    return tuple(sorted(wanted))


async def token_or_http_error(broker: TokenBroker, principal: Principal, scopes: Sequence[str]) -> TokenEntry:
    """The broker's token, with its failures as the HTTP errors every route answers with."""
    try:
        return await broker.get_token(principal, scopes)
    except TokenUnavailable as exc:
        raise ServiceUnavailable(
            "billing tokens are temporarily unavailable",
            retry_after=exc.retry_after,
            code="token_unavailable",
        ) from None
    except TokenRejected:
        raise UpstreamRejected("the billing service refused to issue a token for this user") from None
    except IssuanceLimited as exc:
        if exc.budget:
            raise TooManyRequests(
                "the service is issuing too many billing tokens right now",
                retry_after=exc.retry_after,
                code="issuance_budget_exhausted",
            ) from None
        raise TooManyRequests(
            "too many new billing tokens for this user; a token already held stays valid",
            retry_after=exc.retry_after,
        ) from None


async def _principal(request: Request[Any, Any, Any]) -> Principal:
    services = request.app.state.services
    identity = await services.auth.authenticate(request)
    principal: Principal = await services.mapper.map(identity)
    return principal


@get(
    "/vluna/token",
    operation_id="getToken",
    summary="The caller's platform token",
    description="Issued by Vluna for the signed-in user's principal, cached by the service.",
    tags=["tokens"],
    responses=_errors(
        **_AUTH_ERRORS,
        s400="scopes outside tokens.allowed_scopes (invalid_scopes)",
        s429="too many new tokens for this user or replica (rate_limited, issuance_budget_exhausted; "
        "Retry-After)",
        s502="Vluna refused to issue a token for this user (upstream_rejected)",
        s503="tokens or the identity provider's keys unavailable for now (token_unavailable, "
        "auth_unavailable; Retry-After)",
    ),
)
async def get_token(
    request: Request[Any, Any, Any],
    scopes: Annotated[
        str | None, QueryParameter(description="comma-separated subset of tokens.allowed_scopes")
    ] = None,
) -> Response[TokenBody]:
    services = request.app.state.services
    t = services.settings.tokens
    # Authenticate first: an anonymous caller learns nothing about the configured scopes.
    principal = await _principal(request)
    wanted = parse_scopes(scopes, t.allowed_scopes, t.default_scopes)
    entry = await token_or_http_error(services.broker, principal, wanted)
    now = services.broker.now()
    body: TokenBody = {
        "access_token": entry.access_token,
        "token_type": entry.token_type,
        # Seconds left, counted from this answer: an app adds it to its own clock.
        "expires_in": entry.expires_in(now),
        "expires_at": _iso(entry.expires_at),
        # The token's whole life: renew once expires_in falls under a share of it.
        "lifetime_sec": max(0, int(entry.expires_at - entry.issued_at)),
        "issued_at": _iso(entry.issued_at),
        "billing_account_id": entry.billing_account_id,
        "billing_user_id": entry.billing_user_id,
        "scopes": list(entry.scopes),
        # What an app needs to call Vluna's /api/v1 with the token itself.
        "realm_id": services.realm_id,
        "api_base_url": services.api_base_url,
    }
    return Response(body, headers=NO_STORE)


_ISO_MEMO: dict[int, str] = {}


def _iso(epoch: float) -> str:
    # Every hit of a token formats the same two instants: remembered (bounded).
    second = int(epoch)
    text = _ISO_MEMO.get(second)
    if text is None:
        text = datetime.fromtimestamp(second, tz=timezone.utc).isoformat().replace("+00:00", "Z")
        if len(_ISO_MEMO) >= 4096:
            _ISO_MEMO.clear()
        _ISO_MEMO[second] = text
    return text


@delete(
    "/vluna/token",
    status_code=204,
    operation_id="deleteToken",
    summary="Sign out: forget the caller's cached platform tokens",
    tags=["tokens"],
    responses=_errors(
        **_AUTH_ERRORS,
        s503="the sign-out could not be recorded, send it again (sign_out_incomplete), or the identity "
        "provider's keys are unavailable (auth_unavailable); Retry-After",
    ),
)
async def delete_token(request: Request[Any, Any, Any]) -> Response[None]:
    principal = await _principal(request)
    services = request.app.state.services
    if services.proxy is not None:
        services.proxy.forget_memo(principal)  # this replica's proxy stops using the token at once
    try:
        await services.broker.forget(principal)
    except SignOutIncomplete as exc:
        # A 204 promises that no replica serves these tokens again; without Redis that cannot
        # be promised, so the client is asked to sign out again later.
        raise ServiceUnavailable(
            "the sign-out could not be recorded; send it again",
            retry_after=exc.retry_after,
            code="sign_out_incomplete",
        ) from None
    return Response(None, status_code=204, headers=NO_STORE)


def token_routes() -> list[ControllerRouterHandler]:
    return [get_token, delete_token]
