"""JWT verification with pyjwt: allowlisted algorithms, keys of the matching family only,
issuer, audience, exp/nbf with leeway, required claims."""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import jwt

from bff.auth.jwks import KeySource
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
    ) -> None:
        self._algorithms = frozenset(a for a in algorithms if a.lower() != "none")
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

    async def _verify(self, token: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise Unauthenticated("token algorithm not allowed")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("malformed token")
        keys: Sequence[Any]
        if alg in HS_ALGORITHMS:
            # The shared secret only for HS*, and HS* only with the shared secret: a public key can
            # never be used as an HMAC secret.
            keys = [self._hs_secret] if self._hs_secret else []
        else:
            keys = await self._keys.keys_for(kid, alg) if self._keys else []
        if not keys:
            raise Unauthenticated("no key to verify this token (unknown kid)")
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
                raise Unauthenticated("token expired") from None
            except jwt.ImmatureSignatureError:
                raise Unauthenticated("token not yet valid") from None
            except jwt.InvalidAudienceError:
                raise Unauthenticated("token audience not accepted") from None
            except jwt.InvalidIssuerError:
                raise Unauthenticated("token issuer not accepted") from None
            except jwt.MissingRequiredClaimError as exc:
                raise Unauthenticated(f"token lacks the {exc.claim!r} claim") from None
            except jwt.InvalidTokenError:
                raise Unauthenticated("invalid token") from None
        raise Unauthenticated("token signature invalid")
