from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx
import jwt
import pytest

from bff.auth.jwks import CompositeKeySource, JwksKeySource, StaticKeySource
from bff.auth.jwt import JwtVerifier
from bff.errors import ServiceUnavailable, Unauthenticated

from .support import AUDIENCE, HS_SECRET, ISSUER, Keys


class IdP:
    """The identity provider's JWKS endpoint: the edge of these unit tests."""

    def __init__(self, jwks: dict[str, Any]) -> None:
        self.jwks = jwks
        self.fetches = 0
        self.down = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        if self.down:
            return httpx.Response(503)
        return httpx.Response(200, json=self.jwks)


def verifier(keys: Keys, idp: IdP | None = None, **kw: Any) -> tuple[JwtVerifier, JwksKeySource | None]:
    source = None
    if idp is not None:
        http = httpx.AsyncClient(transport=httpx.MockTransport(idp.handler))
        source = JwksKeySource("https://id.example.test/jwks", http, min_refresh_interval_sec=60)
    args: dict[str, Any] = {
        "algorithms": ["RS256", "ES256", "HS256"],
        "issuers": [ISSUER],
        "audiences": [AUDIENCE],
        "key_source": source,
        "hs_secret": HS_SECRET.encode(),
        "leeway_sec": 5,
        "cache_ttl_sec": 0,  # every call verifies; the cache has its own test
    }
    args.update(kw)
    return JwtVerifier(**args), source


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_valid_tokens_from_jwks_each_family(keys: Keys) -> None:
    v, _ = verifier(keys, IdP(keys.jwks()))
    assert (await v.verify(keys.token("alice", org_id="acme")))["org_id"] == "acme"
    assert (await v.verify(keys.token("bob", alg="ES256", kid="ec-1")))["sub"] == "bob"
    assert (await v.verify(keys.token("carol", alg="HS256", kid=None)))["sub"] == "carol"


