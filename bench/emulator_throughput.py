"""Throughput of the Vluna emulator against a bare Litestar JSON endpoint (not a test).

Both servers run the same way (uvicorn, one worker, 127.0.0.1, random free port, no access log)
in subprocesses; a bounded asyncio load generator with keep-alive connections (raw sockets, so
the generator is cheaper than the servers) loads each for a few seconds, or `wrk` when it is
installed. Printed: requests/s of each and the ratio emulator / bare.

    uv run python -m bench.emulator_throughput [--seconds 5] [--connections 32]

Loads: the bare endpoint returns the same catalog JSON the emulator answers; the emulator is
called as a browser-facing client would (`GET /api/v1/catalog/products` with a bearer token,
verified on every request) and as a backend would (`GET /mgt/v1/catalog/products`, SVC-AUTH
signed per request with a fresh nonce, verified on every request).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from vlunaai.signing import ServiceKeyAuth, ServiceKeyCredentials

from tests.support.processes import REPO, read_listening, stop

SECRET = base64.b64encode(b"bench-secret-bench-secret-bench!").decode()

BARE_SERVER = r"""
import json, socket, sys
import uvicorn
from litestar import Litestar, get

payload = json.loads(sys.argv[1])

@get("/catalog/products", sync_to_thread=False)
def catalog() -> dict:
    return payload

