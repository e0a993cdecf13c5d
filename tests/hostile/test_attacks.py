"""A table of attacks on a running `vluna-bff serve`. Every case asserts its status and that
nothing reached Vluna: the emulator counted no call and the relay in front of it saw no byte.
Requests are written as raw bytes, so that no client library normalises the attack away."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import time
from dataclasses import dataclass, field

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.support.keys import AUDIENCE, ISSUER, UserKeys
from tests.support.ports import LOOPBACK

from .support import Target, exchange

OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _claims(**over: object) -> dict[str, object]:
    now = int(time.time())
    return {
        "sub": "mallory",
        "org_id": "evil",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
        **over,
    }


def _b64(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def forged(keys: UserKeys) -> str:
    return jwt.encode(_claims(), OTHER_KEY, algorithm="RS256")


def expired(keys: UserKeys) -> str:
    return keys.token("mallory", org="evil", exp_in=-120)


def alg_none(keys: UserKeys) -> str:
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims())}."


def alg_none_signed(keys: UserKeys) -> str:
    # A valid token's signature glued onto an alg:none header.
    good = keys.token("mallory", org="evil").split(".")
    return f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{good[1]}.{good[2]}"


def hs_with_public_key(keys: UserKeys) -> str:
    # Key confusion: HS256 "signed" with the service's own RSA public key as the HMAC secret.
    import hashlib
    import hmac

    header = _b64({"alg": "HS256", "typ": "JWT"})
    body = _b64(_claims())
    sig = hmac.new(keys.pem().encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


def wrong_issuer(keys: UserKeys) -> str:
    return jwt.encode(_claims(iss="https://evil.example/"), keys.key, algorithm="RS256")


def wrong_audience(keys: UserKeys) -> str:
    return jwt.encode(_claims(aud="someone-else"), keys.key, algorithm="RS256")


def not_yet_valid(keys: UserKeys) -> str:
    return jwt.encode(_claims(nbf=int(time.time()) + 3600), keys.key, algorithm="RS256")


def oversized(keys: UserKeys) -> str:
    # An attacker cannot sign with the trusted key: a huge forged token must be cheap to refuse.
    return jwt.encode(_claims(pad="A" * 60_000), OTHER_KEY, algorithm="RS256")


def oversized_header(keys: UserKeys) -> str:
    return f"{_b64({'alg': 'RS256', 'kid': 'k' * 50_000})}.{_b64(_claims())}.AAAA"


def tampered(keys: UserKeys) -> str:
    head, _body, sig = keys.token("alice", org="acme").split(".")
    return f"{head}.{_b64(_claims(sub='alice', org_id='victim-org'))}.{sig}"


def valid(keys: UserKeys) -> str:
    return keys.token("attacker", org="attacker-org")


def rs256_over(keys: UserKeys, payload: bytes) -> str:
    """Validly signed by the trusted key over exactly these payload bytes (NaN, 400-digit numbers,
    nesting: whatever a JSON parser might choke on)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    signing_input = f"{_b64({'alg': 'RS256', 'typ': 'JWT'})}.{_b64raw(payload)}"
    sig = keys.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64raw(sig)}"


