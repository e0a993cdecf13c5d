"""Helpers of the emulator suite: raw signed requests (to break them on purpose), the error
shape, and the `vlunaai-emulator` command as a process."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import httpx
from vlunaai import RequestContext
from vlunaai.signing import ServiceKeyAuth, ServiceKeyCredentials
from vlunaai.testing import VlunaEmulator

from tests.support.processes import stop

BASE = "http://vluna-emulator.test"
RUNTIME = RequestContext(principal_id="org:acme", user_id="user:alice")


class Raw:
    """httpx client on the emulator that signs like the SDK, with hooks to tamper."""

    def __init__(self, emu: VlunaEmulator, client: httpx.AsyncClient) -> None:
        self.emu = emu
        self.client = client
        self.auth = ServiceKeyAuth(ServiceKeyCredentials(emu.service_key_id, emu.service_key_secret))

    def signed_headers(
        self,
        method: str,
        path: str,
        body: str | None = None,
        *,
        auth: ServiceKeyAuth | None = None,
        realm_id: str | None = None,
        idempotency_key: str | None = None,
        principal_id: str | None = "org:acme",
        user_id: str | None = "user:alice",
    ) -> dict[str, str]:
        return (auth or self.auth).sign(
            method=method,
            url=BASE + path,
            body=body,
            idempotency_key=idempotency_key,
            realm_id=realm_id or self.emu.realm_id,
            principal_id=principal_id,
            user_id=user_id,
        )

    async def send(
        self, method: str, path: str, headers: dict[str, str], body: str | None = None
    ) -> httpx.Response:
        return await self.client.request(method, BASE + path, headers=headers, content=body)

    async def svc(self, method: str, path: str, payload: Any = None, **kw: Any) -> httpx.Response:
        body = None if payload is None else json.dumps(payload)
        return await self.send(method, path, self.signed_headers(method, path, body, **kw), body)

    async def bearer(
        self,
        method: str,
        path: str,
        token: str,
        payload: Any = None,
        *,
        realm_id: str | None = None,
        idem: str | None = "k" * 32,
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {token}", "x-realm-id": realm_id or self.emu.realm_id}
        if payload is not None:
            headers["content-type"] = "application/json; charset=utf-8"
        if idem and method != "GET":
            headers["idempotency-key"] = idem
        body = None if payload is None else json.dumps(payload)
        return await self.send(method, path, headers, body)

    async def token(
        self, principal: str = "org:acme", user: str = "user:alice", **extra: Any
    ) -> dict[str, Any]:
        response = await self.svc(
            "POST", "/mgt/v1/token/issue", {"principal_id": principal, "user_id": user, **extra}
        )
        assert response.status_code == 200, response.text
        data: dict[str, Any] = response.json()["data"]
        return data


def assert_error(
    response: httpx.Response, status: int, code: str, reason: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["ok"] is False
    assert body["code"] == code, body
    assert body["meta"]["status"] == status
    assert isinstance(body.get("trace_id"), str)
    if reason is not None:
        assert body["meta"].get("reason") == reason, body
    return body


class Server:
    def __init__(self, proc: subprocess.Popen[str], exports: dict[str, str], banner: str) -> None:
        self.proc = proc
        self.exports = exports
        self.banner = banner
        self.base = banner.split(" listening on ")[1].split(" ")[0]


def start_cli(*args: str, env: dict[str, str] | None = None) -> Server:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("VLUNA_")} | (env or {})
    proc = subprocess.Popen(
        [sys.executable, "-m", "vlunaai.testing", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )
    assert proc.stdout is not None
    banner = proc.stdout.readline()
    if not banner:
        proc.kill()
        raise AssertionError(proc.stderr.read() if proc.stderr else "no output")
    exports: dict[str, str] = {}
    while True:
        line = proc.stdout.readline()
        match = re.match(r"export (\w+)=(.*)", line.strip())
        if match:
            exports[match[1]] = match[2]
        if not line or (line.startswith("export VLUNA_SERVICE_KEY_ID") and "--service-key-secret" in args):
            break
        if line.startswith("export VLUNA_SERVICE_KEY_SECRET"):
            break
    return Server(proc, exports, banner)


def stop_cli(server: Server) -> None:
    stop(server.proc)


async def wait_ready(base: str) -> None:
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                if (await client.get(base + "/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            import anyio

            await anyio.sleep(0.05)
    raise AssertionError("the emulator did not become ready")
