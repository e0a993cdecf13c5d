"""Where verification keys come from: a JWKS URL (cached, refreshed on an unknown kid at a
bounded rate) or a fixed set (PEM files, the dev key).

Sources are independent: one that cannot answer (a JWKS URL that is down before its first
successful fetch) raises ``KeysUnavailable``, which the verifier only reports (503) when no key
of any other source verified the token."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from bff import netdiag
from bff.auth import oidc
from bff.errors import ServiceUnavailable
from bff.telemetry import metrics

log = logging.getLogger("bff.jwks")

# With no JWKS fetched yet, a failed fetch is retried at most this often (or the configured
# refresh interval, if shorter), so a dead URL does not cost every request a fetch and a timeout.
UNFETCHED_RETRY_SEC = 5.0


class KeysUnavailable(ServiceUnavailable):
    """A key source cannot say which keys it has (its JWKS was never fetched)."""

    def __init__(self) -> None:
        super().__init__("identity provider keys are unavailable", retry_after=5, code="auth_unavailable")


def key_fits(alg: str, key: Any) -> bool:
    """Only a key of the algorithm's own family may verify it (no RS/ES/EdDSA mix-ups)."""
    if alg.startswith(("RS", "PS")):
        return isinstance(key, rsa.RSAPublicKey)
    if alg.startswith("ES"):
        return isinstance(key, ec.EllipticCurvePublicKey)
    if alg == "EdDSA":
        return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    return False


@dataclass(frozen=True)
class VerificationKey:
    kid: str | None
    key: Any
    alg: str | None = None


class KeySource(Protocol):
    async def keys_for(self, kid: str | None, alg: str) -> Sequence[Any]: ...


def _select(keys: Sequence[VerificationKey], kid: str | None, alg: str) -> list[Any]:
    return [
        k.key
        for k in keys
        if (kid is None or k.kid is None or k.kid == kid)
        and (k.alg is None or k.alg == alg)
        and key_fits(alg, k.key)
    ]


class StaticKeySource:
    def __init__(self, keys: Sequence[VerificationKey]) -> None:
        self._keys = list(keys)

    @classmethod
    def from_pems(cls, pems: Sequence[str]) -> StaticKeySource:
        return cls([VerificationKey(kid=None, key=load_pem_public_key(p.encode())) for p in pems])

    async def keys_for(self, kid: str | None, alg: str) -> Sequence[Any]:
        return _select(self._keys, kid, alg)


class CompositeKeySource:
    """Several sources; the verifier asks them one by one (``sources``), so that a token one of
    them verifies never waits for, or fails with, another."""

    def __init__(self, sources: Sequence[KeySource]) -> None:
        self._sources = list(sources)

    @property
    def sources(self) -> list[KeySource]:
        return list(self._sources)

    async def keys_for(self, kid: str | None, alg: str) -> Sequence[Any]:
        out: list[Any] = []
        missing: KeysUnavailable | None = None
        for source in self._sources:
            try:
                out.extend(await source.keys_for(kid, alg))
            except KeysUnavailable as exc:
                missing = exc
        if missing is not None and not out:
            raise missing
        return out


def sources_of(source: KeySource | None) -> list[KeySource]:
    if source is None:
        return []
    if isinstance(source, CompositeKeySource):
        return source.sources
    return [source]


def parse_jwks(doc: Any) -> list[VerificationKey]:
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWKS document")
    keys: list[VerificationKey] = []
    for jwk in doc["keys"]:
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        try:
            parsed = jwt.PyJWK(jwk)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError):
            continue  # one odd key (an unsupported kty) must not hide the others
        keys.append(VerificationKey(kid=jwk.get("kid"), key=parsed.key, alg=jwk.get("alg")))
    return keys


