"""`vluna-bff` as a real process: a production-shaped configuration (written to a private temp
file: it holds secrets), `vluna-bff serve` and `vluna-bff dev` on free loopback ports."""

from __future__ import annotations

import base64
import os
import subprocess
import tempfile
import uuid
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.support.emulator import EMULATOR_SECRET, Emulator
from tests.support.keys import AUDIENCE, ISSUER, UserKeys
from tests.support.ports import LOOPBACK, free_port
from tests.support.processes import PY, READY_TIMEOUT_SEC, REPO, Proc, read_listening, wait_http
from tests.support.redis_servers import SHARED_REDIS_URL, cleanup_prefix


def deep_update(target: dict[str, Any], values: Mapping[str, Any]) -> None:
    """Merge `values` into `target` in place, section by section (nested mappings merged)."""
    for k, v in values.items():
        if isinstance(v, Mapping) and isinstance(target.get(k), dict):
            deep_update(target[k], v)
        else:
            target[k] = v


def bff_config(
    emulator_url: str,
    pem: str,
    *,
    redis_url: str = SHARED_REDIS_URL,
    prefix: str | None = None,
    **sections: Mapping[str, Any],
) -> dict[str, Any]:
    """A production-shaped configuration (secrets included: it is written to a private temp file)."""
    data: dict[str, Any] = {
        "vluna": {
            "base_url": f"{emulator_url}/mgt/v1",
            "realm_id": "realm_demo",
            "service_key_id": "pk-emulator",
            "service_key_secret": EMULATOR_SECRET,
            "timeout_sec": 5,
            "max_retries": 0,
        },
        "auth": {
            "methods": ["bearer", "cookie"],
            "jwt": {
                "public_keys_pem": [pem],
                "algorithms": ["RS256"],
                "issuer": ISSUER,
                "audience": [AUDIENCE],
            },
        },
        "mapping": {
            "principal": [
                {"claim": "org_id", "template": "org:{value}"},
                {"claim": "sub", "template": "user:{value}"},
            ]
        },
        "cache": {
            "backend": "redis",
            "key_prefix": prefix or f"bench-{uuid.uuid4().hex[:10]}:",
            "redis": {"url": redis_url},
            "encryption_keys": ["b1:" + base64.b64encode(os.urandom(32)).decode()],
            "hmac_key": base64.b64encode(os.urandom(32)).decode(),
        },
        "server": {"host": LOOPBACK, "log_level": "warning"},
        "observability": {"access_log": False, "log_format": "text", "readiness": {"check_vluna": False}},
    }
    for name, values in sections.items():
        deep_update(data.setdefault(name, {}), values)
    return data


def write_config(data: Mapping[str, Any], directory: Path | None = None) -> Path:
    import yaml

    fd, name = tempfile.mkstemp(suffix=".yaml", prefix="vluna-bff-", dir=directory)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(dict(data), f)
    return Path(name)


def spawn_serve(
    config: Path, port: int, env: Mapping[str, str], stderr: Any, *extra: str
) -> subprocess.Popen[Any]:
    """`vluna-bff serve --config <config> --port <port> <extra>` (environment: ours and `env`),
    not waited for: the caller watches it start."""
    return subprocess.Popen(
        [PY, "-m", "bff.cli", "serve", "--config", str(config), "--port", str(port), *extra],
        env={**os.environ, **env},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def start_bff(
    config: Path,
    *,
    port: int | None = None,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = READY_TIMEOUT_SEC,
    stderr: Any = None,
) -> Proc:
    """`vluna-bff serve` on a loopback port; returns once it answers (401 without credentials).
    Its stderr goes to a temporary file (or `stderr`), quoted if it fails to start."""
    port = port or free_port()
    log = stderr if stderr is not None else tempfile.TemporaryFile("w+")  # noqa: SIM115 (the child's)
    popen = spawn_serve(config, port, env or {}, log, "--host", LOOPBACK, "--workers", str(workers))
    proc = Proc(f"vluna-bff x{workers}", popen, url=f"http://{LOOPBACK}:{port}", port=port)
    try:
        wait_http(proc, "/vluna/token", {401}, timeout=ready_timeout)
    except (RuntimeError, TimeoutError) as exc:
        proc.stop()
        tail = ""
        if hasattr(log, "seek"):
            log.seek(0)
            tail = log.read()[-2000:]
        raise RuntimeError(f"{exc}; stderr: {tail}") from None
    return proc


def start_dev(*args: str, env: Mapping[str, str] | None = None, stderr: Any = subprocess.DEVNULL) -> Proc:
    """`vluna-bff dev --port 0` (any free port): its banner's first line names the URL, and is
    printed only once the socket is bound."""
    popen = subprocess.Popen(
        [PY, "-m", "bff.cli", "dev", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        cwd=REPO,
        env=dict(env) if env is not None else None,
    )
    banner, url = read_listening(popen, timeout=60)
    return Proc("dev", popen, url=url, port=int(url.rsplit(":", 1)[1]), extra={"banner": banner})


class ServiceStarter:
    """Starts `vluna-bff serve` processes against the emulator (the fixture `start_service`);
    `stop_all` stops every one and removes their Redis keys."""

    def __init__(self, emulator: Emulator, user_keys: UserKeys, tmp_path: Path) -> None:
        self._emulator = emulator
        self._user_keys = user_keys
        self._tmp_path = tmp_path
        self._procs: list[Proc] = []
        self._prefixes: list[tuple[str, str]] = []

    def __call__(
        self,
        *,
        redis_url: str = "",
        workers: int = 1,
        like: Proc | None = None,
        ready_timeout: float = 60,
        **sections: Any,
    ) -> Proc:
        """A new service; `like=other` starts a replica with other's exact configuration."""
        if like is not None:
            data = like.extra["config"]
        else:
            data = bff_config(self._emulator.url, self._user_keys.pem(), redis_url=redis_url, **sections)
            self._prefixes.append((data["cache"]["key_prefix"], redis_url))
        # Its stderr in a file of the test's own: what a drill quotes when a promise fails.
        log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (the child's, open while it runs)
            "w+", dir=self._tmp_path, prefix="bff-", suffix=".log", delete=False
        )
        proc = start_bff(
            write_config(data, self._tmp_path), workers=workers, ready_timeout=ready_timeout, stderr=log
        )
        proc.extra["config"] = data
        proc.extra["log"] = Path(log.name)
        self._procs.append(proc)
        return proc

    def many(self, count: int, **kwargs: Any) -> list[Proc]:
        """`count` replicas of one configuration, started side by side (each start-up is
        mostly imports and checks, which take long on a busy machine)."""
        # Generous: on a machine busy with other test runs, a start-up has taken over 60 s.
        first = self(ready_timeout=180, **kwargs)
        with ThreadPoolExecutor(count - 1) as pool:
            others = list(pool.map(lambda _: self(like=first, ready_timeout=180), range(count - 1)))
        return [first, *others]

    def stop_all(self) -> None:
        for p in self._procs:
            p.stop()
        for prefix, url in self._prefixes:
            if url:  # none: a Sentinel or Cluster of the test's own, stopped with it
                cleanup_prefix(prefix, url)
