"""What the current request is, for logs, metrics and outgoing calls (a context variable).

Identities are recorded only as keyed hashes (HMAC-SHA256 with a deployment key, truncated):
log lines of one user can be correlated, the user cannot be read back from them.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from contextvars import ContextVar
from dataclasses import dataclass

_MEMO_MAX = 4096
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")


@dataclass
class RequestInfo:
    request_id: str
    method: str
    route: str = ""
    principal: str | None = None  # hashed
    user: str | None = None  # hashed


current_request: ContextVar[RequestInfo | None] = ContextVar("vluna_bff_request", default=None)
# Set while the service makes its own probe calls: their httpx lines are logged at debug.
quiet_http: ContextVar[bool] = ContextVar("vluna_bff_quiet_http", default=False)


def valid_request_id(value: str | None) -> bool:
    return value is not None and bool(_REQUEST_ID.match(value))


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    info = current_request.get()
    return info.request_id if info is not None else None


class IdHasher:
    """HMAC of an identity under a deployment key: stable across replicas that share the key."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key or secrets.token_bytes(32)
        # Identities seen recently -> their hashes (an HMAC per request otherwise); bounded.
        self._memo: dict[str, str] = {}

    def __repr__(self) -> str:
        return "IdHasher()"

    @classmethod
    def derived_from(cls, secret: bytes | None) -> IdHasher:
        # A key of its own (never the cache-key HMAC itself): log hashes cannot be matched to
        # Redis keys.
        if not secret:
            return cls()
        return cls(hmac.new(secret, b"vluna-bff/log-identity-hash/v1", hashlib.sha256).digest())

    def hash(self, value: str) -> str:
        digest = self._memo.get(value)
        if digest is None:
            digest = hmac.new(self._key, value.encode(), hashlib.sha256).hexdigest()[:20]
            if len(self._memo) >= _MEMO_MAX:
                self._memo.clear()
            self._memo[value] = digest
        return digest


_hasher = IdHasher()


def set_id_hasher(hasher: IdHasher) -> None:
    global _hasher
    _hasher = hasher


def note_identity(principal_id: str, user_id: str) -> None:
    """Called once the caller is mapped to a principal: the request's log line gets the hashes."""
    info = current_request.get()
    if info is not None:
        info.principal = _hasher.hash(principal_id)
        info.user = _hasher.hash(user_id)
