"""Real processes: start, wait for, signal and stop them; their process tree and peak memory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.support.waiting import poll_until

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable
# A worker process can take tens of seconds to import and start on a loaded shared machine.
READY_TIMEOUT_SEC = 120.0
P = TypeVar("P", bound="Proc")


def stop(popen: subprocess.Popen[Any], timeout: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`; returns the exit status."""
    if popen.poll() is None:
        popen.terminate()
        try:
            popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
    return popen.returncode


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[Any]
    url: str = ""
    port: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int | None:
        return stop(self.popen, timeout)

    def __enter__(self: P) -> P:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.popen.send_signal(sig)

    def tree(self) -> list[int]:
        return process_tree(self.pid)

    def peak_rss_mb(self) -> float:
        """Largest VmHWM (peak resident set) among this process and its children, in MiB."""
        return max((vm_hwm_kb(p) for p in self.tree()), default=0) / 1024


def process_tree(pid: int) -> list[int]:
    out = [pid]
    i = 0
    while i < len(out):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{out[i]}/task"):
                with contextlib.suppress(OSError):
                    out += [int(c) for c in Path(f"/proc/{out[i]}/task/{task}/children").read_text().split()]
        i += 1
    return out


def vm_hwm_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def read_listening(proc: subprocess.Popen[str], timeout: float = READY_TIMEOUT_SEC) -> tuple[str, str]:
    """The first stdout line (it names the URL: `listening on http://127.0.0.1:<port>`) and the
    URL; bounded by `timeout`."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        proc.kill()
        raise RuntimeError("process did not announce its address in time")
    first = proc.stdout.readline()
    match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", first)
    if not match:
        proc.kill()
        raise RuntimeError(f"process did not start: {first!r}")
    return first, match.group(1)


def wait_url(
    url: str,
    statuses: set[int],
    popens: Sequence[subprocess.Popen[Any]],
    timeout: float = READY_TIMEOUT_SEC,
    name: str = "a server",
) -> None:
    """Until `url` answers one of `statuses`; fails at once if one of `popens` (`name`, the
    servers starting) exits. The bound is generous (READY_TIMEOUT_SEC): a start-up was seen to take 44 s (one
    process) and over 60 s (three at once) on a loaded machine."""

    def ready() -> bool:
        for popen in popens:
            if popen.poll() is not None:
                raise RuntimeError(f"{name} exited during start-up ({popen.returncode})")
        try:
            with httpx.Client(timeout=2) as c:
                return c.get(url).status_code in statuses
        except httpx.TransportError:
            return False

    poll_until(ready, timeout, what=f"{name} ready")


async def await_url(
    url: str,
    statuses: set[int],
    popens: Sequence[subprocess.Popen[Any]],
    timeout: float = READY_TIMEOUT_SEC,
    name: str = "vluna-bff",
) -> None:
    """`wait_url` from a coroutine (in a thread: the event loop keeps running)."""
    await asyncio.to_thread(wait_url, url, statuses, popens, timeout, name)


def wait_http(proc: Proc, path: str, statuses: set[int], timeout: float = READY_TIMEOUT_SEC) -> None:
    """Until `proc.url + path` answers one of `statuses` (fails at once if the process exits)."""
    wait_url(proc.url + path, statuses, [proc.popen], timeout, proc.name)


def start_server(
    *argv: str,
    name: str,
    env: Mapping[str, str] | None = None,
    ready: tuple[str, set[int]] | None = None,
) -> Proc:
    """`python <argv>`: a server that prints `listening on http://127.0.0.1:<port>`; with `ready`
    (path, statuses), returns once that path answers one of them."""
    popen = subprocess.Popen(
        [PY, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    _, url = read_listening(popen)
    proc = Proc(name, popen, url=url, port=int(url.rsplit(":", 1)[1]))
    if ready is not None:
        try:
            wait_http(proc, ready[0], ready[1])
        except (RuntimeError, TimeoutError):
            proc.stop()
            raise
    return proc


@contextlib.contextmanager
def stopping(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in reversed(procs):
            p.stop()
