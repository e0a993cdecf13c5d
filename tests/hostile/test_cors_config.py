"""CORS configuration: origins are exact `scheme://host[:port]`; `*`, wildcards, `null` and
forms a browser never sends are refused when the configuration is loaded (check-config and
serve, naming the field, never echoing it back when it holds a password); on a running service,
only the listed origin, byte for byte, gets a grant, and look-alikes get no credentials."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import httpx
import pytest

from tests.support.keys import UserKeys
from tests.support.ports import free_port
from tests.support.processes import PY, REPO
from tests.support.service import bff_config, write_config

from .support import Target, serving

ALLOWED = "https://app.example.test"
BAD = [
    "*",
    "https://*.example.test",
    "null",
    "https://app.example.test/",
    "https://app.example.test/path",
    "https://APP.example.test",
    "https://app.example.test:443",
    "app.example.test",
    "https://user:origin-password-7@app.example.test",
]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-m", "bff.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=120, check=False
    )


def test_check_config_names_every_bad_origin(user_keys: UserKeys) -> None:
    data = bff_config("http://127.0.0.1:9", user_keys.pem(), server={"cors_allow_origins": [ALLOWED, *BAD]})
    cfg = write_config(data)
    try:
        out = cli("check-config", "--config", str(cfg))
    finally:
        cfg.unlink()
    assert out.returncode != 0
    text = out.stdout + out.stderr
    for i in range(1, len(BAD) + 1):
        assert f"server.cors_allow_origins[{i}]" in text
    assert "server.cors_allow_origins[0]" not in text
    assert "'*'" in text and "origin-password-7" not in text
    assert "Traceback" not in text


def test_serve_refuses_to_start_with_a_wildcard(user_keys: UserKeys) -> None:
    data = bff_config("http://127.0.0.1:9", user_keys.pem(), server={"cors_allow_origins": ["*"]})
    cfg = write_config(data)
    try:
        out = cli("serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(free_port()))
    finally:
        cfg.unlink()
    assert out.returncode != 0
    assert "server.cors_allow_origins[0]" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr


@pytest.fixture(scope="module")
def cors(user_keys: UserKeys) -> Iterator[Target]:
    with serving(user_keys, server={"cors_allow_origins": [ALLOWED, "http://localhost:5173"]}) as t:
        yield t


LOOKALIKES = [
    "https://evil.test",
    "null",
    "https://app.example.test.evil.test",
    "https://evilapp.example.test",
    "https://APP.example.test",
    "https://app.example.test:443",
    "https://app.example.test:8443",
    "http://app.example.test",
    "https://app.example.test/",
    "http://localhost:5174",
    "http://localhost",
    ALLOWED + "," + "https://evil.test",
]


def grants(r: httpx.Response) -> dict[str, str]:
    return {k: v for k, v in r.headers.items() if k.startswith("access-control-allow-")}


@pytest.mark.parametrize("origin", LOOKALIKES)
def test_look_alike_origins_get_no_grant(cors: Target, origin: str) -> None:
    marks = cors.upstream_marks()
    token = cors.keys.token("mallory", org="evil")
    with httpx.Client(base_url=cors.bff.url, timeout=20) as c:
        simple = c.get("/vluna/token", headers={"Origin": origin, "Cookie": "vluna_session=forged.a.b"})
        assert simple.status_code == 403  # and the cookie without the anti-forgery header
        assert grants(simple) == {}
        preflight = c.options(
            "/vluna/api/v1/checkouts",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-vluna-csrf, content-type",
            },
        )
        assert preflight.status_code < 500
        assert "access-control-allow-origin" not in preflight.headers
        assert "access-control-allow-credentials" not in preflight.headers
        bad_bearer = c.get("/vluna/token", headers={"Origin": origin, "Authorization": f"Bearer {token}x"})
        assert bad_bearer.status_code == 401 and grants(bad_bearer) == {}
    assert cors.upstream_marks() == marks


def test_the_listed_origin_gets_its_grant(cors: Target) -> None:
    with httpx.Client(base_url=cors.bff.url, timeout=20) as c:
        r = c.get("/vluna/token", headers={"Origin": ALLOWED})
        assert r.status_code == 401
        assert r.headers["access-control-allow-origin"] == ALLOWED
        assert r.headers["access-control-allow-credentials"] == "true"
        preflight = c.options(
            "/vluna/token",
            headers={"Origin": "http://localhost:5173", "Access-Control-Request-Method": "DELETE"},
        )
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:5173"
        assert preflight.headers["access-control-allow-credentials"] == "true"
