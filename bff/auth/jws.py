"""A compact JWS (a JWT), parsed once: its header, signing input, payload and signature.

The rules are pyjwt's own (``PyJWS._load`` and ``_validate_headers``, pyjwt 2.15): three
base64url segments of the URL-safe alphabet only, at most two ``=`` of padding and only on a
whole group, the canonical encoding of what they decode to (no stray low bits), a JSON object
header, a string ``kid``, a ``crit`` that lists only extensions pyjwt supports (``b64``) and that
the header carries. pyjwt checks the alphabet one character at a time in Python; here it is one
regular expression, and the token is parsed once (the verifier used to call
``jwt.get_unverified_header`` for the ``alg`` and ``kid``, then ``jwt.decode``, which parsed it
again: together ~60 % of an RS256 verification's CPU).

Errors are pyjwt's exception classes, so that the verifier reports them as before.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

import jwt

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*")
_SUPPORTED_CRIT = frozenset({"b64"})


@dataclass(frozen=True, slots=True)
class Jws:
    header: dict[str, Any]
    signing_input: bytes
    payload: bytes
    signature: bytes

    def claims(self) -> dict[str, Any]:
        """The payload as a JSON object (read once its signature is verified)."""
        try:
            payload = json.loads(self.payload)
        except (ValueError, RecursionError) as exc:
            raise jwt.DecodeError(f"Invalid payload string: {exc}") from exc
        if not isinstance(payload, dict):
            raise jwt.DecodeError("Invalid payload string: must be a json object")
        return payload


def parse(token: str) -> Jws:
    """The token's parts; ``jwt.DecodeError`` or ``jwt.InvalidTokenError`` when malformed."""
    parts = token.split(".")
    if len(parts) != 3:
        raise jwt.DecodeError("Not enough segments" if len(parts) < 3 else "Invalid payload padding")
    header_segment, payload_segment, crypto_segment = parts
    try:
        header = json.loads(_segment(header_segment, "header"))
    except (ValueError, RecursionError) as exc:
        raise jwt.DecodeError(f"Invalid header string: {exc}") from exc
    if not isinstance(header, dict):
        raise jwt.DecodeError("Invalid header string: must be a json object")
    if header.get("b64", True) is False:
        # Detached payload (RFC 7797): the segment must be empty; never accepted by the verifier.
        if payload_segment:
            raise jwt.DecodeError("Payload segment must be empty when 'b64' is false.")
        payload = b""
    else:
        payload = _segment(payload_segment, "payload")
    signature = _segment(crypto_segment, "crypto")
    _check_header(header)
    signing_input = f"{header_segment}.{payload_segment}".encode("ascii")
    return Jws(header, signing_input, payload, signature)


def _segment(segment: str, name: str) -> bytes:
    """pyjwt's ``_decode_base64url_segment``, at C speed."""
    stripped = segment.rstrip("=")
    padding = len(segment) - len(stripped)
    if padding > 2 or (padding and len(segment) % 4) or len(stripped) % 4 == 1:
        raise jwt.DecodeError(f"Invalid {name} padding")
    if _SEGMENT.fullmatch(stripped) is None:
        raise jwt.DecodeError(f"Invalid {name} padding")
    raw = stripped.encode("ascii")
    try:
        decoded = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except binascii.Error as exc:
        raise jwt.DecodeError(f"Invalid {name} padding") from exc
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != raw:
        raise jwt.DecodeError(f"Invalid {name} padding")
    return decoded


def _check_header(header: dict[str, Any]) -> None:
    if "kid" in header and not isinstance(header["kid"], str):
        raise jwt.InvalidTokenError("Key ID header parameter must be a string")
    if "crit" in header:
        crit = header["crit"]
        if not isinstance(crit, list) or not crit:
            raise jwt.InvalidTokenError("Invalid 'crit' header: must be a non-empty list")
        for ext in crit:
            if not isinstance(ext, str):
                raise jwt.InvalidTokenError("Invalid 'crit' header: values must be strings")
            if ext not in _SUPPORTED_CRIT:
                raise jwt.InvalidTokenError(f"Unsupported critical extension: {ext}")
            if ext not in header:
                raise jwt.InvalidTokenError(f"Critical extension '{ext}' is missing from headers")
