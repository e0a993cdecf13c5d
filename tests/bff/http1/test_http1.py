"""The proxy's HTTP/1.1 client (bff/proxy/http1.py) against a scripted server on 127.0.0.1: what
it sends, keep-alive and its limits, framing, timeouts, the pool, TLS, and that no error carries
the platform token. Each test runs on asyncio's loop and on uvloop's (conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import ssl
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bff.proxy.http1 import Http1Upstream
from bff.proxy.upstream import Timeouts, UpstreamError, UpstreamTimeout, UpstreamTooLarge

from .raw_http_server import Req, answer, ok, raw_server, self_signed

T = Timeouts(connect=2.0, read=5.0, total=10.0)
SECRET = "pt_secret_platform_token_value"
AUTH = {"Authorization": f"Bearer {SECRET}", "Accept": "application/json"}


def new_client(
    base: str,
    *,
    pool: int = 10,
    keepalive: float = 30.0,
    max_bytes: int = 1 << 20,
    ssl_context: ssl.SSLContext | None = None,
) -> Http1Upstream:
    return Http1Upstream(
        base,
        max_connections=pool,
        keepalive_timeout=keepalive,
        max_response_bytes=max_bytes,
        ssl_context=ssl_context,
    )


@contextlib.asynccontextmanager
async def client(base: str, **options: Any) -> AsyncIterator[Http1Upstream]:
    """``new_client(base, **options)``, closed on the way out."""
    up = new_client(base, **options)
    try:
        yield up
    finally:
        await up.aclose()


def no_secret(exc: BaseException) -> None:
    assert SECRET not in str(exc) and SECRET not in repr(exc)
    # Nothing chained that could carry the request (its headers) along.
    assert exc.__cause__ is None and (exc.__suppress_context__ or exc.__context__ is None)


async def test_request_bytes_and_keep_alive_reuse() -> None:
    async with raw_server() as server, client(server.base) as up:
        r1 = await up.send("GET", "/catalog/products?x=1", AUTH, None, T)
        r2 = await up.send("POST", "/orders", {**AUTH, "Content-Type": "application/json"}, b'{"a":1}', T)
        r3 = await up.send("DELETE", "/orders/1", AUTH, None, T)
    assert (r1.status, r1.content_type, r1.body) == (
        200,
        "application/json",
        b'{"path":"/api/v1/catalog/products?x=1"}',
    )
    assert r2.body == b'{"path":"/api/v1/orders"}' and r3.status == 200
    assert server.conns_of_requests() == [1, 1, 1]  # one connection, kept alive
    get, post, delete = server.requests
    assert get.method == "GET" and get.target == "/api/v1/catalog/products?x=1"
    names = [k.lower() for k, _ in get.headers]
    # Host, the caller's headers and Accept-Encoding: no User-Agent, Connection, cookies or length.
    assert names == ["host", "authorization", "accept", "accept-encoding"]
    assert (
        get.header("host") == f"127.0.0.1:{server.port}"
        and get.header("authorization") == AUTH["Authorization"]
    )
    assert post.body == b'{"a":1}' and post.header("content-length") == "7"
    assert delete.header("content-length") is None and delete.body == b""


async def test_a_post_without_body_says_content_length_0() -> None:
    async with raw_server() as server, client(server.base) as up:
        await up.send("POST", "/x", AUTH, None, T)
    assert server.requests[0].header("content-length") == "0"


async def test_only_the_passed_headers_reach_the_caller() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        extra = (
            ("Set-Cookie", "a=b"),
            ("Retry-After", "7"),
            ("Idempotent-Replayed", "true"),
            ("X-Internal", "1"),
        )
        w.write(answer(503, b"{}", (("content-type", "application/json; charset=utf-8"), *extra)))
        return True

    async with raw_server(handler) as server, client(server.base) as up:
        r = await up.send("GET", "/x", AUTH, None, T)
    assert r.status == 503 and r.content_type == "application/json; charset=utf-8"
    assert r.headers == {"retry-after": "7", "idempotent-replayed": "true"}


async def test_server_closing_an_idle_connection_does_not_fail_the_next_request() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        await ok(req, w)
        return False  # closes after answering, without saying so (its keep-alive ran out)

    async with raw_server(handler) as server, client(server.base) as up:
        await up.send("GET", "/a", AUTH, None, T)
        await server.ended(1)
        await asyncio.sleep(0.05)  # the client's loop sees the end of the connection
        r = await up.send("GET", "/b", AUTH, None, T)
        await server.ended(2)
        # Even a POST: the closed connection is noticed before it is taken.
        await asyncio.sleep(0.05)
        r2 = await up.send("POST", "/c", AUTH, b"{}", T)
    assert r.status == 200 and r2.status == 200
    assert server.conns_of_requests() == [1, 2, 3]


async def test_a_reused_connection_closed_before_answering_is_retried_once_for_idempotent_methods() -> None:
    # The keep-alive race: the server drops the connection as the second request arrives.
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.target.endswith("/drop"):
            return False
        await ok(req, w)
        return True

    async with raw_server(handler) as server, client(server.base) as up:
        await up.send("GET", "/first", AUTH, None, T)
        with pytest.raises(UpstreamError) as info:
            await up.send("GET", "/drop", AUTH, None, T)  # dropped on the reused and the fresh one
        no_secret(info.value)
        assert server.conns_of_requests() == [1, 1, 2]  # one retry, on a new connection
        await up.send("GET", "/first", AUTH, None, T)
        with pytest.raises(UpstreamError):
            await up.send("POST", "/drop", AUTH, b"{}", T)
    assert server.conns_of_requests() == [1, 1, 2, 3, 3]  # the POST went once


async def test_the_retry_answers_when_only_the_stale_connection_failed() -> None:
    dropped = False

    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        nonlocal dropped
        if req.target.endswith("/b") and not dropped:
            dropped = True
            return False
        await ok(req, w)
        return True

    async with raw_server(handler) as server, client(server.base) as up:
        await up.send("GET", "/a", AUTH, None, T)
        r = await up.send("PUT", "/b", AUTH, b"{}", T)
    assert r.status == 200 and server.conns_of_requests() == [1, 1, 2]
    assert server.requests[2].body == b"{}"


async def test_a_fresh_connection_closed_before_answering_is_not_retried() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        return False

    async with raw_server(handler) as server, client(server.base) as up:
        with pytest.raises(UpstreamError) as info:
            await up.send("GET", "/x", AUTH, None, T)
    assert type(info.value) is UpstreamError and server.conns_of_requests() == [1]


async def test_connection_close_is_honoured() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(answer(headers=(("Connection", "close"),)))
        await asyncio.sleep(0.2)  # the server would keep it open: the client must not reuse it
        return True

    async with raw_server(handler) as server, client(server.base) as up:
        await up.send("GET", "/a", AUTH, None, T)
        await up.send("GET", "/b", AUTH, None, T)
    assert server.conns_of_requests() == [1, 2]


async def test_http_1_0_answers() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.target.endswith("/eof"):
            w.write(answer(body=b"until-close", version="1.0", length=False))
            return False
        w.write(answer(body=b"kept", headers=(("Connection", "keep-alive"),), version="1.0"))
        return True

    async with raw_server(handler) as server, client(server.base) as up:
        r1 = await up.send("GET", "/eof", AUTH, None, T)
        r2 = await up.send("GET", "/keep", AUTH, None, T)
        r3 = await up.send("GET", "/keep", AUTH, None, T)
    assert (r1.body, r2.body, r3.body) == (b"until-close", b"kept", b"kept")
    assert server.conns_of_requests() == [1, 2, 2]


async def test_a_plain_1_0_answer_is_not_kept() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(answer(version="1.0"))
        return True

    async with raw_server(handler) as server, client(server.base) as up:
        await up.send("GET", "/a", AUTH, None, T)
        await up.send("GET", "/b", AUTH, None, T)
    assert server.conns_of_requests() == [1, 2]


async def test_a_body_cut_short_by_the_end_of_the_connection_fails() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(answer(body=b"0123456789")[:-4])
        return False

    async with raw_server(handler) as server, client(server.base) as up:
        with pytest.raises(UpstreamError) as info:
            await up.send("GET", "/a", AUTH, None, T)
    assert "incomplete" in str(info.value)


async def test_an_early_answer_while_the_body_is_still_being_sent_is_not_kept() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(answer(413, b'{"error":"too large"}'))  # without reading the body
        if req.method == "POST" and req.target == "/api/v1/upload":
            await w.drain()
            await asyncio.sleep(1)  # holds the connection open meanwhile
        return True

    async with raw_server(handler) as server:
        server.read_bodies = False
        async with client(server.base) as up:
            r = await up.send("POST", "/upload", AUTH, b"x" * (64 << 20), T)
            server.read_bodies = True
            r2 = await up.send("POST", "/after", AUTH, b"{}", T)  # a POST is not retried
    assert (r.status, r2.status) == (413, 413)
    assert server.conns_of_requests() == [1, 2]  # the rest of the body never precedes a request


async def test_chunked_answers_in_pieces() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        for piece in (b'{"a":', b'"bc"', b"}"):
            await w.drain()
            await asyncio.sleep(0.01)
            w.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        w.write(b"0\r\n\r\n")
        return True

    async with raw_server(handler) as server, client(server.base) as up:
        r1 = await up.send("GET", "/a", AUTH, None, T)
        r2 = await up.send("GET", "/b", AUTH, None, T)
    assert r1.body == r2.body == b'{"a":"bc"}'
    assert server.conns_of_requests() == [1, 1]


@pytest.mark.parametrize("framing", ["length", "chunked", "until-close", "gzip"])
async def test_too_large_answers_fail_and_the_connection_is_not_reused(framing: str) -> None:
    big = b"x" * 5000

    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.target.endswith("/small"):
            await ok(req, w)
            return True
        if framing == "length":
            w.write(answer(body=big))
        elif framing == "chunked":
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for _ in range(5):
                w.write(b"3e8\r\n" + b"y" * 1000 + b"\r\n")
                await w.drain()
            w.write(b"0\r\n\r\n")
        elif framing == "until-close":
            w.write(answer(body=big, version="1.0", length=False))
            return False
        else:  # small on the wire, too large once decoded
            w.write(answer(body=gzip.compress(big), headers=(("Content-Encoding", "gzip"),)))
        return True

    async with raw_server(handler) as server, client(server.base, max_bytes=4096) as up:
        with pytest.raises(UpstreamTooLarge):
            await up.send("GET", "/big", AUTH, None, T)
        r = await up.send("GET", "/small", AUTH, None, T)
    # The gzip answer was read in full: its connection is fine (the limit is on the decoded size).
    assert r.status == 200 and server.conns_of_requests() == ([1, 1] if framing == "gzip" else [1, 2])


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_answers_are_decoded(encoding: str) -> None:
    data = b'{"items":[' + b",".join(b'{"id":%d}' % i for i in range(200)) + b"]}"
    if encoding == "gzip":
        wire = gzip.compress(data)
    elif encoding == "deflate":
        wire = zlib.compress(data)
    else:
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        wire = c.compress(data) + c.flush()

    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        name = "deflate" if "deflate" in encoding else "gzip"
        w.write(answer(body=wire, headers=(("Content-Type", "application/json"), ("Content-Encoding", name))))
        return True

    async with raw_server(handler) as server, client(server.base) as up:
        r = await up.send("GET", "/a", AUTH, None, T)
    assert r.body == data and server.requests[0].header("accept-encoding") == "gzip, deflate"


async def test_unknown_or_broken_encodings_fail() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        wire, name = (
            (b"\x00\x01", "br") if req.target.endswith("/br") else (gzip.compress(b"abc")[:-6], "gzip")
        )
        w.write(answer(body=wire, headers=(("Content-Encoding", name),)))
        return True

    async with raw_server(handler) as server, client(server.base) as up:
        for path in ("/br", "/cut"):
            with pytest.raises(UpstreamError) as info:
                await up.send("GET", path, AUTH, None, T)
            assert type(info.value) is UpstreamError


async def test_read_timeout() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.target.endswith("/slow"):
            await asyncio.sleep(2)
        await ok(req, w)
        return True

    async with raw_server(handler) as server, client(server.base) as up:
        with pytest.raises(UpstreamTimeout) as info:
            await up.send("GET", "/slow", AUTH, None, Timeouts(connect=2, read=0.2, total=10))
        no_secret(info.value)
        r = await up.send("GET", "/fast", AUTH, None, T)
    assert r.status == 200 and server.conns_of_requests() == [1, 2]  # the timed-out one is gone


async def test_total_timeout_while_the_answer_trickles() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        for _ in range(100):
            await w.drain()
            await asyncio.sleep(0.02)  # each read well within the read timeout
            w.write(b"x")
        return True

    async with raw_server(handler) as server, client(server.base) as up:
        with pytest.raises(UpstreamTimeout):
            await up.send("GET", "/a", AUTH, None, Timeouts(connect=2, read=1.0, total=0.3))


async def test_connect_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        async with client(f"http://127.0.0.1:{port}/api/v1") as up:
            with pytest.raises(UpstreamError) as info:
                await up.send("GET", "/a", AUTH, None, T)
    assert type(info.value) is UpstreamError and "ConnectionRefusedError" in str(info.value)
    no_secret(info.value)


@pytest.mark.parametrize("status", [204, 304])
async def test_no_body_for_204_and_304(status: int) -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.target.endswith("/empty"):
            # A Content-Length on a 304 describes the full answer; no body follows it.
            w.write(f'HTTP/1.1 {status} X\r\nContent-Length: 10\r\nETag: "a"\r\n\r\n'.encode())
        else:
            await ok(req, w)
        return True

    async with raw_server(handler) as server, client(server.base) as up:
        r1 = await up.send("GET", "/empty", AUTH, None, T)
        r2 = await up.send("POST", "/after", AUTH, b"{}", T)  # a POST is not retried
    assert (r1.status, r1.body) == (status, b"")
    assert r2.body == b'{"path":"/api/v1/after"}' and server.conns_of_requests() == [1, 1]


async def test_head_has_no_body() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.method == "HEAD":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1234\r\n\r\n")
        else:
            await ok(req, w)
        return True

    async with raw_server(handler) as server, client(server.base) as up:
        r1 = await up.send("HEAD", "/a", AUTH, None, T)
        r2 = await up.send("GET", "/b", AUTH, None, T)
    assert (r1.status, r1.body, r1.content_type) == (200, b"", "application/json")
    assert r2.status == 200 and server.conns_of_requests() == [1, 2]  # closed after a HEAD


async def test_interim_answers_are_skipped() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n")
        await ok(req, w)
        return True

    async with raw_server(handler) as server, client(server.base) as up:
        r = await up.send("GET", "/a", AUTH, None, T)
        r2 = await up.send("GET", "/b", AUTH, None, T)
    assert (r.status, r2.status) == (200, 200) and server.conns_of_requests() == [1, 1]


async def test_bytes_after_the_answer_make_the_connection_unusable() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(answer() + (answer(body=b"smuggled") if req.target.endswith("/twice") else b""))
        return True

    async with raw_server(handler) as server, client(server.base) as up:
        r1 = await up.send("GET", "/twice", AUTH, None, T)
        r2 = await up.send("GET", "/next", AUTH, None, T)
    assert r1.body == b'{"ok":true}' and r2.body == b'{"ok":true}'
    assert server.conns_of_requests() == [1, 2]


async def test_malformed_answers_fail() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc")
        return True

    async with raw_server(handler) as server, client(server.base) as up:
        with pytest.raises(UpstreamError) as info:
            await up.send("GET", "/a", AUTH, None, T)
    assert "malformed" in str(info.value)


async def test_more_callers_than_connections_wait_for_one() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        await ok(req, w)
        return True

    async with raw_server(handler) as server, client(server.base, pool=2) as up:
        answers = await asyncio.gather(*(up.send("GET", f"/n{i}", AUTH, None, T) for i in range(12)))
    assert [a.body for a in answers] == [b'{"path":"/api/v1/n%d"}' % i for i in range(12)]
    assert server.max_open == 2 and server.connections == 2


async def test_waiting_for_a_connection_counts_against_the_total_timeout() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(1.0)
        await ok(req, w)
        return True

    async with raw_server(handler) as server, client(server.base, pool=1) as up:
        first = asyncio.ensure_future(up.send("GET", "/a", AUTH, None, T))
        await asyncio.sleep(0.05)
        with pytest.raises(UpstreamTimeout) as info:
            await up.send("GET", "/b", AUTH, None, Timeouts(connect=2, read=5, total=0.2))
        assert "pooled connection" in str(info.value)
        assert (await first).status == 200
    assert server.conns_of_requests() == [1]


async def test_a_cancelled_request_frees_its_connection_and_is_not_reused() -> None:
    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        if req.target.endswith("/slow"):
            await asyncio.sleep(0.3)
        await ok(req, w)
        return True

    async with raw_server(handler) as server, client(server.base, pool=1) as up:
        task = asyncio.ensure_future(up.send("GET", "/slow", AUTH, None, T))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        r = await up.send("GET", "/fast", AUTH, None, T)  # the only slot is free again
    assert r.status == 200 and server.conns_of_requests() == [1, 2]


async def test_idle_connections_expire() -> None:
    async with raw_server() as server, client(server.base, keepalive=0.1) as up:
        await up.send("GET", "/a", AUTH, None, T)
        await server.ended(1)  # the client closed it after keepalive_timeout
        await up.send("GET", "/b", AUTH, None, T)
    assert server.conns_of_requests() == [1, 2]


async def test_unsafe_headers_and_targets_are_refused_before_sending() -> None:
    async with raw_server() as server, client(server.base) as up:
        for method, target, headers in (
            ("GET", "/a", {**AUTH, "X-Evil": "a\r\nX-Injected: 1"}),
            ("GET", "/a", {**AUTH, "X-Evil": "a\nb"}),
            ("GET", "/a", {**AUTH, "X-Evil": "a\x00"}),
            ("GET", "/a", {**AUTH, "Content-Length": "0"}),
            ("GET", "/a", {**AUTH, "host": "evil.test"}),
            ("GET", "/a", {**AUTH, "Transfer-Encoding": "chunked"}),
            ("GET", "/a", {**AUTH, "X-A: b": "c"}),
            ("GET", "/a", {**AUTH, "X A": "c"}),
            ("GET", "/a", {**AUTH, "": "c"}),
            ("GET", "/a b", AUTH),
            ("GET", "/a\r\nX: 1", AUTH),
            ("GET", "a", AUTH),
            ("G ET", "/a", AUTH),
        ):
            with pytest.raises(UpstreamError) as info:
                await up.send(method, target, headers, None, T)
            no_secret(info.value)
    assert server.requests == []


def test_base_urls_are_checked() -> None:
    for bad in ("ftp://x/api", "http:///api", "http://u:p@x/api", "http://x/api?q=1"):
        with pytest.raises(ValueError):
            new_client(bad)
    assert repr(new_client("https://api.vluna.ai/api/v1/")) == "Http1Upstream('https://api.vluna.ai/api/v1')"


async def test_https_with_a_trusted_certificate(tmp_path: object) -> None:
    cert = self_signed(str(tmp_path))
    trusting = ssl.create_default_context(cafile=str(cert.ca_file))
    async with raw_server(ssl_context=cert.server) as server:
        up = new_client(server.base, ssl_context=trusting)
        default = new_client(server.base)  # the system's trust store: this certificate is not in it
        try:
            r1 = await up.send("GET", "/a", AUTH, None, T)
            r2 = await up.send("GET", "/b", AUTH, None, T)
            with pytest.raises(UpstreamError) as info:
                await default.send("GET", "/c", AUTH, None, T)
        finally:
            await up.aclose()
            await default.aclose()
    assert r1.body == b'{"path":"/api/v1/a"}' and r2.status == 200
    assert server.conns_of_requests() == [1, 1]  # kept alive over TLS too
    assert "SSLCertVerificationError" in str(info.value)
    no_secret(info.value)


async def test_https_checks_the_host_name(tmp_path: object) -> None:
    cert = self_signed(str(tmp_path))
    trusting = ssl.create_default_context(cafile=str(cert.ca_file))
    # The certificate names 127.0.0.1, not localhost.
    async with (
        raw_server(ssl_context=cert.server) as server,
        client(f"https://localhost:{server.port}/api/v1", ssl_context=trusting) as up,
    ):
        with pytest.raises(UpstreamError):
            await up.send("GET", "/a", AUTH, None, T)
    assert server.requests == []


async def test_after_aclose_requests_fail() -> None:
    async with raw_server() as server:
        up = new_client(server.base)
        await up.send("GET", "/a", AUTH, None, T)
        await up.aclose()
        with pytest.raises(UpstreamError):
            await up.send("GET", "/b", AUTH, None, T)
        await server.ended(1)  # the idle connection was closed
    assert server.conns_of_requests() == [1]


async def test_latin_1_values_are_sent_as_their_bytes_and_wider_ones_refused() -> None:
    # The proxy reads a client's header bytes as Latin-1: sent back as the same bytes.
    async with raw_server() as server, client(server.base) as up:
        await up.send("GET", "/x", {"Accept-Language": "fr-\xe9"}, None, T)
        with pytest.raises(UpstreamError, match="beyond Latin-1") as caught:
            await up.send("GET", "/x", {"Accept-Language": "fr-\u20ac"}, None, T)
    no_secret(caught.value)
    assert [r.header("accept-language") for r in server.requests] == ["fr-\xe9"]
