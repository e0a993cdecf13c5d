"""Helpers of the proxy tests: the emulator on a real loopback socket (so the production HTTP client
path is what is tested), a recorder of everything that reaches it, and raw ASGI requests that
keep paths exactly as written (httpx would normalise ``..`` away before sending)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import uvicorn
from vlunaai.testing import VlunaEmulator

from bff.proxy.upstream import asgi_call
from bff.settings import Settings
from bff.tokens.issuer import SdkTokenIssuer

from .support import AppClient, Keys, client_for, make_settings, sdk_issuer


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """Wraps the emulator's ASGI app: records every HTTP request, can add answer headers."""

    app: Any
    seen: list[Seen] = field(default_factory=list)
    extra_response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    replace_answer: tuple[int, bytes, bytes] | None = None  # (status, content-type, body)

    def api_calls(self) -> list[Seen]:
        return [s for s in self.seen if s.path.startswith(("/api/", "/mgt/"))]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        raw = scope.get("raw_path") or scope["path"].encode()
        self.seen.append(
            Seen(
                scope["method"],
                raw.decode("latin-1"),
                scope.get("query_string", b"").decode("latin-1"),
                {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]},
                body,
            )
        )
        if self.replace_answer is not None:
            status, ctype, payload = self.replace_answer
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-type", ctype), (b"content-length", str(len(payload)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": payload})
            return
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                await asyncio.sleep(3600)
                return {"type": "http.disconnect"}
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send_with_extras(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and self.extra_response_headers:
                message = {**message, "headers": [*message.get("headers", []), *self.extra_response_headers]}
            await send(message)

        await self.app(scope, replay, send_with_extras)


@dataclass
class EmulatorServer:
    emulator: VlunaEmulator
    recorder: Recorder
    port: int

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1"


@contextlib.asynccontextmanager
async def emulator_server(**options: Any) -> AsyncIterator[EmulatorServer]:
    """The emulator served by uvicorn on 127.0.0.1 (a free port) inside the test's event loop."""
    emulator = VlunaEmulator(**options)
    recorder = Recorder(emulator.app)
    config = uvicorn.Config(
        recorder, host="127.0.0.1", port=0, log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        for _ in range(1000):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.005)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield EmulatorServer(emulator, recorder, port)
    finally:
        server.should_exit = True
        await task
        await emulator.aclose()


def proxy_settings(
    keys: Keys, server: EmulatorServer, prefix: str, **sections: Mapping[str, Any]
) -> Settings:
    proxy = {"upstream_base_url": server.api_base, "retry_backoff_base_sec": 0.0, **sections.pop("proxy", {})}
    cache = {"backend": "redis", "key_prefix": prefix, "redis": {"url": "redis://127.0.0.1:6379/0"}}
    return make_settings(
        keys,
        proxy=proxy,
        cache={**cache, **sections.pop("cache", {})},
        server={"cors_allow_origins": ["https://app.example.test"], **sections.pop("server", {})},
        **sections,
    )


def emulator_issuer(emulator: VlunaEmulator) -> SdkTokenIssuer:
    # Issuance goes through the SDK in-process (not what is under test here).
    return sdk_issuer(emulator, ttl=900)


@contextlib.asynccontextmanager
async def proxy_client(settings: Settings, server: EmulatorServer, **kw: Any) -> AsyncIterator[AppClient]:
    import redis.asyncio as aioredis

    redis = kw.pop("redis", None)
    own = redis is None
    if own:
        redis = NoPubSub(aioredis.Redis.from_url("redis://127.0.0.1:6379/0"))
    try:
        async with client_for(
            settings, emulator_issuer(server.emulator), realm_id=server.emulator.realm_id, redis=redis, **kw
        ) as client:
            yield client
    finally:
        if own:
            await redis.aclose()


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


async def raw_request(
    app: Any, method: str, raw_path: str, headers: Mapping[str, str] | None = None, body: bytes = b""
) -> RawAnswer:
    """One request with its path exactly as given (``path`` percent-decoded like uvicorn does)."""
    path, _, query = raw_path.partition("?")
    status, out_headers, data = await asgi_call(
        app, method, unquote(path), path, query, headers or {}, body, "bff.test"
    )
    return RawAnswer(status, out_headers, data)


@contextlib.asynccontextmanager
async def in_own_task(cm: Any) -> AsyncIterator[Any]:
    """Enter and exit an async context manager in one dedicated task (pytest-asyncio may run a
    fixture's setup and teardown in different tasks; anyio cancel scopes must not see that)."""
    entered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    done = asyncio.Event()

    async def hold() -> None:
        try:
            async with cm as value:
                entered.set_result(value)
                await done.wait()
        except BaseException as exc:
            if not entered.done():
                entered.set_exception(exc)
            raise

    task = asyncio.create_task(hold())
    try:
        yield await entered
    finally:
        done.set()
        await task


class NoPubSub:
    """A Redis client without ``pubsub``: the app then runs without the lock notifier (its waiters
    poll instead), which keeps these tests independent of pub/sub connection shutdown timing."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "pubsub":
            raise AttributeError(name)
        return getattr(self._inner, name)
