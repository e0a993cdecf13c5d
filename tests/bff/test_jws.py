"""bff/auth/jws.py parses a token once with pyjwt's rules: compared with pyjwt itself on mangled
tokens (what it accepts, and the parts it gives), and the verifier's claim checks that replaced
``jwt.decode``'s."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bff.auth import jws
from bff.auth.jwks import StaticKeySource, VerificationKey
from bff.auth.jwt import JwtVerifier
from bff.errors import Unauthenticated

from .support import AUDIENCE, ISSUER, Keys

_KEYS = Keys()
_TOKEN = _KEYS.token("alice", org_id="acme")
# Characters a mangled token may gain: the alphabet's edges, padding, separators, others.
_NOISE = st.sampled_from(["=", "==", ".", "A", "Q", "_", "-", "+", "/", "!", " ", "é", "\x00", "\ud800"])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@st.composite
def mangled(draw: st.DrawFn) -> str:
    token = draw(st.sampled_from([_TOKEN, "", "a.b.c", "e30.e30.", "e30=.e30.AA=="]))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(token)))
        action = draw(st.sampled_from(["insert", "delete", "truncate"]))
        if action == "insert":
            token = token[:at] + draw(_NOISE) + token[at:]
        elif action == "delete":
            token = token[:at] + token[at + 1 :]
        else:
            token = token[:at]
    return token


@st.composite
def headers(draw: st.DrawFn) -> str:
    """A token whose header is any of the shapes pyjwt checks (kid, crit, b64), or not JSON."""
    values = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=3), st.just(["b64"]))
    header = draw(st.dictionaries(st.sampled_from(["alg", "kid", "crit", "b64"]), values, max_size=4))
    raw = draw(st.sampled_from([json.dumps(header), "[1]", "{", '"x"']))
    payload = draw(st.sampled_from(["", b64(b'{"sub":"a"}')]))
    return f"{b64(raw.encode())}.{payload}.{b64(b'sig')}"


def _pyjwt(token: str) -> tuple[dict[str, Any], bytes, bytes] | None:
    try:
        header = jwt.get_unverified_header(token)
    except (jwt.InvalidTokenError, ValueError, TypeError, UnicodeError):
        return None
    if header.get("b64", True) is False:
        return header, b"", b""
    parts = jwt.api_jws.decode_complete(token, options={"verify_signature": False})
    return header, parts["payload"], parts["signature"]


def _ours(token: str) -> tuple[dict[str, Any], bytes, bytes] | None:
    try:
        parsed = jws.parse(token)
    except jwt.InvalidTokenError:
        return None
    if parsed.header.get("b64", True) is False:
        return parsed.header, b"", b""
    assert parsed.signing_input == token.rsplit(".", 1)[0].encode()
    return parsed.header, parsed.payload, parsed.signature


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mangled(), headers()))
def test_parse_accepts_what_pyjwt_accepts_and_gives_the_same_parts(token: str) -> None:
    assert _ours(token) == _pyjwt(token)


def _with_header(header: Any) -> str:
    _, payload, sig = _TOKEN.split(".")
    return f"{b64(json.dumps(header).encode())}.{payload}.{sig}"


def test_parse_keeps_pyjwts_segment_rules() -> None:
    header, payload, sig = _TOKEN.split(".")
    assert jws.parse(_TOKEN).header["kid"] == "rsa-1"
    for bad in [
        f"{header}.{payload}",  # two segments
        f"{header}.{payload}.{sig}.x",  # four
        f"{header}==.{payload}.{sig}",  # padding on a partial group (the header is 4n+3 long)
        f"{header}.{payload}.{sig}===",  # three of padding
        f"{header}.{payload}.{sig[:-1]}+",  # outside the URL-safe alphabet
        f"{header}.{payload}.{sig[:-1]}{chr(ord(sig[-1]) + 1)}",  # stray low bits (not canonical)
        _with_header({"kid": 1}),  # a kid that is no string
        _with_header({"crit": ["exp"], "exp": 1}),  # an unsupported extension
        _with_header([]),  # a header that is no object
    ]:
        with pytest.raises(jwt.InvalidTokenError):
            jws.parse(bad)


@pytest.mark.parametrize(
    ("claims", "reason", "problem"),
    [
        ({"sub": 7}, "invalid_token", "InvalidSubjectError"),
        ({"jti": 7}, "invalid_token", "InvalidJTIError"),
        ({"iss": 7}, "issuer_mismatch", None),
        ({"iss": None}, "missing_claim", None),
        ({"aud": [AUDIENCE, 7]}, "audience_mismatch", None),
        ({"aud": {"a": AUDIENCE}}, "audience_mismatch", None),
        ({"aud": []}, "missing_claim", None),
        ({"aud": ["other", AUDIENCE]}, None, None),
        ({"sub": None}, "missing_claim", None),
    ],
)
async def test_claim_checks_as_pyjwt_decode_made_them(
    claims: dict[str, Any], reason: str | None, problem: str | None
) -> None:
    body = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": 4102444800, **claims}
    body = {k: v for k, v in body.items() if not (k == "iss" and v is None)}
    # Signed as bytes: jwt.encode itself refuses some of these claims.
    token = jwt.api_jws.encode(json.dumps(body).encode(), _KEYS.rsa, algorithm="RS256")
    verifier = JwtVerifier(
        algorithms=["RS256"],
        issuers=[ISSUER],
        audiences=[AUDIENCE],
        key_source=StaticKeySource([VerificationKey(kid=None, key=_KEYS.rsa.public_key())]),
        cache_ttl_sec=0,
    )
    if reason is None:
        assert (await verifier.verify(token))["sub"] == "alice"
        return
    with pytest.raises(Unauthenticated) as info:
        await verifier.verify(token)
    assert info.value.reason == reason
    if problem is not None:
        assert info.value.details["problem"] == problem
