"""Reference servers the runner measures beside the service, each printing its address first:

    python -m bench._refservers litestar [REDIS_URL KEY]   # /bench/json and /bench/redis-get
    python -m bench._refservers aiohttp-pass UPSTREAM_BASE TOKEN REALM
        # GET /api/v1/{path}: a minimal aiohttp pass-through (one pooled session) to UPSTREAM_BASE

All bind 127.0.0.1 on a free port, one process, no access log.
"""

from __future__ import annotations

import socket
import sys
from typing import Any


def _socket() -> socket.socket:
    # IPPROTO_TCP so that asyncio sets TCP_NODELAY on accepted sockets.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def litestar(redis_url: str | None, key: str | None) -> None:
    import redis.asyncio as aioredis
    import uvicorn
    from litestar import Litestar, get

    redis = aioredis.Redis.from_url(redis_url, max_connections=64) if redis_url else None

    @get("/bench/json")
    async def bare() -> dict[str, Any]:
        return {"ok": True, "value": "x" * 32}

    @get("/bench/redis-get")
    async def one_get() -> dict[str, Any]:
        assert redis is not None and key is not None
        value = await redis.get(key)
        return {"ok": True, "len": len(value or b"")}

    async def seed() -> None:
        if redis is not None and key is not None:
            await redis.set(key, b"v" * 300, ex=3600)

    app = Litestar([bare, one_get], on_startup=[seed], openapi_config=None, logging_config=None)
    sock = _socket()
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False)
    uvicorn.Server(config).run(sockets=[sock])


def aiohttp_pass(upstream: str, token: str, realm: str) -> None:
    import aiohttp
    from aiohttp import web

    session: dict[str, aiohttp.ClientSession] = {}

    async def start(app: web.Application) -> None:
        session["s"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))

    async def close(app: web.Application) -> None:
        await session["s"].close()

    async def handle(request: web.Request) -> web.Response:
        url = f"{upstream}/{request.match_info['path']}"
        headers = {"Authorization": f"Bearer {token}", "X-Realm-Id": realm, "Accept": "application/json"}
        async with session["s"].get(url, headers=headers, params=request.query) as r:
            body = await r.read()
            return web.Response(body=body, status=r.status, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v1/{path:.*}", handle)
    app.on_startup.append(start)
    app.on_cleanup.append(close)
    sock = _socket()
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    web.run_app(app, sock=sock, print=None, access_log=None)


if __name__ == "__main__":
    kind, *rest = sys.argv[1:]
    if kind == "litestar":
        litestar(*([*rest, None, None])[:2])
    elif kind == "aiohttp-pass":
        aiohttp_pass(*rest)
    else:
        raise SystemExit(f"unknown reference server {kind!r}")
