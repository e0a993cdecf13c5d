"""Every setting of the BFF in one typed tree: YAML file, then environment overrides, then checks.

Sources, later wins:
1. the YAML file (``--config`` or ``VLUNA_BFF_CONFIG``);
2. ``VLUNA_BFF__SECTION__KEY=value`` environment variables (``__`` separates levels; values
   starting with ``[`` or ``{`` are parsed as JSON, everything else stays a string and pydantic
   coerces it);
3. ``VLUNA_BFF__SECTION__KEY_FILE=/path``: the file's content (trailing newline stripped), which is
   how Kubernetes secrets are mounted.

Secrets are ``SecretStr`` so that ``repr``, ``model_dump`` and every log line show ``**********``.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "VLUNA_BFF__"
CONFIG_ENV = "VLUNA_BFF_CONFIG"

AuthMethod = Literal["bearer", "cookie", "introspection", "hook"]

HS_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{0,64}$")
_TEMPLATE_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


Problem = tuple[str, str]  # (the field's path, what is wrong with it), never the value


class _Model(BaseModel):
    # A misspelt key in the YAML must fail loudly instead of silently keeping a default.
    model_config = ConfigDict(extra="forbid", frozen=True)

    def problems(self, root: Settings) -> list[Problem]:
        """What this section's values break that their types cannot say, checked beside the
        section (``root``: the whole tree, for the few checks that span sections)."""
        return []


# -- the API proxy (``proxy``) and the per-user rate limits (``rate_limit``) ----------------------
# Every check that can be made on the configuration alone is made here, so that a bad allowlist
# fails ``vluna-bff check-config`` instead of the first request.

ProxyMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]

# A literal segment of an allowlisted path template: no dots-only segments, no encodings.
_LITERAL_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
_PARAM_SEGMENT = re.compile(r"^\{([a-z_][a-z0-9_]{0,31})\}$")
_QUERY_NAME = re.compile(r"^[A-Za-z0-9_.\[\]-]{1,64}$")

DEFAULT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"


def template_params(template: str) -> list[str]:
    """The placeholder names of a path template, checking every segment on the way."""
    if not template.startswith("/") or template.endswith("/") or "//" in template:
        raise ValueError("must start with '/', not end with '/' and not contain '//'")
    names: list[str] = []
    for segment in template[1:].split("/"):
        m = _PARAM_SEGMENT.match(segment)
        if m is not None:
            names.append(m.group(1))
        elif not _LITERAL_SEGMENT.match(segment) or set(segment) == {"."}:
            raise ValueError(f"segment {segment!r}: letters, digits, '_', '-', '.' or a {{name}} placeholder")
    if len(set(names)) != len(names):
        raise ValueError("a placeholder appears twice")
    return names


class ProxyRoute(_Model):
    # Method and path template (under /api/v1) a client may call, e.g. GET /checkouts/{checkout_id}.
    method: ProxyMethod
    path: str
    # Upstream path template, when the deployment names the route differently.
    upstream_path: str | None = None
    # Query parameters forwarded (all others are dropped).
    query: list[str] = []
    # The service adds ?billing_account_id=<the caller's own account> (never taken from the client).
    account_query: bool = False
    # Cacheable GET (proxy.public_cache_ttl_sec): answers are cached per caller (principal and user),
    # never shared between users, since Vluna personalises them (catalog subscription_state).
    public: bool = False
    # Token scopes used for this call; None: tokens.default_scopes (one cached token serves all).
    scopes: list[str] | None = None

    @model_validator(mode="after")
    def _check(self) -> ProxyRoute:
        names = template_params(self.path)
        if self.upstream_path is not None:
            up = template_params(self.upstream_path)
            if set(up) - set(names):
                raise ValueError("upstream_path uses a placeholder that path does not have")
        for target in (self.path, self.upstream_path or self.path):
            low = target.lower()
            if low.startswith(("/mgt", "/api/", "/__")):
                raise ValueError("paths are relative to /api/v1 and never reach /mgt/v1")
        for q in self.query:
            if not _QUERY_NAME.match(q):
                raise ValueError(f"query parameter name {q!r} is not allowed")
        if "billing_account_id" in self.query:
            raise ValueError(
                "billing_account_id is filled in by the service (account_query), never forwarded"
            )
        if self.public and (self.method != "GET" or self.account_query):
            raise ValueError("only account-independent GET routes can be public")
        return self


_LIST_QUERY = ["limit", "cursor", "starting_after", "ending_before"]

# Which Vluna server the proxy forwards to, for its default routes:
# - "0.3.2": the API of the published vlunaai 0.3.2 (checkouts at /checkouts, billing state);
# - "oss": the open-source Vluna server (recorded in spec/vluna-api/recorded/), which has neither
#   /checkouts nor /billing-state: checkout sessions live at /checkout/sessions.
UpstreamFlavor = Literal["0.3.2", "oss"]

_COMMON_ROUTES: list[ProxyRoute] = [
    ProxyRoute(
        method="GET",
        path="/catalog/products",
        public=True,
        query=[*_LIST_QUERY, "active", "product_type", "kind", "status", "expand"],
    ),
    ProxyRoute(
        method="GET",
        path="/catalog/prices",
        public=True,
        query=[*_LIST_QUERY, "active", "product_id", "catalog_product_id", "currency"],
    ),
    ProxyRoute(method="POST", path="/checkout/sessions"),
    ProxyRoute(method="POST", path="/portal/sessions"),
    ProxyRoute(method="GET", path="/wallet/balance"),
    ProxyRoute(method="GET", path="/invoices", account_query=True, query=[*_LIST_QUERY, "status"]),
    ProxyRoute(method="GET", path="/subscriptions", account_query=True, query=[*_LIST_QUERY, "status"]),
]

DEFAULT_ROUTES: dict[str, list[ProxyRoute]] = {
    "0.3.2": [
        *_COMMON_ROUTES,
        ProxyRoute(method="POST", path="/checkouts"),
        ProxyRoute(method="GET", path="/checkouts/{checkout_id}"),
        ProxyRoute(method="GET", path="/billing-state"),
    ],
    "oss": list(_COMMON_ROUTES),
}


class ProxySettings(_Model):
    enabled: bool = True
    upstream_base_url: str | None = None
    # Selects the default routes (see DEFAULT_ROUTES); routes given explicitly replace them.
    upstream_flavor: UpstreamFlavor = "0.3.2"
    routes: list[ProxyRoute] = []
    id_pattern: str = DEFAULT_ID_PATTERN
    max_path_length: int = Field(512, ge=16, le=4096)
    max_query_length: int = Field(1024, ge=0, le=8192)
    max_body_bytes: int = Field(64 * 1024, ge=0, le=16 * 1024 * 1024)
    max_response_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    connect_timeout_sec: float = Field(2.0, gt=0)
    read_timeout_sec: float = Field(10.0, gt=0)
    total_timeout_sec: float = Field(15.0, gt=0)
    max_retries: int = Field(2, ge=0, le=5)
    retry_backoff_base_sec: float = Field(0.1, ge=0)
    retry_backoff_max_sec: float = Field(1.0, ge=0)
    breaker_failure_threshold: int = Field(5, ge=1)
    breaker_open_sec: float = Field(10.0, gt=0)
    public_cache_ttl_sec: float = Field(30.0, ge=0)
    public_cache_max_entries: int = Field(1000, ge=1)
    pool_max_connections: int = Field(100, ge=1)
    keepalive_timeout_sec: float = Field(30.0, gt=0)
    token_memo_sec: float = Field(5.0, ge=0, le=60)
    # gc.freeze() once the service has started: the startup heap (imports, models, routes) is
    # left out of the collector's full passes, which otherwise pause every request for tens of ms.
    freeze_startup_heap: bool = True

    @model_validator(mode="before")
    @classmethod
    def _default_routes(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("routes") is None:
            flavor = data.get("upstream_flavor", "0.3.2")
            if isinstance(flavor, str) and flavor in DEFAULT_ROUTES:
                data = {**data, "routes": DEFAULT_ROUTES[flavor]}
        return data

    @field_validator("upstream_base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        if "/mgt/" in v.lower() + "/":
            raise ValueError("must be the /api/v1 base, never /mgt/v1")
        return v.rstrip("/")

    @field_validator("id_pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        try:
            compiled = re.compile(v)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from None
        for probe in ("..", ".", "a/b", "a%2Fb", "a\\b", ""):
            if compiled.fullmatch(probe):
                raise ValueError(f"must not match {probe!r}")
        return v

    @model_validator(mode="after")
    def _check(self) -> ProxySettings:
        seen: set[tuple[str, str]] = set()
        for r in self.routes:
            shape = re.sub(r"\{[^}]+\}", "{}", r.path)
            if (r.method, shape) in seen:
                raise ValueError(f"{r.method} {r.path} is listed twice")
            seen.add((r.method, shape))
        if (
            self.read_timeout_sec > self.total_timeout_sec
            or self.connect_timeout_sec > self.total_timeout_sec
        ):
            raise ValueError("connect/read timeouts must not exceed total_timeout_sec")
        return self

    def problems(self, root: Settings) -> list[Problem]:
        allowed = root.tokens.allowed_scopes
        return [
            (f"proxy.routes[{i}].scopes", f"{scope!r} is not in tokens.allowed_scopes")
            for i, route in enumerate(self.routes)
            for scope in route.scopes or []
            if scope not in allowed
        ]


def derive_upstream_base(proxy: ProxySettings, vluna_base_url: str) -> str:
    """``proxy.upstream_base_url``, or the Vluna base with ``/mgt/v1`` swapped for ``/api/v1``."""
    if proxy.upstream_base_url:
        return proxy.upstream_base_url
    base = vluna_base_url.rstrip("/")
    if base.endswith("/mgt/v1"):
        return base[: -len("/mgt/v1")] + "/api/v1"
    return base + "/api/v1"


class RateLimitSettings(_Model):
    enabled: bool = True
    # Proxied calls per user per window (all methods).
    requests: int = Field(300, ge=1)
    # Of those, writes (POST/PUT/PATCH/DELETE) per user per window.
    write_requests: int = Field(30, ge=1)
    window_sec: int = Field(60, ge=1, le=3600)
    # Slots a replica reserves in Redis at once and then spends without a round trip (see
    # bff/proxy/ratelimit.py): never more than `requests` per window across replicas; at most
    # (replicas - 1) * (lease_size - 1) refused early. 1: one Redis round trip per request.
    lease_size: int = Field(16, ge=1, le=1000)


class VlunaSettings(_Model):
    base_url: str = "https://api.vluna.ai/mgt/v1"
    realm_id: str | None = None
    service_key_id: str | None = None
    service_key_secret: SecretStr | None = None
    timeout_sec: float = Field(5.0, gt=0)
    max_retries: int = Field(1, ge=0, le=5)
    # Vluna's /api/v1 base URL as apps reach it, returned by GET /vluna/token (apps that call
    # Vluna directly). None: the proxy's upstream (proxy.upstream_base_url, else base_url with
    # /mgt/v1 swapped for /api/v1).
    api_base_url: str | None = None

    @field_validator("api_base_url")
    @classmethod
    def _api_base(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        if "/mgt/" in v.lower() + "/":
            raise ValueError("must be the /api/v1 base, never /mgt/v1 (apps must never get the service API)")
        return v.rstrip("/")

    def problems(self, root: Settings) -> list[Problem]:
        if root.dev.enabled:
            return []
        out = [
            (f"vluna.{name}", "required (outside dev mode)")
            for name in ("realm_id", "service_key_id", "service_key_secret")
            if not getattr(self, name)
        ]
        secret = self.service_key_secret
        if secret is not None and not _is_base64(secret.get_secret_value()):
            out.append(("vluna.service_key_secret", "must be base64 (as shown when the key was created)"))
        if not self.base_url.startswith(("http://", "https://")):
            out.append(("vluna.base_url", "must be an http(s) URL"))
        return out


class JwtSettings(_Model):
    jwks_url: str | None = None
    # Find jwks_uri (and the algorithms) in <issuer>/.well-known/openid-configuration.
    discovery: bool = False
    jwks_cache_ttl_sec: float = Field(3600, gt=0)
    jwks_refresh_min_interval_sec: float = Field(30, ge=0)
    public_keys_pem: list[str] = []
    hs_secret: SecretStr | None = None
    algorithms: list[str] = ["RS256", "ES256"]
    issuer: str | None = None
    audience: list[str] = []
    leeway_sec: float = Field(30, ge=0, le=300)
    required_claims: list[str] = ["exp", "sub"]
    verified_cache_ttl_sec: float = Field(60, ge=0)
    verified_cache_max_entries: int = Field(10_000, ge=1)

    def problems(self, root: Settings) -> list[Problem]:
        """Checked when bearer or cookie authentication is enabled."""
        out: list[Problem] = []
        add = out.append
        dev = root.dev.enabled
        algs = set(self.algorithms)
        if not algs:
            add(("auth.jwt.algorithms", "at least one algorithm is required"))
        for alg in self.algorithms:
            if alg.lower() == "none":
                add(("auth.jwt.algorithms", "'none' is never accepted"))
            elif alg not in HS_ALGORITHMS | ASYMMETRIC_ALGORITHMS:
                add(("auth.jwt.algorithms", f"unsupported algorithm {alg!r}"))
        if algs & HS_ALGORITHMS and self.hs_secret is None and not dev:
            add(("auth.jwt.hs_secret", "required when an HS algorithm is allowed"))
        if self.hs_secret is not None:
            hs = self.hs_secret.get_secret_value().encode()
            if len(hs) < 32:
                add(("auth.jwt.hs_secret", "must be at least 32 bytes"))
            elif (weak := weak_key_problem(hs)) is not None:
                add(("auth.jwt.hs_secret", weak))
        if algs & ASYMMETRIC_ALGORITHMS and not (
            self.jwks_url or self.discovery or self.public_keys_pem or dev
        ):
            add(
                (
                    "auth.jwt.jwks_url",
                    "a JWKS URL, auth.jwt.discovery or auth.jwt.public_keys_pem is required",
                )
            )
        if self.discovery and self.jwks_url:
            add(("auth.jwt.discovery", "set either auth.jwt.discovery or auth.jwt.jwks_url, not both"))
        if self.discovery and not self.issuer:
            add(("auth.jwt.discovery", "needs auth.jwt.issuer (discovery is read from the issuer's URL)"))
        for name in ("jwks_url", "issuer"):
            value = getattr(self, name)
            if (
                value
                and (self.discovery or name == "jwks_url")
                and not value.startswith(("https://", "http://"))
            ):
                add((f"auth.jwt.{name}", "must be an http(s) URL"))
        if not dev:
            if not self.issuer:
                add(("auth.jwt.issuer", "required: tokens of other issuers must be rejected"))
            if not self.audience:
                add(("auth.jwt.audience", "required: tokens meant for other services must be rejected"))
        return out


class CookieSettings(_Model):
    name: str = "vluna_session"
    csrf_header: str = "X-Vluna-CSRF"
    csrf_value: str = "1"


class IntrospectionSettings(_Model):
    url: str | None = None
    method: Literal["GET", "POST"] = "GET"
    forward: list[Literal["cookie", "authorization"]] = ["cookie", "authorization"]
    timeout_sec: float = Field(3.0, gt=0)
    cache_ttl_sec: float = Field(30, ge=0)
    cache_max_entries: int = Field(10_000, ge=0)
    claims_path: str | None = None
    active_field: str | None = None


class HookAuthSettings(_Model):
    callable: str | None = None


class AuthSettings(_Model):
    # Bearer for apps and API clients; cookie (with the anti-forgery header) for browsers.
    methods: list[AuthMethod] = ["bearer", "cookie"]
    jwt: JwtSettings = JwtSettings()
    cookie: CookieSettings = CookieSettings()
    introspection: IntrospectionSettings = IntrospectionSettings()
    hook: HookAuthSettings = HookAuthSettings()

    def problems(self, root: Settings) -> list[Problem]:
        out: list[Problem] = []
        if not self.methods:
            out.append(("auth.methods", "enable at least one method"))
        if len(set(self.methods)) != len(self.methods):
            out.append(("auth.methods", "lists a method twice"))
        if any(m in ("bearer", "cookie") for m in self.methods):
            out += self.jwt.problems(root)
        if "introspection" in self.methods and not self.introspection.url:
            out.append(("auth.introspection.url", "required when introspection is enabled"))
        if "hook" in self.methods and not self.hook.callable:
            out.append(("auth.hook.callable", "required when the hook method is enabled ('module:callable')"))
        return out


class PrincipalRule(_Model):
    claim: str
    template: str = "{value}"


class MappingSettings(_Model):
    # An organisation's members share its billing account; a user without an org bills alone.
    principal: list[PrincipalRule] = [
        PrincipalRule(claim="org_id", template="org:{value}"),
        PrincipalRule(claim="sub", template="user:{value}"),
    ]
    user_claim: str = "sub"
    traits: dict[str, str] = {"email": "email", "name": "name"}
    hook: str | None = None

    def problems(self, root: Settings) -> list[Problem]:
        if self.hook:
            return []
        out: list[Problem] = []
        if not self.principal:
            out.append(("mapping.principal", "at least one rule (or mapping.hook) is required"))
        for i, rule in enumerate(self.principal):
            where = f"mapping.principal[{i}].template"
            fields = _TEMPLATE_FIELD.findall(rule.template)
            if "value" not in fields:
                out.append((where, "must contain {value}"))
            stray = _TEMPLATE_FIELD.sub("", rule.template)
            if "{" in stray or "}" in stray:
                out.append((where, "only {name} placeholders are allowed"))
            between = _TEMPLATE_FIELD.split(rule.template)[2:-1:2]
            if any(not text or re.search(r"[A-Za-z0-9%]", text) for text in between):
                # Values are told apart by this text (and have its characters percent-encoded):
                # it must exist and must not be made of what the encoding itself writes.
                out.append(
                    (
                        where,
                        "placeholders must be separated by text without letters, digits or '%' "
                        "(e.g. 'team:{tenant}:{value}')",
                    )
                )
        return out


class IssuanceLimitSettings(_Model):
    # Platform tokens issued per user (principal and user, every scope set) per window, counted
    # across replicas in Redis. Cached tokens are served regardless. 0: no limit.
    per_user: int = Field(10, ge=0)
    # Tokens issued by this process per window, all users together. 0: no limit.
    per_replica: int = Field(3000, ge=0)
    # Tokens issued by all replicas together per window (counted in Redis). 0: no limit.
    all_replicas: int = Field(0, ge=0)
    window_sec: int = Field(60, ge=1, le=3600)


class TokenSettings(_Model):
    allowed_scopes: list[str] = ["checkout", "portal"]
    default_scopes: list[str] = ["checkout", "portal"]
    session_ttl_sec: int = Field(900, ge=60, le=3600)
    refresh_ahead_ratio: float = Field(0.5, gt=0, lt=1)
    safety_margin_sec: float = Field(30, ge=0)
    lock_ttl_sec: float = Field(15, gt=0)
    wait_timeout_sec: float = Field(15, gt=0)
    retry_after_sec: int = Field(5, ge=1)
    issuance_limit: IssuanceLimitSettings = IssuanceLimitSettings()

    def problems(self, root: Settings) -> list[Problem]:
        out: list[Problem] = []
        if not self.allowed_scopes:
            out.append(("tokens.allowed_scopes", "at least one scope is required"))
        for scope in self.default_scopes:
            if scope not in self.allowed_scopes:
                out.append(("tokens.default_scopes", f"{scope!r} is not in tokens.allowed_scopes"))
        if len(self.allowed_scopes) > 8:
            out.append(("tokens.allowed_scopes", "at most 8 scopes (sign-out enumerates every combination)"))
        # Attempts of one issuance: the retries, and never fewer than two, since a 500
        # SERVER.UNEXPECTED (a new principal's first call on some servers) is always tried twice.
        v = root.vluna
        worst_issue = v.timeout_sec * (max(v.max_retries, 1) + 1)
        if self.lock_ttl_sec <= worst_issue:
            # A lock that expires while its holder still waits on Vluna lets a second replica issue.
            out.append(
                (
                    "tokens.lock_ttl_sec",
                    f"must exceed vluna.timeout_sec x (max(vluna.max_retries, 1) + 1) = {worst_issue:g}",
                )
            )
        if self.safety_margin_sec * 2 >= self.session_ttl_sec:
            out.append(("tokens.safety_margin_sec", "must be less than half of tokens.session_ttl_sec"))
        return out

    def scopes_by_default(self) -> tuple[str, ...]:
        """The scopes of a token asked for without any: ``default_scopes``, else every allowed one."""
        return tuple(sorted(set(self.default_scopes or self.allowed_scopes)))


class RedisSettings(_Model):
    url: SecretStr | None = None
    sentinels: list[str] = []
    sentinel_service: str | None = None
    sentinel_password: SecretStr | None = None
    cluster: bool = False
    max_connections: int = Field(64, ge=1)
    # Not lower: under a burst a busy event loop reads replies late (a late reply is a failed
    # command, counted by the breaker below).
    socket_timeout_sec: float = Field(5.0, gt=0)
    connect_timeout_sec: float = Field(1.0, gt=0)
    # The Redis breaker (bff/redis_client.py): after this many failed commands in a row, one PING
    # that gets no answer within ping_timeout_sec opens it (this process then uses its in-process
    # cache, single flight and limits); while open, a PING every probe_interval_sec, and any
    # command that succeeds, closes it.
    breaker_failures: int = Field(3, ge=1)
    ping_timeout_sec: float = Field(2.0, gt=0)
    probe_interval_sec: float = Field(1.0, gt=0)

    def problems(self, root: Settings) -> list[Problem]:
        """Checked for the redis backend."""
        out: list[Problem] = []
        if not self.url and not self.sentinels:
            out.append(("cache.redis.url", "required for the redis backend (or cache.redis.sentinels)"))
        if self.url and not self.url.get_secret_value().startswith(("redis://", "rediss://", "unix://")):
            out.append(("cache.redis.url", "must start with redis://, rediss:// or unix://"))
        if self.sentinels and not self.sentinel_service:
            out.append(("cache.redis.sentinel_service", "required with cache.redis.sentinels"))
        for i, hp in enumerate(self.sentinels):
            host, _, port = hp.rpartition(":")
            if not host or not port.isdigit():
                out.append((f"cache.redis.sentinels[{i}]", "expected host:port"))
        return out


class L1Settings(_Model):
    """The in-process first level of the token cache (bff/tokens/l1.py); Redis backend only."""

    enabled: bool = True
    max_entries: int = Field(10_000, ge=1)
    # An entry is read from Redis again at least this often (a bound for deletions this service
    # does not make itself, such as an eviction).
    max_ttl_sec: float = Field(30, gt=0, le=3600)
    # A sign-out answers 204 this long after telling every replica; a replica serves from L1 only
    # while its last heartbeat through Redis is younger than this. Same on every replica.
    invalidation_window_sec: float = Field(0.5, ge=0.05, le=5)
    heartbeat_sec: float = Field(0.1, ge=0.01, le=1)

    @model_validator(mode="after")
    def _heartbeat_within_window(self) -> L1Settings:
        if self.heartbeat_sec * 2 > self.invalidation_window_sec:
            raise ValueError("cache.l1.heartbeat_sec must be at most half of invalidation_window_sec")
        return self


class CacheSettings(_Model):
    # redis: shared by every replica (one issuance per user across replicas, sign-out seen by all).
    # memory: this process only; a warning outside dev mode.
    backend: Literal["memory", "redis"] = "redis"
    redis: RedisSettings = RedisSettings()
    key_prefix: str = "vbff:"
    encryption_keys: list[SecretStr] = []
    hmac_key: SecretStr | None = None
    memory_max_entries: int = Field(10_000, ge=1)
    l1: L1Settings = L1Settings()

    def problems(self, root: Settings) -> list[Problem]:
        out: list[Problem] = []
        add = out.append
        if not _PREFIX.match(self.key_prefix):
            add(("cache.key_prefix", "up to 64 of A-Z a-z 0-9 _ . : - (it is also used in a Redis pattern)"))
        if self.backend == "redis":
            out += self.redis.problems(root)
        if not root.dev.enabled:
            if not self.encryption_keys:
                add(("cache.encryption_keys", "at least one key is required ('<id>:<base64 32 bytes>')"))
            if self.hmac_key is None:
                add(("cache.hmac_key", "required (32+ random bytes)"))
        seen: set[str] = set()
        for i, spec in enumerate(self.encryption_keys):
            try:
                kid, raw_key = parse_key_spec(spec.get_secret_value())
            except ValueError as exc:
                add((f"cache.encryption_keys[{i}]", str(exc)))
                continue
            if (weak := weak_key_problem(raw_key)) is not None:
                add((f"cache.encryption_keys[{i}]", f"key {kid!r} {weak}"))
            if kid in seen:
                add((f"cache.encryption_keys[{i}]", f"duplicate key id {kid!r}"))
            seen.add(kid)
        if self.hmac_key is not None:
            hmac_key = self.hmac_key.get_secret_value().encode()
            if len(hmac_key) < 32:
                add(("cache.hmac_key", "must be at least 32 bytes"))
            elif (weak := weak_key_problem(hmac_key)) is not None:
                add(("cache.hmac_key", weak))
        return out


class ServerSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    proxy_headers: bool = False
    cors_allow_origins: list[str] = []
    # Slow clients: a request line and headers must arrive within this (and a keep-alive
    # connection may idle no longer); a body within body_read_timeout_sec of its headers.
    header_read_timeout_sec: float = Field(10, ge=0.1, le=60)
    body_read_timeout_sec: float = Field(15, ge=0.1, le=600)
    max_header_bytes: int = Field(16384, ge=1024, le=65536)

    def problems(self, root: Settings) -> list[Problem]:
        out: list[Problem] = []
        seen: set[str] = set()
        for i, origin in enumerate(self.cors_allow_origins):
            problem = origin_problem(origin)
            if problem is not None:
                out.append((f"server.cors_allow_origins[{i}]", problem))
            elif origin in seen:
                out.append((f"server.cors_allow_origins[{i}]", f"{origin} is listed twice"))
            seen.add(origin)
        return out


class DevSettings(_Model):
    enabled: bool = False
    issuer: str = "http://localhost/vluna-bff-dev"
    audience: str = "vluna-bff-dev"
    realm_id: str = "realm_dev"
    token_ttl_sec: int = Field(3600, ge=60)


class MetricsSettings(_Model):
    enabled: bool = True
    path: str = "/metrics"
    port: int | None = Field(None, ge=0, le=65535)
    host: str | None = None
    multiprocess_dir: str | None = None


class ReadinessSettings(_Model):
    cache_ttl_sec: float = Field(5, ge=0, le=300)
    timeout_sec: float = Field(2, gt=0, le=30)
    check_vluna: bool = True
    redis_down: Literal["degraded", "fail"] = "degraded"
    vluna_down: Literal["degraded", "fail"] = "fail"


class TracingSettings(_Model):
    enabled: bool = False
    service_name: str = "vluna-bff"
    exporter: Literal["otlp", "console", "none"] = "otlp"


class ObservabilitySettings(_Model):
    log_format: Literal["json", "text"] = "json"
    access_log: bool = True
    request_id_header: str = "X-Request-Id"
    trust_request_id: bool = True
    shutdown_grace_sec: int = Field(20, ge=1, le=600)
    metrics: MetricsSettings = MetricsSettings()
    readiness: ReadinessSettings = ReadinessSettings()
    tracing: TracingSettings = TracingSettings()

    def problems(self, root: Settings) -> list[Problem]:
        out: list[Problem] = []
        if not self.metrics.path.startswith("/") or self.metrics.path in ("/healthz", "/readyz"):
            out.append(
                ("observability.metrics.path", "must start with / and differ from /healthz and /readyz")
            )
        if self.metrics.port and self.metrics.port == root.server.port:
            out.append(("observability.metrics.port", "must differ from server.port"))
        if not re.fullmatch(r"[A-Za-z0-9-]{1,64}", self.request_id_header):
            out.append(("observability.request_id_header", "must be a header name"))
        return out


class OpenApiSettings(_Model):
    # Serve the OpenAPI document. None: in dev mode only (`vluna-bff openapi` prints it anyway).
    enabled: bool | None = None
    # Where: the document at <path> and <path>/openapi.json.
    path: str = "/vluna/openapi"

    def problems(self, root: Settings) -> list[Problem]:
        taken = ("/healthz", "/readyz", root.observability.metrics.path)
        if not re.fullmatch(r"(/[A-Za-z0-9_.-]+)+", self.path) or self.path in taken:
            return [("openapi.path", "a path like /vluna/openapi, other than the probes and metrics")]
        return []


class Settings(_Model):
    vluna: VlunaSettings = VlunaSettings()
    auth: AuthSettings = AuthSettings()
    mapping: MappingSettings = MappingSettings()
    tokens: TokenSettings = TokenSettings()
    cache: CacheSettings = CacheSettings()
    server: ServerSettings = ServerSettings()
    dev: DevSettings = DevSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    proxy: ProxySettings = ProxySettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    openapi: OpenApiSettings = OpenApiSettings()

    @model_validator(mode="before")
    @classmethod
    def _dev_mode_caches_in_process(cls, data: Any) -> Any:
        """Dev mode is one process: its cache defaults to memory (no Redis needed to try it)
        unless the configuration names a backend."""
        if not isinstance(data, Mapping):
            return data
        dev, cache = data.get("dev"), data.get("cache")
        dev_on = dev.get("enabled") is True if isinstance(dev, Mapping) else False
        if dev_on and (cache is None or (isinstance(cache, Mapping) and "backend" not in cache)):
            return {**data, "cache": {**(cache or {}), "backend": "memory"}}
        return data

    def redacted_dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def problems(self, root: Settings | None = None) -> list[Problem]:
        """Every section's problems, in the order of the sections."""
        out: list[Problem] = []
        for name in type(self).model_fields:
            section = getattr(self, name)
            if isinstance(section, _Model):
                out += section.problems(self)
        return out


