"""The request pipeline of the emulator, independent of the web framework.

One raw-ASGI entry point (`EmulatorCore.asgi`) serves both API surfaces:
route -> count -> fault -> realm -> authenticate -> idempotency -> handler -> envelope.
The hot path does no schema work: routes, catalog answers and sample envelopes are computed
once, and verified tokens are cached.
"""

from __future__ import annotations

import hmac
import itertools
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl, unquote

import anyio
import msgspec

from vlunaai.signing import (
    SvcAuthHeader,
    canonical_string,
    compute_signature,
    content_digest,
    decode_secret,
    parse_authorization,
)

from .errors import ApiError, bad_signature, invalid_input, not_found, unauthorized
from .faults import ConnectionDropped, Fault, Faults
from .generic import EnvelopeSamples
from .seed import Realm, Seed, ServiceKey, generate_secret
from .state import BillingAccount, BillingUser, State
from .tokens import InvalidToken, TokenClaims, TokenService

SERVICE_PREFIX = "/mgt/v1"
BEARER_PREFIX = "/api/v1"
READ_METHODS = frozenset({"GET", "HEAD"})

_encode = msgspec.json.encode
_decode = msgspec.json.decode

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


class OperationLike(Protocol):
    @property
    def client(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def returns(self) -> str: ...


FLAVORS = ("0.3.2", "oss")
Flavor = Literal["0.3.2", "oss"]


@dataclass(frozen=True)
class EmulatorSettings:
    """How an emulator behaves. Every field has a default that works for tests.

    `flavor` is the server emulated: "0.3.2", the API of the published vlunaai 0.3.2 (every
    operation of both SDK generations); "oss", the open-source Vluna server as recorded in
    spec/vluna-api/recorded (its routes, status codes, envelopes, bindings, tokens and quirks).
    `strict_auth` (None: on for "0.3.2", off for "oss") rejects SVC-AUTH timestamps outside
    `skew_seconds` and replayed nonces; in the "oss" flavour it also refuses a platform token on
    /mgt/v1 and an unverified SVC-AUTH header on /api/v1, which that server accepts.
    """

    flavor: Flavor = "0.3.2"
    strict_auth: bool | None = None
    realm_id: str = "realm_demo"
    service_key_id: str = "pk-emulator"
    service_key_secret: str | None = field(default=None, repr=False)  # base64; generated when None
    token_ttl_min: int = 60
    token_ttl_max: int = 3600
    token_ttl_default: int = 900
    skew_seconds: float = 300.0
    lease_ttl_seconds: int = 300
    checkout_ttl_seconds: int = 3600
    controls_enabled: bool = False
    public_url: str = "http://127.0.0.1:8787"
    require_runtime_bindings: bool = True
    # Like the open-source server: the call that creates a billing account fails once with 500
    # (the account is created anyway, so the retry succeeds). None: on for "oss", off for "0.3.2".
    flaky_account_creation: bool | None = None
    token_signing_key: bytes | None = field(default=None, repr=False)

    @property
    def strict(self) -> bool:
        return self.strict_auth if self.strict_auth is not None else self.flavor == "0.3.2"

    def __post_init__(self) -> None:
        if self.flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {', '.join(FLAVORS)}")
        if not 1 <= self.token_ttl_min <= self.token_ttl_max:
            raise ValueError("token TTL limits must satisfy 1 <= min <= max")
        if self.skew_seconds <= 0:
            raise ValueError("skew_seconds must be positive")
        if not self.token_ttl_min <= self.token_ttl_default <= self.token_ttl_max:
            raise ValueError("the default token TTL must lie between the limits")
        if self.service_key_secret is not None:
            decode_secret(self.service_key_secret)  # a clear error now, never echoing the secret


@dataclass
class Reply:
    status: int
    data: Any
    meta: dict[str, Any] | None = None
    hints: list[dict[str, Any]] | None = None
    headers: dict[str, str] | None = None
    raw: bytes | None = None  # a pre-encoded envelope (hot path)


Handler = Callable[["Call"], Reply]


@dataclass
class Route:
    client: str  # service | bearer
    name: str
    method: str
    template: str
    returns: str
    qualified: str
    handler: Handler
    pattern: re.Pattern[str] | None = None
    idempotent_write: bool = False


class Call:
    """One authenticated call as a handler sees it."""

    __slots__ = (
        "_query",
        "body",
        "core",
        "headers",
        "key",
        "params",
        "query_string",
        "realm",
        "route",
        "token",
    )

    def __init__(
        self,
        core: EmulatorCore,
        route: Route,
        realm: Realm,
        params: dict[str, str],
        query_string: str,
        headers: dict[str, str],
        body: Any,
        key: ServiceKey | None,
        token: TokenClaims | None,
    ) -> None:
        self.core = core
        self.route = route
        self.realm = realm
        self.params = params
        self.query_string = query_string
        self._query: dict[str, str] | None = None
        self.headers = headers
        self.body = body
        self.key = key
        self.token = token

    @property
    def realm_id(self) -> str:
        return self.realm.realm_id

    @property
    def state(self) -> State:
        return self.core.state

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            self._query = dict(parse_qsl(self.query_string, keep_blank_values=True))
        return self._query

    @property
    def now(self) -> float:
        return self.core.clock()

    def json_body(self) -> dict[str, Any]:
        if self.body is None:
            return {}
        if not isinstance(self.body, dict):
            raise invalid_input("the request body must be a JSON object", reason="invalid_body")
        return self.body

    def require_bindings(self) -> tuple[BillingAccount, BillingUser]:
        """Principal and user of a runtime call (service: headers; bearer: the token)."""
        if self.token is not None:
            account = self.core.state.accounts_by_id[self.token.billing_account_id]
            return account, self.core.state.user_for(account, self.token.user_id)
        principal = self.headers.get("x-principal-id")
        user_id = self.headers.get("x-user-id")
        if not principal or not user_id:
            if self.core.settings.require_runtime_bindings or not principal:
                raise ApiError(
                    401,
                    "AUTH.MISSING_RUNTIME_BINDINGS",
                    "runtime calls need both X-Principal-Id and X-User-Id",
                    reason="missing_runtime_bindings",
                )
            user_id = principal
        account = self.core.state.account_for_principal(self.realm_id, principal)
        return account, self.core.state.user_for(account, user_id)

    def account(self) -> BillingAccount:
        """The billing account of an account-scoped call."""
        state = self.core.state
        if self.token is not None:
            wanted = self.query.get("billing_account_id") or self.headers.get("x-billing-account-id")
            if wanted and wanted != self.token.billing_account_id:
                raise ApiError(
                    403,
                    "AUTH.INSUFFICIENT_SCOPE",
                    "the token is not valid for that billing account",
                    reason="account_mismatch",
                )
            return state.accounts_by_id[self.token.billing_account_id]
        account_id = self.headers.get("x-billing-account-id") or self.query.get("billing_account_id")
        if account_id:
            account = state.accounts_by_id.get(account_id)
            if account is None or account.realm_id != self.realm_id:
                raise not_found("billing account")
            return account
        principal = self.headers.get("x-principal-id")
        if principal:
            return state.account_for_principal(self.realm_id, principal)
        raise invalid_input(
            "this call needs X-Billing-Account-ID or X-Principal-Id",
            reason="missing_billing_account",
            status=400,
        )


LEGACY_SIGNATURE_MESSAGE = (
    "Signature mismatch: this request was signed in the pre-0.3 canonical form of the published "
    "vlunaai 0.1.2 (x-billing-account-id before x-principal-id, no x-user-id / x-billing-user-id "
    "lines), which Vluna no longer accepts; upgrade to vlunaai 0.3.2 or the vlunaai SDK of this project"
)


def legacy_canonical_string(
    *,
    method: str,
    path_with_query: str,
    timestamp: str,
    nonce: str,
    content_digest: str,
    content_type: str,
    realm_id: str,
    principal_id: str | None,
    billing_account_id: str | None,
    idempotency_key: str,
) -> str:
    """The canonical string of the published vlunaai 0.1.2 signer (recognised, never accepted)."""
    return "\n".join(
        [
            method.upper(),
            path_with_query,
            f"ts:{timestamp}",
            f"nonce:{nonce}",
            f"content-digest:{content_digest}",
            f"content-type:{content_type}",
            f"x-realm-id:{realm_id}",
            f"x-billing-account-id:{billing_account_id or ''}",
            f"x-principal-id:{principal_id or ''}",
            f"idempotency-key:{idempotency_key}",
        ]
    )


_TS_RE = re.compile(r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})$")


