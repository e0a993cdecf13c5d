"""Claim validation: whatever JSON a validly signed token carries, in any claim, the verifier and
the principal mapping answer with a 401/403 that says what is wrong, or accept it with sound time
claims; never another exception (a 500). Time claims are JSON numbers within range, and no
remembered verification outlives `exp`. (Running-service cases are in test_attacks.py.)"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bff.auth.identity import Identity
from bff.auth.jwt import MAX_NUMERIC_DATE, JwtVerifier
from bff.errors import BffError, Forbidden, Unauthenticated
from bff.principals import PrincipalMapper
from bff.settings import MappingSettings

SECRET = b"claims-under-attack-hs256-secret-0123456789"
ISSUER = "https://id.claims.test/"
AUDIENCE = "claims-test"
MAPPING = MappingSettings.model_validate(
    {
        "principal": [
            {"claim": "org_id", "template": "org:{value}"},
            {"claim": "team", "template": "team:{tenant}:{value}"},
            {"claim": "sub", "template": "user:{value}"},
        ],
        "traits": {"email": "email", "name": "name"},
    }
)

numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, time.time(), time.time() + 600, MAX_NUMERIC_DATE, MAX_NUMERIC_DATE + 1]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    numbers,
    st.text(max_size=40),
    numbers.map(lambda n: str(n)),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
CLAIMS = ["exp", "nbf", "iat", "sub", "iss", "aud", "org_id", "team", "tenant", "email", "name", "jti"]


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signed(payload: bytes) -> str:
    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(payload)
    return signing_input + "." + b64(hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest())


def payload_of(overrides: dict[str, Any]) -> bytes:
    now = int(time.time())
    claims: dict[str, Any] = {"sub": "u", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
    claims.update(overrides)
    return json.dumps(claims, allow_nan=True).encode()  # NaN and Infinity as JSON parsers read them


def verifier() -> JwtVerifier:
    return JwtVerifier(
        algorithms=["HS256"],
        issuers=[ISSUER],
        audiences=[AUDIENCE],
        key_source=None,
        hs_secret=SECRET,
        leeway_sec=5,
        cache_ttl_sec=60,
    )


async def outcome(token: str) -> str:
    v = verifier()
    try:
        claims = await v.verify(token)
        await PrincipalMapper(MAPPING).map(Identity(claims=claims, method="bearer"))
    except (Unauthenticated, Forbidden) as exc:
        assert 400 <= exc.status < 500 and exc.message
        return exc.code
    except BffError as exc:  # pragma: no cover - reported with its type
        raise AssertionError(f"unexpected {type(exc).__name__}: {exc.message}") from None
    # Accepted: then every time claim was a sound NumericDate, and the memo never outlives exp.
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if name in claims:
            assert isinstance(value, (int, float)) and not isinstance(value, bool)
            assert math.isfinite(value) and 0 <= value <= MAX_NUMERIC_DATE
    assert all(until <= float(claims["exp"]) for _, until in v._verified.values())
    assert float(claims["exp"]) > time.time() - 5
    return "ok"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(CLAIMS), json_values, max_size=5))
def test_any_claim_values_get_a_4xx_or_sound_claims(overrides: dict[str, Any]) -> None:
    asyncio.run(outcome(signed(payload_of(overrides))))


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["exp", "nbf", "iat"]),
    st.one_of(st.text(max_size=30), numbers.map(str), st.integers(0, 2**40).map(str)),
)
def test_time_claims_given_as_text_are_refused(claim: str, text: str) -> None:
    """Numeric strings included: pyjwt would take "exp": "9999999999"."""
    assert asyncio.run(outcome(signed(payload_of({claim: text})))) == "unauthenticated"


def test_the_reported_exp_values() -> None:
    for raw in ("1" + "0" * 400, '"9999999999"', "1e400", "NaN", "true"):
        payload = payload_of({}).replace(b'"exp": ', b'"exp": ' + raw.encode() + b', "_": ', 1)
        assert asyncio.run(outcome(signed(payload))) == "unauthenticated", raw