class SettingsError(Exception):
    """Every problem found, one per line, each naming the field; never the rejected value."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        lines = "\n".join(f"  {field}: {msg}" for field, msg in problems)
        super().__init__(f"invalid settings ({len(problems)} problem(s)):\n{lines}")


def parse_key_spec(spec: str) -> tuple[str, bytes]:
    """``"<key id>:<base64 of 32 bytes>"`` -> (key id, key); raises ValueError without the secret."""
    import base64
    import binascii

    kid, sep, b64 = spec.partition(":")
    if not sep or not kid or len(kid) > 32:
        raise ValueError("expected '<key id>:<base64 key>' with a key id of 1..32 characters")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("key is not valid base64") from None
    if len(raw) != 32:
        raise ValueError("key must decode to 32 bytes (AES-256)")
    return kid, raw


_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin_problem(origin: str) -> str | None:
    """Why ``origin`` cannot be a CORS origin that is granted credentials, or None.

    An origin is ``scheme://host[:port]`` exactly as browsers send it (RFC 6454): lower case, no
    path, no trailing slash, no default port; anything else would never match (or, with ``*``,
    would match every site)."""
    if "*" in origin:
        return (
            "'*' and wildcards are refused: cookies and Authorization are granted to these origins, "
            "so list each origin (e.g. https://app.example.com)"
        )
    if origin.strip().lower() == "null":
        return "the 'null' origin (sandboxed frames, file: pages) cannot be trusted with credentials"
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(origin)
        port = parts.port
        host = parts.hostname or ""
    except ValueError:
        return "expected scheme://host[:port] (e.g. https://app.example.com)"
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.netloc:
        return "expected http:// or https:// and a host: scheme://host[:port]"
    if parts.username is not None or parts.password is not None:
        return "an origin has no user or password"
    if parts.path or parts.query or parts.fragment or origin.endswith(("?", "#")):
        return "an origin has no path, trailing slash, query or fragment: scheme://host[:port]"
    if host.startswith("[") or ":" in host:
        valid_host = True  # IPv6 literal: urlsplit has checked it
    else:
        valid_host = all(_HOST_LABEL.match(label) for label in host.split("."))
    if not valid_host:
        return "the host is not a valid host name"
    if port == _DEFAULT_PORTS[parts.scheme.lower()]:
        canonical = f"{parts.scheme.lower()}://{host if ':' not in host else f'[{host}]'}"
        return f"browsers send the default port as no port: write {canonical}"
    netloc = host if ":" not in host else f"[{host}]"
    canonical = f"{parts.scheme.lower()}://{netloc}{f':{port}' if port is not None else ''}"
    if origin != canonical:
        return f"browsers send it as {canonical}: write it that way or it never matches"
    return None


def weak_key_problem(key: bytes) -> str | None:
    """Why ``key`` is obviously not random, or None. Only the obvious: few distinct bytes, a
    repeated pattern, a run of neighbouring characters, or little variety overall (a Shannon
    estimate under 64 bits). Passing says nothing about strength; random keys always pass.
    The message never includes the key."""
    n = len(key)
    if n == 0:
        return "is empty"
    if len(set(key)) < 8:
        return "has fewer than 8 distinct characters: use random bytes (e.g. openssl rand -base64 32)"
    for period in range(1, n // 2 + 1):
        if key[period:] == key[:-period]:  # e.g. "password1234password1234password"
            return "is a repeated pattern: use random bytes (e.g. openssl rand -base64 32)"
    neighbours = sum(1 for a, b in itertools.pairwise(key) if abs(a - b) <= 1)
    if neighbours * 3 > (n - 1) * 2:
        return "is mostly a run of neighbouring characters: use random bytes (e.g. openssl rand -base64 32)"
    counts = [key.count(b) for b in set(key)]
    bits = -sum(c * math.log2(c / n) for c in counts)
    if bits < 64:
        return "has too little variety to be random: use random bytes (e.g. openssl rand -base64 32)"
    return None


def _is_base64(value: str) -> bool:
    import base64
    import binascii

    try:
        return bool(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        return False


def settings_warnings(s: Settings) -> list[str]:
    """What works but is unsafe in production: logged by ``serve`` at start, listed in ``/readyz``
    and printed by ``check-config``. Dev mode (one process on a laptop) has none."""
    if s.dev.enabled:
        return []
    warnings: list[str] = []
    if s.cache.backend == "memory":
        warnings.append(
            "cache.backend: memory keeps tokens in this process only: replicas do not share single "
            "flight (one issuance per user each) and a sign-out on one is not seen by the others; "
            "use redis whenever more than one process can serve"
        )
    return warnings


@dataclass(frozen=True)
class Derived:
    """Values computed from the settings once per app (``derive``) and passed down to every part
    that needs them, so that no two parts can work them out differently."""

    realm_id: str  # vluna.realm_id, else dev.realm_id (or the embedded emulator's, in dev mode)
    # cache.hmac_key, else random bytes for this process (dev mode only: validation requires a
    # key otherwise); keys cache entries, rate-limit counters and log identity hashes.
    hmac_key: bytes = field(repr=False)
    default_scopes: tuple[str, ...]  # a token asked for without scopes (tokens.scopes_by_default)
    upstream_base_url: str  # Vluna's /api/v1 as the proxy calls it
    api_base_url: str  # Vluna's /api/v1 as apps reach it (what GET /vluna/token hands out)


def derive(s: Settings, *, realm_id: str | None = None) -> Derived:
    upstream = derive_upstream_base(s.proxy, s.vluna.base_url)
    return Derived(
        realm_id=realm_id or s.vluna.realm_id or s.dev.realm_id,
        hmac_key=s.cache.hmac_key.get_secret_value().encode()
        if s.cache.hmac_key
        else secrets.token_bytes(32),
        default_scopes=s.tokens.scopes_by_default(),
        upstream_base_url=upstream,
        api_base_url=s.vluna.api_base_url or upstream,
    )


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate_settings(data: Mapping[str, Any], *, complete: bool = True) -> Settings:
    """``complete=False``: types and shapes only, without the checks that a runnable service
    needs (secrets, Redis URL, ...); for printing the OpenAPI document at build time."""
    try:
        settings = Settings.model_validate(data)
    except ValidationError as exc:
        # Only location and message: pydantic's own str() would echo input values (secrets).
        raise SettingsError([(_loc(e["loc"]), e["msg"]) for e in exc.errors()]) from None
    problems = settings.problems() if complete else []
    if problems:
        raise SettingsError(problems)
    return settings


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> None:
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    data: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not path:
            continue
        raw = environ[name]
        value: Any
        if path[-1].endswith("_file"):
            path[-1] = path[-1][: -len("_file")]
            try:
                value = Path(raw).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                problems.append((".".join(path), f"cannot read {name}: {exc.strerror}"))
                continue
            # A mounted list (e.g. encryption keys for rotation) is JSON, as in the environment;
            # anything that does not parse stays text, since a secret may begin with a bracket.
            if value.lstrip().startswith(("[", "{")):
                with contextlib.suppress(json.JSONDecodeError):
                    value = json.loads(value)
        elif raw.lstrip().startswith(("[", "{")):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                problems.append((".".join(path), f"{name} is not valid JSON"))
                continue
        else:
            value = raw
        _set_path(data, path, value)
    return data, problems


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    complete: bool = True,
) -> Settings:
    env = os.environ if environ is None else environ
    if path is None:
        path = env.get(CONFIG_ENV) or None
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError([("config", f"cannot read {path}: {exc.strerror}")]) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise SettingsError([("config", f"{path} is not valid YAML{where}")]) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError([("config", f"{path} must hold a mapping at the top level")])
        data = loaded or {}
    from_env, problems = env_overrides(env)
    if problems:
        raise SettingsError(problems)
    data = _merge(data, from_env)
    if overrides:
        data = _merge(data, overrides)
    return validate_settings(data, complete=complete)
