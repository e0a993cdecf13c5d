"""JWT verification with pyjwt: allowlisted algorithms, keys of the matching family only,
issuer, audience, required claims; exp/nbf/iat checked here, strictly: JSON numbers (RFC 7519
NumericDate) within a sane range, with leeway. Whatever a signed token carries, the answer is a
401 with a reason, never an error of ours."""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jwt
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from bff.auth import jws
from bff.auth.diagnostics import shown
from bff.auth.jwks import JwksKeySource, KeySource, KeysUnavailable, sources_of
from bff.errors import Unauthenticated
from bff.settings import HS_ALGORITHMS

# 9999-12-31T23:59:59Z: a NumericDate beyond it is no date at all (and would overflow datetimes).
MAX_NUMERIC_DATE = 253_402_300_799
TIME_CLAIMS = ("exp", "nbf", "iat")
# Parsing failures that pyjwt may let through for hostile input: reported as "invalid token".
_PARSE_ERRORS = (ValueError, TypeError, OverflowError, RecursionError, UnicodeError)


class _BadSignature(Unauthenticated):
    """No key of a source verified the signature (another source's key may)."""


def numeric_date(claims: Mapping[str, Any], name: str) -> float | None:
    """The claim as seconds since the epoch; None when absent. Strings (even numeric ones),
    booleans, NaN, infinities and values out of range are refused."""
    if name not in claims:
        return None
    value = claims[name]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unauthenticated(f"the {name!r} claim must be a number (NumericDate)", details={"claim": name})
    if isinstance(value, float) and not math.isfinite(value):
        raise Unauthenticated(f"the {name!r} claim must be a finite number", details={"claim": name})
    if not 0 <= value <= MAX_NUMERIC_DATE:
        raise Unauthenticated(f"the {name!r} claim is out of range", details={"claim": name})
    return float(value)


