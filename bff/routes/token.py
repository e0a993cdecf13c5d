"""``GET /vluna/token`` hands out the caller's platform token; ``DELETE`` forgets it (sign-out)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, TypedDict

from litestar import Response, delete, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter, SkipValidation
from litestar.types import ControllerRouterHandler

from bff.errors import BadRequest, ErrorBody
from bff.principals import Principal
from bff.proxy.service import ProxyService
from bff.settings import Derived
from bff.tokens.broker import TokenBroker

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


def parse_scopes(raw: str | None, allowed: list[str], default: tuple[str, ...]) -> tuple[str, ...]:
    """The scopes asked for, checked against ``allowed``; ``default`` when none are named."""
    if raw is None or not raw.strip():
        return default
    if len(raw) > _MAX_SCOPES_PARAM:
        raise BadRequest("scopes parameter too long", code="invalid_scopes")
    wanted = {s.strip() for s in raw.split(",") if s.strip()}
    unknown = sorted(wanted - set(allowed))
    if unknown:
        raise BadRequest(
            f"scopes not allowed: {', '.join(unknown)}; allowed: {', '.join(allowed)}", code="invalid_scopes"
        )
    if not wanted:
        return default
    return tuple(sorted(wanted))


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


@dataclass(frozen=True)
class TokenService:
    """What the token routes work with, for the app's life: the broker, this replica's proxy (it
    forgets a signed-out user's tokens at once), the scopes a caller may ask for and the derived
    values (realm, default scopes, API base URL). ``for_caller`` gives the routes' dependency."""

    broker: TokenBroker
    proxy: ProxyService | None
    allowed_scopes: list[str]
    derived: Derived

    def for_caller(self, principal: Principal) -> CallerTokens:
        return CallerTokens(self, principal)


@dataclass(slots=True)  # (not frozen: built per request, and a frozen __init__ costs 2.5x)
class CallerTokens:
    """The token routes' dependency ``tokens``: the signed-in caller's principal (authenticated
    and mapped while the dependency is resolved) with the service that gets and forgets its
    tokens."""

    service: TokenService
    principal: Principal

    async def get(self, scopes: str | None) -> TokenBody:
        """The caller's token for ``scopes`` (comma-separated; None: the default scopes)."""
        service = self.service
        broker, derived = service.broker, service.derived
        wanted = parse_scopes(scopes, service.allowed_scopes, derived.default_scopes)
        entry = await broker.get_token(self.principal, wanted)  # its failures are BffErrors
        now = broker.now()
        return {
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
            "realm_id": derived.realm_id,
            "api_base_url": derived.api_base_url,
        }

    async def sign_out(self) -> None:
        """Forget the caller's tokens: this replica's proxy stops using them at once; a failure to
        record it for every replica is ``SignOutIncomplete`` (a 503: sign out again later)."""
        if self.service.proxy is not None:
            self.service.proxy.forget_memo(self.principal)
        await self.service.broker.forget(self.principal)


# (One caller-bound dependency per route, not the principal beside the broker: Litestar resolves
# two or more dependencies of one batch in a task group per request; see bff.app.dependencies.)


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
    tokens: NamedDependency[SkipValidation[CallerTokens]],
    scopes: Annotated[
        str | None, QueryParameter(description="comma-separated subset of tokens.allowed_scopes")
    ] = None,
) -> Response[TokenBody]:
    # The caller is authenticated before this runs (resolving ``tokens`` does it): an anonymous
    # caller learns nothing about the configured scopes.
    return Response(await tokens.get(scopes), headers=NO_STORE)


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
async def delete_token(tokens: NamedDependency[SkipValidation[CallerTokens]]) -> Response[None]:
    # A 204 promises that no replica serves these tokens again; without Redis that cannot be
    # promised, so the client is asked to sign out again later (SignOutIncomplete, a 503).
    await tokens.sign_out()
    return Response(None, status_code=204, headers=NO_STORE)


TOKEN_ROUTES: list[ControllerRouterHandler] = [get_token, delete_token]
"""``GET`` and ``DELETE /vluna/token``; they take the dependency ``tokens`` (``CallerTokens``)."""
