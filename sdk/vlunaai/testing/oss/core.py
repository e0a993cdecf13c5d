"""The request pipeline of the open-source server flavour, in the order that server applies it:

body parsing (before routing: an announced JSON body that is empty or invalid is a 400 on any
path) -> CORS preflight -> route (404 "Cannot METHOD /path"; a trailing slash is accepted, HEAD
is GET without the body, a wrong method is a 404) -> realm header -> credentials (SVC-AUTH on
/mgt/v1, a platform token on /api/v1, and where the server allows it the other one) -> realm ->
Idempotency-Key (writes) -> bindings (creating the billing account of a new principal fails once
with 500) -> handler -> answer (stored for replay when 2xx).
"""

from __future__ import annotations

import hmac
import re
from typing import Any
from urllib.parse import parse_qsl, unquote

import msgspec

from vlunaai.signing import canonical_string, compute_signature, content_digest, parse_authorization

from ..core import (
    LEGACY_SIGNATURE_MESSAGE,
    CoreBase,
    EmulatorSettings,
    Receive,
    Scope,
    Send,
    legacy_canonical_string,
    parse_timestamp,
    read_request,
)
from ..errors import ApiError
from ..faults import ConnectionDropped
from ..seed import Seed, ServiceKey
from ..state import NonceCache
from ..tokens import OSS_PROFILE, InvalidToken, TokenClaims, TokenService
from .call import Identity, OssCall, OssRoute, Reply
from .errors import OssError, bad_signature, invalid, unauthorized, unexpected
from .routes import ROUTES
from .seeding import seed_realm
from .state import Account, BillingUser, OssState, RealmData, StoredAnswer, iso_ms, new_uuid

JSON_TYPE = b"application/json; charset=utf-8"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
CORS_EXPOSE = "WWW-Authenticate, X-Permissions-Changed, X-Request-Id, traceparent"
PLANES = ("/mgt/v1", "/api/v1")
_JSON_CONTENT = re.compile(r"^application/(?:[a-z0-9.+-]+\+)?json\b", re.I)

_encode = msgspec.json.encode
_decode = msgspec.json.decode

Answer = tuple[int, bytes | None, list[tuple[bytes, bytes]]]


