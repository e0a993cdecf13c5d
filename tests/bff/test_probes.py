"""Start-up and on-demand probes (bff/probes.py) against real things: a private redis-server with
ACL users, the emulator process (a signed call with right and wrong keys), HTTP servers on
loopback serving JWKS and discovery documents, ports where nothing listens. Then the CLI:
`check-config --probe` and `serve --strict-startup`.

Every failure must be one line naming the address, what was tried and the cause, without a secret.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web

from bff.principals import Principal
from bff.probes import ProbeLine, _exercise, probe_identity_provider, probe_redis, probe_vluna
from bff.settings import Settings
from tests.support.emulator import EMULATOR_SECRET, Emulator, start_emulator
from tests.support.ports import free_port
from tests.support.processes import REPO, Proc
from tests.support.redis_servers import start_redis
from tests.support.service import bff_config, write_config

from .support import DOCUMENTED_ACL, FakeIssuer, Keys, make_settings, redis_settings, running_services

PASSWORD = "probe-password-never-printed-7f3a"


def test_the_documented_acl_is_the_one_tested() -> None:
    text = (REPO / "docs" / "operations.md").read_text()
    assert "`ACL SETUSER vluna-bff on >…" + DOCUMENTED_ACL + "`" in text


@pytest.fixture(scope="module")
def own_redis() -> Iterator[Proc]:
    proc = start_redis()
    r = redis.Redis(port=proc.port)
    # the user docs/operations.md describes: everything the service needs on its prefix, but no
    # ACL commands (+command only for the probe's check of renamed commands)
    r.execute_command("ACL SETUSER bff on >" + PASSWORD + DOCUMENTED_ACL + " +command")
    # the documented example before the first level's channels were added to it
    r.execute_command(
        "ACL SETUSER nol1 on >"
        + PASSWORD
        + " ~vbff:* &vbff:done:* +get +set +del +pttl +incr +incrby +expire"
        " +eval +evalsha +script|load +publish +psubscribe +punsubscribe +ping +select +command"
    )
    # the documented example before this change: +incr where the rate limiter runs INCRBY
    r.execute_command(
        "ACL SETUSER stale on >" + PASSWORD + " ~vbff:* &vbff:* +get +set +del +pttl +incr +expire"
        " +eval +evalsha +script|load +publish +psubscribe +punsubscribe +ping +select"
    )
    # ACL DRYRUN allowed, but no pub/sub on the prefix's channels
    r.execute_command("ACL SETUSER nochannels on >" + PASSWORD + " ~vbff:* resetchannels +@all")
    r.close()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def emulator() -> Iterator[Emulator]:
    with start_emulator() as emu:
        yield emu


def with_redis(keys: Keys, url: str) -> Settings:
    return make_settings(keys, cache={"backend": "redis", "key_prefix": "vbff:", "redis": {"url": url}})


def only(lines: list[ProbeLine]) -> ProbeLine:
    assert len(lines) == 1, lines
    return lines[0]


# --- Redis ------------------------------------------------------------------------------------------


async def test_redis_nothing_listening_names_host_and_port(keys: Keys) -> None:
    port = free_port()
    line = only(await probe_redis(with_redis(keys, f"redis://:{PASSWORD}@127.0.0.1:{port}/0"), 2.0))
    assert not line.ok and line.check == "redis"
    assert str(line) == (
        f"FAIL redis: Redis 127.0.0.1:{port} (db 0, password set): PING: "
        "connection refused (nothing listens there)"
    )


async def test_redis_wrong_password(keys: Keys, own_redis: Proc) -> None:
    line = only(
        await probe_redis(with_redis(keys, f"redis://bff:wrong-one@127.0.0.1:{own_redis.port}/0"), 2.0)
    )
    assert not line.ok
    assert "authentication failed" in line.text and f"127.0.0.1:{own_redis.port}" in line.text
    assert "wrong-one" not in str(line)


async def test_redis_default_user_passes_by_acl_dryrun(keys: Keys, own_redis: Proc) -> None:
    line = only(await probe_redis(with_redis(keys, own_redis.url), 2.0))
    assert line.ok, line
    assert "(ACL DRYRUN)" in line.text and "21 commands" in line.text


async def test_a_user_without_acl_commands_is_checked_by_running_the_commands(
    keys: Keys, own_redis: Proc
) -> None:
    line = only(
        await probe_redis(with_redis(keys, f"redis://bff:{PASSWORD}@127.0.0.1:{own_redis.port}/0"), 2.0)
    )
    assert line.ok, line
    assert "running each command on a probe key" in line.text
    assert PASSWORD not in str(line)


async def test_missing_permissions_are_named(keys: Keys, own_redis: Proc) -> None:
    line = only(
        await probe_redis(with_redis(keys, f"redis://stale:{PASSWORD}@127.0.0.1:{own_redis.port}/0"), 2.0)
    )
    assert not line.ok
    assert "incrby vbff:rl:probe (proxy rate limits)" in line.text
    assert "PING answered, but this user may not run" in line.text
    assert PASSWORD not in str(line)
    # by ACL DRYRUN: channels outside the allowed patterns
    line = only(
        await probe_redis(
            with_redis(keys, f"redis://nochannels:{PASSWORD}@127.0.0.1:{own_redis.port}/0"), 2.0
        )
    )
    assert not line.ok and "(checked by ACL DRYRUN)" in line.text
    assert "publish vbff:done:probe" in line.text and "psubscribe vbff:done:*" in line.text
    # by running the commands: the first level's channels (the documented rules before them)
    line = only(
        await probe_redis(with_redis(keys, f"redis://nol1:{PASSWORD}@127.0.0.1:{own_redis.port}/0"), 2.0)
    )
    assert not line.ok and "running each command on a probe key" in line.text
    assert "publish vbff:l1:inval (first-level cache invalidations (cache.l1))" in line.text
    assert "subscribe vbff:l1:inval" in line.text and "subscribe vbff:l1:hb:probe" in line.text
    # ... which the first level needs only where it runs
    url = f"redis://nol1:{PASSWORD}@127.0.0.1:{own_redis.port}/0"
    off = make_settings(
        keys,
        cache={"backend": "redis", "key_prefix": "vbff:", "redis": {"url": url}, "l1": {"enabled": False}},
    )
    assert only(await probe_redis(off, 2.0)).ok


async def test_the_documented_acl_user_serves_signs_out_and_fills_the_first_level(
    keys: Keys, own_redis: Proc
) -> None:
    # End to end with the documented user: a sign-out needs the first level's channel (without
    # it: SignOutIncomplete, a 503), and the first level serves only once it is subscribed.
    url = f"redis://bff:{PASSWORD}@127.0.0.1:{own_redis.port}/0"
    issuer = FakeIssuer()
    client = aioredis.Redis.from_url(url)
    try:
        async with running_services(redis_settings(keys, "vbff:", url=url), issuer, client) as svc:
            assert svc.l1 is not None
            await svc.l1.start()
            try:
                await asyncio.wait_for(svc.l1.subscribed.wait(), 10)
                alice = Principal("org:acme", "alice")
                first = await svc.broker.get_token(alice, ("checkout",))
                for _ in range(500):  # read from Redis into the first level, then served by it
                    assert (
                        await svc.broker.get_token(alice, ("checkout",))
                    ).access_token == first.access_token
                    if svc.stats.get("l1_hits"):
                        break
                    await asyncio.sleep(0.02)
                assert svc.stats.get("l1_hits") > 0
                await svc.broker.forget(alice)
                again = await svc.broker.get_token(alice, ("checkout",))
                assert again.access_token != first.access_token and len(issuer.calls) == 2
                assert svc.stats.get("redis_errors") == 0
            finally:
                await svc.l1.stop()
    finally:
        await client.aclose()


async def test_memory_backend_has_no_redis_probe(keys: Keys) -> None:
    assert await probe_redis(make_settings(keys), 1.0) == []


# --- the identity provider -------------------------------------------------------------------------


class Documents:
    """A loopback HTTP server answering fixed documents by path (the provider's edge in a unit test;
    tests/bff/test_oidc.py runs a real OpenID Connect provider)."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, str, str]] = {}
        self.url = ""

    def json(self, path: str, doc: Any, status: int = 200) -> str:
        self.routes[path] = (status, json.dumps(doc), "application/json")
        return self.url + path

    def text(self, path: str, body: str, status: int = 200, content_type: str = "text/html") -> str:
        self.routes[path] = (status, body, content_type)
        return self.url + path


