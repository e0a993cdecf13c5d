"""The benchmarks' load generator (run as a separate process: wrk when installed, else
`python -m bench._loadgen`) and serving an app factory on a server stack. Processes, ports, the
emulator, `vluna-bff serve`, Redis and user JWTs come from tests/support (shared with the tests).

Everything binds to and talks to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tests.support.ports import LOOPBACK
from tests.support.processes import PY, REPO, Proc, start_server


def start_on_stack(
    stack: str, target: str, *, name: str, env: Mapping[str, str], ready: tuple[str, set[int]]
) -> Proc:
    """An app factory (`module:name`) served on a server stack by bench._stacks."""
    return start_server("-m", "bench._stacks", stack, target, name=f"{name} on {stack}", env=env, ready=ready)


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
        out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60)
    finally:
        os.unlink(script)
    if out.returncode != 0:  # the command holds the bearer token: only wrk's own words
        said = (out.stderr.strip() or out.stdout.strip())[-500:]
        raise RuntimeError(f"wrk exited with {out.returncode} loading {url}: {said}")
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


T = TypeVar("T")
_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(proc: Proc) -> float:
    """CPU time (user + system) used so far by a process and its children, all their threads."""
    return sum(pid_cpu_seconds(pid) for pid in proc.tree())


def pid_cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def children_cpu_seconds() -> float:
    """CPU time of this process's children that have been waited for (the load generator)."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def redis_server_pid(port: int) -> int | None:
    """The ``redis-server`` listening on ``port``, if any: Redis rewrites its command line into one
    title, ``redis-server <address>:<port>``."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                words = f.read().replace(b"\0", b" ").split()
        except OSError:
            continue
        if words and words[0].endswith(b"redis-server") and any(w.endswith(b":%d" % port) for w in words):
            return int(entry)
    return None


def machine_busy_seconds() -> float:
    """CPU time every CPU of the machine has spent busy so far (/proc/stat: not idle or iowait)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / _TICKS


@dataclass
class CpuShare:
    """What a load on ``proc`` cost: its CPUs (CPU seconds per second) and those of everything
    else on the machine (the load generator, the other processes), over the same interval."""

    service_cpus: float
    rest_cpus: float

    @classmethod
    def during(cls, proc: Proc, fn: Callable[[], T]) -> tuple[T, CpuShare]:
        own, busy, t0 = tree_cpu_seconds(proc), machine_busy_seconds(), time.monotonic()
        result = fn()
        wall = time.monotonic() - t0
        own = tree_cpu_seconds(proc) - own
        busy = machine_busy_seconds() - busy
        return result, cls(own / wall, max(0.0, busy - own) / wall)
