"""What the hostile tests share: a real `vluna-bff serve` in front of the emulator, which sits
behind a byte-counting TCP relay (`serving`, `Target`, `CountingRelay`)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

from tests.support.emulator import Emulator, start_emulator
from tests.support.keys import UserKeys
from tests.support.ports import LOOPBACK
from tests.support.processes import Proc
from tests.support.redis_servers import SHARED_REDIS_URL, cleanup_prefix
from tests.support.service import bff_config, start_bff, write_config


class CountingRelay:
    """TCP relay 127.0.0.1:<port> -> the emulator, counting bytes sent upstream (threads)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.bytes_up = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((LOOPBACK, self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while data := src.recv(65536):
                if up:
                    with self._lock:
                        self.bytes_up += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()


class Target:
    def __init__(self, bff: Proc, emulator: Emulator, relay: CountingRelay, keys: UserKeys) -> None:
        self.bff = bff
        self.emulator = emulator
        self.relay = relay
        self.keys = keys

    def upstream_marks(self) -> tuple[int, int]:
        return self.emulator.calls(), self.relay.bytes_up


@contextlib.contextmanager
def serving(
    keys: UserKeys, *, upstream: str | None = None, stderr: Any = None, **sections: Any
) -> Iterator[Target]:
    """The emulator behind a counting relay and `vluna-bff serve` in front of it (Redis: the
    shared server, under a key prefix of its own). `upstream`: another /api/v1 base for the proxy;
    `stderr`: a file for the service's log. Keyword arguments are configuration sections merged
    over the production-shaped defaults."""
    emulator = start_emulator()
    relay = CountingRelay(emulator.port)
    sections.setdefault("auth", {"jwt": {"leeway_sec": 5}})
    if upstream is not None:
        sections["proxy"] = {**sections.get("proxy", {}), "upstream_base_url": upstream}
    data = bff_config(relay.url, keys.pem(), redis_url=SHARED_REDIS_URL, **sections)
    cfg = write_config(data)
    try:
        bff = start_bff(cfg, stderr=stderr)
    except Exception:
        relay.close()
        emulator.stop()
        raise
    finally:
        cfg.unlink()
    try:
        yield Target(bff, emulator, relay, keys)
    finally:
        bff.stop()
        relay.close()
        emulator.stop()
        cleanup_prefix(data["cache"]["key_prefix"])


def exchange(port: int, data: bytes, timeout: float = 15.0) -> tuple[int, bytes]:
    """Send raw bytes to 127.0.0.1:`port`; returns the status and everything the server answered."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as s:
        with contextlib.suppress(OSError):  # the server may answer and close before reading it all
            s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    raw = b"".join(chunks)
    assert raw.startswith(b"HTTP/1.1 "), raw[:200]
    return int(raw[9:12]), raw
