"""The `vlunaai` wheel stands alone: built from sdk/, installed into a clean virtual environment
with its declared dependencies only, the published quickstarts' imports work and a signed call
goes through, and none of the service's dependencies (Litestar, Redis, aiohttp...) is there.

The wheel is built and installed by uv (the one `./run` installs); the dependencies come from the
package index like any user's `pip install vlunaai`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from tests.support.processes import REPO

from .support import KEY_ID, REALM, SECRET_B64, assert_signed

SERVICE_ONLY = ("litestar", "redis", "aiohttp", "uvicorn", "prometheus_client", "yaml", "jwt", "bff")

# Runs inside the clean environment: the imports of the published 0.1.2 and 0.3.2 quickstarts,
# then one signed service call over an in-process transport that records the request.
CLIENT_SCRIPT = """
import asyncio, importlib.util, json, sys

import httpx
from vlunaai import (
    BearerClientOptions, GatePreflightError, GatePreflightSuccess, RequestContext,
    ServiceClientOptions, ServiceKeyCredentials, VlunaAIConfig, VlunaAIError,
    create_bearer_client, create_service_client,
)

absent = [m for m in sys.argv[2].split(",") if importlib.util.find_spec(m) is not None]
seen = []

def handler(request):
    seen.append(request)
    data = {"access_token": "tok", "token_type": "Bearer", "expires_in": 900}
    return httpx.Response(200, json={"ok": True, "code": "OK", "data": data})

async def main():
    key_id, realm, secret = sys.argv[1].split(" ")
    options = ServiceClientOptions(
        config=VlunaAIConfig(base_url="https://vluna.test/mgt/v1", realm_id=realm),
        service_key=ServiceKeyCredentials(key_id=key_id, secret=secret),
        error_mode="raise",
        transport=httpx.MockTransport(handler),
    )
    async with create_service_client(options) as service:
        answer = await service.issue_platform_token(
            body={"principal_id": "org:1", "user_id": "u-1"},
            context=RequestContext(principal_id="org:1", user_id="u-1"),
        )
    request = seen[0]
    print(json.dumps({
        "present_service_modules": absent,
        "token": answer.data.access_token,
        "method": request.method,
        "url": str(request.url),
        "headers": list(request.headers.multi_items()),
        "body": request.content.decode(),
    }))

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def clean_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment holding the built `vlunaai` wheel and its declared dependencies only."""
    uv = os.environ.get("UV") or shutil.which("uv")
    assert uv, "uv is not on PATH: ./run test installs it (python3 -m pip install uv)"
    work = tmp_path_factory.mktemp("vlunaai-wheel")
    build = subprocess.run(
        [uv, "build", "--package", "vlunaai", "--wheel", "--out-dir", str(work / "dist")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (work / "dist").glob("vlunaai-*.whl")
    with zipfile.ZipFile(wheel) as z:
        tops = {name.split("/")[0] for name in z.namelist()}
    assert tops == {"vlunaai", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}, tops
    venv = work / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT")}
    for cmd in (
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
        [uv, "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), str(wheel)],
    ):
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=300, check=False, env=env, cwd=work
        )
        assert proc.returncode == 0, f"{cmd}: {proc.stderr[-2000:]}"
    return venv


def _python(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # -I: isolated, so neither the repository (cwd) nor PYTHONPATH can lend a module.
    return subprocess.run(
        [str(venv / "bin" / "python"), "-I", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=venv,
    )


def test_the_wheel_installs_alone_and_makes_a_signed_call(clean_env: Path) -> None:
    proc = _python(clean_env, "-c", CLIENT_SCRIPT, f"{KEY_ID} {REALM} {SECRET_B64}", ",".join(SERVICE_ONLY))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["present_service_modules"] == [], "the SDK's wheel pulled in the service's dependencies"
    assert out["token"] == "tok"
    request = httpx.Request(
        out["method"], out["url"], headers=[tuple(h) for h in out["headers"]], content=out["body"].encode()
    )
    assert request.url.path == "/mgt/v1/token/issue"
    assert_signed(request)


def test_the_sdk_environment_lists_only_the_declared_dependencies(clean_env: Path) -> None:
    script = "import importlib.metadata as m, json; print(json.dumps([d.name for d in m.distributions()]))"
    proc = _python(clean_env, "-c", script)
    assert proc.returncode == 0, proc.stderr
    installed = {name.lower() for name in json.loads(proc.stdout)}
    assert "vlunaai" in installed
    assert not installed & {"litestar", "redis", "aiohttp", "uvicorn", "prometheus-client", "pyyaml", "pyjwt"}


def test_the_emulator_without_its_extra_names_the_extra(clean_env: Path) -> None:
    proc = _python(clean_env, "-c", "from vlunaai.testing import VlunaEmulator")
    assert proc.returncode != 0
    assert "pip install 'vlunaai[testing]'" in proc.stderr, proc.stderr[-2000:]
    # The pytest plugin is registered for every installation; importing it must not need the extra.
    proc = _python(clean_env, "-c", "import vlunaai.testing, sys; assert 'litestar' not in sys.modules")
    assert proc.returncode == 0, proc.stderr[-2000:]
