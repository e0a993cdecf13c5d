"""What the benchmarks and the drills share: free ports, real processes (the emulator with its
controls, `vluna-bff serve`, a private redis-server), BFF configuration, user JWTs, peak memory
from /proc, and the load generator (run as a separate process: wrk when installed, else
`python -m bench._loadgen`).

Everything binds to and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from vlunaai.testing import CONTROL_HEADER, CONTROL_HEADER_VALUE

CONTROL = {CONTROL_HEADER: CONTROL_HEADER_VALUE}  # the emulator's controls require it
REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
LOOPBACK = "127.0.0.1"
SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"
EMULATOR_SECRET = base64.b64encode(b"bench-and-drill-emulator-secret!").decode()
ISSUER = "https://id.bench.test/"
AUDIENCE = "vluna-bff-bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def poll_until(predicate: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Call `predicate` until it returns something truthy; bounded, so a bug fails instead of hanging."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g} s")
        time.sleep(interval)


# -- processes -----------------------------------------------------------------------------------


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
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

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


# Start-up bounds: generous, because on a shared 2-core machine under other test runs a Python
# process can take over a minute to import and bind (measured: the emulator missed 30 s and
# `serve` missed 60 s at load 12-16). They bound a hung start, not a slow one.
def _read_listening(proc: subprocess.Popen[str], timeout: float = 120.0) -> tuple[str, str]:
    """The first stdout line (it names the URL); bounded by `timeout`."""
    assert proc.stdout is not None
    import selectors

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
    _, url = _read_listening(popen)
    return Emulator("emulator", popen, url=url, port=int(url.rsplit(":", 1)[1]))


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


class UserKeys:
    """An RSA key the service trusts (PEM in its config) and JWTs for any number of users."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def pem(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return (
            self.key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def token(self, sub: str, org: str | None = None, exp_in: int = 3600, **claims: Any) -> str:
        import jwt

        now = int(time.time())
        body = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + exp_in, **claims}
        if org is not None:
            body["org_id"] = org
        return jwt.encode(body, self.key, algorithm="RS256")


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
        _deep_update(data.setdefault(name, {}), values)
    return data


def _deep_update(target: dict[str, Any], values: Mapping[str, Any]) -> None:
    for k, v in values.items():
        if isinstance(v, Mapping) and isinstance(target.get(k), dict):
            _deep_update(target[k], v)
        else:
            target[k] = v


def write_config(data: Mapping[str, Any], directory: Path | None = None) -> Path:
    import yaml

    fd, name = tempfile.mkstemp(suffix=".yaml", prefix="vluna-bff-", dir=directory)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(dict(data), f)
    return Path(name)


