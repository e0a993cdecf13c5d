"""JWT verification with pyjwt: allowlisted algorithms, keys of the matching family only,
issuer, audience, exp/nbf with leeway, required claims."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import jwt

from bff.auth.diagnostics import shown
from bff.auth.jwks import JwksKeySource, KeySource
from bff.errors import Unauthenticated
from bff.settings import HS_ALGORITHMS


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
        jwks: JwksKeySource | None = None,
        static_keys: bool = False,
    ) -> None:
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
        self._cache_ttl = cache_ttl_sec
        self._cache_max = cache_max_entries
        self._verified: OrderedDict[bytes, tuple[dict[str, Any], float]] = OrderedDict()

    def __repr__(self) -> str:
        return f"JwtVerifier(algorithms={sorted(self._algorithms)})"

    async def verify(self, token: str) -> dict[str, Any]:
        if self._cache_ttl <= 0:
            return await self._verify(token)
        digest = hashlib.sha256(token.encode()).digest()
        now = time.time()
        hit = self._verified.get(digest)
        if hit is not None:
            if hit[1] > now:
                return hit[0]
            del self._verified[digest]
        claims = await self._verify(token)
        until = now + self._cache_ttl
        exp = claims.get("exp")
        if isinstance(exp, (int, float)):
            until = min(until, float(exp) + self._leeway)
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
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("malformed token", reason="malformed") from None
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
        keys: Sequence[Any]
        if alg in HS_ALGORITHMS:
            # The shared secret only for HS*, and HS* only with the shared secret: a public key can
            # never be used as an HMAC secret.
            keys = [self._hs_secret] if self._hs_secret else []
        else:
            keys = await self._keys.keys_for(kid, alg) if self._keys else []
        if not keys:
            raise Unauthenticated(
                "no key to verify this token (unknown kid)", reason="unknown_kid", details=seen
            )
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key,
                    algorithms=[alg],
                    issuer=self._issuers or None,
                    audience=self._audiences or None,
                    leeway=self._leeway,
                    options={"require": self._required, "verify_aud": bool(self._audiences)},
                )
                return claims
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                raise Unauthenticated("token expired", reason="expired", details=seen) from None
            except jwt.ImmatureSignatureError:
                raise Unauthenticated("token not yet valid", reason="not_yet_valid", details=seen) from None
            except jwt.InvalidAudienceError:
                # The signature held: the claims are the issuer's own, safe to compare in the log.
                raise Unauthenticated(
                    "token audience not accepted",
                    reason="audience_mismatch",
                    details={
                        "expected aud": ",".join(self._audiences),
                        "received aud": shown(_claim(token, "aud")),
                        **seen,
                    },
                ) from None
            except jwt.InvalidIssuerError:
                raise Unauthenticated(
                    "token issuer not accepted",
                    reason="issuer_mismatch",
                    details={
                        "expected iss": " or ".join(repr(i) for i in self._issuers),
                        "received iss": repr(shown(_claim(token, "iss"))),
                        **seen,
                    },
                ) from None
            except jwt.MissingRequiredClaimError as exc:
                raise Unauthenticated(
                    f"token lacks the {exc.claim!r} claim",
                    reason="missing_claim",
                    details={"missing claim": shown(exc.claim), **seen},
                ) from None
            except jwt.InvalidTokenError as exc:
                raise Unauthenticated(
                    "invalid token", reason="invalid_token", details={"problem": type(exc).__name__, **seen}
                ) from None
        raise Unauthenticated("token signature invalid", reason="bad_signature", details=seen)


def _claim(token: str, name: str) -> Any:
    """A claim of a token whose signature has just been verified (for the diagnostics line)."""
    try:
        return jwt.decode(token, options={"verify_signature": False}).get(name)
    except jwt.InvalidTokenError:
        return None
