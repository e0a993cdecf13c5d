"""Redis for tests and benchmarks: the shared server's URL (never flushed: everything lives under
a key prefix of its own and is deleted by prefix), private redis-server processes a test may stop,
and a TCP relay that can cut Redis off from the clients behind it."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess

from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import Proc
from tests.support.waiting import poll_until

SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"


def dead_redis_url() -> str:
    """A Redis URL on a loopback port nothing listens on (connections are refused)."""
    return f"redis://{LOOPBACK}:{free_port()}/0"


def start_redis(port: int | None = None) -> Proc:
    """A private redis-server (no persistence) that a drill may stop and start again."""
    port = port or free_port()
    exe = shutil.which("redis-server")
    if exe is None:
        raise RuntimeError("redis-server is not installed")
    popen = subprocess.Popen(
        [exe, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proc = Proc("redis", popen, url=f"redis://{LOOPBACK}:{port}/0", port=port)

    def ready() -> bool:
        assert proc.alive(), "redis-server exited"
        with socket.socket() as s:
            s.settimeout(0.2)
            try:
                s.connect((LOOPBACK, port))
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

    poll_until(ready, 10, what="redis-server up")
    return proc


def cleanup_prefix(prefix: str, redis_url: str = SHARED_REDIS_URL) -> None:
    """Delete every key under `prefix` (what one test or run left behind)."""
    import redis

    r = redis.Redis.from_url(redis_url)
    try:
        keys = list(r.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            r.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        r.close()


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
        self._server = await asyncio.start_server(self._handle, LOOPBACK, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.drop_next > 0:
            self.drop_next -= 1
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.target_port)
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
