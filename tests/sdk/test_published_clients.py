"""The unmodified published `vlunaai` releases (0.3.2 and 0.1.2, from PyPI) against the emulator
(0.3.2 flavour): every operation of each release is called, no answer is a 5xx, and every 2xx
answer parses under that release's own models.

Each release is installed with uv into its own virtual environment under `.cache/` (pinned, made
once and reused); a failed installation fails the test. The calls run in that environment
(`published_sweep.py`), against the emulator as a real process on a loopback port.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.emulator import EMULATOR_SECRET, start_emulator
from tests.support.processes import REPO

CACHE = REPO / ".cache" / "published-vlunaai"
SWEEP = Path(__file__).with_name("published_sweep.py")
OPERATIONS = {
    "0.3.2": REPO / "spec" / "vluna-api" / "operations.json",
    "0.1.2": REPO / "spec" / "vluna-api" / "v0.1.2" / "operations.json",
}
# The emulator flag each release needs: 0.1.2 cannot send X-User-Id, so runtime calls are
# accepted with a principal alone (as 0.1.2-era integrations make them).
EMULATOR_FLAGS = {"0.3.2": (), "0.1.2": ("--allow-principal-only",)}


def _uv() -> list[str]:
    found = os.environ.get("UV") or shutil.which("uv")
    if found:
        return [found]
    return [sys.executable, "-m", "uv"]


def published_env(release: str) -> Path:
    """A virtual environment with `vlunaai==<release>` from the package index, made by uv."""
    venv = CACHE / release
    python = venv / "bin" / "python"
    probe = [str(python), "-I", "-c", "from importlib.metadata import version; print(version('vlunaai'))"]
    if python.exists():
        done = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=False)
        if done.returncode == 0 and done.stdout.strip() == release:
            return venv
        shutil.rmtree(venv)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    CACHE.mkdir(parents=True, exist_ok=True)
    for cmd in (
        [*_uv(), "venv", "--quiet", "--python", sys.executable, str(venv)],
        [*_uv(), "pip", "install", "--quiet", "--python", str(python), f"vlunaai=={release}"],
    ):
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=600, check=False, env=env, cwd=CACHE
        )
        assert proc.returncode == 0, f"installing vlunaai=={release} failed: {cmd}\n{proc.stderr[-3000:]}"
    done = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=False)
    assert done.stdout.strip() == release, done.stderr
    return venv


@pytest.fixture(params=["0.3.2", "0.1.2"])
def release(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sweep(release: str) -> Iterator[dict[str, Any]]:
    venv = published_env(release)
    emulator = start_emulator(*EMULATOR_FLAGS[release])
    try:
        proc = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-I",
                str(SWEEP),
                emulator.url,
                "realm_demo",
                "pk-emulator",
                EMULATOR_SECRET,
                str(OPERATIONS[release]),
            ],
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
            cwd=venv,
        )
    finally:
        emulator.stop()
    assert proc.returncode == 0, proc.stderr[-4000:]
    yield json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_operation_of_the_published_release_is_answered(
    release: str, sweep: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    assert sweep["release"] == release
    results = sweep["results"]
    expected = len(json.loads(OPERATIONS[release].read_text("utf-8")))
    assert len(results) == expected
    server_errors = [r for r in results if r["status"] >= 500 or r["status"] == 0]
    unparsed = [r for r in results if 200 <= r["status"] < 300 and not r["parsed"]]
    ok = sum(1 for r in results if 200 <= r["status"] < 300 and r["parsed"])
    with capsys.disabled():
        print(
            f"\nvlunaai {release}: {len(results)} operations, {ok} answered 2xx and parsed, "
            f"{len(server_errors)} 5xx, {len(unparsed)} 2xx refused by the release's models"
        )
    assert not server_errors, json.dumps(server_errors, indent=1)[:6000]
    assert not unparsed, json.dumps(unparsed, indent=1)[:8000]
