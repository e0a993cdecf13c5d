"""The bounded Python load generator (used when wrk is absent, and for request lists).

    echo '{"url": "http://127.0.0.1:8080/vluna/token", "headers": {...}, "seconds": 5,
           "connections": 32, "warmup": 1, "requests": null}' | python -m bench._loadgen

Keep-alive HTTP/1.1 on raw asyncio streams, so the generator costs little next to the server.
Two modes: timed (every connection repeats one request for `seconds` after `warmup`), or a list
(`requests`: [{"path", "headers"}], each sent exactly once, spread over the connections).
Prints one JSON line: rps, p50_ms, p99_ms, requests, seconds, statuses. Loopback only; at most
512 connections and 120 s.
"""

from __future__ import annotations

import asyncio
import collections
import json
import statistics
import sys
import time
from typing import Any
from urllib.parse import urlsplit

MAX_CONNECTIONS = 512
MAX_SECONDS = 120.0


def _request(host: str, path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    chunked = False
    for line in head.split(b"\r\n")[1:]:
        low = line.lower()
        if low.startswith(b"content-length:"):
            length = int(line[15:])
        elif low.startswith(b"transfer-encoding:") and b"chunked" in low:
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


async def run(spec: dict[str, Any]) -> dict[str, Any]:
    parts = urlsplit(spec["url"])
    if parts.hostname != "127.0.0.1" or parts.port is None:
        raise SystemExit("loopback (127.0.0.1:<port>) only")
    host, port = parts.hostname, parts.port
    hostport = f"{host}:{port}"
    conns = max(1, min(int(spec.get("connections", 32)), MAX_CONNECTIONS))
    seconds = min(float(spec.get("seconds", 5)), MAX_SECONDS)
    lat: list[float] = []
    statuses: collections.Counter[str] = collections.Counter()
    base_path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")

    if spec.get("requests") is not None:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        for r in spec["requests"]:
            queue.put_nowait(_request(hostport, r.get("path", base_path), r.get("headers", {})))
        deadline = time.perf_counter() + seconds

        async def list_worker() -> None:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                while not queue.empty() and time.perf_counter() < deadline:
                    req = queue.get_nowait()
                    t0 = time.perf_counter()
                    try:
                        status = await _exchange(reader, writer, req)
                    except (OSError, asyncio.IncompleteReadError):
                        statuses["socket-error"] += 1
                        writer.close()
                        reader, writer = await asyncio.open_connection(host, port)
                        continue
                    lat.append(time.perf_counter() - t0)
                    statuses[f"{status}"] += 1
            finally:
                writer.close()

        start = time.perf_counter()
        await asyncio.gather(*[list_worker() for _ in range(min(conns, len(spec["requests"]) or 1))])
        elapsed = time.perf_counter() - start
    else:
        request = _request(hostport, base_path, spec.get("headers", {}))
        state = {"measuring": False, "stop": False}

        async def worker() -> None:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                while not state["stop"]:
                    t0 = time.perf_counter()
                    try:
                        status = await _exchange(reader, writer, request)
                    except (OSError, asyncio.IncompleteReadError):
                        if state["measuring"]:
                            statuses["socket-error"] += 1
                        writer.close()
                        reader, writer = await asyncio.open_connection(host, port)
                        continue
                    if state["measuring"]:
                        lat.append(time.perf_counter() - t0)
                        statuses[f"{status}"] += 1
            finally:
                writer.close()

        tasks = [asyncio.create_task(worker()) for _ in range(conns)]
        await asyncio.sleep(min(float(spec.get("warmup", 1.0)), 10.0))
        state["measuring"] = True
        start = time.perf_counter()
        await asyncio.sleep(seconds)
        state["measuring"] = False
        elapsed = time.perf_counter() - start
        state["stop"] = True
        await asyncio.wait(tasks, timeout=30)
        for t in tasks:
            t.cancel()
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [0.0] * 99
    return {
        "rps": len(lat) / elapsed if elapsed else 0.0,
        "p50_ms": q[49] * 1000,
        "p99_ms": q[98] * 1000,
        "requests": len(lat),
        "seconds": elapsed,
        "statuses": dict(statuses),
    }


def main() -> None:
    spec = json.loads(sys.stdin.read())
    print(json.dumps(asyncio.run(run(spec))), flush=True)


if __name__ == "__main__":
    main()