class OssCore(CoreBase):
    """The open-source Vluna server (vlunaai/vluna 11e6371) as recorded."""

    flavor = "oss"

    def __init__(self, settings: EmulatorSettings, seed: Seed) -> None:
        super().__init__(settings, seed)
        self.tokens = TokenService(
            public_url=settings.public_url, signing_key=settings.token_signing_key, profile=OSS_PROFILE
        )
        self.routes: list[OssRoute] = list(ROUTES)
        self._by_method: dict[str, list[OssRoute]] = {}
        for route in sorted(self.routes, key=lambda r: -r.literal_weight):
            self._by_method.setdefault(route.method, []).append(route)
        self.nonces = NonceCache()
        self.state = OssState()
        self._seed_state()

    def _seed_state(self) -> None:
        for realm_id in self.realms:
            seed_realm(self.state.realm(realm_id), self.seed, now=self.clock())

    @property
    def operation_count(self) -> int:
        return len(self.routes)

    @property
    def flaky_account_creation(self) -> bool:
        flaky = self.settings.flaky_account_creation
        return True if flaky is None else flaky

    def reset(self) -> None:
        super().reset()
        self.state = OssState()
        self.nonces.clear()
        self._seed_state()

    def balance_xusd(self, billing_account_id: str) -> int:
        for realm in self.state.realms.values():
            account = realm.accounts_by_id.get(billing_account_id)
            if account is not None:
                return account.remaining_xusd
        raise KeyError(billing_account_id)

    # --- ASGI -------------------------------------------------------------------------------

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = await read_request(scope, receive)
        if request is None:
            return
        method, headers = request.method, request.headers
        path = request.path.split("?", 1)[0]
        status, body, extra = await self.handle(method, path, request.query_string, headers, request.body)
        out: list[tuple[bytes, bytes]] = []
        if body is not None:
            out.append((b"content-type", JSON_TYPE))
        out.append((b"content-length", str(len(body or b"")).encode()))
        out.extend(extra)
        if status == -1:
            # Fault injection: start an answer whose announced length never arrives.
            out = [(b"content-type", JSON_TYPE), (b"content-length", b"1024")]
            await send({"type": "http.response.start", "status": 200, "headers": out})
            raise ConnectionDropped("fault injection: connection dropped")
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else (body or b"")})

    async def handle(
        self, method: str, path: str, query_string: str, headers: dict[str, str], body: bytes
    ) -> Answer:
        cors = _cors_headers(headers)
        if method == "OPTIONS":
            return _preflight(headers)
        try:
            parsed, signed_body = _parse_body(method, headers, body)
        except OssError as exc:
            return self._answer_error(exc, cors)
        found = self.resolve("GET" if method == "HEAD" else method, path)
        if found is None:
            return self._answer_error(OssError(404, "RESOURCE.NOT_FOUND", f"Cannot {method} {path}"), cors)
        route, params = found
        injected, drop_after = await self.count_and_fault(route.qualified, route.name, "")
        if injected is not None:
            status, payload, extra = injected
            return status, payload, [*cors, *((k.encode(), v.encode()) for k, v in (extra or {}).items())]
        try:
            status, payload = self._serve(
                route, params, method, path, query_string, headers, parsed, signed_body
            )
        except OssError as exc:
            if drop_after:
                return -1, None, []
            return self._answer_error(exc, cors)
        if drop_after:
            return -1, None, []
        return status, payload, cors

    def _answer_error(self, exc: OssError, cors: list[tuple[bytes, bytes]]) -> Answer:
        return exc.status, _encode(exc.envelope()), cors

    def _error(self, exc: ApiError, trace_id: str) -> tuple[int, bytes, dict[str, str] | None]:
        # An injected fault, written the way this server writes errors.
        bare = exc.status >= 500
        error = OssError(exc.status, exc.code, exc.message, bare=bare)
        return exc.status, _encode(error.envelope()), exc.headers or None

    def resolve(self, method: str, path: str) -> tuple[OssRoute, dict[str, str]] | None:
        if len(path) > 1 and path.endswith("/"):
            path = path[:-1]
        for plane in (*PLANES, ""):
            if plane and not path.startswith(plane + "/"):
                continue
            rest = path[len(plane) :]
            for route in self._by_method.get(method, ()):
                if route.plane != plane:
                    continue
                match = route.pattern.match(rest)
                if match is not None:
                    return route, {k: unquote(v) for k, v in match.groupdict().items()}
            if plane:
                return None
        return None

    # --- one call -------------------------------------------------------------------------

    def _serve(
        self,
        route: OssRoute,
        params: dict[str, str],
        method: str,
        path: str,
        query_string: str,
        headers: dict[str, str],
        body: Any,
        signed_body: bytes,
    ) -> tuple[int, bytes]:
        query = dict(parse_qsl(query_string, keep_blank_values=True))
        if route.binding == "open":
            call = OssCall(self, route, None, params, query, headers, body, Identity("anonymous"))
            return self._render(route.handler(call))
        realm_id = headers.get("x-realm-id")
        if not realm_id:
            raise invalid("missing_realm", 400)
        target = f"{path}?{query_string}" if query_string else path
        identity = self._authenticate(route, method, target, headers, signed_body, realm_id)
        realm = self.state.realm(realm_id)
        call = OssCall(self, route, realm, params, query, headers, body, identity)
        record_key: tuple[str, str, str, str] | None = None
        fingerprint = b""
        if method in WRITE_METHODS:
            idem = headers.get("idempotency-key")
            if not idem:
                raise invalid("missing_idempotency_key", 400)
            record_key = (realm_id, idem, method, path.rstrip("/"))
            fingerprint = self.state.fingerprint(signed_body)
            stored = self.state.idempotency.get(record_key)
            if stored is not None:
                if not hmac.compare_digest(stored.fingerprint, fingerprint):
                    raise OssError(409, "WRITE.INVALID_PAYLOAD", "idempotency_conflict")
                return stored.status, stored.body
        self._bind(call)
        status, payload = self._render(route.handler(call))
        if record_key is not None and 200 <= status < 300:
            self.state.idempotency[record_key] = StoredAnswer(fingerprint, status, payload)
        return status, payload

    @staticmethod
    def _render(reply: Reply) -> tuple[int, bytes]:
        return reply.status, _encode(reply.envelope())

    # --- credentials ------------------------------------------------------------------------

    def _authenticate(
        self,
        route: OssRoute,
        method: str,
        target: str,
        headers: dict[str, str],
        signed_body: bytes,
        realm_id: str,
    ) -> Identity:
        authorization = headers.get("authorization") or ""
        scheme = authorization.split(" ", 1)[0].lower()
        strict = self.settings.strict
        if route.plane != "/mgt/v1":
            if scheme == "bearer":
                return self._bearer(authorization, headers, realm_id)
            if scheme == "svc-auth" and not strict:
                # The server takes X-Principal-Id / X-User-Id on /api/v1 from anything that looks
                # like SVC-AUTH, without verifying it (a BFF must never pass such headers on).
                self._known_realm(realm_id)
                return Identity("unverified")
            raise unauthorized("missing_token")
        if scheme == "svc-auth":
            return self._service(method, target, headers, signed_body, realm_id)
        if scheme == "bearer" and not strict:
            return self._bearer(authorization, headers, realm_id)
        raise unauthorized("unsupported_authorization_scheme")

    def _known_realm(self, realm_id: str) -> None:
        if realm_id not in self.realms:
            raise OssError(
                404,
                "AUTH.UNKNOWN_REALM",
                "unknown_realm",
                meta={"clear_cached_realm": True, "realm_id": realm_id},
            )

    def _bearer(self, authorization: str, headers: dict[str, str], realm_id: str) -> Identity:
        token = authorization.split(" ", 1)[1].strip() if " " in authorization else ""
        try:
            claims = self.tokens.verify(token, now=self.clock())
        except InvalidToken:
            raise unauthorized("invalid_token") from None
        self._known_realm(realm_id)
        if claims.realm_id != realm_id:
            raise OssError(403, "AUTH.INSUFFICIENT_SCOPE", "realm_mismatch")
        realm = self.state.realm(realm_id)
        account = realm.accounts_by_id.get(claims.billing_account_id)
        user = realm.users_by_id.get(claims.billing_user_id)
        if account is None or user is None:
            raise unauthorized("invalid_token")  # the emulator was reset since
        if user.status != "active":
            raise OssError(403, "AUTH.BILLING_USER_DISABLED", "billing user is not active")
        return Identity("bearer", claims=claims)

    def _service(
        self, method: str, target: str, headers: dict[str, str], body: bytes, realm_id: str
    ) -> Identity:
        parsed = parse_authorization(headers.get("authorization", ""))
        if parsed is None or parsed.algorithm != "HMAC-SHA256":
            raise bad_signature("Authorization header malformed")
        key = self.keys.get(parsed.key_id)
        if key is None:
            raise OssError(401, "AUTH.SERVICE_KEY_NOT_FOUND", "Service API key not recognized")
        digest = headers.get("content-digest")
        if not digest:
            raise bad_signature("Content-Digest header missing")
        if not hmac.compare_digest(digest.encode(), content_digest(body).encode()):
            raise bad_signature("Content-Digest mismatch")
        signed: dict[str, Any] = {
            "method": method,
            "path_with_query": target,
            "timestamp": parsed.timestamp,
            "nonce": parsed.nonce,
            "content_digest": digest,
            "content_type": headers.get("content-type", ""),
            "realm_id": realm_id,
            "principal_id": headers.get("x-principal-id"),
            "billing_account_id": headers.get("x-billing-account-id"),
            "idempotency_key": headers.get("idempotency-key", ""),
        }
        secret = self._key_bytes[key.key_id]
        canonical = canonical_string(
            **signed, user_id=headers.get("x-user-id"), billing_user_id=headers.get("x-billing-user-id")
        )
        if not hmac.compare_digest(compute_signature(secret, canonical).encode(), parsed.signature.encode()):
            legacy = compute_signature(secret, legacy_canonical_string(**signed))
            if hmac.compare_digest(legacy.encode(), parsed.signature.encode()):
                raise bad_signature(LEGACY_SIGNATURE_MESSAGE)
            raise bad_signature("Signature mismatch")
        self._check_key(key, realm_id)
        if self.settings.strict:
            self._check_freshness(key, parsed.timestamp, parsed.nonce)
        return Identity("service", key_id=key.key_id)

    def _check_key(self, key: ServiceKey, realm_id: str) -> None:
        if key.status != "active":
            raise OssError(403, "AUTH.SERVICE_KEY_DISABLED", "Service API key is disabled")
        if key.expires_at is not None and key.expires_at.timestamp() <= self.clock():
            raise OssError(403, "AUTH.SERVICE_KEY_EXPIRED", "Service API key has expired")
        self._known_realm(realm_id)
        if not key.allows_realm(realm_id):
            raise OssError(
                403, "AUTH.SERVICE_KEY_REALM_FORBIDDEN", "Service API key not authorized for realm"
            )

    def _check_freshness(self, key: ServiceKey, timestamp: str, nonce: str) -> None:
        """Strict mode only: the server itself checks neither (recorded)."""
        import time

        signed_at = parse_timestamp(timestamp)
        skew = self.settings.skew_seconds
        now = time.time()
        if signed_at is None or abs(now - signed_at.timestamp()) > skew:
            raise bad_signature(f"the request timestamp is outside the {skew:g} s window")
        if not self.nonces.check_and_add(f"{key.key_id}:{nonce}", now=now, ttl=2 * skew):
            raise bad_signature("this nonce was already used")

    # --- bindings ---------------------------------------------------------------------------

    def _bind(self, call: OssCall) -> None:
        binding = call.route.binding
        identity = call.identity
        if binding in ("token", "open"):
            return
        if identity.kind == "bearer":
            if binding == "none":
                raise OssError(403, "AUTH.INSUFFICIENT_SCOPE", "service authentication required")
            claims = identity.claims
            assert claims is not None
            call.account = call.realm.accounts_by_id[claims.billing_account_id]
            call.user = call.realm.users_by_id[claims.billing_user_id]
            return
        h = call.headers
        principal, user_id = h.get("x-principal-id"), h.get("x-user-id")
        if binding == "none":
            return
        if binding == "caller":  # /api/v1 with an unverified SVC-AUTH header
            if not principal:
                raise unauthorized("missing_token")
            call.account = self.account_for(call.realm, principal)
            if user_id:
                call.user = self.user_for(call.account, user_id, call.now)
            return
        if binding == "runtime":
            if not principal or not user_id:
                raise OssError(
                    401, "AUTH.MISSING_RUNTIME_BINDINGS", "x-principal-id and x-user-id are required"
                )
            account = self.account_for(call.realm, principal)
            wanted = h.get("x-billing-account-id")
            if wanted and wanted != account.billing_account_id:
                raise OssError(
                    403, "AUTH.BILLING_ACCOUNT_MISMATCH", "billing account does not match principal"
                )
            user = self.user_for(account, user_id, call.now)
            billing_user = h.get("x-billing-user-id")
            if billing_user and billing_user != user.billing_user_id:
                raise OssError(403, "AUTH.BILLING_USER_MISMATCH", "billing user does not match user id")
            call.account, call.user = account, user
            return
        # "service": a principal or a billing account; both must agree unless x-realm-admin.
        wanted = h.get("x-billing-account-id")
        if not principal and not wanted:
            raise OssError(
                401, "AUTH.MISSING_SERVICE_BINDINGS", "principal_id or billing_account_id required"
            )
        by_header = call.realm.accounts_by_id.get(wanted) if wanted else None
        if wanted and by_header is None:
            raise OssError(
                403, "AUTH.SERVICE_BINDINGS_INVALID", "Unable to resolve service binding for realm"
            )
        bound = self.account_for(call.realm, principal) if principal else by_header
        if by_header is not None and bound is not by_header:
            if h.get("x-realm-admin", "").lower() != "true":
                raise OssError(
                    403, "AUTH.SERVICE_BINDINGS_INVALID", "Unable to resolve service binding for realm"
                )
            bound = by_header
        call.account = bound

    def account_for(self, realm: RealmData, principal_id: str) -> Account:
        """The principal's billing account, created on first use. Creating it fails once with
        500 SERVER.UNEXPECTED (the row is kept, so the retry succeeds), as on the server."""
        account = realm.accounts.get(principal_id)
        if account is not None:
            return account
        account = Account(
            billing_account_id=new_uuid(),
            realm_id=realm.realm_id,
            principal_id=principal_id,
            created_at=self.clock(),
        )
        realm.accounts[principal_id] = account
        realm.accounts_by_id[account.billing_account_id] = account
        if self.flaky_account_creation:
            raise unexpected()
        return account

    def user_for(self, account: Account, user_id: str, now: float) -> BillingUser:
        user = account.users.get(user_id)
        if user is None:
            user = BillingUser(
                billing_user_id=new_uuid(),
                billing_account_id=account.billing_account_id,
                principal_id=account.principal_id,
                user_id=user_id,
                created_at=now,
                updated_at=now,
                metadata={"grants_switch": {"dirty": False, "applied_at": iso_ms(now)}},
            )
            account.users[user_id] = user
            self.state.realm(account.realm_id).users_by_id[user.billing_user_id] = user
            if account.seat_limit_source is None:
                account.seat_limit_source = "default"
                account.seat_limit_updated_at = now
        return user

    def issue_token(
        self, call: OssCall, account: Account, user: BillingUser, scopes: tuple[str, ...], ttl: int
    ) -> tuple[str, TokenClaims]:
        body = call.json()
        nonce = body.get("nonce")
        traits = body.get("traits")
        return self.tokens.issue(
            realm_id=account.realm_id,
            principal_id=account.principal_id,
            user_id=user.user_id,
            billing_account_id=account.billing_account_id,
            billing_user_id=user.billing_user_id,
            scopes=scopes,
            ttl_seconds=ttl,
            now=call.now,
            key_id=call.identity.key_id,
            nonce=nonce if isinstance(nonce, str) else None,
            traits=traits if isinstance(traits, dict) else None,
        )


