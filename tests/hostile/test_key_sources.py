"""Key sources: with a JWKS URL and a PEM key configured, whatever the JWKS URL does (refuse
connections, hang, answer garbage) PEM-signed tokens are answered as if it were healthy, without
the service even asking it; tokens only the JWKS could verify get 503 with Retry-After (never a
401 that signs the user out, never a 500); nothing reaches Vluna for any of it."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support.keys import AUDIENCE, ISSUER, UserKeys
from tests.support.ports import LOOPBACK

from .support import Target, serving

EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_KID = "idp-ec-1"


class IdP:
    """The identity provider's JWKS endpoint on loopback, in one of four moods."""

    def __init__(self) -> None:
        self.mode = "refuse"
        self.requests = 0
        idp = self
        public = jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key(), as_dict=True)
        self.jwks = {"keys": [{**public, "kid": EC_KID, "use": "sig", "alg": "ES256"}]}

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                idp.requests += 1
                if idp.mode == "hang":
                    time.sleep(30)
                    return
                body = b"<html>not json" if idp.mode == "garbage" else json.dumps(idp.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False  # a hanging answer must not hold up the teardown
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        # "refuse": nothing listens on this port while the mode says so.
        self._refusing = socket.socket()
        self._refusing.bind((LOOPBACK, 0))
        self.refuse_port = int(self._refusing.getsockname()[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._refusing.close()


def ec_token(sub: str = "idp-user") -> str:
    now = int(time.time())
    claims = {"sub": sub, "org_id": "idp-org", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
    return jwt.encode(claims, EC_KEY, algorithm="ES256", headers={"kid": EC_KID})


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    server = IdP()
    try:
        yield server
    finally:
        server.close()


def start(keys: UserKeys, jwks_url: str) -> Any:
    auth = {"jwt": {"jwks_url": jwks_url, "algorithms": ["RS256", "ES256"], "leeway_sec": 5}}
    return serving(keys, auth=auth)


def get(t: Target, token: str) -> httpx.Response:
    return httpx.get(f"{t.bff.url}/vluna/token", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def unavailable(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "auth_unavailable" and int(r.headers["retry-after"]) >= 1


def test_a_refusing_jwks_url_does_not_block_pem_keys(user_keys: UserKeys, idp: IdP) -> None:
    """The reported case: the JWKS URL unreachable, a PEM key configured too."""
    with start(user_keys, f"http://{LOOPBACK}:{idp.refuse_port}/jwks") as t:
        for i in range(5):
            assert get(t, user_keys.token(f"pem-{i}", org="pem")).status_code == 200
        marks = t.upstream_marks()
        unavailable(get(t, ec_token()))
        assert t.upstream_marks() == marks


@pytest.fixture(scope="module")
def behind_idp(user_keys: UserKeys, idp: IdP) -> Iterator[Target]:
    """One service for the tests below, in order: its JWKS is never fetched until "ok"."""
    with start(user_keys, f"http://{LOOPBACK}:{idp.port}/jwks") as t:
        yield t


@pytest.mark.parametrize("mode", ["hang", "garbage"])
def test_a_sick_jwks_url_is_not_even_asked_for_pem_tokens(
    user_keys: UserKeys, idp: IdP, behind_idp: Target, mode: str
) -> None:
    idp.mode = mode
    t = behind_idp
    before = idp.requests
    for i in range(5):
        assert get(t, user_keys.token(f"{mode}-{i}", org=mode)).status_code == 200
    assert idp.requests == before
    marks = t.upstream_marks()
    # Only the JWKS could verify this one: 503, and a failing URL is not asked on every request.
    for _ in range(4):
        unavailable(get(t, ec_token()))
    assert idp.requests - before <= 2
    assert t.upstream_marks() == marks


def test_when_the_jwks_url_answers_both_sources_verify(
    user_keys: UserKeys, idp: IdP, behind_idp: Target
) -> None:
    idp.mode = "ok"
    t = behind_idp
    # A never-fetched JWKS is tried again at most every 5 s: wait for it to be asked.
    deadline = time.monotonic() + 30
    while (r := get(t, ec_token("from-idp"))).status_code == 503 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert r.status_code == 200, r.text
    assert get(t, user_keys.token("from-pem", org="pem")).status_code == 200
    # Known keys outlive an IdP that goes away later; a forged token is a plain 401.
    idp.mode = "garbage"
    assert get(t, ec_token("from-idp-2")).status_code == 200
    forged = jwt.encode(
        {"sub": "m", "iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600},
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
        headers={"kid": EC_KID},
    )
    marks = t.upstream_marks()
    r = get(t, forged)
    assert r.status_code == 401 and r.json()["error"] == "unauthenticated"
    assert t.upstream_marks() == marks
