"""Platform access tokens: HS256 JWTs shaped like the ones the Vluna service issues.

Claims: iss, aud, sub (= user id), iat, exp, jti, realm_id, billing_account_id,
billing_user_id, billing_principal_id, business_user_id, plt_scopes, scope, tu, token_use.
The open-source server (`OSS_PROFILE`) also sets tv, ib (the issuing key id) and, when the
issuance asked for them, nonce and plt_traits; its iss and aud are fixed.
Verified tokens are cached (by the token string) so the hot path pays for one HMAC per token,
not per request; expiry is still checked on every use.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt

AUDIENCE = "vluna-platform"
KNOWN_SCOPES = ("checkout", "portal")
_CACHE_LIMIT = 10_000


@dataclass(frozen=True)
class TokenProfile:
    """What a server puts in its tokens besides the subject and account claims."""

    audience: str = AUDIENCE
    issuer_base: str | None = None  # iss = <issuer_base>/realms/<realm>; None: the public URL
    extended: bool = False  # tv, ib, nonce, plt_traits; jti as a dashed UUID


# The open-source server with no issuer or audience configured (as recorded).
OSS_PROFILE = TokenProfile(audience="oss.vluna.ai", issuer_base="https://api.vluna.ai", extended=True)


@dataclass(frozen=True)
class TokenClaims:
    realm_id: str
    principal_id: str
    user_id: str
    billing_account_id: str
    billing_user_id: str
    scopes: frozenset[str]
    expires_at: float
    jti: str
    issued_by: str | None = None  # "ib": the service key that asked for it (OSS_PROFILE)


class InvalidToken(Exception):
    """The token is garbage, tampered with, expired, or meant for another audience."""


class TokenService:
    def __init__(
        self, *, public_url: str, signing_key: bytes | None = None, profile: TokenProfile | None = None
    ) -> None:
        self._profile = profile or TokenProfile()
        self._issuer_base = (self._profile.issuer_base or public_url).rstrip("/")
        self._key = signing_key or secrets.token_bytes(32)
        self._cache: dict[str, TokenClaims] = {}

    def issue(
        self,
        *,
        realm_id: str,
        principal_id: str,
        user_id: str,
        billing_account_id: str,
        billing_user_id: str,
        scopes: tuple[str, ...],
        ttl_seconds: int,
        now: float | None = None,
        key_id: str | None = None,
        nonce: str | None = None,
        traits: dict[str, Any] | None = None,
    ) -> tuple[str, TokenClaims]:
        issued = int(now if now is not None else time.time())
        exp = issued + ttl_seconds
        extended = self._profile.extended
        jti = str(uuid.uuid4()) if extended else uuid.uuid4().hex
        scope = ["billing:read"] + (["billing:write"] if "checkout" in scopes else [])
        payload: dict[str, Any] = {
            "iss": f"{self._issuer_base}/realms/{realm_id}",
            "aud": self._profile.audience,
            "sub": user_id,
            "iat": issued,
            "exp": exp,
            "jti": jti,
            "realm_id": realm_id,
            "billing_account_id": billing_account_id,
            "billing_user_id": billing_user_id,
            "billing_principal_id": principal_id,
            "business_user_id": user_id,
            "plt_scopes": list(scopes),
            "scope": " ".join(scope),
            "tu": "plt",
            "token_use": "platform",
        }
        if extended:
            payload["tv"] = 1
            if key_id is not None:  # a token asked for with another token names no key
                payload["ib"] = key_id
            if nonce is not None:
                payload["nonce"] = nonce
            if traits is not None:
                payload["plt_traits"] = traits
        token = jwt.encode(payload, self._key, algorithm="HS256", headers={"kid": f"plt:v1:realm:{realm_id}"})
        claims = TokenClaims(
            realm_id=realm_id,
            principal_id=principal_id,
            user_id=user_id,
            billing_account_id=billing_account_id,
            billing_user_id=billing_user_id,
            scopes=frozenset(scopes),
            expires_at=float(exp),
            jti=jti,
            issued_by=key_id if extended else None,
        )
        return token, claims

    def verify(self, token: str, *, now: float | None = None) -> TokenClaims:
        current = now if now is not None else time.time()
        claims = self._cache.get(token)
        if claims is None:
            claims = self._decode(token)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[token] = claims
        if current >= claims.expires_at:
            raise InvalidToken("token expired")
        return claims

    def _decode(self, token: str) -> TokenClaims:
        try:
            payload = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=self._profile.audience,
                options={
                    "require": ["exp", "iat", "sub", "aud"],
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(type(exc).__name__) from None
        try:
            return TokenClaims(
                realm_id=str(payload["realm_id"]),
                principal_id=str(payload["billing_principal_id"]),
                user_id=str(payload["sub"]),
                billing_account_id=str(payload["billing_account_id"]),
                billing_user_id=str(payload["billing_user_id"]),
                scopes=frozenset(str(s) for s in payload.get("plt_scopes") or ()),
                expires_at=float(payload["exp"]),
                jti=str(payload.get("jti", "")),
                issued_by=str(payload["ib"]) if payload.get("ib") else None,
            )
        except (KeyError, TypeError, ValueError):
            raise InvalidToken("missing claims") from None