@pytest.fixture
async def documents() -> AsyncIterator[Documents]:
    docs = Documents()

    async def handle(request: web.Request) -> web.Response:
        status, body, ctype = docs.routes.get(request.path, (404, "not found", "text/plain"))
        return web.Response(status=status, text=body, content_type=ctype)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    docs.url = f"http://127.0.0.1:{port}"
    try:
        yield docs
    finally:
        await runner.cleanup()


def jwt_settings(keys: Keys, **jwt: Any) -> Settings:
    return make_settings(keys, auth={"jwt": {"public_keys_pem": [], **jwt}})


async def idp_lines(settings: Settings) -> list[ProbeLine]:
    import httpx

    async with httpx.AsyncClient() as http:
        return await probe_identity_provider(settings, http, 2.0)


async def test_jwks_ok(keys: Keys, documents: Documents) -> None:
    url = documents.json("/jwks", keys.jwks())
    line = only(await idp_lines(jwt_settings(keys, jwks_url=url, algorithms=["RS256", "ES256"])))
    assert line.ok and line.text == f"GET {url}: 2 key(s) for RS256, ES256 (kid ec-1, rsa-1)"


async def test_jwks_failures_are_named(keys: Keys, documents: Documents) -> None:
    cases = {
        documents.text("/html", "<html>login</html>"): "the answer is not JSON (text/html)",
        documents.text("/gone", "no", status=404): "HTTP 404",
        documents.json("/notjwks", {"hello": 1}): 'not a JWKS document (no "keys" list)',
        f"http://127.0.0.1:{free_port()}/jwks": "connection refused (nothing listens there)",
    }
    for url, cause in cases.items():
        line = only(await idp_lines(jwt_settings(keys, jwks_url=url)))
        assert not line.ok and line.text == f"GET {url}: {cause}", line