async def assert_rejected(v: JwtVerifier, token: str, message: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        await v.verify(token)
    assert message in info.value.message
    assert info.value.status == 401
    assert "invalid_token" in info.value.headers["WWW-Authenticate"]


async def test_rejections(keys: Keys) -> None:
    v, _ = verifier(keys, IdP(keys.jwks()))
    await assert_rejected(v, keys.token(exp_in=-60), "expired")
    await assert_rejected(v, keys.token(aud="someone-else"), "audience")
    await assert_rejected(v, keys.token(aud=None), "'aud'")
    await assert_rejected(v, keys.token(iss="https://evil.test/"), "issuer")
    await assert_rejected(v, keys.token(nbf_in=120), "not yet valid")
    await assert_rejected(v, keys.token(kid="who-knows"), "unknown kid")
    await assert_rejected(v, keys.token(key=keys.rsa_other), "signature")
    await assert_rejected(v, "not-a-jwt", "malformed")
    await assert_rejected(
        v, keys.token(alg="HS256", key=b"another-secret-of-32-bytes-length!", kid=None), "signature"
    )


async def test_expiry_leeway(keys: Keys) -> None:
    v, _ = verifier(keys, IdP(keys.jwks()), leeway_sec=30)
    assert await v.verify(keys.token(exp_in=-10))
    await assert_rejected(v, keys.token(exp_in=-40), "expired")


async def test_tampered_payload_is_rejected(keys: Keys) -> None:
    v, _ = verifier(keys, IdP(keys.jwks()))
    header, payload, sig = keys.token("alice").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["sub"] = "mallory"
    forged = ".".join([header, b64(json.dumps(claims).encode()), sig])
    await assert_rejected(v, forged, "signature")


async def test_alg_none_is_rejected_even_if_allowlisted(keys: Keys) -> None:
    v, _ = verifier(keys, IdP(keys.jwks()), algorithms=["RS256", "none"])
    unsigned = jwt.encode(
        {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE, "exp": 4102444800}, "", algorithm="none"
    )
    await assert_rejected(v, unsigned, "algorithm not allowed")
    header = b64(json.dumps({"alg": "None", "typ": "JWT"}).encode())
    await assert_rejected(v, unsigned.replace(unsigned.split(".")[0], header), "algorithm not allowed")


async def test_no_hs_rs_confusion(keys: Keys) -> None:
    # Classic attack: sign HS256 with the RSA *public key* as the HMAC secret.
    pem = keys.rsa_pem().encode()
    forged_body = {"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE, "exp": 4102444800}
    import hashlib
    import hmac as hmac_mod

    signing_input = (
        b64(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode())
        + "."
        + b64(json.dumps(forged_body).encode())
    )
    sig = b64(hmac_mod.new(pem, signing_input.encode(), hashlib.sha256).digest())
    forged = signing_input + "." + sig
    # HS256 allowed with a real secret: the public key is never tried as one.
    v, _ = verifier(keys, IdP(keys.jwks()))
    await assert_rejected(v, forged, "signature")
    # HS256 allowed but no secret configured: no key at all.
    v2, _ = verifier(keys, IdP(keys.jwks()), hs_secret=None)
    await assert_rejected(v2, forged, "no key")
    # HS256 not allowed: refused before any key lookup.
    v3, _ = verifier(keys, IdP(keys.jwks()), algorithms=["RS256"])
    await assert_rejected(v3, forged, "algorithm not allowed")


async def test_key_family_mismatch_is_rejected(keys: Keys) -> None:
    # An ES256 header pointing at the RSA key must not verify with it (nor crash).
    v, _ = verifier(keys, IdP(keys.jwks()))
    token = keys.token(alg="ES256", kid="rsa-1")
    await assert_rejected(v, token, "unknown kid")


async def test_required_claims(keys: Keys) -> None:
    v, _ = verifier(keys, IdP(keys.jwks()), required_claims=["exp", "sub", "email"])
    await assert_rejected(v, keys.token(), "'email'")
    assert await v.verify(keys.token(email="a@x"))


async def test_pem_keys(keys: Keys) -> None:
    v = JwtVerifier(
        algorithms=["RS256"],
        issuers=[ISSUER],
        audiences=[AUDIENCE],
        key_source=StaticKeySource.from_pems([keys.rsa_pem()]),
    )
    assert (await v.verify(keys.token(kid=None)))["sub"] == "alice"
    await assert_rejected(v, keys.token(key=keys.rsa_other), "signature")


async def test_jwks_cached_and_refreshed_on_unknown_kid_at_a_bounded_rate(keys: Keys) -> None:
    idp = IdP({"keys": [k for k in keys.jwks()["keys"] if k["kid"] == "ec-1"]})
    v, source = verifier(keys, idp)
    assert source is not None
    assert await v.verify(keys.token(alg="ES256", kid="ec-1"))
    assert await v.verify(keys.token(alg="ES256", kid="ec-1"))
    assert idp.fetches == 1  # cached
    # The IdP rotates in rsa-1 (a while later): the first token with the new kid triggers one refresh.
    idp.jwks = keys.jwks()
    assert source._last_attempt is not None
    source._last_attempt -= 61
    assert await v.verify(keys.token(kid="rsa-1"))
    assert idp.fetches == 2
    # Forged kids cannot turn every request into a fetch: at most one per interval.
    for i in range(20):
        with pytest.raises(Unauthenticated):
            await v.verify(keys.token(kid=f"forged-{i}"))
    assert idp.fetches == 2


async def test_an_empty_jwks_is_no_key_and_refetched_at_a_bounded_rate(keys: Keys) -> None:
    idp = IdP({"keys": []})
    v, source = verifier(keys, idp)
    assert source is not None
    # An empty key set verifies nothing: the same 503 as an unreachable provider (readiness fails)
    with pytest.raises(ServiceUnavailable):
        await v.verify(keys.token(kid="rsa-1"))
    assert source.last_error is not None and "lists no usable signing key" in source.last_error
    idp.jwks = keys.jwks()
    with pytest.raises(ServiceUnavailable):  # within the interval: not fetched again
        await v.verify(keys.token(kid="rsa-1"))
    assert idp.fetches == 1
    source._last_attempt = -1e9  # the interval has passed
    assert await v.verify(keys.token(kid="rsa-1"))
    assert idp.fetches == 2


async def test_jwks_down_at_start_is_503_not_401(keys: Keys) -> None:
    idp = IdP(keys.jwks())
    idp.down = True
    v, _ = verifier(keys, idp)
    with pytest.raises(ServiceUnavailable):
        await v.verify(keys.token())


async def test_jwks_down_later_keeps_known_keys(keys: Keys) -> None:
    idp = IdP(keys.jwks())
    v, source = verifier(keys, idp)
    assert source is not None
    assert await v.verify(keys.token())
    idp.down = True
    source._fetched_at = -1e9  # the cache is stale: a refresh is due and fails
    source._last_attempt = -1e9
    assert await v.verify(keys.token())
    assert await v.verify(keys.token())
    assert idp.fetches == 2  # and a failing IdP is not hammered either


async def test_verification_cache_never_outlives_the_token(keys: Keys) -> None:
    idp = IdP(keys.jwks())
    v, _ = verifier(keys, idp, cache_ttl_sec=60, leeway_sec=5)
    short = keys.token(exp_in=10)
    long = keys.token("bob", exp_in=3600)
    assert (await v.verify(short))["sub"] == "alice"
    assert (await v.verify(long))["sub"] == "bob"
    untils = sorted(until for _, until in v._verified.values())
    claims_short = jwt.decode(short, options={"verify_signature": False})
    assert untils[0] <= claims_short["exp"] + 5  # bounded by exp + leeway
    assert untils[1] <= time.time() + 60  # bounded by the cache ttl
    # A tampered token is a different digest: verified (and rejected), not served from the cache.
    await assert_rejected(v, long[:-4] + ("AAAA" if not long.endswith("AAAA") else "BBBB"), "signature")
    # Expired entries are dropped and the token verified again (and rejected once expired).
    for digest, (claims, _) in list(v._verified.items()):
        v._verified[digest] = (claims, time.time() - 1)
    assert (await v.verify(long))["sub"] == "bob"


def hs_signed(payload: bytes, secret: bytes = HS_SECRET.encode()) -> str:
    """A token over exactly these payload bytes (so it may hold NaN, huge numbers, anything)."""
    import hashlib
    import hmac as hmac_mod

    signing_input = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + b64(payload)
    return signing_input + "." + b64(hmac_mod.new(secret, signing_input.encode(), hashlib.sha256).digest())


def claims_json(**time_claims: str) -> bytes:
    """Valid issuer, audience and subject; the time claims as raw JSON text."""
    base = {"sub": "alice", "iss": ISSUER, "aud": AUDIENCE}
    parts = [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in base.items()]
    parts += [f'"{k}":{v}' for k, v in time_claims.items()]
    return ("{" + ",".join(parts) + "}").encode()


@pytest.mark.parametrize(
    "raw",
    [
        "10" + "0" * 400,  # 10**400: the verification cache's float() overflowed (500)
        "1e300",
        "Infinity",
        "-Infinity",
        "NaN",
        '"9999999999"',  # a numeric string: pyjwt takes it, RFC 7519 does not
        '"4102444800"',
        "true",
        "null",
        "[4102444800]",
        '{"exp": 4102444800}',
        "-1",
        "253402300800",  # one second past 9999-12-31
    ],
)
@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
async def test_time_claims_must_be_numeric_dates(keys: Keys, claim: str, raw: str) -> None:
    v, _ = verifier(keys, cache_ttl_sec=60)
    times = {"exp": str(int(time.time()) + 600), claim: raw}
    with pytest.raises(Unauthenticated) as info:
        await v.verify(hs_signed(claims_json(**times)))
    assert info.value.status == 401
    assert repr(claim) in info.value.message or "invalid token" in info.value.message
    assert not v._verified


async def test_numeric_dates_may_be_fractional(keys: Keys) -> None:
    v, _ = verifier(keys)
    now = time.time()
    token = hs_signed(claims_json(exp=repr(now + 600.5), nbf=repr(now - 0.5), iat=repr(now - 1.25)))
    assert (await v.verify(token))["sub"] == "alice"


async def test_no_cached_verification_outlives_exp(keys: Keys) -> None:
    from .support import FakeClock

    clock = FakeClock()
    v, _ = verifier(keys, cache_ttl_sec=60, leeway_sec=0, clock=clock)
    token = hs_signed(claims_json(exp=str(int(time.time()) + 10)))
    assert await v.verify(token)
    assert await v.verify(token)  # from the cache
    clock.advance(11)
    with pytest.raises(Unauthenticated) as info:
        await v.verify(token)
    assert "expired" in info.value.message


def pem_and_jwks(keys: Keys, idp: IdP) -> tuple[JwtVerifier, JwksKeySource]:
    """As the app builds it: the PEM key (RSA) first, then the JWKS URL (which also has EC)."""
    http = httpx.AsyncClient(transport=httpx.MockTransport(idp.handler))
    jwks = JwksKeySource("https://id.example.test/jwks", http, min_refresh_interval_sec=60)
    source = CompositeKeySource([StaticKeySource.from_pems([keys.rsa_pem()]), jwks])
    v, _ = verifier(keys, key_source=source)
    return v, jwks


async def test_a_failing_jwks_does_not_block_pem_keys(keys: Keys) -> None:
    idp = IdP(keys.jwks())
    idp.down = True
    v, _ = pem_and_jwks(keys, idp)
    for _ in range(5):
        assert (await v.verify(keys.token("alice", kid=None)))["sub"] == "alice"
        assert (await v.verify(keys.token("alice", kid="rsa-1")))["sub"] == "alice"
    assert idp.fetches == 0  # the PEM key verified them: the JWKS URL was not even asked
    # HS tokens have their own secret.
    assert (await v.verify(keys.token("carol", alg="HS256", kid=None)))["sub"] == "carol"
    # A token only the JWKS could verify: 503 (the JWKS is down), not 401.
    with pytest.raises(ServiceUnavailable) as info:
        await v.verify(keys.token("bob", alg="ES256", kid="ec-1"))
    assert info.value.code == "auth_unavailable" and info.value.headers["Retry-After"]
    # Once the JWKS answers, it verifies too; the PEM key never stopped.
    idp.down = False
    v2, _ = pem_and_jwks(keys, idp)
    assert (await v2.verify(keys.token("bob", alg="ES256", kid="ec-1")))["sub"] == "bob"


async def test_an_unfetched_jwks_is_retried_at_a_bounded_rate(keys: Keys) -> None:
    idp = IdP(keys.jwks())
    idp.down = True
    v, jwks = pem_and_jwks(keys, idp)
    for _ in range(20):
        with pytest.raises(ServiceUnavailable):
            await v.verify(keys.token("bob", alg="ES256", kid="ec-1"))
    assert idp.fetches == 1  # not one fetch per request
    assert jwks._last_attempt is not None
    jwks._last_attempt -= 6  # past the retry interval of a never-fetched JWKS (5 s)
    idp.down = False
    assert (await v.verify(keys.token("bob", alg="ES256", kid="ec-1")))["sub"] == "bob"
    assert idp.fetches == 2


async def test_a_wrong_key_with_the_jwks_down_is_not_called_valid(keys: Keys) -> None:
    idp = IdP(keys.jwks())
    idp.down = True
    v, _ = pem_and_jwks(keys, idp)
    # Signed by a key neither source has: with the JWKS unknown it may have been its key (503);
    # never accepted.
    with pytest.raises(ServiceUnavailable):
        await v.verify(keys.token(key=keys.rsa_other, kid="rsa-1"))
    idp.down = False
    v2, _ = pem_and_jwks(keys, idp)
    await assert_rejected(v2, keys.token(key=keys.rsa_other, kid="rsa-1"), "signature")