class JwksKeySource:
    """The provider's keys from a JWKS URL, or found by OpenID Connect discovery.

    - ``discovery``: ``<issuer>/.well-known/openid-configuration`` names ``jwks_uri`` (and the
      algorithms); the issuer it states must equal ``issuer`` exactly. Read again on every refresh,
      so a provider that moves its keys is followed.
    - A ``url`` that answers a discovery document instead of a JWKS (a common mistake) is followed
      the same way, with one INFO line saying so.

    Keys are refreshed after ``cache_ttl_sec``, and on an unknown kid at most once per
    ``min_refresh_interval_sec``. A failed refresh keeps the keys known so far; the failure is
    logged with its URL and cause, counted, and kept for ``/readyz`` (``last_error``).
    """

    def __init__(
        self,
        url: str | None,
        http: httpx.AsyncClient,
        *,
        issuer: str | None = None,
        discovery: bool = False,
        algorithms: Sequence[str] = (),
        algorithms_explicit: bool = True,
        cache_ttl_sec: float = 3600,
        min_refresh_interval_sec: float = 30,
        timeout_sec: float = 3.0,
    ) -> None:
        if url is None and not (discovery and issuer):
            raise ValueError("a JWKS URL, or discovery with an issuer, is required")
        self._url = url
        self._http = http
        self._issuer = issuer
        self._discovery = discovery
        self._configured_algorithms = list(algorithms)
        self._algorithms_explicit = algorithms_explicit
        self._ttl = cache_ttl_sec
        self._min_interval = min_refresh_interval_sec
        self._timeout = timeout_sec
        self._keys: list[VerificationKey] = []
        self._accepted: list[str] | None = None
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()
        self._told_followed = False
        self.fetches = 0
        self.last_error: str | None = None
        for outcome in oidc.FETCH_OUTCOMES:
            metrics.JWKS_FETCHES.labels(outcome=outcome)

    @property
    def source(self) -> str:
        return netdiag.redacted_url(self._url or oidc.discovery_url(self._issuer or ""))

    @property
    def known_keys(self) -> int:
        return len(self._keys)

    async def keys_for(self, kid: str | None, alg: str) -> Sequence[Any]:
        await self._fresh()
        found = _select(self._keys, kid, alg)
        if not found and kid is not None and all(k.kid != kid for k in self._keys):
            # A new kid usually means the IdP rotated keys; the bound stops forged kids from
            # turning every request into a JWKS fetch.
            await self._refresh(time.monotonic(), bounded=True)
            found = _select(self._keys, kid, alg)
        if not found and self._fetched_at is None:
            raise KeysUnavailable()
        return found

    async def accepted_algorithms(self) -> list[str] | None:
        """The algorithms to accept when the keys come by discovery (None: the configured ones).
        Only explicit discovery fetches for this: otherwise a token of another source (a PEM key)
        would make the JWKS URL be asked (and waited on) for nothing."""
        if self._discovery:
            await self._fresh()
        return self._accepted

    async def ensure_keys(self) -> str | None:
        """For readiness: None when keys are known; otherwise why not (after a bounded retry)."""
        if not self._keys:
            await self._refresh(time.monotonic(), bounded=True)
        if self._keys:
            return None
        return self.last_error or f"no key fetched yet from {self.source}"

    async def _fresh(self) -> None:
        now = time.monotonic()
        if self._fetched_at is None or now - self._fetched_at >= self._ttl:
            # Bounded once tried: while the provider is down, requests do not each fetch.
            await self._refresh(now, bounded=True)

    async def _refresh(self, requested_at: float, *, bounded: bool) -> None:
        async with self._lock:
            last = self._last_attempt
            if last is not None and last >= requested_at:
                return  # someone refreshed while we waited for the lock
            interval = self._min_interval
            if self._fetched_at is None:
                interval = min(interval, UNFETCHED_RETRY_SEC)
            if bounded and last is not None and requested_at - last < interval:
                return
            self._last_attempt = time.monotonic()
            self.fetches += 1
            try:
                keys, accepted = await self._fetch()
            except oidc.FetchError as exc:
                metrics.JWKS_FETCHES.labels(outcome=exc.reason).inc()
                self.last_error = exc.text
                log.warning("JWKS fetch failed: %s; keeping %d known key(s)", exc.text, len(self._keys))
                return
            metrics.JWKS_FETCHES.labels(outcome="ok").inc()
            metrics.JWKS_KEYS.set(len(keys))
            metrics.JWKS_FETCHED_AT.set(time.time())
            self._keys = keys
            self._accepted = accepted
            self._fetched_at = time.monotonic()
            self.last_error = None

    async def _fetch(self) -> tuple[list[VerificationKey], list[str] | None]:
        found: oidc.Discovery | None = None
        if self._discovery:
            assert self._issuer is not None
            where = oidc.discovery_url(self._issuer)
            found = oidc.parse_discovery(
                await oidc.get_json(self._http, where, self._timeout), where, self._issuer
            )
            url = found.jwks_uri
            doc = await oidc.get_json(self._http, url, self._timeout)
        else:
            assert self._url is not None
            url = self._url
            doc = await oidc.get_json(self._http, url, self._timeout)
            if oidc.is_discovery_document(doc):
                found = oidc.parse_discovery(doc, url, self._issuer)
                if not self._told_followed:
                    self._told_followed = True
                    log.info(
                        "auth.jwt.jwks_url %s is an OpenID Connect discovery document: using its "
                        "jwks_uri %s (auth.jwt.discovery: true says so directly)",
                        netdiag.redacted_url(url),
                        netdiag.redacted_url(found.jwks_uri),
                    )
                url = found.jwks_uri
                doc = await oidc.get_json(self._http, url, self._timeout)
        oidc.check_jwks_shape(doc, url)
        keys = parse_jwks(doc)
        if not keys:
            raise oidc.FetchError(
                "no_keys", f"GET {netdiag.redacted_url(url)}: the JWKS lists no usable signing key"
            )
        accepted = None
        if found is not None and found.algorithms:
            accepted = oidc.effective_algorithms(
                self._configured_algorithms, self._algorithms_explicit, found.algorithms
            )
        return keys, accepted
