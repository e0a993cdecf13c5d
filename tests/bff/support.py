"""Helpers of the in-process service tests: JWT keys of every algorithm the verifier takes,
settings over a base, a fake issuer (the unit-test edge where the SDK call to Vluna would be),
the services and the app as the factory wires them."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import jwt
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from litestar import Litestar
from vlunaai.testing import VlunaEmulator

from bff.app import Services, build_services, create_app
from bff.settings import Settings, validate_settings
from bff.tokens.issuer import IssuedToken, IssuerUnavailable, SdkTokenIssuer
from tests.support.asgi import asgi_transport
from tests.support.emulator import EMULATOR_SECRET
from tests.support.redis_servers import SHARED_REDIS_URL as REDIS_URL
from tests.support.service import deep_update

ISSUER = "https://id.example.test/"
AUDIENCE = "vluna-bff-tests"
HS_SECRET = "hs-secret-for-tests-0123456789abcdef"
# Fixed but random-looking (keys of repeated bytes are refused as weak).
ENC_KEY_1 = "k1:" + base64.b64encode(hashlib.sha256(b"test encryption key 1").digest()).decode()
ENC_KEY_2 = "k2:" + base64.b64encode(hashlib.sha256(b"test encryption key 2").digest()).decode()
HMAC_KEY = "hmac-key-for-tests-0123456789abcdef"
SERVICE_SECRET = base64.b64encode(b"service-secret-bytes-for-tests!!").decode()


class Keys:
    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rsa_other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.rsa_kid = "rsa-1"
        self.ec_kid = "ec-1"

    def rsa_pem(self) -> str:
        return (
            self.rsa.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def jwks(self) -> dict[str, Any]:
        r = jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key(), as_dict=True)
        e = jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key(), as_dict=True)
        return {
            "keys": [
                {**r, "kid": self.rsa_kid, "use": "sig", "alg": "RS256"},
                {**e, "kid": self.ec_kid, "use": "sig", "alg": "ES256"},
            ]
        }

    def token(
        self,
        sub: str = "alice",
        *,
        alg: str = "RS256",
        key: Any = None,
        kid: str | None = "rsa-1",
        iss: str | None = ISSUER,
        aud: str | None = AUDIENCE,
        exp_in: int = 300,
        nbf_in: int | None = None,
        **claims: Any,
    ) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + exp_in, **claims}
        if iss is not None:
            body["iss"] = iss
        if aud is not None:
            body["aud"] = aud
        if nbf_in is not None:
            body["nbf"] = now + nbf_in
        if key is None:
            key = {"RS256": self.rsa, "ES256": self.ec, "HS256": HS_SECRET.encode()}[alg]
        headers = {"kid": kid} if kid is not None else {}
        return jwt.encode(body, key, algorithm=alg, headers=headers)


def base_settings(keys: Keys, **sections: Mapping[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "vluna": {
            "base_url": "http://vluna.test/mgt/v1",
            "realm_id": "realm_test",
            "service_key_id": "pk-test",
            "service_key_secret": SERVICE_SECRET,
        },
        "auth": {
            "methods": ["bearer", "cookie"],
            "jwt": {
                "public_keys_pem": [keys.rsa_pem()],
                "algorithms": ["RS256", "ES256"],
                "issuer": ISSUER,
                "audience": [AUDIENCE],
                "leeway_sec": 5,
            },
        },
        "mapping": {
            "principal": [
                {"claim": "org_id", "template": "org:{value}"},
                {"claim": "sub", "template": "user:{value}"},
            ],
            "user_claim": "sub",
            "traits": {"email": "email", "name": "name"},
        },
        "cache": {"backend": "memory", "encryption_keys": [ENC_KEY_1], "hmac_key": HMAC_KEY},
    }
    for name, values in sections.items():
        current = data.setdefault(name, {})
        deep_update(current, values)
    return data


def serve_config(
    tmp_path: Path,
    keys: Keys,
    emulator_url: str,
    redis_prefix: str | None = None,
    **sections: Mapping[str, Any],
) -> tuple[Path, dict[str, str]]:
    """A configuration file for `vluna-bff serve` against an emulator process (tests.support.emulator)
    and the environment that carries its secrets: they reach the process the production way,
    from the environment, not the YAML. With `redis_prefix`: the shared Redis under that prefix,
    and warnings only in the log."""
    if redis_prefix is not None:
        cache = {"backend": "redis", "key_prefix": redis_prefix, "redis": {"url": REDIS_URL}}
        sections = {"cache": cache, "server": {"log_level": "warning"}, **sections}
    data = base_settings(
        keys,
        vluna={
            "base_url": f"{emulator_url}/mgt/v1",
            "realm_id": "realm_demo",
            "service_key_id": "pk-emulator",
        },
        **sections,
    )
    del data["vluna"]["service_key_secret"]
    del data["cache"]["encryption_keys"]
    del data["cache"]["hmac_key"]
    cfg = tmp_path / "bff.yaml"
    cfg.write_text(yaml.safe_dump(data))
    env = {
        "VLUNA_BFF__VLUNA__SERVICE_KEY_SECRET": EMULATOR_SECRET,
        "VLUNA_BFF__CACHE__HMAC_KEY": HMAC_KEY,
        "VLUNA_BFF__CACHE__ENCRYPTION_KEYS": f'["{ENC_KEY_1}"]',
    }
    return cfg, env


# The ACL rules docs/operations.md gives for a user of its own (the password and name aside),
# for the key prefix ``vbff:``.
DOCUMENTED_ACL = (
    " ~vbff:* &vbff:done:* &vbff:l1:* +get +set +del +pttl +incr +incrby +expire +eval +evalsha +script|load"
    " +publish +psubscribe +punsubscribe +subscribe +unsubscribe +ping +select"
)


def make_settings(keys: Keys, **sections: Mapping[str, Any]) -> Settings:
    return validate_settings(base_settings(keys, **sections))


class FakeIssuer:
    """The unit-test edge: stands where the SDK call to Vluna would be."""

    def __init__(self, ttl: int = 900) -> None:
        self.ttl = ttl
        self.calls: list[tuple[str, str, tuple[str, ...], dict[str, Any]]] = []
        self.fail = False
        self.gate: asyncio.Event | None = None
        self._n = itertools.count(1)

    async def issue(
        self, principal_id: str, user_id: str, scopes: Sequence[str], traits: Mapping[str, Any]
    ) -> IssuedToken:
        self.calls.append((principal_id, user_id, tuple(scopes), dict(traits)))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise IssuerUnavailable("vluna down (fake)")
        n = next(self._n)
        token = f"plt-{secrets.token_hex(8)}|{principal_id}|{user_id}|{','.join(scopes)}|{n}"
        return IssuedToken(
            access_token=token,
            token_type="Bearer",
            expires_in=self.ttl,
            billing_account_id=f"ba_{principal_id}",
            billing_user_id=f"bu_{user_id}",
        )

    async def aclose(self) -> None:
        pass


def sdk_issuer(
    emu: VlunaEmulator,
    *,
    secret: str | None = None,
    ttl: int = 600,
    timeout: float = 5.0,
    retries: int = 0,
    transport: httpx.AsyncBaseTransport | None = None,
) -> SdkTokenIssuer:
    """The production issuer (the SDK, signed calls) to an in-process emulator (its transport
    unless `transport` is given)."""
    return SdkTokenIssuer.create(
        base_url=emu.service_base_url,
        realm_id=emu.realm_id,
        key_id=emu.service_key_id,
        secret=secret or emu.service_key_secret,
        session_ttl_sec=ttl,
        timeout_sec=timeout,
        max_retries=retries,
        transport=transport if transport is not None else emu.transport(),
    )


class FakeClock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@contextlib.asynccontextmanager
async def running_services(
    settings: Settings, issuer: Any, redis: Any = None, clock: Any = time.time
) -> AsyncIterator[Services]:
    """The services as the app wires them, with the lock notifier started (no HTTP)."""
    services = build_services(settings, issuer=issuer, redis=redis, clock=clock)
    if services.notifier is not None:
        await services.notifier.start()
    try:
        yield services
    finally:
        await services.broker.aclose()
        if services.notifier is not None:
            await services.notifier.stop()
        await services.breaker.aclose()
        if services.owns_redis and services.redis is not None:
            await services.redis.aclose()
        await services.http.aclose()


def redis_settings(keys: Keys, prefix: str, url: str = REDIS_URL, **tokens: Any) -> Settings:
    return make_settings(
        keys,
        cache={"backend": "redis", "key_prefix": prefix, "redis": {"url": url, "probe_interval_sec": 0.2}},
        tokens=tokens,
    )


async def redis_dump(redis: Any, prefix: str) -> dict[bytes, bytes]:
    out = {}
    async for key in redis.scan_iter(match=f"{prefix}*", count=1000):
        if await redis.type(key) == b"string":
            value = await redis.get(key)
            if value is not None:
                out[key] = value
    return out


class AppClient(httpx.AsyncClient):
    app: Litestar


@contextlib.asynccontextmanager
async def client_for(
    settings: Settings, issuer: Any, redis: Any = None, **kw: Any
) -> AsyncIterator[AppClient]:
    # The app runs in the test's own event loop (Litestar's AsyncTestClient would move it to a
    # portal thread), so it can share Redis clients and asyncio primitives with the test.
    app = create_app(settings, issuer=issuer, redis=redis, **kw)
    async with (
        app.lifespan(),
        AppClient(transport=asgi_transport(app), base_url="http://bff.test") as client,
    ):
        client.app = app
        yield client
