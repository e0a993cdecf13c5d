"""The reference apps the runner measures beside the service, as ASGI app factories that
bench._stacks serves on the same server stack as the service (`python -m bench._stacks STACK
bench._refservers:NAME`). Arguments come from the environment, because a server imports the
factory by name in its worker process:

  litestar_refs  GET /bench/json (bare Litestar JSON), GET /bench/redis-get (Litestar + one Redis
                 GET of BENCH_REF_KEY at BENCH_REDIS_URL)
  pass_through   GET /api/v1/{path}: a minimal raw-ASGI pass-through to BENCH_UPSTREAM with a fixed
                 bearer token (BENCH_TOKEN, BENCH_REALM) through one pooled aiohttp session
  sdk_issuer     GET /issue?user=U: the SDK's issue_platform_token for principal org:U, straight to
                 Vluna (BENCH_VLUNA_URL, BENCH_REALM, BENCH_KEY_ID, BENCH_SECRET): no cache, no lock;
                 through httpx's own transport, or with BENCH_SDK_TRANSPORT=http1 through the one
                 the service uses (bff/http1/httpx_transport.py)
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.types import ControllerRouterHandler

    from bff.redis_client import RedisClient

Scope = dict[str, Any]


def reference_routes(redis: RedisClient | None, key: str) -> list[ControllerRouterHandler]:
    """GET /bench/json (bare Litestar JSON) and GET /bench/redis-get (one Redis GET of `key`)."""
    from litestar import get

    @get("/bench/json")
    async def bare() -> dict[str, Any]:
        return {"ok": True, "value": "x" * 32}

    @get("/bench/redis-get")
    async def one_get() -> dict[str, Any]:
        assert redis is not None
        value = await redis.get(key)
        return {"ok": True, "len": len(value or b"")}

    return [bare, one_get]


async def seed_reference(redis: RedisClient | None, key: str) -> None:
    """The value GET /bench/redis-get reads (300 bytes, an hour)."""
    if redis is not None:
        await redis.set(key, b"v" * 300, ex=3600)


def litestar_refs() -> Litestar:
    import redis.asyncio as aioredis
    from litestar import Litestar

    redis_url = os.environ.get("BENCH_REDIS_URL")
    key = os.environ.get("BENCH_REF_KEY", "bench-ref")
    redis = aioredis.Redis.from_url(redis_url, max_connections=64) if redis_url else None

    async def seed() -> None:
        await seed_reference(redis, key)

    async def close() -> None:
        if redis is not None:
            await redis.aclose()

    return Litestar(
        reference_routes(redis, key),
        on_startup=[seed],
        on_shutdown=[close],
        openapi_config=None,
        logging_config=None,
    )


def pass_through() -> Any:
    """What any Python proxy on this stack can at best do: forward GET /api/v1/{path}?{query} with a
    fixed bearer token through one pooled aiohttp session, the answer's bytes untouched."""
    import aiohttp

    upstream = os.environ["BENCH_UPSTREAM"].rstrip("/")
    headers = {
        "Authorization": f"Bearer {os.environ['BENCH_TOKEN']}",
        "X-Realm-Id": os.environ.get("BENCH_REALM", "realm_demo"),
        "Accept": "application/json",
    }
    state: dict[str, aiohttp.ClientSession] = {}

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    state["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await state["s"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        url = upstream + scope["path"]
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode("latin-1")
        async with state["s"].get(url, headers=headers) as resp:
            body = await resp.read()
            status = resp.status
        await _json(send, status, body)

    return app


def sdk_issuer() -> Any:
    """The cold-start reference: what issuing one platform token costs through the SDK alone."""
    import json
    from urllib.parse import parse_qs

    from vlunaai import ServiceClientOptions, ServiceKeyCredentials, VlunaAIConfig, create_service_client

    env = os.environ
    transport = env.get("BENCH_SDK_TRANSPORT", "httpx")
    if transport not in ("httpx", "http1"):
        raise ValueError(f"BENCH_SDK_TRANSPORT must be httpx or http1, not {transport!r}")

    def options() -> ServiceClientOptions:
        from bff.http1.httpx_transport import Http1Transport

        return ServiceClientOptions(
            config=VlunaAIConfig(base_url=env["BENCH_VLUNA_URL"], realm_id=env["BENCH_REALM"]),
            service_key=ServiceKeyCredentials(key_id=env["BENCH_KEY_ID"], secret=env["BENCH_SECRET"]),
            max_retries=0,
            transport=Http1Transport(env["BENCH_VLUNA_URL"]) if transport == "http1" else None,
        )

    state: dict[str, Any] = {}

    async def app(scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    state["client"] = create_service_client(options())
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await state["client"].close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        users = parse_qs(scope["query_string"].decode()).get("user")
        if users is None:  # GET /healthz (anything without a user): up
            await _json(send, 200, b'{"ok": true}')
            return
        user = users[0]
        r = await state["client"].issue_platform_token(
            body={
                "principal_id": f"org:{user}",
                "user_id": user,
                "scopes": ["checkout", "portal"],
                "session_ttl_sec": 900,
            }
        )
        body = json.dumps({"access_token": r.data.access_token} if r.ok else {"error": "issue"}).encode()
        await _json(send, 200 if r.ok else 502, body)

    return app


async def _json(send: Any, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
