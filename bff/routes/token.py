"""``GET /vluna/token`` hands out the caller's platform token; ``DELETE`` forgets it (sign-out)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated, Any, TypedDict

import msgspec
from litestar import Request, Response
from litestar._parsers import parse_query_string
from litestar.di import NamedDependency
from litestar.enums import ScopeType
from litestar.exceptions import ClientException, MethodNotAllowedException
from litestar.handlers import ASGIRouteHandler, HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter, SkipValidation
from litestar.types import ControllerRouterHandler, Receive, Scope, Send

from bff.asgi_route import ExceptionHandlersOnce, not_routed, send_options
from bff.auth.chain import AuthChain
from bff.errors import BadRequest, ErrorBody
from bff.principals import Principal, PrincipalMapper
from bff.proxy.answer import NO_STORE, NO_STORE_RAW
from bff.proxy.service import ProxyService
from bff.settings import Derived
from bff.tokens.broker import TokenBroker

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

    async def body(self, principal: Principal, scopes: str | None) -> TokenBody:
        """``principal``'s token for ``scopes`` (comma-separated; None: the default scopes)."""
        broker, derived = self.broker, self.derived
        wanted = parse_scopes(scopes, self.allowed_scopes, derived.default_scopes)
        entry = await broker.get_token(principal, wanted)  # its failures are BffErrors
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

    async def sign_out(self, principal: Principal) -> None:
        """Forget ``principal``'s tokens: this replica's proxy stops using them at once; a failure
        to record it for every replica is ``SignOutIncomplete`` (a 503: sign out again later)."""
        if self.proxy is not None:
            self.proxy.forget_memo(principal)
        await self.broker.forget(principal)


@dataclass(slots=True)  # (not frozen: built per request, and a frozen __init__ costs 2.5x)
class CallerTokens:
    """The token routes' dependency ``tokens``: the signed-in caller's principal (authenticated
    and mapped while the dependency is resolved) with the service that gets and forgets its
    tokens."""

    service: TokenService
    principal: Principal

    async def get(self, scopes: str | None) -> TokenBody:
        """The caller's token for ``scopes`` (comma-separated; None: the default scopes)."""
        return await self.service.body(self.principal, scopes)

    async def sign_out(self) -> None:
        """Forget the caller's tokens (``TokenService.sign_out``)."""
        await self.service.sign_out(self.principal)


_JSON_NO_STORE = [*NO_STORE_RAW, (b"content-type", b"application/json")]
_encode = msgspec.json.Encoder().encode


class _Answer:
    """A token route's answer as its two ASGI messages, what the documented handlers' ``Response``
    becomes after Litestar's conversion (same status, headers in the same order, same JSON
    bytes)."""

    __slots__ = ("_body", "_headers", "_status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self._status = status
        self._headers = headers
        self._body = body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self._status, "headers": self._headers})
        await send({"type": "http.response.body", "body": self._body, "more_body": False})


def _scopes_param(query_string: bytes) -> str | None:
    # What Litestar's query extraction gives the handler's ``scopes`` (a str): the last value,
    # parsed by the same function; None when absent.
    if not query_string:
        return None
    value = None
    for key, v in parse_query_string(query_string):
        if key == "scopes":
            value = v
    return value


# What Litestar answers for the documented handlers (tests/bff/test_app.py compares): its router's
# 405 names the route's methods in the order they were registered, its automatic OPTIONS handler
# those of the route's first handler.
_ALLOW_405 = "GET, OPTIONS, DELETE"
_ALLOW_OPTIONS = "GET, OPTIONS"
PATH = "/vluna/token"