def parse_timestamp(value: str) -> datetime | None:
    """An ISO-8601 timestamp with an offset (any fraction length, `Z` allowed), on Python 3.10 too."""
    match = _TS_RE.match(value)
    if match is None:
        return None
    base, fraction, offset = match.groups()
    if offset == "Z":
        offset = "+00:00"
    elif ":" not in offset:
        offset = f"{offset[:3]}:{offset[3:]}"
    micros = f".{(fraction or '')[:6].ljust(6, '0')}" if fraction else ""
    try:
        return datetime.fromisoformat(f"{base}{micros}{offset}")
    except ValueError:
        return None


def _template_regex(template: str) -> re.Pattern[str]:
    out = []
    for part in re.split(r"(\{[a-z_]+\})", template):
        if part.startswith("{") and part.endswith("}"):
            out.append(f"(?P<{part[1:-1]}>[^/]+)")
        else:
            out.append(re.escape(part))
    return re.compile("^" + "".join(out) + "$")


_STATUS_CODES = {
    400: "VALIDATION.INVALID_INPUT",
    401: "AUTH.UNAUTHORIZED",
    403: "AUTH.INSUFFICIENT_SCOPE",
    404: "RESOURCE.NOT_FOUND",
    409: "WRITE.INVALID_PAYLOAD",
    422: "VALIDATION.INVALID_INPUT",
    429: "RATE_LIMIT.EXCEEDED",
    500: "SERVER.UNEXPECTED",
    502: "SERVER.UPSTREAM",
    503: "SERVER.UNAVAILABLE",
    504: "SERVER.TIMEOUT",
}


