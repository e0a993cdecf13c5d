"""Settings of the API proxy (``proxy``) and of the per-user rate limits (``rate_limit``).

They live here, next to the code that reads them, and are mounted into ``bff.settings.Settings``.
Every check that can be made on the configuration alone is made here, so that a bad allowlist
fails ``vluna-bff check-config`` instead of the first request.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ProxyMethod = Literal["GET", "POST", "PUT", "PATCH", "DELETE"]

# A literal segment of an allowlisted path template: no dots-only segments, no encodings.
_LITERAL_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
_PARAM_SEGMENT = re.compile(r"^\{([a-z_][a-z0-9_]{0,31})\}$")
_QUERY_NAME = re.compile(r"^[A-Za-z0-9_.\[\]-]{1,64}$")

DEFAULT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
