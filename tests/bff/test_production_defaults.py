"""The defaults are production-safe, and the one unsafe choice left to an operator (the in-process
cache outside dev mode) is named at start-up, in `/readyz` and by `check-config`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bff.auth.identity import Identity
from bff.cli import main
from bff.dev import create_dev_app
from bff.principals import PrincipalMapper
from bff.settings import Settings, SettingsError, load_settings
from tests.support.asgi import asgi_transport
from tests.support.ports import free_port
from tests.support.processes import stop
from tests.support.service import spawn_serve

from .support import ENC_KEY_1, HMAC_KEY, SERVICE_SECRET, FakeIssuer, Keys, client_for, make_settings

SECRETS = {
    "VLUNA_BFF__VLUNA__SERVICE_KEY_SECRET": SERVICE_SECRET,
    "VLUNA_BFF__CACHE__ENCRYPTION_KEYS": f'["{ENC_KEY_1}"]',
    "VLUNA_BFF__CACHE__HMAC_KEY": HMAC_KEY,
}
# What the operator wrote: realm, key id, JWKS URL, issuer, audience (secrets from env).
SIX_LINES: dict[str, dict[str, Any]] = {
    "vluna": {"realm_id": "realm_prod", "service_key_id": "pk-prod"},
    "auth": {
        "jwt": {
            "jwks_url": "https://login.example.test/.well-known/jwks.json",
            "issuer": "https://login.example.test/",
            "audience": ["my-app"],
        }
    },
}
MEMORY_WARNING = "cache.backend: memory"


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    cfg = tmp_path / "bff.yaml"
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def test_a_short_production_config_gets_the_redis_cache_or_a_named_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(write(tmp_path, SIX_LINES), environ=SECRETS)
    assert {field for field, _ in err.value.problems} == {"cache.redis.url"}

    data = {**SIX_LINES, "cache": {"redis": {"url": "redis://redis.internal:6379/0"}}}
    settings = load_settings(write(tmp_path, data), environ=SECRETS)
    assert settings.cache.backend == "redis"
    assert settings.auth.methods == ["bearer", "cookie"]
    assert [(r.claim, r.template) for r in settings.mapping.principal] == [
        ("org_id", "org:{value}"),
        ("sub", "user:{value}"),
    ]
    assert settings.mapping.traits == {"email": "email", "name": "name"}


async def test_a_member_of_an_organisation_is_billed_to_it_by_default() -> None:
    mapper = PrincipalMapper(Settings().mapping)
    bob = await mapper.map(
        Identity(claims={"sub": "bob", "org_id": "globex", "email": "b@g.test"}, method="bearer")
    )
    assert (bob.principal_id, bob.user_id, dict(bob.traits)) == ("org:globex", "bob", {"email": "b@g.test"})
    solo = await mapper.map(Identity(claims={"sub": "sol"}, method="bearer"))
    assert (solo.principal_id, solo.user_id) == ("user:sol", "sol")


def test_check_config_warns_about_the_memory_cache(
    tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]
) -> None:
    memory = {**SIX_LINES, "cache": {"backend": "memory"}}
    assert main(["check-config", "--config", str(write(tmp_path, memory))]) == 0
    out = capsys.readouterr().out
    assert out.startswith("configuration OK with 1 warning(s)")
    assert f"warning: {MEMORY_WARNING}" in out

    redis = {**SIX_LINES, "cache": {"redis": {"url": "redis://127.0.0.1:6379/0"}}}
    assert main(["check-config", "--config", str(write(tmp_path, redis))]) == 0
    out = capsys.readouterr().out
    assert "warning" not in out


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)


async def test_readyz_lists_the_memory_cache_warning_without_failing(keys: Keys) -> None:
    settings = make_settings(
        keys, cache={"backend": "memory"}, observability={"readiness": {"check_vluna": False}}
    )
    async with client_for(settings, FakeIssuer()) as client:
        r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready"
    [warning] = r.json()["warnings"]
    assert warning.startswith(MEMORY_WARNING)


async def test_readyz_has_no_warning_in_dev_mode() -> None:
    """One process on a laptop: the in-process cache is the right choice there."""
    overrides = {"dev": {"enabled": True}, "cache": {"backend": "memory"}}
    dev = create_dev_app(load_settings(None, environ={}, overrides=overrides))
    async with (
        dev.app.lifespan(),
        httpx.AsyncClient(transport=asgi_transport(dev.app), base_url="http://127.0.0.1") as client,
    ):
        body = (await client.get("/readyz")).json()
    assert "warnings" not in body and body["checks"]["redis"] == "not_used"


def test_serve_logs_the_memory_cache_warning_at_start(tmp_path: Path, keys: Keys) -> None:
    memory = {**SIX_LINES, "cache": {"backend": "memory"}}
    memory["auth"] = {
        "jwt": {**SIX_LINES["auth"]["jwt"], "jwks_url": None, "public_keys_pem": [keys.rsa_pem()]}
    }
    cfg = write(tmp_path, memory)
    log = tmp_path / "serve.log"
    with log.open("w") as err:
        proc = spawn_serve(
            cfg, free_port(), {**SECRETS, "VLUNA_BFF__OBSERVABILITY__READINESS__CHECK_VLUNA": "false"}, err
        )
        try:
            deadline = time.monotonic() + 60
            while MEMORY_WARNING not in log.read_text():
                assert proc.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "no warning logged at start"
                time.sleep(0.1)
        finally:
            stop(proc, timeout=15)
    line = next(line for line in log.read_text().splitlines() if MEMORY_WARNING in line)
    assert '"level": "warning"' in line