def _b64raw(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_with(**raw: str) -> object:
    """A signed token whose claims are valid except for the given ones, written as raw JSON."""

    def make(keys: UserKeys) -> str:
        good = {k: json.dumps(v) for k, v in _claims(sub="claims", org_id="claims-org").items()}
        good.update(raw)
        return rs256_over(keys, ("{" + ",".join(f'"{k}":{v}' for k, v in good.items()) + "}").encode())

    return make


@dataclass
class Case:
    id: str
    method: str = "GET"
    path: str = "/vluna/token"
    token: object = None  # a function of the keys, or None
    cookie: bool = False
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    raw: bytes | None = None  # the whole request, as is ({auth} is replaced by the header)
    status: tuple[int, ...] = (401,)


def _hdr(case: Case, keys: UserKeys) -> list[tuple[str, str]]:
    out = list(case.headers)
    if case.token is not None:
        tok = case.token(keys)  # type: ignore[operator]
        if case.cookie:
            out.append(("Cookie", f"vluna_session={tok}"))
        else:
            out.append(("Authorization", f"Bearer {tok}"))
    return out


CSRF = ("X-Vluna-CSRF", "1")
JSON = ("Content-Type", "application/json")
P = "/vluna/api/v1"

CASES = [
    # -- JWTs ---------------------------------------------------------------------------------
    Case("no-credentials"),
    Case("garbage-bearer", headers=[("Authorization", "Bearer not.a.jwt")]),
    Case("basic-auth", headers=[("Authorization", "Basic " + base64.b64encode(b"a:b").decode())]),
    Case("forged-other-key", token=forged),
    Case("expired", token=expired),
    Case("alg-none", token=alg_none),
    Case("alg-none-with-signature", token=alg_none_signed),
    Case("hs256-with-public-key", token=hs_with_public_key),
    Case("wrong-issuer", token=wrong_issuer),
    Case("wrong-audience", token=wrong_audience),
    Case("not-yet-valid", token=not_yet_valid),
    Case("tampered-claims", token=tampered),
    Case("oversized-jwt", token=oversized, status=(400, 401, 431)),
    Case("oversized-jwt-header", token=oversized_header, status=(400, 401, 431)),
    Case("oversized-jwt-cookie", token=oversized, cookie=True, headers=[CSRF], status=(400, 401, 431)),
    Case("forged-on-proxy", path=f"{P}/catalog/products", token=forged),
    Case(
        "alg-none-on-proxy-write",
        method="POST",
        path=f"{P}/checkouts",
        token=alg_none,
        headers=[JSON],
        body=b"{}",
    ),
    Case("alg-none-delete", method="DELETE", token=alg_none),
    # -- claim values (validly signed by the trusted key) -----------------------------------
    Case("exp-10-pow-400", token=claims_with(exp="1" + "0" * 400)),
    Case("exp-numeric-string", token=claims_with(exp='"9999999999"')),
    Case("exp-true", token=claims_with(exp="true")),
    Case("exp-nan", token=claims_with(exp="NaN")),
    Case("exp-infinity", token=claims_with(exp="Infinity")),
    Case("exp-1e308", token=claims_with(exp="1e308")),
    Case("exp-null", token=claims_with(exp="null")),
    Case("exp-array", token=claims_with(exp="[9999999999]")),
    Case("nbf-10-pow-400", token=claims_with(nbf="1" + "0" * 400)),
    Case("nbf-string", token=claims_with(nbf='"0"')),
    Case("iat-in-the-future", token=claims_with(iat="9999999999")),
    Case("iat-object", token=claims_with(iat='{"t": 1}')),
    Case("claim-with-4500-digits", token=claims_with(org_id="9" * 4500), status=(400, 401, 431)),
    Case("claim-nested-3000-deep", token=claims_with(x="[" * 3000 + "]" * 3000), status=(400, 401, 431)),
    Case("sub-object", token=claims_with(sub='{"id": 1}')),
    Case("iss-list", token=claims_with(iss=json.dumps([ISSUER]))),
    Case("aud-object", token=claims_with(aud=json.dumps({"aud": AUDIENCE}))),
    Case("payload-not-an-object", token=lambda keys: rs256_over(keys, b"[1, 2, 3]")),
    Case("payload-not-json", token=lambda keys: rs256_over(keys, b"\xff\xfe not json")),
    Case("org-id-huge-int", token=claims_with(org_id="1" + "0" * 300), status=(403,)),
    Case("exp-numeric-string-on-proxy", path=f"{P}/wallet/balance", token=claims_with(exp='"9999999999"')),
    Case("exp-nan-cookie", token=claims_with(exp="NaN"), cookie=True, headers=[("X-Vluna-CSRF", "1")]),
    # -- cookies and CSRF ---------------------------------------------------------------------
    Case("cookie-without-csrf-header", token=valid, cookie=True, status=(403,)),
    Case(
        "cookie-with-wrong-csrf-value",
        token=valid,
        cookie=True,
        headers=[("X-Vluna-CSRF", "0")],
        status=(403,),
    ),
    Case(
        "cookie-without-csrf-on-proxy-write",
        method="POST",
        path=f"{P}/checkouts",
        token=valid,
        cookie=True,
        headers=[JSON],
        body=b"{}",
        status=(403,),
    ),
    Case("cookie-delete-without-csrf", method="DELETE", token=valid, cookie=True, status=(403,)),
    Case("forged-cookie-with-csrf", token=forged, cookie=True, headers=[CSRF]),
    # Two session cookies (one tossed in by a sibling domain): which is the user's? Refused.
    Case(
        "two-session-cookies-two-headers",
        token=valid,
        cookie=True,
        headers=[CSRF, ("Cookie", "vluna_session={other-valid}")],
        status=(400,),
    ),
    Case(
        "two-session-cookies-one-header",
        headers=[CSRF, ("Cookie", "theme=dark; vluna_session={other-valid}; vluna_session={valid}")],
        status=(400,),
    ),
    Case(
        "two-session-cookies-same-value",
        headers=[CSRF, ("Cookie", "vluna_session={valid};vluna_session={valid}")],
        status=(400,),
    ),
    Case(
        "two-session-cookies-one-empty",
        headers=[CSRF, ("Cookie", "vluna_session=; vluna_session={valid}")],
        status=(400,),
    ),
    Case(
        "two-session-cookies-on-proxy-write",
        method="POST",
        path=f"{P}/checkouts",
        headers=[CSRF, JSON, ("Cookie", "vluna_session={valid}; vluna_session={other-valid}")],
        body=b"{}",
        status=(400,),
    ),
    # -- proxy paths: traversal and encoding tricks -------------------------------------------
    Case("dotdot-to-mgt", path=f"{P}/../../../mgt/v1/token/issue", token=valid, status=(400, 404)),
    Case("dotdot-in-route", path=f"{P}/checkouts/../catalog/products", token=valid, status=(400,)),
    Case("encoded-dotdot", path=f"{P}/checkouts/%2e%2e/%2e%2e/mgt/v1/meters", token=valid, status=(400, 404)),
    Case("encoded-slash-in-id", path=f"{P}/checkouts/a%2F..%2F..%2Fmgt", token=valid, status=(400, 404)),
    Case("double-encoded", path=f"{P}/checkouts/%252e%252e%252fmgt", token=valid, status=(400, 404)),
    Case("backslash", path=f"{P}/checkouts/..\\..\\mgt", token=valid, status=(400, 404)),
    Case("nul-byte", path=f"{P}/checkouts/abc%00def", token=valid, status=(400, 404)),
    Case("overlong-utf8-dot", path=f"{P}/checkouts/%c0%ae%c0%ae", token=valid, status=(400, 404)),
    Case("empty-segment", path=f"{P}//catalog/products", token=valid, status=(400,)),
    Case("encoded-prefix", path="/vluna/api/v1%2fcatalog/products", token=valid, status=(400, 404)),
    Case("case-changed-prefix", path="/vluna/API/v1/catalog/products", token=valid, status=(400, 404)),
    Case("matrix-params", path=f"{P}/catalog/products;jsessionid=x", token=valid, status=(400, 404)),
    Case("not-allowlisted", path=f"{P}/meters", token=valid, status=(404,)),
    Case("mgt-by-name", path=f"{P}/mgt/v1/token/issue", token=valid, status=(404,)),
    Case("emulator-controls", path=f"{P}/__emulator__/counters", token=valid, status=(400, 404)),
    Case("method-not-allowed", method="DELETE", path=f"{P}/catalog/products", token=valid, status=(404, 405)),
    Case(
        "absolute-uri-target",
        raw=b"GET http://evil.example/mgt/v1/token/issue HTTP/1.1\r\nHost: x\r\n"
        b"{auth}Connection: close\r\n\r\n",
        status=(400, 404),
    ),
    Case("long-path", path=f"{P}/checkouts/" + "a" * 5000, token=valid, status=(400, 404, 414)),
    Case("long-query", path=f"{P}/catalog/products?limit=" + "9" * 5000, token=valid, status=(400, 414)),
    # -- header smuggling ---------------------------------------------------------------------
    # (Smuggling cases carry no credential: whatever the parser makes of them, the answer is one
    # 400 or 401, never a second response, and nothing is forwarded.)
    Case(
        "crlf-obs-fold",
        raw=b"GET /vluna/token HTTP/1.1\r\nHost: x\r\nX-A: a\r\n"
        b" Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        status=(400, 401),
    ),
    Case(
        "crlf-in-auth-header",
        raw=b"GET /vluna/token HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a\r\n"
        b" \r\nX-Realm-Id: realm_demo\r\nConnection: close\r\n\r\n",
        status=(400, 401),
    ),
    Case(
        "bare-lf-header-injection",
        raw=b"GET /vluna/token HTTP/1.1\r\nHost: x\r\nX-A: a\nX-Realm-Id: other\r\nConnection: close\r\n\r\n",
        status=(400, 401),
    ),
    Case(
        "duplicate-content-length",
        raw=b"POST " + P.encode() + b"/checkouts HTTP/1.1\r\nHost: x\r\n{auth}"
        b"Content-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 40\r\n"
        b"Connection: close\r\n\r\n{}",
        status=(400,),
    ),
    Case(
        "content-length-and-chunked",
        raw=b"POST " + P.encode() + b"/checkouts HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n0\r\n\r\nGET /mgt/v1/meters HTTP/1.1\r\n\r\n",
        status=(400, 401),
    ),
    Case(
        "chunked-smuggle-keepalive",
        raw=b"POST /vluna/token HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /__emulator__/counters HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n",
        # RFC 9112 6.3: refused (400), or framed by Transfer-Encoding alone (the server drops the
        # Content-Length; here POST is then 405); either way answered once and the connection
        # closed, so the rest is never parsed.
        status=(400, 405),
    ),
    Case(
        "negative-content-length",
        raw=b"POST " + P.encode() + b"/checkouts HTTP/1.1\r\nHost: x\r\n{auth}"
        b"Content-Type: application/json\r\nContent-Length: -1\r\nConnection: close\r\n\r\n",
        status=(400,),
    ),
    Case(
        "internal-headers-unauthenticated",
        headers=[
            ("X-Realm-Id", "realm_demo"),
            ("X-Principal-Id", "org:victim"),
            ("X-User-Id", "victim"),
            ("X-Billing-Account-ID", "ba_victim"),
            ("X-Vluna-Service-Auth", "SVC-AUTH forged"),
            ("X-Forwarded-For", "127.0.0.1"),
            ("X-Forwarded-Host", "internal"),
        ],
    ),
    Case(
        "internal-headers-on-proxy",
        path=f"{P}/catalog/products",
        headers=[
            ("Authorization", "Bearer forged"),
            ("X-Realm-Id", "realm_demo"),
            ("X-Billing-Account-ID", "ba_x"),
        ],
    ),
    Case(
        "two-authorization-headers",
        headers=[("Authorization", "Bearer junk")],
        token=valid,
        status=(400,),
    ),
    Case(
        "two-valid-authorization-headers",
        headers=[("Authorization", "Bearer " + "{other-valid}")],
        token=valid,
        status=(400,),
    ),
    Case(
        "get-with-body",
        path=f"{P}/catalog/products",
        token=valid,
        headers=[JSON],
        body=b'{"a":1}',
        status=(400,),
    ),
    # -- JSON bodies --------------------------------------------------------------------------
    Case(
        "huge-json",
        method="POST",
        path=f"{P}/checkouts",
        token=valid,
        headers=[JSON],
        body=b'{"a":"' + b"x" * 200_000 + b'"}',
        status=(413,),
    ),
    Case(
        "deeply-nested-json",
        method="POST",
        path=f"{P}/checkouts",
        token=valid,
        headers=[JSON],
        body=b"[" * 8000 + b"]" * 8000,
        status=(400,),
    ),
    Case(
        "deeply-nested-object",
        method="POST",
        path=f"{P}/checkouts",
        token=valid,
        headers=[JSON],
        body=b'{"a":' * 2000 + b"1" + b"}" * 2000,
        status=(400,),
    ),
    Case(
        "invalid-json",
        method="POST",
        path=f"{P}/checkouts",
        token=valid,
        headers=[JSON],
        body=b'{"a": ',
        status=(400,),
    ),
    Case(
        "json-array-not-object",
        method="POST",
        path=f"{P}/checkouts",
        token=valid,
        headers=[JSON],
        body=b"[1,2]",
        status=(400,),
    ),
    Case(
        "not-json-content-type",
        method="POST",
        path=f"{P}/checkouts",
        token=valid,
        headers=[("Content-Type", "text/plain")],
        body=b"{}",
        status=(415,),
    ),
    Case(
        "bad-idempotency-key",
        method="POST",
        path=f"{P}/checkouts",
        token=valid,
        headers=[JSON, ("Idempotency-Key", "a b\tc")],
        body=b"{}",
        status=(400,),
    ),
    # -- bounded observability (tests/hostile/test_observability_bounds.py for the series) ---------
    Case("junk-method-1500-bytes", method="Q" * 1500, status=(400, 404, 405)),
    Case("junk-method-on-proxy", method="PROPFIND", path=f"{P}/catalog/products", token=valid, status=(405,)),
    Case("lower-case-method", method="get", path=f"{P}/catalog/products", token=valid, status=(404, 405)),
    Case("scopes-not-allowed", path="/vluna/token?scopes=admin,mgt", token=valid, status=(400,)),
    Case("scopes-too-long", path="/vluna/token?scopes=" + "checkout," * 100, token=valid, status=(400,)),
]


def build(case: Case, keys: UserKeys) -> bytes:
    if case.raw is not None:
        auth = b""
        if b"{auth}" in case.raw:
            auth = f"Authorization: Bearer {valid(keys)}\r\n".encode()
        return case.raw.replace(b"{auth}", auth)
    lines = [f"{case.method} {case.path} HTTP/1.1", f"Host: {LOOPBACK}"]
    # {valid} and {other-valid}: tokens of two different signed-in users, placed by the case.
    fill = {"{valid}": valid(keys), "{other-valid}": keys.token("victim", org="victim-org")}
    for k, v in _hdr(case, keys):
        for name, token in fill.items():
            v = v.replace(name, token)
        lines.append(f"{k}: {v}")
    if case.body or case.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(case.body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + case.body


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id) for c in CASES],
)
def test_attack(target: Target, case: Case) -> None:
    before = target.upstream_marks()
    status, raw = exchange(target.bff.port, build(case, target.keys))
    assert status in case.status, (status, raw[:600])
    assert status < 500, raw[:600]
    assert raw.count(b"HTTP/1.1 ") == 1, "a second (smuggled) request was answered"
    _head, _, body = raw.partition(b"\r\n\r\n")
    # Error answers carry no secret and no echo of the credential (no JWT at all: every JWT, the
    # caller's or a platform token, begins with a base64 '{"').
    assert b"Traceback" not in body and b"BEGIN PUBLIC KEY" not in body
    assert b"eyJ" not in raw, raw[:600]
    if b"content-type: application/json" in _head.lower():
        error = json.loads(body)
        assert set(error) == {"error", "message"} and error["error"] and error["message"], body[:600]
    else:
        # Only requests the HTTP server itself cannot parse are answered by it (as plain text),
        # and it closes the connection after them.
        assert status == 400 and b"connection: close" in _head.lower(), raw[:600]
    # Nothing reached Vluna.
    assert target.upstream_marks() == before