def code_for_status(status: int) -> str:
    return _STATUS_CODES.get(status, "SERVER.UNEXPECTED" if status >= 500 else "EMULATOR.INJECTED_FAULT")


@dataclass
class HttpRequest:
    """An HTTP request as both flavours' ASGI entry reads it (whole body, lower-case headers)."""

    method: str
    path: str  # raw_path as received (percent-encoding kept), else root_path + path
    query_string: str
    headers: dict[str, str]
    body: bytes


async def read_request(scope: Scope, receive: Receive) -> HttpRequest | None:
    """The request of an ASGI ``http`` scope, body included; None when the client went away."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if raw else scope.get("root_path", "") + scope["path"]
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return HttpRequest(
        method=scope["method"].upper(),
        path=path,
        query_string=scope.get("query_string", b"").decode("latin-1"),
        headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
        body=b"".join(chunks),
    )


class RouteTemplate(Protocol):
    """What a flavour's route says about itself to its host: the path template it serves."""

    template: str


class CoreBase:
    """What every flavour shares: settings, seed, service keys and realms, clock, call counters
    and faults. A flavour adds its state and its request pipeline (`asgi`)."""

    flavor = "0.3.2"

    def __init__(self, settings: EmulatorSettings, seed: Seed) -> None:
        self.settings = settings
        self.seed = seed
        self.time_offset = 0.0
        secret = settings.service_key_secret or generate_secret()
        self.primary_key = ServiceKey(
            key_id=settings.service_key_id, secret=secret, realms=(settings.realm_id,)
        )
        self.keys: dict[str, ServiceKey] = {k.key_id: k for k in seed.service_keys}
        self.keys[self.primary_key.key_id] = self.primary_key
        self._key_bytes: dict[str, bytes] = {k: v.secret_bytes for k, v in self.keys.items()}
        self.realms: dict[str, Realm] = {r.realm_id: r for r in seed.realms}
        if settings.realm_id not in self.realms:
            self.realms[settings.realm_id] = Realm(realm_id=settings.realm_id, name=settings.realm_id)
        self.faults = Faults()
        self._trace = itertools.count(1)

    def clock(self) -> float:
        return time.time() + self.time_offset

    @property
    def operation_count(self) -> int:
        raise NotImplementedError

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError

    def resolve(self, method: str, path: str) -> tuple[RouteTemplate, dict[str, str]] | None:
        """The route serving ``method path`` and its path parameters, None when none does."""
        raise NotImplementedError

    async def count_and_fault(
        self, qualified: str, name: str, trace_id: str
    ) -> tuple[tuple[int, bytes, dict[str, str] | None] | None, bool]:
        """Count a call; (an injected answer or None, whether to drop the answer afterwards)."""
        self.faults.calls[qualified] += 1
        if not self.faults.armed:
            return None, False
        fault = self.faults.take(qualified, name)
        if fault is None:
            return None, False
        if fault.drop_connection and fault.after_processing:
            return None, True
        return await self._apply_fault(fault, trace_id), False

    async def _apply_fault(
        self, fault: Fault, trace_id: str
    ) -> tuple[int, bytes, dict[str, str] | None] | None:
        if fault.latency_seconds > 0:
            await anyio.sleep(fault.latency_seconds)
        if fault.drop_connection:
            return -1, b"", None
        if fault.status is None:
            return None
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            ra = fault.retry_after
            headers["retry-after"] = str(int(ra)) if float(ra).is_integer() else f"{ra:g}"
        error = ApiError(
            fault.status,
            fault.code or code_for_status(fault.status),
            fault.message or "injected fault",
            reason="fault_injection",
            headers=headers,
        )
        return self._error(error, trace_id)

    def _error(self, exc: ApiError, trace_id: str) -> tuple[int, bytes, dict[str, str] | None]:
        raise NotImplementedError

    def reset(self) -> None:
        self.faults.clear()
        self.faults.reset_counters()
        self.time_offset = 0.0

    def complete_checkout(self, checkout_id: str) -> None:
        """Finish a checkout as if the customer paid (KeyError: no such checkout)."""
        raise KeyError(checkout_id)

    def balance_xusd(self, billing_account_id: str) -> int:
        raise NotImplementedError


