"""Cache keys: an HMAC of (realm, principal, user, scopes), so no identity appears in Redis."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from itertools import combinations

# Redis Cluster: release announcements are spread over this many sharded channels, so their
# traffic is spread over the masters (each one is served by the master owning its slot).
SHARD_CHANNELS = 16
_MEMO_MAX = 4096


def canonical_scopes(scopes: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted(set(scopes)))


class CacheKeys:
    def __init__(self, hmac_key: bytes, prefix: str, realm_id: str) -> None:
        self._hmac_key = hmac_key
        self._prefix = prefix
        self._realm = realm_id
        # (principal, user, scopes) -> token key: an HMAC and a JSON encoding per cache hit
        # otherwise. Bounded; a key is a pure function of its inputs, so a memo cannot go stale.
        self._tokens: dict[tuple[str, str, tuple[str, ...]], str] = {}

    def __repr__(self) -> str:
        return f"CacheKeys(prefix={self._prefix!r})"

    def _digest(self, kind: str, *parts: object) -> str:
        # JSON framing: ("a:b", "c") and ("a", "b:c") must not collide.
        msg = json.dumps([kind, self._realm, *parts], separators=(",", ":")).encode()
        return hmac.new(self._hmac_key, msg, hashlib.sha256).hexdigest()

    def token(self, principal_id: str, user_id: str, scopes: Iterable[str]) -> str:
        canonical = canonical_scopes(scopes)
        memo = (principal_id, user_id, canonical)
        key = self._tokens.get(memo)
        if key is None:
            key = f"{self._prefix}tok:{self._digest('tok', principal_id, user_id, list(canonical))}"
            if len(self._tokens) >= _MEMO_MAX:
                self._tokens.clear()
            self._tokens[memo] = key
        return key

    def signed_out(self, principal_id: str, user_id: str) -> str:
        return f"{self._prefix}out:{self._digest('out', principal_id, user_id)}"

    def issuances(self, principal_id: str, user_id: str, window: int) -> str:
        """The counter of one user's issuances in one window (see limits.py)."""
        return f"{self._prefix}iss:{self._digest('iss', principal_id, user_id)}:{window}"

    def all_issuances(self, window: int) -> str:
        """The counter of every replica's issuances in one window."""
        return f"{self._prefix}iss:{self._digest('iss-all')}:{window}"

    def lock(self, token_key: str) -> str:
        return f"{self._prefix}lock:{token_key[len(self._prefix) :]}"

    def channel(self, token_key: str) -> str:
        return f"{self._prefix}done:{token_key[len(self._prefix) :]}"

    def channel_pattern(self) -> str:
        return f"{self._prefix}done:*"

    def token_key_of_channel(self, channel: str) -> str:
        return f"{self._prefix}{channel[len(self._prefix) + len('done:') :]}"

    def shard_channels(self) -> list[str]:
        """Redis Cluster: the sharded channels every process subscribes to (see lock.py)."""
        return [f"{self._prefix}done:shard{i:02d}" for i in range(SHARD_CHANNELS)]

    def shard_channel(self, token_key: str) -> tuple[str, str]:
        """The sharded channel announcing ``token_key``'s release, and the message (the key
        without the prefix: an HMAC, no identity)."""
        rest = token_key[len(self._prefix) :]
        bucket = int(hashlib.sha256(rest.encode()).hexdigest()[:8], 16) % SHARD_CHANNELS
        return f"{self._prefix}done:shard{bucket:02d}", rest

    def token_key_of_shard_message(self, message: str) -> str | None:
        return f"{self._prefix}{message}" if message.startswith("tok:") else None

    def all_tokens(self, principal_id: str, user_id: str, allowed_scopes: Iterable[str]) -> list[str]:
        """Every key this identity can have: one per non-empty subset of the allowed scopes."""
        allowed = canonical_scopes(allowed_scopes)
        return [
            self.token(principal_id, user_id, combo)
            for n in range(1, len(allowed) + 1)
            for combo in combinations(allowed, n)
        ]
