"""The Vluna emulator as a real process (`python -m vlunaai.testing`), with its controls."""

from __future__ import annotations

import base64
import subprocess
from typing import Any

import httpx
from vlunaai.testing import CONTROL_HEADER, CONTROL_HEADER_VALUE, VlunaEmulator
from vlunaai.testing.core import EmulatorCore

from tests.support.ports import LOOPBACK
from tests.support.processes import PY, REPO, Proc, read_listening

CONTROL = {CONTROL_HEADER: CONTROL_HEADER_VALUE}  # the emulator's controls require it
EMULATOR_SECRET = base64.b64encode(b"bench-and-drill-emulator-secret!").decode()


class Emulator(Proc):
    """The emulator as a process, with its `/__emulator__/` controls."""

    def control(self, method: str, path: str, **kw: Any) -> httpx.Response:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            return c.request(method, f"/__emulator__/{path}", headers=CONTROL, **kw)

    def counters(self) -> dict[str, int]:
        r = self.control("GET", "counters")
        r.raise_for_status()
        calls: dict[str, int] = r.json()["data"]["calls"]
        return calls

    def calls(self, suffix: str = "") -> int:
        """Calls of every operation whose counter name ends with `suffix` ("" = all)."""
        return sum(v for k, v in self.counters().items() if k.endswith(suffix))

    def issuances(self) -> int:
        return self.calls("issue_platform_token")

    def reset(self, what: str = "counters") -> None:
        self.control("POST", "reset", params={"what": what}).raise_for_status()

    def fault(self, operation: str = "*", times: int | None = None, **spec: Any) -> None:
        r = self.control("POST", "faults", json={"operation": operation, "times": times, **spec})
        assert r.status_code in (200, 201), r.text

    def clear_faults(self) -> None:
        self.control("DELETE", "faults").raise_for_status()


def start_emulator(*args: str, secret: str = EMULATOR_SECRET) -> Emulator:
    """The emulator on a free loopback port with its controls on; `args` are more CLI flags."""
    popen = subprocess.Popen(
        [
            PY,
            "-m",
            "vlunaai.testing",
            "--host",
            LOOPBACK,
            "--port",
            "0",
            "--enable-controls",
            "--service-key-secret",
            secret,
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )
    _, url = read_listening(popen)
    return Emulator("emulator", popen, url=url, port=int(url.rsplit(":", 1)[1]))


def core_of(emulator: VlunaEmulator) -> EmulatorCore:
    """The in-process emulator's core, as the 0.3.2 flavour (the default) it is in these tests."""
    core = emulator.core
    assert isinstance(core, EmulatorCore), f"a {type(core).__name__}, not the 0.3.2 flavour"
    return core