class TokenEndpoint:
    """``GET`` and ``DELETE /vluna/token`` as an ASGI app for one app's route (see
    ``token_routes``): the caller authenticated by ``auth`` and mapped by ``mapper`` (a refusal
    raises a ``BffError``, answered by the app's exception handler), then ``service``'s work, and
    the answer's bytes sent as they are. Litestar's router, CORS and exception handlers stay
    around it; per call it skips what an HTTP route costs (the handler's kwargs and signature
    model, the dependency, the before/after hooks, the conversion of a ``Response``). It answers
    exactly as the documented handlers (``TOKEN_ROUTES``) do, OPTIONS and 405 included."""

    __slots__ = ("_auth", "_mapper", "_service")

    def __init__(self, service: TokenService, *, auth: AuthChain, mapper: PrincipalMapper) -> None:
        self._service = service
        self._auth = auth
        self._mapper = mapper

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            # A websocket: the router refuses it on an HTTP route (no handler for it there).
            raise not_routed(scope, ClientException())
        method = scope["method"]
        request: Request[Any, Any, Any] = Request(scope, receive, send)
        if method == "GET":
            answer = await self.get(request)
        elif method == "DELETE":
            answer = await self.delete(request)
        elif method == "OPTIONS":
            await send_options(_ALLOW_OPTIONS, request, scope, receive, send)
            return
        else:
            raise not_routed(scope, MethodNotAllowedException(headers={"allow": _ALLOW_405}))
        await answer(scope, receive, send)

    async def get(self, request: Request[Any, Any, Any]) -> _Answer:
        # The caller first: an anonymous caller learns nothing about the configured scopes.
        principal = await self._mapper.map(await self._auth.authenticate(request))
        scopes = _scopes_param(request.scope.get("query_string", b""))
        body = _encode(await self._service.body(principal, scopes))
        return _Answer(200, [*_JSON_NO_STORE, (b"content-length", str(len(body)).encode())], body)

    async def delete(self, request: Request[Any, Any, Any]) -> _Answer:
        principal = await self._mapper.map(await self._auth.authenticate(request))
        await self._service.sign_out(principal)
        return _Answer(204, list(NO_STORE_RAW), b"")


class _TokenAsgiHandler(ExceptionHandlersOnce, ASGIRouteHandler):
    """Litestar's ASGI route handler, with its exception handlers resolved once."""


# (One caller-bound dependency per route, not the principal beside the broker: Litestar resolves
# two or more dependencies of one batch in a task group per request; see bff.app.dependencies.)


async def get_token(
    tokens: NamedDependency[SkipValidation[CallerTokens]],
    scopes: Annotated[
        str | None, QueryParameter(description="comma-separated subset of tokens.allowed_scopes")
    ] = None,
) -> Response[TokenBody]:
    # The caller is authenticated before this runs (resolving ``tokens`` does it): an anonymous
    # caller learns nothing about the configured scopes.
    return Response(await tokens.get(scopes), headers=NO_STORE)


async def delete_token(tokens: NamedDependency[SkipValidation[CallerTokens]]) -> Response[None]:
    # A 204 promises that no replica serves these tokens again; without Redis that cannot be
    # promised, so the client is asked to sign out again later (SignOutIncomplete, a 503).
    await tokens.sign_out()
    return Response(None, status_code=204, headers=NO_STORE)


def _token_handlers() -> list[ControllerRouterHandler]:
    """``GET`` and ``DELETE /vluna/token`` as documented."""
    return [
        HTTPRouteHandler(
            PATH,
            http_method="GET",
            operation_id="getToken",
            summary="The caller's platform token",
            description="Issued by Vluna for the signed-in user's principal, cached by the service.",
            tags=["tokens"],
            responses=_errors(
                **_AUTH_ERRORS,
                s400="scopes outside tokens.allowed_scopes (invalid_scopes)",
                s429="too many new tokens for this user or replica (rate_limited, "
                "issuance_budget_exhausted; Retry-After)",
                s502="Vluna refused to issue a token for this user (upstream_rejected)",
                s503="tokens or the identity provider's keys unavailable for now (token_unavailable, "
                "auth_unavailable; Retry-After)",
            ),
        )(get_token),
        HTTPRouteHandler(
            PATH,
            http_method="DELETE",
            status_code=204,
            operation_id="deleteToken",
            summary="Sign out: forget the caller's cached platform tokens",
            tags=["tokens"],
            responses=_errors(
                **_AUTH_ERRORS,
                s503="the sign-out could not be recorded, send it again (sign_out_incomplete), or the "
                "identity provider's keys are unavailable (auth_unavailable); Retry-After",
            ),
        )(delete_token),
    ]


TOKEN_ROUTES: list[ControllerRouterHandler] = _token_handlers()
"""``GET`` and ``DELETE /vluna/token`` as documented: the OpenAPI document is generated from these
(bff.openapi.document). They take the dependency ``tokens`` (``CallerTokens``) and answer as an
app's ``token_routes`` do (tests/bff/test_app.py sends the same requests to both)."""


def token_routes(endpoint: TokenEndpoint) -> list[ControllerRouterHandler]:
    """The token route as one app serves it: ``endpoint`` as an ASGI route handler on
    ``/vluna/token`` (Litestar leaves it out of the app's own OpenAPI document, which is therefore
    generated from ``TOKEN_ROUTES``: see bff.openapi.CompletedJson)."""
    return [_TokenAsgiHandler(PATH, copy_scope=False, name="token")(endpoint.__call__)]