def _parse_body(method: str, headers: dict[str, str], body: bytes) -> tuple[Any, bytes]:
    """(parsed body, the bytes the Content-Digest is checked against), as the server's JSON body
    parser leaves them: only a JSON content type is read; anything else counts as no body."""
    if not _JSON_CONTENT.match(headers.get("content-type", "")):
        return None, b""
    if not body:
        if method in WRITE_METHODS:
            raise invalid("Body cannot be empty when content-type is set to 'application/json'", 400)
        return None, b""
    try:
        return _decode(body), body
    except msgspec.DecodeError:
        raise invalid("Body is not valid JSON but content-type is set to 'application/json'", 400) from None


def _cors_headers(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    if "origin" not in headers:
        return []
    return [
        (b"vary", b"Origin"),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-expose-headers", CORS_EXPOSE.encode()),
    ]


def _preflight(headers: dict[str, str]) -> Answer:
    """204 without Access-Control-Allow-Origin (so browsers refuse), as the server answers."""
    out = [
        (b"vary", b"Origin, Access-Control-Request-Headers"),
        (b"access-control-allow-credentials", b"true"),
        (b"access-control-allow-methods", CORS_METHODS.encode()),
    ]
    requested = headers.get("access-control-request-headers")
    if requested:
        out.append((b"access-control-allow-headers", requested.encode("latin-1")))
    return 204, None, out