async def test_no_key_fits_the_algorithms(keys: Keys, documents: Documents) -> None:
    only_ec = {"keys": [k for k in keys.jwks()["keys"] if k["kty"] == "EC"]}
    url = documents.json("/jwks", only_ec)
    line = only(await idp_lines(jwt_settings(keys, jwks_url=url, algorithms=["RS256"])))
    assert not line.ok
    assert (
        line.text
        == f"GET {url}: no key can verify RS256 tokens: 1 usable signing key(s) (EC/ES256) of 1 listed"
    )


async def test_jwks_url_pointing_at_the_discovery_document_is_followed(
    keys: Keys, documents: Documents
) -> None:
    jwks = documents.json("/jwks", keys.jwks())
    issuer = documents.url
    discovery = documents.json(
        "/.well-known/openid-configuration",
        {"issuer": issuer, "jwks_uri": jwks, "id_token_signing_alg_values_supported": ["RS256"]},
    )
    lines = await idp_lines(jwt_settings(keys, jwks_url=discovery, issuer=issuer))
    assert [str(x) for x in lines] == [
        f"ok   auth.jwt.jwks_url: GET {discovery}: an OpenID Connect discovery document; the service uses its"
        f" jwks_uri {jwks}",
        f"ok   auth.jwt.jwks_url: GET {jwks}: 1 key(s) for RS256 (kid rsa-1)",
    ]


async def test_issuer_with_a_trailing_slash_is_named(keys: Keys, documents: Documents) -> None:
    jwks = documents.json("/jwks", keys.jwks())
    documents.json("/.well-known/openid-configuration", {"issuer": documents.url, "jwks_uri": jwks})
    lines = await idp_lines(jwt_settings(keys, jwks_url=jwks, issuer=documents.url + "/"))
    assert [x.ok for x in lines] == [True, False]
    assert str(lines[1]) == (
        f"FAIL auth.jwt.issuer: '{documents.url}/' differs from the issuer the provider announces at "
        f"{documents.url}/.well-known/openid-configuration: '{documents.url}'; tokens carry the provider's, "
        "so every one would be refused (they must be identical, trailing slash included)"
    )
    # with discovery the same mistake stops discovery itself
    line = only(await idp_lines(jwt_settings(keys, discovery=True, issuer=documents.url + "/")))
    assert not line.ok and line.check == "auth.jwt.discovery"
    assert (
        f"the provider's issuer is '{documents.url}' but auth.jwt.issuer is '{documents.url}/'" in line.text
    )


async def test_issuer_without_discovery_document_is_no_finding(keys: Keys, documents: Documents) -> None:
    jwks = documents.json("/jwks", keys.jwks())
    line = only(await idp_lines(jwt_settings(keys, jwks_url=jwks, issuer="https://id.example.test/")))
    assert line.ok


# --- Vluna ------------------------------------------------------------------------------------------


def vluna_settings(keys: Keys, emulator: Emulator, **vluna: Any) -> Settings:
    v = {
        "base_url": f"{emulator.url}/mgt/v1",
        "realm_id": "realm_demo",
        "service_key_id": "pk-emulator",
        "service_key_secret": EMULATOR_SECRET,
        **vluna,
    }
    return make_settings(keys, vluna=v)


async def test_vluna_accepts_the_signed_call(keys: Keys, emulator: Emulator) -> None:
    line = only(await probe_vluna(vluna_settings(keys, emulator), 5.0))
    assert line.ok and line.text.endswith("(realm realm_demo, key pk-emulator): accepted")


