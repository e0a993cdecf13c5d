"""Fetching what the identity provider publishes: its OpenID Connect discovery document
(``<issuer>/.well-known/openid-configuration``) and its JWKS, with every failure named.

A failure is a ``FetchError`` with a ``reason`` from a fixed set (a metrics label) and a
one-line ``text`` naming the URL and the cause: connection refused, timed out, TLS, HTTP 404, not
JSON, a discovery document where a JWKS was expected, an issuer that differs from the configured
one (OpenID Connect Discovery 1.0, section 4.3: they must be identical, trailing slash included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from bff import netdiag
from bff.settings import ASYMMETRIC_ALGORITHMS

WELL_KNOWN = "/.well-known/openid-configuration"
# Outcomes of a fetch (metrics label values): "ok" plus every FetchError reason.
FETCH_OUTCOMES = (
    "ok",
    *netdiag.REASONS,
    "http_status",
    "not_json",
    "not_jwks",
    "not_discovery",
    "issuer_mismatch",
    "no_keys",
)


class FetchError(Exception):
    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text


@dataclass(frozen=True)
class Discovery:
    url: str
    issuer: str
    jwks_uri: str
    # The asymmetric algorithms the provider signs ID tokens with (empty: it does not say).
    algorithms: tuple[str, ...]


def discovery_url(issuer: str) -> str:
    return issuer.rstrip("/") + WELL_KNOWN


async def get_json(http: httpx.AsyncClient, url: str, timeout: float) -> Any:
    shown = netdiag.redacted_url(url)
    try:
        resp = await http.get(url, timeout=timeout, headers={"Accept": "application/json"})
    except (httpx.HTTPError, OSError) as exc:
        c = netdiag.cause(exc)
        raise FetchError(c.reason, f"GET {shown}: {c.text}") from None
    if resp.status_code != 200:
        raise FetchError("http_status", f"GET {shown}: HTTP {resp.status_code}")
    try:
        return resp.json()
    except ValueError:
        kind = resp.headers.get("content-type", "no content type").split(";")[0]
        raise FetchError("not_json", f"GET {shown}: the answer is not JSON ({kind})") from None


def is_discovery_document(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("jwks_uri"), str) and "keys" not in doc


def parse_discovery(doc: Any, url: str, expected_issuer: str | None) -> Discovery:
    shown = netdiag.redacted_url(url)
    if not is_discovery_document(doc):
        raise FetchError(
            "not_discovery", f"GET {shown}: not an OpenID Connect discovery document (no jwks_uri)"
        )
    issuer = doc.get("issuer")
    if not isinstance(issuer, str):
        raise FetchError("not_discovery", f"GET {shown}: the discovery document names no issuer")
    if expected_issuer is not None and issuer != expected_issuer:
        raise FetchError(
            "issuer_mismatch",
            f"GET {shown}: the provider's issuer is {issuer!r} but auth.jwt.issuer is {expected_issuer!r}"
            " (they must be identical, trailing slash included; tokens carry the provider's)",
        )
    jwks_uri: str = doc["jwks_uri"]
    if not jwks_uri.startswith(("https://", "http://")):
        raise FetchError("not_discovery", f"GET {shown}: jwks_uri is not an http(s) URL")
    advertised = doc.get("id_token_signing_alg_values_supported")
    algorithms = tuple(
        a for a in (advertised if isinstance(advertised, list) else []) if a in ASYMMETRIC_ALGORITHMS
    )
    return Discovery(url=url, issuer=issuer, jwks_uri=jwks_uri, algorithms=algorithms)


def check_jwks_shape(doc: Any, url: str) -> None:
    shown = netdiag.redacted_url(url)
    if is_discovery_document(doc):
        raise FetchError(
            "not_jwks",
            f"GET {shown}: an OpenID Connect discovery document, not a JWKS (its jwks_uri is "
            f"{netdiag.redacted_url(doc['jwks_uri'])}): set auth.jwt.discovery: true with "
            "auth.jwt.issuer, or auth.jwt.jwks_url to the jwks_uri",
        )
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise FetchError("not_jwks", f'GET {shown}: not a JWKS document (no "keys" list)')


def effective_algorithms(configured: Sequence[str], explicit: bool, discovered: Sequence[str]) -> list[str]:
    """Algorithms accepted with discovery: the provider's (asymmetric) ones, narrowed to the
    configured list when ``auth.jwt.algorithms`` was set explicitly; never HS* or none."""
    if not discovered:
        return list(configured)
    if explicit:
        return [a for a in configured if a in discovered or a not in ASYMMETRIC_ALGORITHMS]
    return list(discovered)