class EmulatorCore(CoreBase):
    """The 0.3.2 flavour: state, configuration and the request pipeline of one emulator."""

    def __init__(
        self,
        settings: EmulatorSettings,
        seed: Seed,
        operations: Iterable[OperationLike],
        handlers: dict[str, Handler],
        generic: Callable[[Call], Reply],
        *,
        samples: EnvelopeSamples | None = None,
    ) -> None:
        super().__init__(settings, seed)
        self.state = State(clock=self.clock, new_account_balance_xusd=seed.new_account_balance_xusd)
        self.tokens = TokenService(public_url=settings.public_url, signing_key=settings.token_signing_key)
        self.samples = samples or EnvelopeSamples()
        self.features = {f.code: f for f in seed.features}
        self.families = {f.code: f for f in seed.families}
        self.cache: dict[Any, bytes] = {}
        self._static: dict[tuple[str, str, str], Route] = {}
        self._templated: dict[tuple[str, str], list[Route]] = {}
        self._known_paths: list[tuple[str, re.Pattern[str]]] = []
        self.routes: list[Route] = []
        for op in operations:
            self._add_route(op, handlers, generic)

    @property
    def operation_count(self) -> int:
        return len(self.routes)

    # --- routing --------------------------------------------------------------------------

    def _add_route(
        self, op: OperationLike, handlers: dict[str, Handler], generic: Callable[[Call], Reply]
    ) -> None:
        client = "service" if op.client.startswith("service") else "bearer"
        qualified = f"{client}.{op.name}"
        handler = handlers.get(qualified) or handlers.get(op.name) or generic
        prefix = SERVICE_PREFIX if client == "service" else BEARER_PREFIX
        templates = [op.path]
        if "/event_rating_policies" in op.path:
            templates.append(op.path.replace("/event_rating_policies", "/event-rating-policies"))
        for template in templates:
            route = Route(
                client=client,
                name=op.name,
                method=op.method.upper(),
                template=template,
                returns=op.returns,
                qualified=qualified,
                handler=handler,
                idempotent_write=op.method.upper() not in READ_METHODS,
            )
            if template is op.path:
                self.routes.append(route)
            if "{" in template:
                route.pattern = _template_regex(template)
                bucket = self._templated.setdefault((prefix, route.method), [])
                bucket.append(route)
                bucket.sort(key=lambda r: -len(re.sub(r"\{[a-z_]+\}", "", r.template)))
                self._known_paths.append((prefix, route.pattern))
            else:
                self._static[(prefix, route.method, template)] = route
                self._known_paths.append((prefix, re.compile("^" + re.escape(template) + "$")))

    def resolve(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        if path.startswith(SERVICE_PREFIX + "/"):
            prefix = SERVICE_PREFIX
        elif path.startswith(BEARER_PREFIX + "/"):
            prefix = BEARER_PREFIX
        else:
            return None
        rest = path[len(prefix) :]
        if method == "HEAD":
            method = "GET"
        route = self._static.get((prefix, method, rest))
        if route is not None:
            return route, {}
        for candidate in self._templated.get((prefix, method), ()):
            assert candidate.pattern is not None
            match = candidate.pattern.match(rest)
            if match is not None:
                return candidate, {k: unquote(v) for k, v in match.groupdict().items()}
        return None

    def resolve_name(self, method: str, raw_path: str) -> tuple[str, str] | None:
        found = self.resolve(method, raw_path)
        if found is None:
            return None
        return found[0].qualified, found[0].name

    # --- ASGI -------------------------------------------------------------------------------

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = await read_request(scope, receive)
        if request is None:
            return
        method, headers = request.method, request.headers
        trace_id = f"emu-{next(self._trace):010x}"
        status, body_out, extra = await self.handle(
            method, request.path, request.query_string, headers, request.body, trace_id
        )
        out_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body_out)).encode()),
            (b"x-trace-id", trace_id.encode()),
        ]
        request_id = headers.get("x-request-id")
        if request_id:
            out_headers.append((b"x-request-id", request_id.encode("latin-1")))
        if extra:
            out_headers.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())
        if status == -1:
            # Dropped connection: start an answer, then fail. A real server (uvicorn) closes the
            # socket mid-response; the in-process transport turns this into a transport error.
            # The announced length is never delivered, so the client cannot mistake it for an answer.
            out_headers[1] = (b"content-length", b"1024")
            await send({"type": "http.response.start", "status": 200, "headers": out_headers})
            raise ConnectionDropped("fault injection: connection dropped")
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body_out})

    async def handle(
        self, method: str, path: str, query_string: str, headers: dict[str, str], body: bytes, trace_id: str
    ) -> tuple[int, bytes, dict[str, str] | None]:
        """Answer one request: (status, envelope bytes, extra headers); status -1 drops it."""
        found = self.resolve(method, path)
        if found is None:
            return self._error(not_found_route(path, method, self._known_paths), trace_id)
        route, params = found
        injected, drop_after = await self.count_and_fault(route.qualified, route.name, trace_id)
        if injected is not None:
            return injected
        try:
            answer = self._serve(route, params, method, path, query_string, headers, body, trace_id)
        except ApiError as exc:
            answer = self._error(exc, trace_id)
        # The work is done (and a write's answer stored for replay), but the answer is lost.
        return (-1, b"", None) if drop_after else answer

    def _error(self, exc: ApiError, trace_id: str) -> tuple[int, bytes, dict[str, str] | None]:
        return exc.status, _encode(exc.envelope(trace_id)), exc.headers or None

    def _serve(
        self,
        route: Route,
        params: dict[str, str],
        method: str,
        path: str,
        query_string: str,
        headers: dict[str, str],
        body: bytes,
        trace_id: str,
    ) -> tuple[int, bytes, dict[str, str] | None]:
        realm_id = headers.get("x-realm-id")
        if not realm_id:
            raise invalid_input("X-Realm-Id is required", reason="missing_realm", status=400)
        key: ServiceKey | None = None
        token: TokenClaims | None = None
        if route.client == "service":
            key = self.verify_service_auth(method, path, query_string, headers, body, realm_id)
            identity = "key:" + key.key_id
        else:
            token = self.verify_bearer(headers, realm_id)
            identity = "acct:" + token.billing_account_id
        realm = self.realms.get(realm_id)
        if realm is None:
            raise ApiError(
                404,
                "AUTH.UNKNOWN_REALM",
                "unknown realm",
                reason="unknown_realm",
                meta={"clear_cached_realm": True},
            )
        parsed: Any = None
        if body:
            try:
                parsed = _decode(body)
            except msgspec.DecodeError:
                raise invalid_input("the request body is not valid JSON", reason="invalid_json") from None
        call = Call(self, route, realm, params, query_string, headers, parsed, key, token)
        if not route.idempotent_write:
            return self._render(self._run(route, call), trace_id)
        idem = headers.get("idempotency-key")
        if not idem:
            raise invalid_input(
                "Idempotency-Key is required on writes", reason="missing_idempotency_key", status=400
            )
        record_key = (realm_id, identity, idem)
        fingerprint = State.fingerprint(method, path, body)
        record = self.state.idempotency_lookup(record_key)
        if record is not None:
            if not hmac.compare_digest(record.fingerprint, fingerprint):
                raise ApiError(
                    409,
                    "WRITE.INVALID_PAYLOAD",
                    "this Idempotency-Key was used with a different request",
                    reason="idempotency_conflict",
                )
            return record.status, record.body, {"idempotent-replayed": "true"}
        status, out, extra = self._render(self._run(route, call), trace_id)
        if 200 <= status < 300:
            self.state.idempotency_store(record_key, fingerprint, status, out)
        return status, out, extra

    def _run(self, route: Route, call: Call) -> Reply:
        if not self.settings.flaky_account_creation:
            return route.handler(call)
        accounts = len(self.state.accounts)
        reply = route.handler(call)
        if len(self.state.accounts) > accounts:
            raise ApiError(500, "SERVER.UNEXPECTED", "unexpected error", reason="account_provisioning")
        return reply

    def _render(self, reply: Reply, trace_id: str) -> tuple[int, bytes, dict[str, str] | None]:
        if reply.raw is not None:
            return reply.status, reply.raw, reply.headers
        envelope: dict[str, Any] = {"ok": True, "code": "OK", "data": reply.data}
        if reply.meta is not None:
            envelope["meta"] = reply.meta
        if reply.hints:
            envelope["hints"] = reply.hints
        envelope["trace_id"] = trace_id
        return reply.status, _encode(envelope), reply.headers

    # --- authentication ---------------------------------------------------------------------

    def verify_service_auth(
        self, method: str, path: str, query_string: str, headers: dict[str, str], body: bytes, realm_id: str
    ) -> ServiceKey:
        authorization = headers.get("authorization")
        if not authorization:
            raise bad_signature("missing_authorization", "Authorization: SVC-AUTH ... is required")
        if not authorization.startswith("SVC-AUTH "):
            raise unauthorized(
                "unsupported_authorization_scheme", "this API accepts only SVC-AUTH service signatures"
            )
        parsed = parse_authorization(authorization)
        if parsed is None or parsed.algorithm != "HMAC-SHA256":
            raise bad_signature("malformed_authorization", "malformed SVC-AUTH header")
        key = self.keys.get(parsed.key_id)
        if key is None:
            raise ApiError(
                401, "AUTH.SERVICE_KEY_NOT_FOUND", "unknown service key", reason="service_key_not_found"
            )
        received_digest = headers.get("content-digest")
        if not received_digest:
            raise bad_signature("missing_content_digest", "Content-Digest is required")
        if not hmac.compare_digest(received_digest.encode(), content_digest(body).encode()):
            raise bad_signature("content_digest_mismatch", "Content-Digest does not match the body")
        target = f"{path}?{query_string}" if query_string else path
        canonical = canonical_string(
            method=method,
            path_with_query=target,
            timestamp=parsed.timestamp,
            nonce=parsed.nonce,
            content_digest=received_digest,
            content_type=headers.get("content-type", ""),
            realm_id=realm_id,
            principal_id=headers.get("x-principal-id"),
            user_id=headers.get("x-user-id"),
            billing_account_id=headers.get("x-billing-account-id"),
            idempotency_key=headers.get("idempotency-key", ""),
        )
        expected = compute_signature(self._key_bytes[key.key_id], canonical)
        if not hmac.compare_digest(expected.encode(), parsed.signature.encode()):
            raise self._signature_mismatch(key, parsed, method, target, received_digest, headers, realm_id)
        if key.status != "active":
            raise ApiError(
                403,
                "AUTH.SERVICE_KEY_DISABLED",
                "this service key is disabled",
                reason="service_key_disabled",
            )
        real_now = time.time()
        if key.expires_at is not None and key.expires_at.timestamp() <= real_now:
            raise ApiError(
                403, "AUTH.SERVICE_KEY_EXPIRED", "this service key has expired", reason="service_key_expired"
            )
        if realm_id not in self.realms:
            raise ApiError(
                404,
                "AUTH.UNKNOWN_REALM",
                "unknown realm",
                reason="unknown_realm",
                meta={"clear_cached_realm": True},
            )
        if not key.allows_realm(realm_id):
            raise ApiError(
                403,
                "AUTH.SERVICE_KEY_REALM_FORBIDDEN",
                "this service key may not use this realm",
                reason="realm_forbidden",
            )
        if self.settings.strict:
            self._check_freshness(key, parsed, real_now)
        return key

    def _check_freshness(self, key: ServiceKey, parsed: SvcAuthHeader, real_now: float) -> None:
        """Stricter than the open-source server (which checks neither): the timestamp lies in the
        skew window and the nonce was not seen inside it."""
        signed_at = parse_timestamp(parsed.timestamp)
        if signed_at is None:
            raise bad_signature("malformed_timestamp", "the SVC-AUTH timestamp is not ISO-8601 with offset")
        skew = self.settings.skew_seconds
        if abs(real_now - signed_at.timestamp()) > skew:
            raise bad_signature(
                "timestamp_out_of_window", f"the request timestamp is outside the {skew:g} s window"
            )
        if not self.state.nonces.check_and_add(f"{key.key_id}:{parsed.nonce}", now=real_now, ttl=2 * skew):
            raise bad_signature("nonce_replayed", "this nonce was already used")

    def _signature_mismatch(
        self,
        key: ServiceKey,
        parsed: SvcAuthHeader,
        method: str,
        target: str,
        digest: str,
        headers: dict[str, str],
        realm_id: str,
    ) -> ApiError:
        """The 401 for a signature that does not verify; it says so when the request was signed
        the way the published vlunaai 0.1.2 signs (still refused, as the real server refuses it)."""
        legacy = legacy_canonical_string(
            method=method,
            path_with_query=target,
            timestamp=parsed.timestamp,
            nonce=parsed.nonce,
            content_digest=digest,
            content_type=headers.get("content-type", ""),
            realm_id=realm_id,
            principal_id=headers.get("x-principal-id"),
            billing_account_id=headers.get("x-billing-account-id"),
            idempotency_key=headers.get("idempotency-key", ""),
        )
        if hmac.compare_digest(
            compute_signature(self._key_bytes[key.key_id], legacy).encode(), parsed.signature.encode()
        ):
            return bad_signature("legacy_signature", LEGACY_SIGNATURE_MESSAGE)
        return bad_signature("invalid_signature", "the request signature does not verify")

    def verify_bearer(self, headers: dict[str, str], realm_id: str) -> TokenClaims:
        authorization = headers.get("authorization")
        if not authorization:
            raise unauthorized("missing_token", "Authorization: Bearer <token> is required")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            raise unauthorized("unsupported_authorization_scheme", "this API accepts only Bearer tokens")
        try:
            claims = self.tokens.verify(token.strip(), now=self.clock())
        except InvalidToken:
            raise unauthorized("invalid_token", "the access token is invalid or expired") from None
        if claims.realm_id != realm_id:
            raise ApiError(
                403, "AUTH.INSUFFICIENT_SCOPE", "the token belongs to another realm", reason="realm_mismatch"
            )
        if claims.billing_account_id not in self.state.accounts_by_id:
            # The emulator was reset after the token was issued.
            raise unauthorized("invalid_token", "the access token refers to an unknown billing account")
        return claims

    # --- helpers ---------------------------------------------------------------------------

    def reset(self) -> None:
        super().reset()
        self.state.reset()
        self.cache.clear()

    def complete_checkout(self, checkout_id: str) -> None:
        from .handlers.checkout import complete_checkout

        complete_checkout(self.state, self.seed.prices, self.state.checkouts[checkout_id], now=self.clock())

    def balance_xusd(self, billing_account_id: str) -> int:
        return self.state.accounts_by_id[billing_account_id].balance_xusd


def not_found_route(path: str, method: str, known: list[tuple[str, re.Pattern[str]]]) -> ApiError:
    for prefix, pattern in known:
        if path.startswith(prefix + "/") and pattern.match(path[len(prefix) :]):
            return ApiError(
                405, "RESOURCE.NOT_FOUND", f"{method} is not allowed here", reason="method_not_allowed"
            )
    return ApiError(404, "RESOURCE.NOT_FOUND", "unknown route", reason="unknown_route")
