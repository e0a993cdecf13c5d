"""SVC-AUTH request signing for `/mgt/v1` (server-to-server) calls.

The canonical string and header format are fixed by the Vluna wire rules; clients sign with
`ServiceKeyAuth`, and verifiers (our emulator) rebuild the same canonical string with
`canonical_string` and compare with `hmac.compare_digest`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlsplit

SIGNING_ALGORITHM = "HMAC-SHA256"
DEFAULT_CONTENT_TYPE = "application/json; charset=utf-8"
EMPTY_BODY_DIGEST = "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"

# Matched as the wire rules write it: comma separated, no spaces, fields in this order.
_AUTHORIZATION_RE = re.compile(
    r"^SVC-AUTH keyId=(?P<key_id>[^,\s]+),sig=(?P<sig>[A-Za-z0-9+/=]+),ts=(?P<ts>[^,\s]+),"
    r"nonce=(?P<nonce>[^,\s]+),alg=(?P<alg>[A-Za-z0-9-]+)$"
)


def decode_secret(secret: str) -> bytes:
    """Decode a base64 service-key secret strictly; the message never echoes the secret."""
    try:
        decoded = base64.b64decode(secret.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "Invalid service key secret: it must be standard base64 (A-Z, a-z, 0-9, +, /, '=' padding)"
        ) from None
    if not decoded:
        raise ValueError("Invalid service key secret: it decodes to zero bytes")
    return decoded


def content_digest(body: bytes | str | None) -> str:
    """The `Content-Digest` header value for the exact body bytes (empty body included)."""
    if not body:
        return EMPTY_BODY_DIGEST
    raw = body.encode() if isinstance(body, str) else body
    return "sha-256=:" + base64.b64encode(hashlib.sha256(raw).digest()).decode() + ":"


def path_with_query(url: str) -> str:
    """Path and query exactly as they go on the wire, from an absolute URL or a path."""
    parts = urlsplit(url)
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.path or '/'}{query}"


def canonical_string(
    *,
    method: str,
    path_with_query: str,
    timestamp: str,
    nonce: str,
    content_digest: str,
    content_type: str,
    realm_id: str,
    principal_id: str | None = None,
    user_id: str | None = None,
    billing_account_id: str | None = None,
    idempotency_key: str,
    billing_user_id: str | None = None,
) -> str:
    return "\n".join(
        [
            method.upper(),
            path_with_query,
            f"ts:{timestamp}",
            f"nonce:{nonce}",
            f"content-digest:{content_digest}",
            f"content-type:{content_type}",
            f"x-realm-id:{realm_id}",
            f"x-principal-id:{principal_id or ''}",
            f"x-user-id:{user_id or ''}",
            f"x-billing-account-id:{billing_account_id or ''}",
            f"x-billing-user-id:{billing_user_id or ''}",
            f"idempotency-key:{idempotency_key}",
        ]
    )


def compute_signature(secret: bytes, canonical: str) -> str:
    return base64.b64encode(hmac.new(secret, canonical.encode(), hashlib.sha256).digest()).decode()


def format_authorization(*, key_id: str, signature: str, timestamp: str, nonce: str) -> str:
    return f"SVC-AUTH keyId={key_id},sig={signature},ts={timestamp},nonce={nonce},alg={SIGNING_ALGORITHM}"


@dataclass(frozen=True)
class SvcAuthHeader:
    key_id: str
    signature: str
    timestamp: str
    nonce: str
    algorithm: str


def parse_authorization(value: str) -> SvcAuthHeader | None:
    """Parse an `Authorization: SVC-AUTH ...` value; None when it is not well formed."""
    match = _AUTHORIZATION_RE.match(value)
    if match is None:
        return None
    return SvcAuthHeader(
        key_id=match["key_id"],
        signature=match["sig"],
        timestamp=match["ts"],
        nonce=match["nonce"],
        algorithm=match["alg"],
    )


def default_content_type(method: str, body: str | bytes | None) -> str:
    """The Content-Type signed (and sent) when the caller set none.

    A body is JSON. A read without a body keeps the JSON type, as the published client sends it.
    A write without a body (a bodyless POST, PATCH or DELETE) sends none and signs an empty
    content-type line: servers refuse an announced JSON body that is empty (the open-source
    server answers 400 "Body cannot be empty when content-type is set to 'application/json'").
    """
    if body or method.upper() in ("GET", "HEAD"):
        return DEFAULT_CONTENT_TYPE
    return ""


def new_nonce() -> str:
    return secrets.token_hex(16)


def utc_timestamp() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass
class ServiceKeyCredentials:
    """A service key: its id (`pk-...`) and its base64 secret. The secret never shows in repr/str."""

    key_id: str
    secret: str = field(repr=False)

    def __repr__(self) -> str:
        return f"ServiceKeyCredentials(key_id={self.key_id!r}, secret='***')"

    __str__ = __repr__


class ServiceKeyAuth:
    """Signs requests with a service key. The secret is decoded once, when this is built."""

    def __init__(self, creds: ServiceKeyCredentials) -> None:
        if not creds.key_id or any(ch in creds.key_id for ch in ", \t\r\n"):
            raise ValueError("Invalid service key id: it must be non-empty, without spaces or commas")
        self._key_id = creds.key_id
        self._secret = decode_secret(creds.secret)

    @property
    def key_id(self) -> str:
        return self._key_id

    def __repr__(self) -> str:
        return f"ServiceKeyAuth(key_id={self._key_id!r})"

    def sign(
        self,
        *,
        method: str,
        url: str,
        body: str | bytes | None,
        idempotency_key: str | None,
        realm_id: str,
        billing_account_id: str | None = None,
        principal_id: str | None = None,
        user_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, str]:
        """Headers that authenticate one attempt: fresh timestamp and nonce every call.

        Returns lower-case header names. Unlike the published client, caller-supplied headers
        are not merged over the signed ones: a signature is only valid for the values it covers.
        """
        timestamp = utc_timestamp()
        nonce = new_nonce()
        lowered = {k.lower(): v for k, v in (headers or {}).items()}
        content_type = lowered.get("content-type", default_content_type(method, body))
        digest = content_digest(body)
        idem = idempotency_key or new_nonce()
        canonical = canonical_string(
            method=method,
            path_with_query=path_with_query(url),
            timestamp=timestamp,
            nonce=nonce,
            content_digest=digest,
            content_type=content_type,
            realm_id=realm_id,
            principal_id=principal_id,
            user_id=user_id,
            billing_account_id=billing_account_id,
            idempotency_key=idem,
        )
        signed = {
            "authorization": format_authorization(
                key_id=self._key_id,
                signature=compute_signature(self._secret, canonical),
                timestamp=timestamp,
                nonce=nonce,
            ),
            "content-digest": digest,
            "idempotency-key": idem,
            "x-realm-id": realm_id,
        }
        if content_type:
            signed["content-type"] = content_type
        if billing_account_id:
            signed["x-billing-account-id"] = billing_account_id
        if principal_id:
            signed["x-principal-id"] = principal_id
        if user_id:
            signed["x-user-id"] = user_id
        return signed
