"""AES-GCM sealing of cache entries, with key rotation.

The first key encrypts; every configured key decrypts, so a new key can be put in front while
entries sealed with the old one keep working until they expire. The cache key is bound in as
associated data: an entry copied under another identity's key fails to open.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = 1
_NONCE_LEN = 12


class TokenCipher:
    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("at least one encryption key is required")
        self._active_id = keys[0][0].encode()
        self._aeads = {kid.encode(): AESGCM(key) for kid, key in keys}
        self._active = self._aeads[self._active_id]

    def __repr__(self) -> str:
        return f"TokenCipher(keys={len(self._aeads)})"

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE_LEN)
        kid = self._active_id
        return bytes([_VERSION, len(kid)]) + kid + nonce + self._active.encrypt(nonce, plaintext, aad)

    def open(self, blob: bytes, aad: bytes) -> bytes | None:
        """The plaintext, or None for anything unreadable (unknown key, tampering, old format)."""
        if len(blob) < 2 or blob[0] != _VERSION:
            return None
        kid_end = 2 + blob[1]
        aead = self._aeads.get(blob[2:kid_end])
        if aead is None:
            return None
        nonce = blob[kid_end : kid_end + _NONCE_LEN]
        try:
            return aead.decrypt(nonce, blob[kid_end + _NONCE_LEN :], aad)
        except (InvalidTag, ValueError):
            return None
