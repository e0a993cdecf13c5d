"""Every operation of both published releases, driven from the shared `operations.json` files.

For each operation the method is called the way the published client documents it (path ids
positional, `query`/`body`/`context` as keywords) and the request that reaches the transport is
checked: method, route, query, body bytes, auth headers, and the type of the parsed answer.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from vlunaai import BearerClient, GatePreflightSuccess, RequestContext, ServiceClient, VlunaAIError
from vlunaai.generated.operations import OPERATIONS

from .support import (
    ACCESS_TOKEN,
    BEARER_BASE,
    REALM,
    SERVICE_BASE,
    ScriptedTransport,
    assert_signed,
    make_bearer,
    make_service,
    ok,
)

SPEC_DIR = Path(__file__).resolve().parents[2] / "spec" / "vluna-api"
SPEC_FILES = [SPEC_DIR / "operations.json", SPEC_DIR / "v0.1.2" / "operations.json"]
NON_PATH_PARAMS = {"query", "body", "context"}


def _load_spec() -> list[dict[str, Any]]:
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for path in SPEC_FILES:
        for op in json.loads(path.read_text()):
            client = op["client"].split()[0]
            merged.setdefault((client, op["name"]), {**op, "client": client})
    return sorted(merged.values(), key=lambda o: (o["client"], o["name"]))


SPEC = _load_spec()


def _op_id(op: dict[str, Any]) -> str:
    return f"{op['client']}.{op['name']}"


def test_spec_and_operation_table_agree() -> None:
    spec = {(op["client"], op["name"]): (op["method"], op["path"]) for op in SPEC}
    table = {(op.client, op.name): (op.method, op.path) for op in OPERATIONS}
    assert spec == table
    assert len(spec) == 122


@pytest.mark.parametrize("op", SPEC, ids=_op_id)
def test_method_signature_matches_published(op: dict[str, Any]) -> None:
    cls = ServiceClient if op["client"] == "service" else BearerClient
    params = inspect.signature(getattr(cls, op["name"])).parameters
    for p in op["params"]:
        assert p["name"] in params, f"{op['name']} lacks parameter {p['name']}"
        param = params[p["name"]]
        kind = (
            inspect.Parameter.KEYWORD_ONLY
            if p["name"] in NON_PATH_PARAMS
            else inspect.Parameter.POSITIONAL_OR_KEYWORD
        )
        assert param.kind == kind
        has_default = param.default is not inspect.Parameter.empty
        assert has_default == (not p["required"]), f"{op['name']}.{p['name']}"


def _returns_class(returns: str) -> type[BaseModel]:
    if returns == "GatePreflightResult":
        return GatePreflightSuccess
    module, name = returns.split(".")
    return getattr(importlib.import_module(f"vlunaai.generated.{module}_models"), name)  # type: ignore[no-any-return]


@pytest.mark.parametrize("op", SPEC, ids=_op_id)
async def test_operation_request_on_the_wire(op: dict[str, Any]) -> None:
    transport = ScriptedTransport(ok({}, status=201 if op["method"] == "POST" else 200))
    is_service = op["client"] == "service"
    client: ServiceClient | BearerClient = make_service(transport) if is_service else make_bearer(transport)
    names = [p["name"] for p in op["params"]]
    path_ids = [n for n in names if n not in NON_PATH_PARAMS]
    args = [f"{name}-42" for name in path_ids]
    kwargs: dict[str, Any] = {}
    query = {"limit": 7, "cursor": "c 1/é", "skip": None}
    body = {"k": "v", "n": 1, "nested": {"é": [1, 2]}}
    if "query" in names:
        kwargs["query"] = query
    if "body" in names:
        kwargs["body"] = body
    kwargs["context"] = (
        RequestContext(billing_account_id="ba_9", principal_id="org:1", user_id="u-1")
        if is_service
        else RequestContext(access_token=ACCESS_TOKEN, billing_account_id="ba_9")
    )
    try:
        result = await getattr(client, op["name"])(*args, **kwargs)
    finally:
        await client.close()

    assert len(transport.requests) == 1
    req = transport.last
    base = SERVICE_BASE if is_service else BEARER_BASE
    expected_path = op["path"]
    for name in path_ids:
        expected_path = expected_path.replace("{" + name + "}", f"{name}-42")
    assert "{" not in expected_path
    assert req.method == op["method"]
    assert str(req.url.copy_with(query=None)) == base + expected_path
    if "query" in names:
        assert dict(httpx.QueryParams(req.url.query)) == {"limit": "7", "cursor": "c 1/é"}
    else:
        assert req.url.query == b""
    if "body" in names:
        assert req.content == json.dumps(body).encode()
        assert req.headers["content-type"] == "application/json; charset=utf-8"
    elif op["name"] == "close_budget":
        assert req.content == b"{}"  # the published client sends an empty object
    else:
        assert req.content == b""
        if op["method"] != "GET":
            # A bodyless write announces no JSON body (servers refuse an empty one).
            assert "content-type" not in req.headers
    if op["method"] != "GET":
        assert re.fullmatch(r"[0-9a-f]{32}", req.headers["idempotency-key"])
    assert req.headers["x-realm-id"] == REALM
    assert req.headers["x-billing-account-id"] == "ba_9"
    if is_service:
        assert req.headers["x-principal-id"] == "org:1"
        assert req.headers["x-user-id"] == "u-1"
        assert_signed(req)
    else:
        assert req.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
        assert "x-principal-id" not in req.headers
    assert isinstance(result, _returns_class(op["returns"]))
    assert result.model_dump(by_alias=True)["ok"] is True


@pytest.mark.parametrize("op", [o for o in SPEC if o["client"] == "bearer"], ids=_op_id)
async def test_bearer_operation_without_token_never_sends(op: dict[str, Any]) -> None:
    transport = ScriptedTransport(ok({}))
    client = make_bearer(transport)
    names = [p["name"] for p in op["params"]]
    args = [f"{n}-1" for n in names if n not in NON_PATH_PARAMS]
    kwargs: dict[str, Any] = {name: {} for name in ("body", "query") if name in names}
    try:
        for context in (None, RequestContext(), RequestContext(access_token="")):
            with pytest.raises(VlunaAIError) as info:
                await getattr(client, op["name"])(*args, context=context, **kwargs)
            assert info.value.message == "Missing access token for bearer request"
            assert type(info.value) is VlunaAIError
    finally:
        await client.close()
    assert transport.requests == []
