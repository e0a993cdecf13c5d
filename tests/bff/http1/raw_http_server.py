"""A scripted HTTP/1.1 server on 127.0.0.1 for the proxy client's tests (tests/bff/test_http1.py):
it reads requests (head, Content-Length body) and lets each test write any bytes back, so
framing, keep-alive and broken answers can be produced exactly."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LOOPBACK = "127.0.0.1"


@dataclass
class Req:
    conn: int  # the connection's number, from 1, in accept order
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None


# Writes the answer; returns False to close the connection afterwards.
Handler = Callable[[Req, asyncio.StreamWriter], Awaitable[bool]]


def answer(
    status: int = 200,
    body: bytes = b'{"ok":true}',
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),),
    *,
    version: str = "1.1",
    length: bool = True,
) -> bytes:
    lines = [f"HTTP/{version} {status} X"] + [f"{k}: {v}" for k, v in headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def ok(req: Req, w: asyncio.StreamWriter) -> bool:
    w.write(answer(body=b'{"path":"%s"}' % req.target.encode()))
    return True


@dataclass
class RawServer:
    handler: Handler
    port: int = 0
    scheme: str = "http"
    read_bodies: bool = True  # False: the handler answers without reading the request's body
    requests: list[Req] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    max_open: int = 0
    closed: int = 0  # connections ended
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def ended(self, n: int) -> None:
        """Until ``n`` connections have ended (10 s at most)."""
        for _ in range(1000):
            if self.closed >= n:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"{self.closed} connections ended, not {n}")

    @property
    def base(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/api/v1"

    def conns_of_requests(self) -> list[int]:
        return [r.conn for r in self.requests]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.connections += 1
        number = self.connections
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = [(k, v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line)]
                req = Req(number, method, target, headers, b"")
                length = req.header("content-length")
                if length and self.read_bodies:
                    req.body = await reader.readexactly(int(length))
                self.requests.append(req)
                keep = await self.handler(req, writer)
                await writer.drain()
                if not keep:
                    return
        finally:
            self.open_now -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            self.closed += 1
            self.tasks.discard(task)


@contextlib.asynccontextmanager
async def raw_server(
    handler: Handler = ok, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[RawServer]:
    server = RawServer(handler, scheme="https" if ssl_context else "http")
    srv = await asyncio.start_server(server.serve, "127.0.0.1", 0, ssl=ssl_context)
    server.port = srv.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        srv.close()
        for _ in range(200):  # the client's closes arrive
            if not server.tasks:
                break
            await asyncio.sleep(0.01)
        for task in list(server.tasks):
            task.cancel()
        await asyncio.gather(*server.tasks, return_exceptions=True)
        await srv.wait_closed()


@dataclass
class SelfSigned:
    server: ssl.SSLContext
    ca_file: Path  # the certificate, for a client context that trusts it


def self_signed(directory: str) -> SelfSigned:
    """A certificate for 127.0.0.1 (key and certificate written to ``directory``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file = Path(directory) / "cert.pem"
    key_file = Path(directory) / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert_file, key_file)
    return SelfSigned(ctx, cert_file)


__all__ = ["RawServer", "Req", "SelfSigned", "answer", "ok", "raw_server", "self_signed"]
