"""The HTTP/1.1 pool behind httpx's transport interface (bff/http1/httpx_transport.py), as the
service's SDK client uses it: against a scripted server (exact bytes both ways) and against the
emulator, where httpx's own transport is the oracle (same answers, same SDK results)."""

from __future__ import annotations

import asyncio
import gzip
import socket
import tempfile
from typing import Any

import httpx
import pytest
from vlunaai import (
    APIConnectionError,
    APITimeoutError,
    ServiceClientOptions,
    ServiceKeyCredentials,
    VlunaAIConfig,
    create_service_client,
)

from bff import netdiag
from bff.http1.httpx_transport import Http1Transport
from tests.support.emulator import EMULATOR_SECRET

from .raw_http_server import Req, answer, raw_server, self_signed

SECRET = "pt_secret_platform_token_value"


def origin(server: Any) -> str:
    return f"{server.scheme}://127.0.0.1:{server.port}"


async def test_request_goes_out_with_httpx_headers_once_and_the_body() -> None:
    async with raw_server() as server:
        transport = Http1Transport(origin(server))
        async with httpx.AsyncClient(transport=transport) as client:
            r = await client.post(
                origin(server) + "/mgt/v1/tokens?x=1",
                content=b'{"a":1}',
                headers=[("Authorization", f"Bearer {SECRET}"), ("X-Dup", "a"), ("X-Dup", "b")],
            )
    assert r.status_code == 200 and r.http_version == "HTTP/1.1"
    (req,) = server.requests
    assert (req.method, req.target, req.body) == ("POST", "/mgt/v1/tokens?x=1", b'{"a":1}')
    names = [k.lower() for k, _ in req.headers]
    # httpx's own headers, each once, but those the pool writes itself (Host, Content-Length,
    # Accept-Encoding; no Connection: keep-alive is HTTP/1.1's default).
    assert names == [
        "host",
        "accept",
        "user-agent",
        "authorization",
        "x-dup",
        "content-length",
        "accept-encoding",
    ]
    assert req.header("host") == f"127.0.0.1:{server.port}"
    assert req.header("content-length") == "7"
    assert req.header("x-dup") == "a, b"
    assert req.header("authorization") == f"Bearer {SECRET}"
    assert (req.header("user-agent") or "").startswith("python-httpx/")


async def test_get_sends_no_body_and_no_content_length() -> None:
    async with (
        raw_server() as server,
        httpx.AsyncClient(transport=Http1Transport(origin(server))) as client,
    ):
        r = await client.get(origin(server) + "/mgt/v1/ping")
    assert r.json() == {"path": "/mgt/v1/ping"}
    assert server.requests[0].header("content-length") is None


async def test_answer_keeps_every_header_line_and_decodes_gzip_once() -> None:
    body = b'{"hello":"world"}' * 20
    packed = gzip.compress(body)

    async def handler(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(
            answer(
                201,
                packed,
                (
                    ("Content-Type", "application/json"),
                    ("Content-Encoding", "gzip"),
                    ("Set-Cookie", "a=1"),
                    ("Set-Cookie", "b=2"),
                    ("X-Request-Id", "req-123"),
                    ("Retry-After", "3"),
                ),
            )
        )
        return True

    async with (
        raw_server(handler) as server,
        httpx.AsyncClient(transport=Http1Transport(origin(server))) as client,
    ):
        r = await client.get(origin(server) + "/x")
    assert r.status_code == 201 and r.content == body
    assert r.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert r.headers["x-request-id"] == "req-123" and r.headers["retry-after"] == "3"
    assert "content-encoding" not in r.headers  # decoded here: httpx must not decode it again
    assert r.headers["content-length"] == str(len(body))


async def test_keep_alive_connection_is_reused() -> None:
    async with (
        raw_server() as server,
        httpx.AsyncClient(transport=Http1Transport(origin(server))) as client,
    ):
        for _ in range(3):
            (await client.get(origin(server) + "/a")).raise_for_status()
    assert server.conns_of_requests() == [1, 1, 1]


async def test_read_timeout_is_httpx_read_timeout_and_an_sdk_timeout() -> None:
    async def silent(req: Req, w: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async with raw_server(silent) as server:
        transport = Http1Transport(origin(server))
        async with httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(5.0, read=0.2)) as client:
            with pytest.raises(httpx.ReadTimeout) as caught:
                await client.get(origin(server) + "/slow", headers={"Authorization": f"Bearer {SECRET}"})
        assert SECRET not in str(caught.value)
        options = _sdk_options(origin(server), timeout=0.3, transport=Http1Transport(origin(server)))
        sdk = create_service_client(options)
        try:
            with pytest.raises(APITimeoutError):
                await sdk.issue_platform_token(body=_issue_body("slow"))
        finally:
            await sdk.close()


async def test_refused_connection_is_connect_error_named_by_netdiag() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        transport = Http1Transport(f"http://127.0.0.1:{port}")
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError) as caught:
                await client.get(f"http://127.0.0.1:{port}/x")
        assert netdiag.cause(caught.value).reason == "refused"
        again = Http1Transport(f"http://127.0.0.1:{port}")  # the client closed the first one
        sdk = create_service_client(_sdk_options(f"http://127.0.0.1:{port}", transport=again))
        try:
            with pytest.raises(APIConnectionError) as sdk_caught:
                await sdk.issue_platform_token(body=_issue_body("refused"))
        finally:
            await sdk.close()
        assert netdiag.cause(sdk_caught.value).reason == "refused"


