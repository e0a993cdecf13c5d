"""Helpers for the emulator suite: raw signed requests (to break them on purpose) and tokens."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from vlunaai import RequestContext
from vlunaai.signing import ServiceKeyAuth, ServiceKeyCredentials
from vlunaai.testing import VlunaEmulator

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


@pytest.fixture
async def raw(vluna_emulator: VlunaEmulator) -> AsyncIterator[Raw]:
    async with httpx.AsyncClient(transport=vluna_emulator.transport()) as client:
        yield Raw(vluna_emulator, client)


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