def start_bff(
    config: Path,
    *,
    port: int | None = None,
    workers: int = 1,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 180.0,
    stderr: Any = None,
) -> Proc:
    """`vluna-bff serve` on a loopback port; returns once it answers (401 without credentials).
    Its stderr goes to a temporary file (or `stderr`), quoted if it fails to start."""
    port = port or free_port()
    log = stderr if stderr is not None else tempfile.TemporaryFile("w+")  # noqa: SIM115 (the child's)
    popen = subprocess.Popen(
        [
            PY,
            "-m",
            "bff.cli",
            "serve",
            "--config",
            str(config),
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        env={**os.environ, **(env or {})},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
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


def wait_http(proc: Proc, path: str, statuses: set[int], timeout: float = 30.0) -> None:
    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited during start-up ({proc.popen.returncode})")
        try:
            with httpx.Client(timeout=2) as c:
                return c.get(proc.url + path).status_code in statuses
        except httpx.TransportError:
            return False

    poll_until(ready, timeout, what=f"{proc.name} ready")


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
    _, url = _read_listening(popen)
    proc = Proc(name, popen, url=url, port=int(url.rsplit(":", 1)[1]))
    if ready is not None:
        try:
            wait_http(proc, ready[0], ready[1])
        except (RuntimeError, TimeoutError):
            proc.stop()
            raise
    return proc


def start_on_stack(
    stack: str, target: str, *, name: str, env: Mapping[str, str], ready: tuple[str, set[int]]
) -> Proc:
    """An app factory (`module:name`) served on a server stack by bench._stacks."""
    return start_server("-m", "bench._stacks", stack, target, name=f"{name} on {stack}", env=env, ready=ready)


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
    banner, url = _read_listening(popen, timeout=60)
    return Proc("dev", popen, url=url, port=int(url.rsplit(":", 1)[1]), extra={"banner": banner})


def cleanup_prefix(prefix: str, redis_url: str = SHARED_REDIS_URL) -> None:
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


@contextlib.contextmanager
def stopping(*procs: Proc) -> Iterator[None]:
    try:
        yield
    finally:
        for p in reversed(procs):
            p.stop()


# -- load ----------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    seconds: float
    statuses: dict[str, int]
    tool: str

    @property
    def non_2xx(self) -> int:
        return sum(n for s, n in self.statuses.items() if not s.startswith("2"))


_WRK_LUA = """
done = function(summary, latency, requests)
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d,'
    .. ' "status": %d, "connect": %d, "read": %d, "write": %d, "timeout": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status, summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.timeout))
end
"""


PYTHON_GENERATOR_COST = (
    "the Python generator is one asyncio process: it spends about as much CPU per request as a fast "
    "server does, and on a small machine it takes CPU from the server it measures, so absolute "
    "rates read lower than with wrk (ratios, measured alike on both sides, hold better)"
)


def wrk_available() -> bool:
    return shutil.which("wrk") is not None and not os.environ.get("BENCH_NO_WRK")


def ensure_wrk(log: Any = print) -> str:
    """Make wrk available (Debian's package, installed with apt-get when missing and allowed);
    returns a one-line description of the load generator in use, saying what a fallback costs."""
    if os.environ.get("BENCH_NO_WRK"):
        return f"python generator (BENCH_NO_WRK set): {PYTHON_GENERATOR_COST}"
    if shutil.which("wrk") is None:
        apt = shutil.which("apt-get")
        if apt is None:
            why = "wrk is not installed and there is no apt-get to install it"
        elif os.geteuid() != 0:
            why = "wrk is not installed and installing it (apt-get install wrk) needs root"
        else:
            log("installing wrk (apt-get install wrk)")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run([apt, "update", "-qq"], env=env, capture_output=True, timeout=300, check=False)
            done = subprocess.run(
                [apt, "install", "-y", "-qq", "wrk"], env=env, capture_output=True, text=True, timeout=300
            )
            why = "" if done.returncode == 0 else f"apt-get install wrk failed: {done.stderr.strip()[-300:]}"
        if shutil.which("wrk") is None:
            log(f"WARNING: {why}; falling back to the Python load generator")
            return f"python generator ({why}): {PYTHON_GENERATOR_COST}"
    return "wrk (the python generator for request lists)"


def run_load(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    seconds: float = 5.0,
    connections: int = 32,
    warmup: float = 1.0,
    requests: Sequence[Mapping[str, Any]] | None = None,
    use_wrk: bool | None = None,
) -> LoadResult:
    """Load `url` from a separate process. With `requests` (a list of {"path", "headers"}), each is
    sent exactly once (the Python generator; `seconds` is then only a bound)."""
    if not url.startswith(f"http://{LOOPBACK}:"):
        raise ValueError("load goes to loopback only")
    if use_wrk is None:
        use_wrk = wrk_available() and requests is None
    if use_wrk:
        if warmup > 0:
            _wrk(url, headers or {}, max(1, round(warmup)), connections)
        return _wrk(url, headers or {}, max(1, round(seconds)), connections)
    spec = {
        "url": url,
        "headers": dict(headers or {}),
        "seconds": seconds,
        "connections": connections,
        "warmup": warmup,
        "requests": list(requests) if requests is not None else None,
    }
    out = subprocess.run(
        [PY, "-m", "bench._loadgen"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=seconds + warmup + 120,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr[-2000:]}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return LoadResult(**data, tool="python")


def _wrk(url: str, headers: Mapping[str, str], seconds: int, connections: int) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_WRK_LUA)
        script = f.name
    try:
        cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script]
        for k, v in headers.items():
            cmd += ["-H", f"{k}: {v}"]
        out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60, check=True)
    finally:
        os.unlink(script)
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON "))
    d = json.loads(line[len("WRKJSON ") :])
    secs = d["duration_us"] / 1e6
    bad = d["status"]
    socket_errors = d["connect"] + d["read"] + d["write"] + d["timeout"]
    statuses = {"2xx": d["requests"] - bad - socket_errors}
    if bad:
        statuses["non-2xx"] = bad
    if socket_errors:
        statuses["socket-error"] = socket_errors
    return LoadResult(
        rps=d["requests"] / secs,
        p50_ms=d["p50_us"] / 1000,
        p99_ms=d["p99_us"] / 1000,
        requests=d["requests"],
        seconds=secs,
        statuses=statuses,
        tool="wrk",
    )