app = Litestar([catalog], openapi_config=None, logging_config=None)
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", 0))
print(f"listening on http://127.0.0.1:{sock.getsockname()[1]} ", flush=True)
config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", server_header=False)
uvicorn.Server(config).run(sockets=[sock])
"""


@dataclass
class Result:
    name: str
    requests: int
    errors: int
    seconds: float
    server_cpu: float | None = None  # share of one core the server used while measured

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def start(cmd: list[str]) -> tuple[subprocess.Popen[str], str, list[str]]:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=os.environ.copy()
    )
    assert proc.stdout is not None
    first, url = read_listening(proc)
    extra = []
    if "Vluna emulator" in first:
        for _ in range(4):
            extra.append(proc.stdout.readline().strip())
    return proc, url, extra


async def wait_ready(host: str, port: int, path: str) -> None:
    for _ in range(200):
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n".encode())
            await writer.drain()
            await reader.readline()
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise SystemExit("server never became ready")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length) if length else b""
    return status, body


def cpu_seconds(pid: int) -> float | None:
    """User+system CPU time of a process (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(
    name: str,
    base: str,
    make_request: Callable[[], bytes],
    seconds: float,
    connections: int,
    server_pid: int,
    warmup: float = 1.0,
) -> Result:
    host, port = base.removeprefix("http://").split(":")
    counters = {"ok": 0, "errors": 0}
    deadline_box = {"measuring": False, "stop": False}

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while not deadline_box["stop"]:
                writer.write(make_request())
                await writer.drain()
                status, _ = await read_response(reader)
                if deadline_box["measuring"]:
                    counters["ok" if status == 200 else "errors"] += 1
        finally:
            writer.close()

    tasks = [asyncio.create_task(worker()) for _ in range(connections)]
    await asyncio.sleep(warmup)
    counters["ok"] = counters["errors"] = 0
    deadline_box["measuring"] = True
    cpu_before = cpu_seconds(server_pid)
    started = time.perf_counter()
    await asyncio.sleep(seconds)
    deadline_box["measuring"] = False
    elapsed = time.perf_counter() - started
    cpu_after = cpu_seconds(server_pid)
    measured = Result(name, counters["ok"], counters["errors"], elapsed)
    if cpu_before is not None and cpu_after is not None:
        measured.server_cpu = (cpu_after - cpu_before) / elapsed
    deadline_box["stop"] = True
    await asyncio.gather(*tasks, return_exceptions=True)
    return measured


def run_wrk(name: str, url: str, headers: dict[str, str], seconds: float, connections: int) -> Result:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", url]
    for key, value in headers.items():
        cmd += ["-H", f"{key}: {value}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Result(name, int(rps * seconds), int(non2xx[1]) if non2xx else 0, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--no-wrk", action="store_true", help="use the built-in generator even if wrk exists")
    args = parser.parse_args()
    use_wrk = shutil.which("wrk") is not None and not args.no_wrk

    emulator, emu_base, _ = start(
        [sys.executable, "-m", "vlunaai.testing", "--port", "0", "--service-key-secret", SECRET]
    )
    try:
        asyncio.run(wait_ready("127.0.0.1", int(emu_base.rsplit(":", 1)[1]), "/healthz"))
        # Issue one token (signed like the SDK) and fetch the catalog the bare endpoint will serve.
        auth = ServiceKeyAuth(ServiceKeyCredentials("pk-emulator", SECRET))
        body = json.dumps({"principal_id": "org:bench", "user_id": "user:bench"})
        headers = auth.sign(
            method="POST",
            url=emu_base + "/mgt/v1/token/issue",
            body=body,
            idempotency_key=None,
            realm_id="realm_demo",
        )
        token = httpx.post(emu_base + "/mgt/v1/token/issue", content=body, headers=headers).json()["data"][
            "access_token"
        ]
        bearer_headers = {"authorization": f"Bearer {token}", "x-realm-id": "realm_demo"}
        catalog = httpx.get(emu_base + "/api/v1/catalog/products", headers=bearer_headers).json()
        assert catalog["ok"] is True

        bare, bare_base, _ = start([sys.executable, "-c", BARE_SERVER, json.dumps(catalog)])
        try:
            asyncio.run(wait_ready("127.0.0.1", int(bare_base.rsplit(":", 1)[1]), "/catalog/products"))
            bearer_req = (
                "GET /api/v1/catalog/products HTTP/1.1\r\nhost: 127.0.0.1\r\n"
                + "".join(f"{k}: {v}\r\n" for k, v in bearer_headers.items())
                + "\r\n"
            ).encode()
            bare_req = b"GET /catalog/products HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
            path = "/mgt/v1/catalog/products"

            def signed_req() -> bytes:
                signed = auth.sign(
                    method="GET", url=emu_base + path, body=None, idempotency_key=None, realm_id="realm_demo"
                )
                lines = "".join(f"{k}: {v}\r\n" for k, v in signed.items())
                return f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\n{lines}\r\n".encode()

            results: list[Result] = []
            if use_wrk:
                results.append(
                    run_wrk(
                        "bare litestar", bare_base + "/catalog/products", {}, args.seconds, args.connections
                    )
                )
                results.append(
                    run_wrk(
                        "emulator bearer",
                        emu_base + "/api/v1/catalog/products",
                        bearer_headers,
                        args.seconds,
                        args.connections,
                    )
                )
            else:
                results.append(
                    asyncio.run(
                        load(
                            "bare litestar",
                            bare_base,
                            lambda: bare_req,
                            args.seconds,
                            args.connections,
                            bare.pid,
                        )
                    )
                )
                results.append(
                    asyncio.run(
                        load(
                            "emulator bearer",
                            emu_base,
                            lambda: bearer_req,
                            args.seconds,
                            args.connections,
                            emulator.pid,
                        )
                    )
                )
            # Signed requests need a fresh nonce each: always the built-in generator.
            results.append(
                asyncio.run(
                    load(
                        "emulator svc-auth",
                        emu_base,
                        signed_req,
                        args.seconds,
                        args.connections,
                        emulator.pid,
                    )
                )
            )
        finally:
            stop(bare)
    finally:
        stop(emulator)

    generator = "wrk" if use_wrk else "asyncio raw-socket generator"
    print(f"catalog GET, {args.seconds:g} s per run, {args.connections} keep-alive connections, {generator}")
    print(f"{'server':<20}{'req/s':>10}{'errors':>8}{'vs bare':>9}{'server CPU':>12}{'req/CPU-s':>11}")
    base_rps = results[0].rps
    for r in results:
        cpu = f"{r.server_cpu:.0%}" if r.server_cpu is not None else "n/a"
        per_cpu = f"{r.rps / r.server_cpu:.0f}" if r.server_cpu else "n/a"
        print(f"{r.name:<20}{r.rps:>10.0f}{r.errors:>8}{r.rps / base_rps:>9.0%}{cpu:>12}{per_cpu:>11}")
    print("req/CPU-s is throughput per second of server CPU: it stays meaningful when the generator,")
    print("sharing the machine, is the limit (server CPU well under 100%).")


if __name__ == "__main__":
    main()
