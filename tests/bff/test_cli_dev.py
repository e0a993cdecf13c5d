"""`vluna-bff check-config`, `serve` guards, and `dev` (emulator embedded, dev sign-in)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bff.cli import main
from bff.dev import DevRuntime, DevSignIn, create_dev_app
from bff.settings import DevSettings, load_settings
from tests.support.asgi import asgi_transport
from tests.support.ports import free_port
from tests.support.processes import REPO, stop

from .support import ENC_KEY_1, HMAC_KEY, SERVICE_SECRET, Keys, base_settings, client_for, make_settings


def test_check_config_prints_redacted(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bff.yaml"
    cfg.write_text(yaml.safe_dump(base_settings(keys)))
    assert main(["check-config", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "configuration OK" in out and "realm_test" in out
    for secret in (SERVICE_SECRET, HMAC_KEY, ENC_KEY_1.split(":")[1]):
        assert secret not in out
    assert "**********" in out


def test_check_config_names_bad_fields(
    tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    data = base_settings(keys)
    data["vluna"]["realm_id"] = None
    data["tokens"] = {"session_ttl_sec": 5}
    cfg = tmp_path / "bff.yaml"
    cfg.write_text(yaml.safe_dump(data))
    assert main(["check-config", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "tokens.session_ttl_sec" in err


def test_serve_refuses_dev_mode(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "bff.yaml"
    cfg.write_text(yaml.safe_dump(base_settings(keys, dev={"enabled": True})))
    assert main(["serve", "--config", str(cfg)]) == 2
    assert "vluna-bff dev" in capsys.readouterr().err


def test_dev_refuses_non_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dev", "--host", "0.0.0.0"]) == 2
    assert "loopback" in capsys.readouterr().err


@asynccontextmanager
async def dev_client() -> AsyncIterator[tuple[httpx.AsyncClient, DevRuntime]]:
    settings = load_settings(REPO / "config/bff.dev.yaml", environ={}, overrides={"dev": {"enabled": True}})
    runtime = create_dev_app(settings)
    async with (
        runtime.app.lifespan(),
        httpx.AsyncClient(transport=asgi_transport(runtime.app), base_url="http://127.0.0.1") as client,
    ):
        yield client, runtime


async def test_dev_sign_in_then_token_from_the_embedded_emulator() -> None:
    async with dev_client() as (client, runtime):
        r = await client.get("/dev/login", params={"user": "alice", "org": "acme"})
        assert r.status_code == 200
        token = r.json()["token"]
        assert "vluna_session" in r.headers["set-cookie"] and "HttpOnly" in r.headers["set-cookie"]
        r = await client.get("/vluna/token", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        body = r.json()
        # The cookie path works too (the cookie /dev/login set, with the anti-forgery header) and
        # hits the cache. (Setting a second vluna_session would be refused as ambiguous.)
        assert [c.value for c in client.cookies.jar if c.name == "vluna_session"] == [token]
        r2 = await client.get("/vluna/token", headers={"X-Vluna-CSRF": "1"})
        assert r2.json()["access_token"] == body["access_token"]
        assert runtime.emulator.calls("issue_platform_token") == 1
        jwks = (await client.get("/dev/jwks.json")).json()
        assert jwks["keys"][0]["kid"] == runtime.signin.kid and "d" not in jwks["keys"][0]
        bad = await client.get("/dev/login", params={"user": "<script>"})
        assert bad.status_code == 400


async def test_dev_tokens_are_not_trusted_outside_dev_mode(keys: Keys) -> None:
    signin = DevSignIn(DevSettings(enabled=True))
    dev_token = signin.mint("alice", "acme")
    from .support import FakeIssuer

    async with client_for(make_settings(keys), FakeIssuer()) as client:
        r = await client.get("/vluna/token", headers={"Authorization": f"Bearer {dev_token}"})
        assert r.status_code == 401


def start_dev(port: int) -> subprocess.Popen[Any]:
    return subprocess.Popen(
        [sys.executable, "-m", "bff.cli", "dev", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def test_vluna_bff_dev_command_end_to_end() -> None:
    port = free_port()
    proc = start_dev(port)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            for _ in range(400):
                assert proc.poll() is None, "vluna-bff dev exited"
                try:
                    r = await client.get("/dev/login", params={"user": "alice", "org": "acme"})
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("vluna-bff dev never answered")
            token = r.json()["token"]
            r = await client.get("/vluna/token", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200 and r.json()["token_type"] == "Bearer"
            r = await client.delete("/vluna/token", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 204
    finally:
        stop(proc)
