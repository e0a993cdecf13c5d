"""`serve --workers N`: N worker processes share the port, and the connections they accept have
TCP_NODELAY.

Without TCP_NODELAY every small answer written in two pieces waits for the client's delayed ACK
(~40 ms); the benchmark's "1 vs 2 workers" scenario shows the effect, this test pins the cause.
The socket options are read from the workers' own sockets (pidfd_getfd: a copy of a descriptor
of another process, Linux 5.6+), not from a stand-in.
"""

from __future__ import annotations

import ctypes
import os
import socket
from collections.abc import Iterator

import pytest

from tests.support.keys import UserKeys
from tests.support.ports import LOOPBACK
from tests.support.processes import Proc, process_tree
from tests.support.service import bff_config, start_bff, write_config
from tests.support.waiting import poll_until

SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture (the generic table)
_libc = ctypes.CDLL(None, use_errno=True)


def socket_of(pid: int, fd: int) -> socket.socket:
    """A copy of process `pid`'s descriptor `fd`, as a socket of this process."""
    pidfd = os.pidfd_open(pid)
    try:
        got = _libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if got < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(pidfd)
    return socket.socket(fileno=got)


def tcp_sockets(pid: int) -> Iterator[socket.socket]:
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                continue
            sock = socket_of(pid, int(name))
        except OSError:
            continue  # closed meanwhile
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            yield sock
        else:
            sock.close()


def nodelay(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    cfg = write_config(
        bff_config("http://127.0.0.1:9", UserKeys().pem(), cache={"backend": "memory"}),
        tmp_path_factory.mktemp("cfg"),
    )
    proc = start_bff(cfg, workers=2)
    try:
        yield proc
    finally:
        proc.stop()


def listeners(proc: Proc) -> dict[int, list[bool]]:
    """TCP_NODELAY of each worker's listening socket(s) on the service's port."""
    found: dict[int, list[bool]] = {}
    for pid in process_tree(proc.pid):
        if pid == proc.pid:
            continue
        for sock in tcp_sockets(pid):
            with sock:
                if _listening(sock) and sock.getsockname()[1] == proc.port:
                    found.setdefault(pid, []).append(nodelay(sock))
    return found


def test_two_workers_each_listen_on_the_port_with_tcp_nodelay(two_workers: Proc) -> None:
    # The service answers once one worker is up: wait (bounded) for the second.
    def both() -> dict[int, list[bool]] | None:
        found = listeners(two_workers)
        return found if len(found) == 2 else None

    found = poll_until(both, 60, 0.2, what="two workers listening")
    assert all(all(flags) for flags in found.values()), found
    # The supervisor itself does not listen: only the workers do.
    assert two_workers.pid not in found


def test_accepted_connections_have_tcp_nodelay(two_workers: Proc) -> None:
    workers = [pid for pid in process_tree(two_workers.pid) if pid != two_workers.pid]
    seen: dict[int, list[bool]] = {}
    for _ in range(8):
        # A served keep-alive connection: find its server end in whichever worker accepted it.
        with socket.create_connection((LOOPBACK, two_workers.port), timeout=5) as conn:
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert conn.recv(64).startswith(b"HTTP/1.1 200")
            mine = conn.getsockname()
            for pid in workers:
                for sock in tcp_sockets(pid):
                    with sock:
                        if not _listening(sock) and _peer(sock) == mine:
                            seen.setdefault(pid, []).append(nodelay(sock))
    assert sum(len(flags) for flags in seen.values()) == 8, seen
    assert all(all(flags) for flags in seen.values()), seen


def _listening(sock: socket.socket) -> bool:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) != 0


def _peer(sock: socket.socket) -> object:
    """The address at the other end, or None for a socket connected to nothing (yet or any
    more: a worker's own call to Vluna being set up, or one torn down meanwhile)."""
    try:
        return sock.getpeername()
    except OSError:
        return None