async def test_untrusted_certificate_is_named_by_netdiag() -> None:
    with tempfile.TemporaryDirectory() as d:
        cert = self_signed(d)
        async with raw_server(ssl_context=cert.server) as server:
            async with httpx.AsyncClient(transport=Http1Transport(origin(server))) as client:
                with pytest.raises(httpx.ConnectError) as caught:
                    await client.get(origin(server) + "/x")
            assert netdiag.cause(caught.value).reason == "tls"
            assert not server.requests


async def test_answer_over_the_limit_is_a_protocol_error() -> None:
    async def big(req: Req, w: asyncio.StreamWriter) -> bool:
        w.write(answer(body=b"x" * 5000))
        return True

    async with raw_server(big) as server:
        transport = Http1Transport(origin(server), max_response_bytes=4096)
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(origin(server) + "/big")


async def test_other_origins_are_refused_without_sending() -> None:
    async with raw_server() as server:
        transport = Http1Transport(origin(server))
        async with httpx.AsyncClient(transport=transport) as client:
            for url in (
                f"http://127.0.0.2:{server.port}/x",  # another host
                f"http://127.0.0.1:{server.port + 1}/x",  # another port
                f"https://127.0.0.1:{server.port}/x",  # another scheme
            ):
                with pytest.raises(httpx.UnsupportedProtocol):
                    await client.get(url)
            assert (await client.get(origin(server) + "/x")).status_code == 200
    assert [r.target for r in server.requests] == ["/x"]


def test_origin_must_be_http_with_a_host() -> None:
    for bad in ("ftp://example.com", "http://", "/just/a/path"):
        with pytest.raises(ValueError, match="origin"):
            Http1Transport(bad)
    assert "secret" not in repr(Http1Transport("https://user:secret@vluna.example/mgt/v1"))


async def test_emulator_answers_match_httpx_own_transport(emulator_url: str) -> None:
    """The oracle: the same requests through httpx's own transport and through ours, against the
    emulator (a real HTTP server), give the same statuses, header names and bodies; the SDK gets
    the same results, successes and rejections alike."""
    seen: list[list[Any]] = []
    for make in (httpx.AsyncHTTPTransport, lambda: Http1Transport(emulator_url)):
        got: list[Any] = []
        async with httpx.AsyncClient(transport=make()) as client:
            for method, path, body in (
                ("GET", "/healthz", None),
                ("GET", "/mgt/v1/no-such-operation", None),
                ("POST", "/mgt/v1/token/issue", b"{}"),  # unsigned: rejected
            ):
                r = await client.request(method, emulator_url + path, content=body)
                names = sorted(set(r.headers) - {"date", "x-request-id"})
                answer = r.json()
                answer.pop("trace_id", None)  # the emulator's counter
                got.append((r.status_code, names, answer))
        good = create_service_client(_sdk_options(emulator_url + "/mgt/v1", transport=make()))
        bad = create_service_client(
            _sdk_options(emulator_url + "/mgt/v1", transport=make(), secret="d3Jvbmc=")
        )
        try:
            ok = await good.issue_platform_token(body=_issue_body("oracle"))
            assert ok.data is not None and ok.data.access_token
            got.append(sorted(ok.data.model_dump(exclude_none=True)))
            try:
                await bad.issue_platform_token(body=_issue_body("oracle"))
            except Exception as exc:  # the class, status and code are what is compared
                got.append((type(exc).__name__, getattr(exc, "status", None), getattr(exc, "code", None)))
        finally:
            await good.close()
            await bad.close()
        seen.append(got)
    assert seen[0] == seen[1]
    assert seen[1][-1][0] == "AuthenticationError"


def _sdk_options(
    base_url: str,
    *,
    timeout: float = 5.0,
    transport: httpx.AsyncBaseTransport | None = None,
    secret: str = EMULATOR_SECRET,
) -> ServiceClientOptions:
    return ServiceClientOptions(
        config=VlunaAIConfig(base_url=base_url, realm_id="realm_demo", timeout_seconds=timeout),
        service_key=ServiceKeyCredentials(key_id="pk-emulator", secret=secret),
        error_mode="raise",
        max_retries=0,
        transport=transport,
    )


def _issue_body(user: str) -> dict[str, Any]:
    return {"principal_id": f"org:{user}", "user_id": user, "scopes": ["checkout"], "session_ttl_sec": 900}


async def test_a_private_ca_is_trusted_through_ssl_cert_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """What docs/operations.md tells operators: SSL_CERT_FILE adds a CA to the default context."""
    with tempfile.TemporaryDirectory() as d:
        cert = self_signed(d)
        monkeypatch.setenv("SSL_CERT_FILE", str(cert.ca_file))
        async with (
            raw_server(ssl_context=cert.server) as server,
            httpx.AsyncClient(transport=Http1Transport(origin(server))) as client,
        ):
            r = await client.get(origin(server) + "/x")
    assert r.status_code == 200 and r.json() == {"path": "/x"}


async def test_header_bytes_beyond_ascii_pass_unchanged() -> None:
    # httpx keeps a header given as bytes as those bytes; the pool must not re-encode them.
    raw = "café".encode()  # UTF-8: b"caf\xc3\xa9"
    async with (
        raw_server() as server,
        httpx.AsyncClient(transport=Http1Transport(origin(server))) as client,
    ):
        r = await client.get(origin(server) + "/x", headers=[(b"X-Label", raw)])
    assert r.status_code == 200
    # The scripted server decodes the head as Latin-1: one character per byte.
    assert server.requests[0].header("x-label") == raw.decode("latin-1")
