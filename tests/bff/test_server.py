"""The server stack's pieces in process: launch options, the request guard (head size, body
deadline), hiredis under redis-py. Real processes and sockets: tests/hostile/test_slow_clients.py,
tests/bff/test_cli_workers.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from bff.errors import RequestTimeout
from bff.http_guard import RequestGuard
from bff.redis_client import make_redis
from bff.server import ServerOptions, bind_address
from bff.settings import RedisSettings, Settings, SettingsError, validate_settings

from .support import Keys, base_settings

Message = dict[str, Any]


@pytest.fixture
def settings(keys: Keys) -> Callable[..., Settings]:
    def make(**server: Any) -> Settings:
        return validate_settings(base_settings(keys, server=server))

    return make


def test_options_come_from_the_settings_and_the_command_line(settings: Callable[..., Settings]) -> None:
    s = settings(port=9000, workers=3, header_read_timeout_sec=2.5, max_header_bytes=4096)
    o = ServerOptions.from_settings(s)
    assert (o.host, o.port, o.workers, o.header_read_timeout_sec) == ("127.0.0.1", 9000, 3, 2.5)
    assert o.grace_sec == s.observability.shutdown_grace_sec
    assert o.read_buffer_bytes == 16384  # 4 x 4096, above hyper's 8 KiB floor
    o = ServerOptions.from_settings(s, host="::", port=9001, workers=1, grace_sec=3)
    assert (o.host, o.port, o.workers, o.grace_sec) == ("::", 9001, 1, 3)
    assert ServerOptions.from_settings(settings(max_header_bytes=1024)).read_buffer_bytes == 8192


def test_port_zero_is_refused_by_name(settings: Callable[..., Settings]) -> None:
    # Every worker binds the port itself: 0 would give each one a different port.
    with pytest.raises(SettingsError, match=r"server\.port"):
        ServerOptions.from_settings(settings(port=0))


def test_host_names_are_resolved_and_bad_ones_named() -> None:
    assert bind_address("localhost") in ("127.0.0.1", "::1")
    assert bind_address("0.0.0.0") == "0.0.0.0"
    with pytest.raises(SettingsError, match=r"server\.host.*no-such-host\.invalid"):
        bind_address("no-such-host.invalid")


async def test_redis_replies_are_parsed_by_hiredis() -> None:
    client = make_redis(RedisSettings(url=SecretStr("redis://127.0.0.1:6379/0")))
    assert isinstance(client, Redis)
    try:
        assert await client.ping()
        conn = await client.connection_pool.get_connection()
        try:
            assert type(conn._parser).__name__ == "_AsyncHiredisParser"
        finally:
            await client.connection_pool.release(conn)
    finally:
        await client.aclose()


# -- the request guard ----------------------------------------------------------------------------


class Recorder:
    """The inner app: reads the whole body (reporting what it saw), then answers 200."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.called = False

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        self.called = True
        while True:
            message = await receive()
            self.messages.append(message)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def scope(headers: list[tuple[bytes, bytes]], path: str = "/vluna/token", method: str = "GET") -> Message:
    return {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"x"), *headers],
    }


async def run(guard: RequestGuard, sc: Message, chunks: list[bytes], stall: bool = False) -> list[Message]:
    """Feed `chunks` as the body (then, with `stall`, never the rest); return what was sent."""
    pending = list(chunks)
    sent: list[Message] = []

    async def receive() -> Message:
        if pending:
            body = pending.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(pending) or stall}
        if stall:
            await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await asyncio.wait_for(guard(sc, receive, send), 10)
    return sent


def status_and_body(sent: list[Message]) -> tuple[int, Message, dict[bytes, bytes]]:
    start = sent[0]
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], json.loads(body) if body != b"ok" else {}, dict(start["headers"])


@pytest.mark.parametrize("limit", [1024, 16384])
async def test_a_head_over_the_limit_is_431_in_json_and_closes(limit: int) -> None:
    guard = RequestGuard(Recorder(), max_header_bytes=limit, body_read_timeout_sec=5)
    # The head as sent: request line, "host: x", the header, the empty line.
    line = len("GET /vluna/token HTTP/1.1\r\n") + len("host: x\r\n") + len("\r\n")
    room = limit - line - len("authorization: \r\n")
    fits = scope([(b"authorization", b"a" * room)])
    assert status_and_body(await run(guard, fits, [b""]))[0] == 200
    over = scope([(b"authorization", b"a" * (room + 1))])
    status, body, headers = status_and_body(await run(guard, over, [b""]))
    assert status == 431 and body["error"] == "headers_too_large" and str(limit) in body["message"]
    assert headers[b"connection"] == b"close"


