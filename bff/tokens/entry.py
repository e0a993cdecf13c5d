"""What the token broker deals in: the cached entry, its configuration and its failures
(re-exported by bff/tokens/broker.py, where callers import them from)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from bff.errors import ServiceUnavailable, UpstreamRejected


@dataclass(frozen=True)
class TokenEntry:
    access_token: str = field(repr=False)
    token_type: str
    issued_at: float
    expires_at: float
    billing_account_id: str | None
    billing_user_id: str | None
    scopes: tuple[str, ...]

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "t": self.access_token,
                "ty": self.token_type,
                "iat": self.issued_at,
                "exp": self.expires_at,
                "ba": self.billing_account_id,
                "bu": self.billing_user_id,
                "sc": list(self.scopes),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> TokenEntry:
        d = json.loads(raw)
        return cls(
            access_token=d["t"],
            token_type=d["ty"],
            issued_at=float(d["iat"]),
            expires_at=float(d["exp"]),
            billing_account_id=d["ba"],
            billing_user_id=d["bu"],
            scopes=tuple(d["sc"]),
        )

    def expires_in(self, now: float) -> int:
        return max(0, int(self.expires_at - now))


@dataclass(frozen=True)
class BrokerConfig:
    realm_id: str
    allowed_scopes: tuple[str, ...]
    refresh_ahead_ratio: float = 0.5
    safety_margin_sec: float = 30
    lock_ttl_sec: float = 10
    wait_timeout_sec: float = 10
    retry_after_sec: int = 5
    # Upper bound on one wait for a release notification; a safety net if one is lost.
    recheck_interval_sec: float = 1.0

    def due(self, entry: TokenEntry, now: float) -> bool:
        """Past the configured share of its life: time to renew it in the background."""
        life = entry.expires_at - entry.issued_at
        return now >= entry.issued_at + life * self.refresh_ahead_ratio


class TokenUnavailable(ServiceUnavailable):
    """No valid token can be served now (503); the client should retry after ``retry_after``
    seconds. ``reason`` is for the operator only."""

    code = "token_unavailable"

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__("billing tokens are temporarily unavailable", retry_after=retry_after)
        self.reason = reason


class TokenRejected(UpstreamRejected):
    """Vluna refused to issue for this principal or this service key (502). ``reason`` is for
    the operator only."""

    def __init__(self, reason: str) -> None:
        super().__init__("the billing service refused to issue a token for this user")
        self.reason = reason


class SignOutIncomplete(ServiceUnavailable):
    """The sign-out could not be recorded where every replica sees it (Redis): the tokens might
    still be served, so the caller must not be told it is signed out (503: send it again)."""

    code = "sign_out_incomplete"

    def __init__(self, retry_after: int) -> None:
        super().__init__("the sign-out could not be recorded; send it again", retry_after=retry_after)
