from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import itertools
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from litestar import Litestar

from bff.app import Services, build_services, create_app
from bff.settings import Settings, validate_settings
from bff.tokens.issuer import IssuedToken, IssuerUnavailable

REDIS_URL = "redis://127.0.0.1:6379/0"
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
        _deep_update(current, values)
    return data


def _deep_update(target: dict[str, Any], values: Mapping[str, Any]) -> None:
    for k, v in values.items():
        if isinstance(v, Mapping) and isinstance(target.get(k), dict):
            _deep_update(target[k], v)
        else:
            target[k] = v


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


class TcpProxy:
    """A TCP relay to Redis that can be cut: Redis 'goes down' for the clients behind it."""

    def __init__(self, target_port: int = 6379, port: int = 0) -> None:
        self.target_port = target_port
        self.port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        # The next this many connections are closed at once: one command fails (as a connect
        # timing out under a stalled event loop does) while Redis itself is fine.
        self.drop_next = 0

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.drop_next > 0:
            self.drop_next -= 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._writers):
            w.close()
        self._writers.clear()
        await asyncio.sleep(0)


async def until(predicate: Any, timeout: float = 10.0) -> None:
    """Wait for a condition another task brings about (bounded so a bug fails, not hangs)."""
    async with asyncio.timeout(timeout) if hasattr(asyncio, "timeout") else contextlib.nullcontext():
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.002)


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
        AppClient(transport=httpx.ASGITransport(app=app), base_url="http://bff.test") as client,
    ):
        client.app = app
        yield client