async def test_many_small_headers_count_as_much_as_one_big_one() -> None:
    inner = Recorder()
    guard = RequestGuard(inner, max_header_bytes=2048, body_read_timeout_sec=5)
    status, body, _ = status_and_body(await run(guard, scope([(b"x-a", b"b" * 10)] * 150), [b""]))
    assert body["error"] == "headers_too_large"
    assert status == 431 and not inner.called


async def test_ambiguous_framing_is_400() -> None:
    guard = RequestGuard(Recorder(), max_header_bytes=16384, body_read_timeout_sec=5)
    for headers in (
        [(b"content-length", b"2"), (b"content-length", b"3")],
        [(b"content-length", b"-1")],
        [(b"transfer-encoding", b"gzip, chunked")],
        [(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")],
    ):
        status, body, headers_out = status_and_body(await run(guard, scope(headers, method="POST"), [b"{}"]))
        assert status == 400 and body["error"] == "bad_request_framing", headers
        assert headers_out[b"connection"] == b"close"


async def test_a_body_in_time_passes_through() -> None:
    inner = Recorder()
    guard = RequestGuard(inner, max_header_bytes=16384, body_read_timeout_sec=5)
    sent = await run(guard, scope([(b"content-length", b"4")], method="POST"), [b"{", b'"}'[:1], b"}"])
    assert status_and_body(sent)[0] == 200
    assert b"".join(m["body"] for m in inner.messages) == b'{"}'


async def test_a_stalled_body_is_408_and_the_app_sees_the_client_gone() -> None:
    inner = Recorder()
    guard = RequestGuard(inner, max_header_bytes=16384, body_read_timeout_sec=0.3)
    sent = await run(guard, scope([(b"content-length", b"5000")], method="POST"), [b'{"a":'], stall=True)
    status, body, headers = status_and_body(sent[:2])
    assert status == 408 and body == {
        "error": "request_timeout",
        "message": "the request body did not arrive within 0.3 s",
    }
    assert headers[b"connection"] == b"close"
    # The app got what had come, then RequestTimeout from its receive (here unhandled: the guard
    # answered); nothing else was sent.
    assert inner.messages == [{"type": "http.request", "body": b'{"a":', "more_body": True}]
    assert len(sent) == 2


async def test_when_the_app_answers_the_timeout_itself_the_connection_still_closes() -> None:
    async def app(sc: Message, receive: Any, send: Any) -> None:
        try:
            await receive()
            await receive()
        except RequestTimeout as exc:
            body = json.dumps({"error": exc.code, "message": exc.message}).encode()
            await send({"type": "http.response.start", "status": exc.status, "headers": []})
            await send({"type": "http.response.body", "body": body})

    guard = RequestGuard(app, max_header_bytes=16384, body_read_timeout_sec=0.2)
    sent = await run(guard, scope([(b"content-length", b"10")], method="POST"), [b"{"], stall=True)
    status, body, headers = status_and_body(sent)
    assert status == 408 and body["error"] == "request_timeout"
    assert headers[b"connection"] == b"close"


async def test_a_chunked_body_is_timed_too() -> None:
    guard = RequestGuard(Recorder(), max_header_bytes=16384, body_read_timeout_sec=0.3)
    sent = await run(guard, scope([(b"transfer-encoding", b"chunked")], method="POST"), [b"{"], stall=True)
    assert sent[0]["status"] == 408


async def test_requests_without_a_body_are_not_wrapped() -> None:
    seen: list[Any] = []

    async def app(sc: Message, receive: Any, send: Any) -> None:
        seen.append(receive)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    guard = RequestGuard(app, max_header_bytes=16384, body_read_timeout_sec=0.3)

    async def send(message: Message) -> None:
        raise AssertionError(f"nothing is sent here: {message}")

    for headers in ([], [(b"content-length", b"0")]):
        await guard(scope(headers), receive, send)
    assert seen == [receive, receive]
