"""OpenID Connect discovery and key rotation against a real provider: the npm package
`oidc-provider` (pinned, installed by scripts/npm_packages.py into a cache directory; a failed
install fails these tests), started on 127.0.0.1 by the test (tests/bff/oidc/provider.mjs). It
issues RS256 JWT access tokens with the client credentials grant; rotating its keys is a SIGHUP
after rewriting its key file, as a redeploy with new keys would be.

Also the misconfigurations the issue met with this provider: `jwks_url` set to the discovery
document, an issuer with a trailing slash, the provider down. Each one is named by `/readyz`, the
log, `check-config --probe` and the metrics, never with a token in the text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from bff.probes import probe_identity_provider
from bff.settings import Settings, validate_settings
from scripts import npm_packages

from .support import FakeIssuer, Keys, base_settings, client_for

OIDC_PROVIDER = {"oidc-provider": "9.13.3"}
SCRIPT = Path(__file__).resolve().parent / "oidc" / "provider.mjs"
AUDIENCE = "vluna-bff-oidc"
CLIENT = ("app", "app-secret-for-the-oidc-tests-only")


def private_jwk(kid: str) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
    return {**jwk, "kid": kid, "alg": "RS256", "use": "sig"}


class Provider:
    def __init__(self, modules: Path, directory: Path) -> None:
        self.keys_file = directory / "provider-keys.json"
        self.rotate([private_jwk("k1")], signal_it=False)
        self.proc = subprocess.Popen(
            ["node", str(SCRIPT), str(self.keys_file)],
            env={**os.environ, "OIDC_PROVIDER_MODULES": str(modules)},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        first = self._line(30)
        assert first.startswith("listening on "), f"oidc-provider did not start: {first!r}"
        self.issuer = first.split()[-1]

    def _line(self, timeout: float) -> str:
        import selectors

        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError("oidc-provider said nothing")
        return self.proc.stdout.readline().strip()

    def rotate(self, keys: list[dict[str, Any]], *, signal_it: bool = True) -> None:
        self.keys_file.write_text(json.dumps({"keys": keys}))
        if signal_it:
            self.proc.send_signal(signal.SIGHUP)
            while self._line(10) != "keys reloaded":  # the provider's own notices come first
                pass

    def token(self) -> str:
        r = httpx.post(
            f"{self.issuer}/token", data={"grant_type": "client_credentials", "scope": "api"}, auth=CLIENT
        )
        assert r.status_code == 200, r.text
        token: str = r.json()["access_token"]
        return token

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Provider]:
    modules = npm_packages.install(OIDC_PROVIDER)  # raises with npm's reason: never a skip
    p = Provider(modules, tmp_path_factory.mktemp("oidc"))
    try:
        yield p
    finally:
        p.stop()


def oidc_settings(keys: Keys, **jwt_settings: Any) -> Settings:
    data = base_settings(
        keys,
        mapping={"principal": [{"claim": "org_id", "template": "org:{value}"}]},
        observability={"readiness": {"check_vluna": False, "cache_ttl_sec": 0}},
    )
    j = data["auth"]["jwt"]
    for name in ("public_keys_pem", "algorithms"):  # keys and algorithms come from the provider
        j.pop(name)
    j.update(audience=[AUDIENCE], verified_cache_ttl_sec=0, jwks_refresh_min_interval_sec=0, **jwt_settings)
    return validate_settings(data)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def scrape(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    raise AssertionError(f"{name}{labels} not exported")


async def test_discovery_finds_the_keys_and_algorithms(keys: Keys, provider: Provider) -> None:
    settings = oidc_settings(keys, discovery=True, issuer=provider.issuer)
    issuer = FakeIssuer()
    async with client_for(settings, issuer) as client:
        r = await client.get("/vluna/token", headers=bearer(provider.token()))
        assert r.status_code == 200, r.text
        assert issuer.calls[0][0] == "org:acme"
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["auth"] == "ok"
        # an HS256 token is refused: the provider announces RS256 only
        forged = jwt.encode(
            {"sub": "x", "iss": provider.issuer, "aud": AUDIENCE, "exp": time.time() + 60}, "s" * 32
        )
        r = await client.get("/vluna/token", headers=bearer(forged))
        assert r.status_code == 401


async def test_key_rotation(keys: Keys, provider: Provider, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bff.auth")
    settings = oidc_settings(keys, discovery=True, issuer=provider.issuer, jwks_cache_ttl_sec=1)
    k1 = private_jwk("k1")
    provider.rotate([k1])
    async with client_for(settings, FakeIssuer()) as client:
        old = provider.token()
        assert jwt.get_unverified_header(old)["kid"] == "k1"
        assert (await client.get("/vluna/token", headers=bearer(old))).status_code == 200

        # a new key first, the old one still published: tokens of both verify
        provider.rotate([private_jwk("k2"), k1])
        new = provider.token()
        assert jwt.get_unverified_header(new)["kid"] == "k2"
        assert (
            await client.get("/vluna/token", headers=bearer(new))
        ).status_code == 200  # unknown kid: refetched
        assert (await client.get("/vluna/token", headers=bearer(old))).status_code == 200

        # the old key withdrawn: once the key set is refreshed, its tokens are refused
        provider.rotate([provider_keys(provider)[0]])
        await asyncio.sleep(1.2)  # jwks_cache_ttl_sec
        r = await client.get("/vluna/token", headers=bearer(old))
        assert r.status_code == 401
        assert (await client.get("/vluna/token", headers=bearer(new))).status_code == 200
        metrics = (await client.get("/metrics")).text
    refused = [r for r in caplog.records if getattr(r, "reason", None) == "unknown_kid"]
    assert refused and refused[-1].getMessage() == "sign-in refused: unknown_kid (bearer): alg RS256; kid k1"
    assert scrape(metrics, "vluna_bff_jwks_fetches_total", outcome="ok") >= 3
    assert scrape(metrics, "vluna_bff_jwks_keys") == 1
    assert scrape(metrics, "vluna_bff_auth_failures_total", reason="unknown_kid") >= 1
    assert time.time() - scrape(metrics, "vluna_bff_jwks_fetched_timestamp_seconds") < 30
    assert old not in caplog.text and new not in caplog.text


def provider_keys(provider: Provider) -> list[dict[str, Any]]:
    keys: list[dict[str, Any]] = json.loads(provider.keys_file.read_text())["keys"]
    return keys


async def test_jwks_url_set_to_the_discovery_document_is_followed(
    keys: Keys, provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bff.jwks")
    discovery = f"{provider.issuer}/.well-known/openid-configuration"
    settings = oidc_settings(keys, jwks_url=discovery, issuer=provider.issuer)
    async with client_for(settings, FakeIssuer()) as client:
        assert (await client.get("/vluna/token", headers=bearer(provider.token()))).status_code == 200
        assert (await client.get("/readyz")).json()["checks"]["auth"] == "ok"
    assert (
        f"auth.jwt.jwks_url {discovery} is an OpenID Connect discovery document: using its jwks_uri "
        f"{provider.issuer}/jwks" in caplog.text
    )
    async with httpx.AsyncClient() as http:
        lines = [str(x) for x in await probe_identity_provider(settings, http, 5.0)]
    kid = provider_keys(provider)[0]["kid"]
    assert lines == [
        f"ok   auth.jwt.jwks_url: GET {discovery}: an OpenID Connect discovery document; the service "
        f"uses its jwks_uri {provider.issuer}/jwks",
        f"ok   auth.jwt.jwks_url: GET {provider.issuer}/jwks: 1 key(s) for RS256 (kid {kid})",
    ]


async def test_issuer_with_a_trailing_slash(
    keys: Keys, provider: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    slash = provider.issuer + "/"
    token = provider.token()
    # without discovery: every token is refused, and the log says why (expected vs received)
    settings = oidc_settings(keys, jwks_url=f"{provider.issuer}/jwks", issuer=slash)
    async with client_for(settings, FakeIssuer()) as client:
        r = await client.get("/vluna/token", headers=bearer(token))
        assert r.status_code == 401 and r.json()["message"] == "token issuer not accepted"
        metrics = (await client.get("/metrics")).text
    (line,) = [r for r in caplog.records if getattr(r, "reason", None) == "issuer_mismatch"]
    assert line.levelno == logging.INFO
    assert line.getMessage() == (
        f"sign-in refused: issuer_mismatch (bearer): expected iss '{slash}'; "
        f"received iss '{provider.issuer}'; alg RS256; kid {jwt.get_unverified_header(token)['kid']}"
    )
    assert scrape(metrics, "vluna_bff_auth_failures_total", reason="issuer_mismatch") >= 1
    assert token not in caplog.text
    async with httpx.AsyncClient() as http:
        lines = await probe_identity_provider(settings, http, 5.0)
    assert [x.ok for x in lines] == [True, False]
    assert str(lines[1]).startswith(
        f"FAIL auth.jwt.issuer: '{slash}' differs from the issuer the provider announces"
    )

    # with discovery: discovery itself refuses the provider, and the replica is not ready
    settings = oidc_settings(keys, discovery=True, issuer=slash)
    async with client_for(settings, FakeIssuer()) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["auth"] == "no_keys"
        assert ready.json()["reasons"]["auth"] == (
            f"GET {provider.issuer}/.well-known/openid-configuration: the provider's issuer is "
            f"'{provider.issuer}' but auth.jwt.issuer is '{slash}' (they must be identical, trailing slash "
            "included; tokens carry the provider's)"
        )
        r = await client.get("/vluna/token", headers=bearer(token))
        assert r.status_code == 503 and r.json()["error"] == "auth_unavailable"
        metrics = (await client.get("/metrics")).text
    assert scrape(metrics, "vluna_bff_jwks_fetches_total", outcome="issuer_mismatch") >= 1


async def test_provider_down_means_not_ready(keys: Keys, tmp_path: Path) -> None:
    from tests.support.ports import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    settings = oidc_settings(keys, discovery=True, issuer=dead)
    async with client_for(settings, FakeIssuer()) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["status"] == "not_ready"
        assert ready.json()["reasons"]["auth"] == (
            f"GET {dead}/.well-known/openid-configuration: connection refused (nothing listens there)"
        )
    # a static key keeps the replica ready while the JWKS is unreachable
    data = base_settings(keys, observability={"readiness": {"check_vluna": False}})
    data["auth"]["jwt"]["jwks_url"] = f"{dead}/jwks"
    async with client_for(validate_settings(data), FakeIssuer()) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["auth"] == "ok"