class JwtVerifier:
    def __init__(
        self,
        *,
        algorithms: Sequence[str],
        issuers: Sequence[str],
        audiences: Sequence[str],
        key_source: KeySource | None,
        hs_secret: bytes | None = None,
        leeway_sec: float = 30,
        required_claims: Sequence[str] = ("exp", "sub"),
        cache_ttl_sec: float = 60,
        cache_max_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
        jwks: JwksKeySource | None = None,
        static_keys: bool = False,
    ) -> None:
        self._clock = clock
        self._algorithms = frozenset(a for a in algorithms if a.lower() != "none")
        # The JWKS source: its keys for readiness and, with OpenID Connect discovery, the
        # provider's algorithms (narrowed by the configured ones).
        self._jwks = jwks
        self._static_keys = static_keys
        self._issuers = list(issuers)
        self._audiences = list(audiences)
        self._keys = key_source
        self._hs_secret = hs_secret
        self._leeway = leeway_sec
        self._required = list(required_claims)
        # Apps ask for their token on every page load with the same JWT: remembering a successful
        # verification (by digest, briefly, never past the token's exp) halves the cost of a hit.
        # An entry lasts until min(now + cache_ttl, exp): exp is a checked number by then.
        self._cache_ttl = cache_ttl_sec
        self._cache_max = cache_max_entries
        self._verified: OrderedDict[bytes, tuple[dict[str, Any], float]] = OrderedDict()

    def __repr__(self) -> str:
        return f"JwtVerifier(algorithms={sorted(self._algorithms)})"

    async def verify(self, token: str) -> dict[str, Any]:
        if self._cache_ttl <= 0:
            return await self._verify(token)
        digest = hashlib.sha256(token.encode()).digest()
        now = self._clock()
        hit = self._verified.get(digest)
        if hit is not None:
            if hit[1] > now:
                return hit[0]
            del self._verified[digest]
        claims = await self._verify(token)
        until = now + self._cache_ttl
        exp = numeric_date(claims, "exp")
        if exp is not None:
            until = min(until, exp)
        self._verified[digest] = (claims, until)
        if len(self._verified) > self._cache_max:
            self._verified.popitem(last=False)
        return claims

    async def _allowed_algorithms(self) -> frozenset[str]:
        if self._jwks is None:
            return self._algorithms
        discovered = await self._jwks.accepted_algorithms()
        return self._algorithms if discovered is None else frozenset(discovered)

    async def key_problem(self) -> str | None:
        """For readiness: None while some verification key is known, else why none is."""
        if self._static_keys or self._hs_secret:
            return None
        if self._jwks is not None:
            return await self._jwks.ensure_keys()
        return "no verification key is configured"

    async def _verify(self, token: str) -> dict[str, Any]:
        # Parsed once (bff/auth/jws.py), with pyjwt's rules; verified once per key below.
        try:
            parsed = jws.parse(token)
        except (jwt.InvalidTokenError, *_PARSE_ERRORS):
            raise Unauthenticated("malformed token", reason="malformed") from None
        header = parsed.header
        alg = header.get("alg")
        allowed = await self._allowed_algorithms()
        if not isinstance(alg, str) or alg not in allowed:
            raise Unauthenticated(
                "token algorithm not allowed",
                reason="algorithm_not_allowed",
                details={"expected alg": ",".join(sorted(allowed)), "received alg": shown(alg)},
            )
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("malformed token", reason="malformed")
        seen = {"alg": alg, "kid": shown(kid)}
        try:
            if alg in HS_ALGORITHMS:
                # The shared secret only for HS*, and HS* only with the shared secret: a public key
                # can never be used as an HMAC secret.
                claims = self._with_keys(parsed, alg, [self._hs_secret] if self._hs_secret else [])
            else:
                claims = await self._with_sources(parsed, alg, kid)
            self._check_times(claims)
        except Unauthenticated as exc:
            # Every refusal names the token's alg and kid for the operator (never the token).
            exc.details = {**exc.details, **seen}
            raise
        return claims

    async def _with_sources(self, token: jws.Jws, alg: str, kid: str | None) -> dict[str, Any]:
        """Each source in turn: the first key that verifies decides. A source that cannot answer
        only matters (503) if no other source's key verified the token."""
        unavailable: KeysUnavailable | None = None
        tried = False
        for source in sources_of(self._keys):
            try:
                keys = await source.keys_for(kid, alg)
            except KeysUnavailable as exc:
                unavailable = exc
                continue
            if keys:
                tried = True
                try:
                    return self._with_keys(token, alg, keys)
                except _BadSignature:
                    continue
        if unavailable is not None:
            raise unavailable
        if not tried:
            raise Unauthenticated("no key to verify this token (unknown kid)", reason="unknown_kid")
        raise Unauthenticated("token signature invalid", reason="bad_signature")

    def _with_keys(self, token: jws.Jws, alg: str, keys: Sequence[Any]) -> dict[str, Any]:
        """The claims, once one of ``keys`` verified the signature; ``_BadSignature`` when none
        did (``Unauthenticated`` for anything else wrong with a signed token)."""
        if not keys:
            raise Unauthenticated("no key to verify this token (unknown kid)", reason="unknown_kid")
        try:
            try:
                algorithm = jwt.get_algorithm_by_name(alg)
            except NotImplementedError:
                raise jwt.InvalidAlgorithmError("Algorithm not supported") from None
            if token.header.get("b64", True) is False:
                # A detached payload (RFC 7797) is never expected here: pyjwt refused it too.
                raise jwt.InvalidTokenError("a detached payload (b64: false) is not accepted")
            for key in keys:
                prepared = algorithm.prepare_key(key)
                short = algorithm.check_key_length(prepared)
                if short:
                    warnings.warn(short, jwt.InsecureKeyLengthWarning, stacklevel=2)
                if algorithm.verify(token.signing_input, prepared, token.signature):
                    break
            else:
                raise _BadSignature("token signature invalid", reason="bad_signature")
            claims = token.claims()
            self._check_claims(claims)
        except jwt.InvalidAudienceError:
            # The signature held: the claims are the issuer's own, safe to compare in the log.
            raise Unauthenticated(
                "token audience not accepted",
                reason="audience_mismatch",
                details={"expected aud": ",".join(self._audiences), "received aud": shown(claims.get("aud"))},
            ) from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated(
                "token issuer not accepted",
                reason="issuer_mismatch",
                details={
                    "expected iss": " or ".join(repr(i) for i in self._issuers),
                    "received iss": repr(shown(claims.get("iss"))),
                },
            ) from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(
                f"token lacks the {exc.claim!r} claim",
                reason="missing_claim",
                details={"missing claim": shown(exc.claim)},
            ) from None
        except (jwt.InvalidTokenError, *_PARSE_ERRORS) as exc:
            raise Unauthenticated(
                "invalid token", reason="invalid_token", details={"problem": type(exc).__name__}
            ) from None
        return claims

    def _check_claims(self, claims: Mapping[str, Any]) -> None:
        """pyjwt's claim checks as ``jwt.decode`` ran them here (its ``_validate_claims`` with
        the time claims left to ``_check_times``), raising its exceptions: required claims present
        and not null, ``iss`` a string among the issuers, ``aud`` (when audiences are configured)
        a string or list of strings naming one of them, ``sub`` and ``jti`` strings when present."""
        for name in self._required:
            if claims.get(name) is None:
                raise jwt.MissingRequiredClaimError(name)
        if self._issuers:
            if "iss" not in claims:
                raise jwt.MissingRequiredClaimError("iss")
            iss = claims["iss"]
            if not isinstance(iss, str):
                raise jwt.InvalidIssuerError("Payload Issuer (iss) must be a string")
            if iss not in self._issuers:
                raise jwt.InvalidIssuerError("Invalid issuer")
        if self._audiences:
            aud = claims.get("aud")
            if not aud:
                raise jwt.MissingRequiredClaimError("aud")
            listed = [aud] if isinstance(aud, str) else aud
            if not isinstance(listed, list) or not all(isinstance(a, str) for a in listed):
                raise jwt.InvalidAudienceError("Invalid claim format in token")
            if all(a not in listed for a in self._audiences):
                raise jwt.InvalidAudienceError("Audience doesn't match")
        if "sub" in claims and not isinstance(claims["sub"], str):
            raise InvalidSubjectError("Subject must be a string")
        if "jti" in claims and not isinstance(claims["jti"], str):
            raise InvalidJTIError("JWT ID must be a string")

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        now = self._clock()
        exp, nbf, iat = (numeric_date(claims, name) for name in TIME_CLAIMS)
        if exp is not None and exp <= now - self._leeway:
            raise Unauthenticated("token expired", reason="expired")
        if nbf is not None and nbf > now + self._leeway:
            raise Unauthenticated("token not yet valid", reason="not_yet_valid")
        if iat is not None and iat > now + self._leeway:
            raise Unauthenticated("token issued in the future", reason="not_yet_valid")