async def test_vluna_refusals_name_the_code_and_the_setting(keys: Keys, emulator: Emulator) -> None:
    wrong_secret = base64.b64encode(b"another-secret-of-32-bytes-long!").decode()
    cases = [
        ({"service_key_secret": wrong_secret}, "HTTP 401 AUTH.INVALID_SERVICE_SIGNATURE", "service_key_id"),
        ({"service_key_id": "pk-nobody"}, "HTTP 401 AUTH.SERVICE_KEY_NOT_FOUND", "vluna.service_key_id"),
        ({"base_url": f"{emulator.url}/nothing/v1"}, "HTTP 404", "vluna.base_url"),
        ({"base_url": f"http://127.0.0.1:{free_port()}/mgt/v1"}, "connection refused", "127.0.0.1"),
    ]
    for change, status, hint in cases:
        line = only(await probe_vluna(vluna_settings(keys, emulator, **change), 5.0))
        assert not line.ok, change
        assert status in line.text and hint in line.text, line
        assert wrong_secret not in line.text and EMULATOR_SECRET not in line.text


# --- the CLI ----------------------------------------------------------------------------------------


def service_config(emulator: Emulator, keys: Keys, redis_url: str, **jwt: Any) -> dict[str, Any]:
    data = bff_config(emulator.url, keys.rsa_pem(), redis_url=redis_url)
    data["auth"]["jwt"].update(jwt)
    return data


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bff.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def test_check_config_probe_exit_codes_and_lines(
    keys: Keys, emulator: Emulator, own_redis: Proc, tmp_path: Path
) -> None:
    good = write_config(service_config(emulator, keys, own_redis.url), tmp_path)
    proc = cli("check-config", "--probe", "-c", str(good))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.rstrip().endswith("every probe passed")
    assert "ok   redis: Redis 127.0.0.1" in proc.stdout and "ok   vluna:" in proc.stdout

    port = free_port()
    bad = write_config(service_config(emulator, keys, f"redis://:{PASSWORD}@127.0.0.1:{port}/0"), tmp_path)
    proc = cli("check-config", "--probe", "--probe-timeout", "2", "-c", str(bad))
    assert proc.returncode == 1
    assert (
        f"FAIL redis: Redis 127.0.0.1:{port} (db 0, password set): PING: connection refused" in proc.stdout
    ), proc.stdout[-600:]
    assert "1 probe(s) failed" in proc.stdout
    assert PASSWORD not in proc.stdout + proc.stderr and EMULATOR_SECRET not in proc.stdout + proc.stderr
    # without --probe nothing is contacted
    assert cli("check-config", "-c", str(bad)).returncode == 0


def test_serve_logs_startup_checks_and_strict_startup_refuses(
    keys: Keys, emulator: Emulator, tmp_path: Path
) -> None:
    port = free_port()
    data = service_config(emulator, keys, f"redis://127.0.0.1:{port}/0")
    data["observability"]["log_format"] = "json"
    data["server"]["log_level"] = "info"
    cfg = write_config(data, tmp_path)
    proc = cli("serve", "-c", str(cfg), "--port", str(free_port()), "--strict-startup")
    assert proc.returncode == 1
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    failed = [r for r in records if r["logger"] == "bff.startup" and r["level"] == "error"]
    assert failed[0]["check"] == "redis"
    assert failed[0]["msg"] == (
        f"start-up check redis failed: Redis 127.0.0.1:{port} (db 0): PING: "
        "connection refused (nothing listens there)"
    )
    assert failed[-1]["msg"] == "1 start-up check(s) failed; not starting (--strict-startup)"
    ok = [r for r in records if r["logger"] == "bff.startup" and r["level"] == "info"]
    assert {r["check"] for r in ok} == {"vluna"}


async def test_a_command_the_probe_cannot_run_is_a_line_not_a_traceback() -> None:
    # A client error that is neither an answer nor a refusal (redis-py's cluster client once
    # raised ValueError for SCRIPT LOAD sent through execute_command): named, the rest checked.
    class OddClient:
        async def execute_command(self, *args: Any) -> bytes:
            return b"OK"

        async def script_load(self, script: str) -> str:
            raise ValueError("range() arg 3 must not be zero")

    commands = [(("script", "load", "return 1"), "lock release"), (("get", "vbff:tok:probe"), "token cache")]
    denied, failed = await _exercise(cast(Any, OddClient()), commands, False)
    assert denied == [] and failed == ["script load (lock release: ValueError)"]