def test_the_relay_does_count(target: Target) -> None:
    """The zero-upstream assertions above can fail: an ordinary proxied call is seen."""
    before = target.upstream_marks()
    h = {"Authorization": f"Bearer {target.keys.token('counted', org='counted')}"}
    import httpx

    r = httpx.get(f"{target.bff.url}{P}/wallet/balance", headers=h, timeout=10)
    assert r.status_code < 500
    calls, sent = target.upstream_marks()
    assert calls > before[0] and sent > before[1]


def test_slow_clients_do_not_starve_others(target: Target) -> None:
    """50 slowloris connections (headers trickled, never finished) and 20 stalled bodies: ordinary
    requests still answer while those connections are held, and none of it reaches Vluna."""
    import httpx

    before = target.upstream_marks()
    slow: list[socket.socket] = []
    try:
        for i in range(50):
            s = socket.create_connection((LOOPBACK, target.bff.port), timeout=5)
            s.sendall(b"GET /vluna/token HTTP/1.1\r\nHost: x\r\nX-Slow-" + str(i).encode() + b": ")
            slow.append(s)
        auth = f"Authorization: Bearer {valid(target.keys)}\r\n".encode()
        for _ in range(20):
            s = socket.create_connection((LOOPBACK, target.bff.port), timeout=5)
            s.sendall(
                b"POST "
                + P.encode()
                + b"/checkouts HTTP/1.1\r\nHost: x\r\n"
                + auth
                + b'Content-Type: application/json\r\nContent-Length: 5000\r\n\r\n{"a":'
            )
            slow.append(s)
        for _ in range(3):  # trickle a byte on each, as a slowloris does
            for s in slow:
                with contextlib.suppress(OSError):
                    s.sendall(b"a")
            # Answered while the slow clients hold their connections (they are closed only at
            # the 10 s header/body read timeouts, so an answer here did not wait for them).
            r = httpx.get(f"{target.bff.url}/vluna/token", timeout=8)
            assert r.status_code == 401
            time.sleep(0.2)
    finally:
        for s in slow:
            s.close()
    assert target.upstream_marks() == before
