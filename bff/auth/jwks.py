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

from bff.errors import ServiceUnavailable

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
    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        *,
        cache_ttl_sec: float = 3600,
        min_refresh_interval_sec: float = 30,
        timeout_sec: float = 3.0,
    ) -> None:
        self._url = url
        self._http = http
        self._ttl = cache_ttl_sec
        self._min_interval = min_refresh_interval_sec
        self._timeout = timeout_sec
        self._keys: list[VerificationKey] = []
        self._fetched_at: float | None = None
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()
        self.fetches = 0

    async def keys_for(self, kid: str | None, alg: str) -> Sequence[Any]:
        now = time.monotonic()
        if self._fetched_at is None or now - self._fetched_at >= self._ttl:
            await self._refresh(now, bounded=True)
        found = _select(self._keys, kid, alg)
        if not found and kid is not None and all(k.kid != kid for k in self._keys):
            # A new kid usually means the IdP rotated keys; the bound stops forged kids from
            # turning every request into a JWKS fetch.
            await self._refresh(time.monotonic(), bounded=True)
            found = _select(self._keys, kid, alg)
        if not found and self._fetched_at is None:
            raise KeysUnavailable()
        return found

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
                resp = await self._http.get(self._url, timeout=self._timeout)
                resp.raise_for_status()
                keys = parse_jwks(resp.json())
            except (httpx.HTTPError, ValueError) as exc:
                log.warning(
                    "JWKS fetch failed (%s); keeping %d known keys", type(exc).__name__, len(self._keys)
                )
                return
            self._keys = keys
            self._fetched_at = time.monotonic()
