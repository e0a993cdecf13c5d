from __future__ import annotations

import pytest

from bff.settings import parse_key_spec
from bff.tokens.crypto import TokenCipher
from bff.tokens.keys import CacheKeys

K1 = ("k1", b"\x01" * 32)
K2 = ("k2", b"\x02" * 32)


def test_seal_open_roundtrip_and_no_plaintext_in_blob() -> None:
    c = TokenCipher([K1])
    blob = c.seal(b"secret-token-bytes", b"key-a")
    assert b"secret-token-bytes" not in blob
    assert c.open(blob, b"key-a") == b"secret-token-bytes"
    assert c.seal(b"x", b"a") != c.seal(b"x", b"a")  # fresh nonce every time


def test_entry_bound_to_its_cache_key() -> None:
    c = TokenCipher([K1])
    blob = c.seal(b"token-of-alice", b"key-alice")
    assert c.open(blob, b"key-bob") is None


def test_tampering_and_garbage_are_unreadable_not_errors() -> None:
    c = TokenCipher([K1])
    blob = bytearray(c.seal(b"token", b"k"))
    blob[-1] ^= 1
    assert c.open(bytes(blob), b"k") is None
    for junk in (b"", b"\x01", b"\x09abc", b"\x01\x02k9" + b"0" * 40):
        assert c.open(junk, b"k") is None


def test_rotation_new_key_encrypts_old_key_still_decrypts() -> None:
    old = TokenCipher([K1])
    rotated = TokenCipher([K2, K1])
    old_blob = old.seal(b"old", b"k")
    assert rotated.open(old_blob, b"k") == b"old"
    new_blob = rotated.seal(b"new", b"k")
    assert old.open(new_blob, b"k") is None  # sealed with k2, which the old set lacks
    assert TokenCipher([K2]).open(new_blob, b"k") == b"new"
    assert TokenCipher([K2]).open(old_blob, b"k") is None  # k1 retired


def test_key_spec_parsing() -> None:
    import base64

    assert parse_key_spec("a:" + base64.b64encode(b"z" * 32).decode()) == ("a", b"z" * 32)
    for bad in (
        "nocolon",
        ":" + base64.b64encode(b"z" * 32).decode(),
        "a:" + base64.b64encode(b"z" * 16).decode(),
    ):
        with pytest.raises(ValueError):
            parse_key_spec(bad)


def test_cache_keys_hide_identity_and_separate_everything() -> None:
    keys = CacheKeys(b"h" * 32, "p:", "realm1")
    k = keys.token("org:acme", "alice", ["portal", "checkout"])
    assert k.startswith("p:tok:")
    assert "acme" not in k and "alice" not in k
    assert k == keys.token("org:acme", "alice", ["checkout", "portal", "checkout"])  # canonical scopes
    others = {
        keys.token("org:acme", "bob", ["checkout", "portal"]),
        keys.token("org:acme:alice", "", ["checkout", "portal"]),
        keys.token("org:acme", "alice", ["checkout"]),
        CacheKeys(b"h" * 32, "p:", "realm2").token("org:acme", "alice", ["checkout", "portal"]),
        CacheKeys(b"x" * 32, "p:", "realm1").token("org:acme", "alice", ["checkout", "portal"]),
    }
    assert k not in others and len(others) == 5
    everything = keys.all_tokens("org:acme", "alice", ["checkout", "portal"])
    assert len(everything) == 3 and k in everything
    assert keys.token_key_of_channel(keys.channel(k)) == k
