"""`serve --workers N` listens on a socket whose accepted connections get TCP_NODELAY.

Without it every small answer waits for the client's delayed ACK (~40 ms); the benchmark's
"1 vs 2 workers" scenario shows the effect, this test pins the cause.
"""

from __future__ import annotations

import socket

import pytest
from uvicorn.supervisors import Multiprocess

from bff import cli


def test_the_shared_listening_socket_has_tcp_nodelay(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[socket.socket] = []

    def capture(self: Multiprocess) -> None:
        seen.extend(self.sockets)

    monkeypatch.setattr(Multiprocess, "run", capture)
    cli.run_workers(2, {"host": "127.0.0.1", "port": 0, "log_config": None})
    try:
        assert len(seen) == 1
        sock = seen[0]
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        assert _accepted_has_nodelay(sock)
    finally:
        for sock in seen:
            sock.close()


def _accepted_has_nodelay(listener: socket.socket) -> bool:
    """What a worker's accepted connection inherits from the listener (Linux semantics)."""
    listener.listen(1)
    with socket.create_connection(listener.getsockname()[:2], timeout=5):
        conn, _ = listener.accept()
        with conn:
            return conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
