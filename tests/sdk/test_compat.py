# ruff: noqa: E501 -- the published scripts below are quoted verbatim, long lines included.
"""Scripts written for the published client (0.1.2 and 0.3.2 READMEs) run unchanged.

The scripts below are the published quickstarts, with only the `YOUR_...` placeholders filled
in. They build their clients exactly as documented (no transport injection), so the network is
faked one level down with `respx`; the fake server checks every SVC-AUTH signature with the
test suite's independent verifier and answers in the generation the test picks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from .support import ACCESS_TOKEN, KEY_ID, REALM, SECRET_B64, assert_signed

BASE = "https://compat.vluna.test"

QUICKSTART_SERVICE = """
import asyncio
import os

from vlunaai import (
  VlunaAIConfig,
  RequestContext,
  ServiceClientOptions,
  ServiceKeyCredentials,
  create_service_client,
)


def env(name: str) -> str:
  value = os.environ.get(name)
  if not value:
    raise RuntimeError(f'Missing environment variable: {name}')
  return value


async def main() -> None:
  service_base_url = os.environ.get('VLUNA_SERVICE_BASE_URL', 'https://us-central1.api.vluna.ai/mgt/v1')
  realm_id = env('VLUNA_REALM_ID')
  principal_id = 'org:123'  # your customer's organization id, team id, user id, etc...
  user_id = 'user-1'

  client = create_service_client(
    ServiceClientOptions(
      config=VlunaAIConfig(
        base_url=service_base_url,
        realm_id=realm_id,
      ),
      service_key=ServiceKeyCredentials(
        key_id=env('VLUNA_SERVICE_KEY_ID'),
        secret=env('VLUNA_SERVICE_KEY_SECRET'),  # base64-encoded secret
      ),
    )
  )
  try:
    ctx = RequestContext(principal_id=principal_id, user_id=user_id)
    feature_code = 'openai.gpt-4o'

    authz = await client.gate_authorize(body={'feature_code': feature_code, 'feature_family_code': 'llm.standard'}, context=ctx)
    if not authz.data:
      raise RuntimeError('gate_authorize returned no data')
    LEASE_LINES

    commit = await client.gate_commit(
      body=COMMIT_BODY,
      context=ctx,
    )
    print(commit.model_dump())

    balance = await client.get_credit_balance(context=ctx)
    print(balance.model_dump())

    token_envelope = await client.issue_platform_token(
      body={
        'principal_id': principal_id,
        'user_id': user_id,
        'scopes': ['checkout', 'portal'],
        'session_ttl_sec': 900,
      },
      context=ctx,
    )
    if not token_envelope.data:
      raise RuntimeError('issue_platform_token returned no data')
    access_token = token_envelope.data.access_token
    print(access_token)

  finally:
    await client.close()


asyncio.run(main())
"""

LEASE_0_1_2 = "lease_token = authz.data.lease_token"
COMMIT_0_1_2 = "{'lease_token': lease_token, 'feature_code': feature_code, 'quantity_minor': '12345'}"
LEASE_0_3_2 = "lease = authz.data.lease"
COMMIT_0_3_2 = "{'lease': lease, 'feature_code': feature_code, 'quantity_minor': '12345'}"

PREFLIGHT_SNIPPET = """
import asyncio
import os

from vlunaai import (
  GatePreflightError,
  GatePreflightSuccess,
  RequestContext,
  ServiceClientOptions,
  ServiceKeyCredentials,
  VlunaAIConfig,
  VlunaAIError,
  create_service_client,
)


async def main() -> None:
  principal_id, user_id = 'org:123', 'user-1'
  client = create_service_client(
    ServiceClientOptions(
      config=VlunaAIConfig(base_url=os.environ['VLUNA_SERVICE_BASE_URL'], realm_id=os.environ['VLUNA_REALM_ID']),
      service_key=ServiceKeyCredentials(os.environ['VLUNA_SERVICE_KEY_ID'], os.environ['VLUNA_SERVICE_KEY_SECRET']),
      error_mode=ERROR_MODE,
    )
  )
  result = await client.gate_preflight(
    body={'feature_code': 'openai.gpt-4o'},
    context=RequestContext(principal_id=principal_id, user_id=user_id),
  )

  if isinstance(result, GatePreflightError):
    print('denied', result.status, result.code, result.hints, result.meta, result.trace_id)
  else:
    print('allowed', result.status, result.data.as_of)

  try:
    await client.get_meter('missing', context=RequestContext(request_id='caller-req-1', request_timeout_seconds=5.0))
  except VlunaAIError as exc:
    print('error', exc.status, exc.code, exc.operation, exc.details['path'], exc.trace_id)
  else:
    print('no error raised')
  await client.close()


asyncio.run(main())
"""

QUICKSTART_BEARER = """
import asyncio
import os

from vlunaai import (
  VlunaAIConfig,
  BearerClientOptions,
  RequestContext,
  create_bearer_client,
)


def env(name: str) -> str:
  value = os.environ.get(name)
  if not value:
    raise RuntimeError(f'Missing environment variable: {name}')
  return value


async def main() -> None:
  bearer_base_url = os.environ.get('VLUNA_BEARER_BASE_URL', 'https://us-central1.api.vluna.ai/api/v1')
  realm_id = env('VLUNA_REALM_ID')
  billing_account_id = env('VLUNA_BILLING_ACCOUNT_ID')
  access_token = env('VLUNA_ACCESS_TOKEN')  # obtain from your backend (see ServiceClient.issue_platform_token)

  client = create_bearer_client(
    BearerClientOptions(
      config=VlunaAIConfig(
        base_url=bearer_base_url,
        realm_id=realm_id,
      )
    )
  )
  try:
    ctx = RequestContext(access_token=access_token, billing_account_id=billing_account_id)
    products = await client.list_catalog_products(context=ctx)
    print(products)
  finally:
    await client.close()


asyncio.run(main())
"""


def _envelope(data: Any, status: int = 200) -> httpx.Response:
    return httpx.Response(status, json={"ok": True, "code": "OK", "data": data})


class FakeVluna:
    """Routes for the calls the scripts make, in the answer shapes of one server generation."""

    def __init__(self, generation: str) -> None:
        self.generation = generation
        self.requests: list[httpx.Request] = []

    def service(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert_signed(request)
        assert request.headers["x-realm-id"] == REALM
        path = request.url.path.removeprefix("/mgt/v1")
        if path == "/gate/authorize":
            lease_field = "lease_token" if self.generation == "0.1.2" else "lease"
            return _envelope({lease_field: "lease-777", "decision": "allow"})
        if path == "/gate/commits":
            return _envelope({"committed": True})
        if path == "/wallet/balance":
            return _envelope({"balance_xusd": "10.00"})
        if path == "/token/issue":
            return _envelope(
                {"access_token": ACCESS_TOKEN, "token_type": "Bearer", "billing_account_id": "ba_1"}
            )
        if path == "/gate/preflight":
            return httpx.Response(
                402,
                json={
                    "ok": False,
                    "code": "FUNDING.INSUFFICIENT",
                    "message": "insufficient funds",
                    "hints": [{"type": "funding.xusd_shortfall", "shortfall_xusd": 1}],
                    "meta": {"status": 402},
                    "trace_id": "trace-pf",
                },
            )
        return httpx.Response(
            404,
            json={"ok": False, "code": "RESOURCE.NOT_FOUND", "message": "no", "trace_id": "trace-404"},
            headers={"x-request-id": request.headers.get("x-request-id", "")},
        )

    def bearer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert request.headers["authorization"] == f"Bearer {ACCESS_TOKEN}"
        assert request.headers["x-billing-account-id"] == "ba_1"
        return httpx.Response(200, json={"ok": True, "code": "OK", "data": [{"id": "prod_1", "name": "Pro"}]})


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLUNA_SERVICE_BASE_URL", f"{BASE}/mgt/v1")
    monkeypatch.setenv("VLUNA_BEARER_BASE_URL", f"{BASE}/api/v1")
    monkeypatch.setenv("VLUNA_REALM_ID", REALM)
    monkeypatch.setenv("VLUNA_SERVICE_KEY_ID", KEY_ID)
    monkeypatch.setenv("VLUNA_SERVICE_KEY_SECRET", SECRET_B64)
    monkeypatch.setenv("VLUNA_BILLING_ACCOUNT_ID", "ba_1")
    monkeypatch.setenv("VLUNA_ACCESS_TOKEN", ACCESS_TOKEN)


@pytest.fixture
def fake_server(request: pytest.FixtureRequest) -> Iterator[FakeVluna]:
    fake = FakeVluna(getattr(request, "param", "0.3.2"))
    with respx.mock(assert_all_called=False) as router:
        router.route(url__startswith=f"{BASE}/mgt/v1").mock(side_effect=fake.service)
        router.route(url__startswith=f"{BASE}/api/v1").mock(side_effect=fake.bearer)
        yield fake


def _run(source: str) -> None:
    exec(compile(source, "<published-script>", "exec"), {"__name__": "__main__"})


@pytest.mark.usefixtures("env")
@pytest.mark.parametrize(
    ("fake_server", "lease_line", "commit_body"),
    [
        ("0.1.2", LEASE_0_1_2, COMMIT_0_1_2),
        ("0.3.2", LEASE_0_3_2, COMMIT_0_3_2),
        # Scripts of one generation against servers of the other: both lease names work.
        ("0.3.2", LEASE_0_1_2, COMMIT_0_1_2),
        ("0.1.2", LEASE_0_3_2, COMMIT_0_3_2),
    ],
    indirect=["fake_server"],
)
def test_service_quickstart_runs_unchanged(
    fake_server: FakeVluna, lease_line: str, commit_body: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(QUICKSTART_SERVICE.replace("LEASE_LINES", lease_line).replace("COMMIT_BODY", commit_body))
    out = capsys.readouterr().out
    assert ACCESS_TOKEN in out
    paths = [r.url.path for r in fake_server.requests]
    assert paths == [
        "/mgt/v1/gate/authorize",
        "/mgt/v1/gate/commits",
        "/mgt/v1/wallet/balance",
        "/mgt/v1/token/issue",
    ]
    commit = json.loads(fake_server.requests[1].content)
    lease_key = "lease_token" if "lease_token" in commit_body else "lease"
    assert commit == {lease_key: "lease-777", "feature_code": "openai.gpt-4o", "quantity_minor": "12345"}
    token_body = json.loads(fake_server.requests[3].content)
    assert token_body == {
        "principal_id": "org:123",
        "user_id": "user-1",
        "scopes": ["checkout", "portal"],
        "session_ttl_sec": 900,
    }
    for req in fake_server.requests:
        assert req.headers["x-principal-id"] == "org:123"
        assert req.headers["x-user-id"] == "user-1"


@pytest.mark.usefixtures("env")
@pytest.mark.parametrize("mode", ["'result'", "'raise'"])
def test_preflight_snippet_runs_unchanged(
    fake_server: FakeVluna, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _run(PREFLIGHT_SNIPPET.replace("ERROR_MODE", mode))
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("denied 402 FUNDING.INSUFFICIENT")
    assert "trace-pf" in lines[0]
    if mode == "'raise'":
        assert lines[1] == "error 404 RESOURCE.NOT_FOUND get_meter /mgt/v1/meters/missing trace-404"
    else:
        assert lines[1] == "no error raised"
    assert fake_server.requests[1].headers["x-request-id"] == "caller-req-1"


@pytest.mark.usefixtures("env")
def test_bearer_quickstart_runs_unchanged(fake_server: FakeVluna, capsys: pytest.CaptureFixture[str]) -> None:
    _run(QUICKSTART_BEARER)
    out = capsys.readouterr().out
    assert "prod_1" in out
    assert len(fake_server.requests) == 1
    assert fake_server.requests[0].url.path == "/api/v1/catalog/products"


def test_published_import_names_exist() -> None:
    import vlunaai

    published = [
        "VlunaAIConfig",
        "VlunaAIError",
        "GatePreflightError",
        "GatePreflightResult",
        "GatePreflightSuccess",
        "ServiceKeyAuth",
        "ServiceKeyCredentials",
        "RequestContext",
        "ServiceClient",
        "ServiceClientOptions",
        "create_service_client",
        "BearerClient",
        "BearerClientOptions",
        "create_bearer_client",
    ]
    missing = [name for name in published if not hasattr(vlunaai, name)]
    assert missing == []
    assert set(published) <= set(vlunaai.__all__)


def test_published_dataclass_fields_and_positions() -> None:
    from vlunaai import (
        BearerClientOptions,
        RequestContext,
        ServiceClientOptions,
        ServiceKeyCredentials,
        VlunaAIConfig,
    )

    ctx = RequestContext("ba", "pr", "us", "idem", "tok", "req", 2.5)
    assert (ctx.billing_account_id, ctx.principal_id, ctx.user_id, ctx.idempotency_key) == (
        "ba",
        "pr",
        "us",
        "idem",
    )
    assert (ctx.access_token, ctx.request_id, ctx.request_timeout_seconds) == ("tok", "req", 2.5)
    cfg = VlunaAIConfig("https://x/mgt/v1", "realm", "ua", 10.0, 1.0, 2.0, 3.0, 4.0)
    assert (cfg.user_agent, cfg.timeout_seconds, cfg.pool_timeout_seconds) == ("ua", 10.0, 4.0)
    assert VlunaAIConfig(base_url=None, realm_id="r").timeout_seconds == 30.0
    creds = ServiceKeyCredentials("pk-1", SECRET_B64)
    opts = ServiceClientOptions(cfg, creds, "raise")
    assert (opts.config, opts.service_key, opts.error_mode) == (cfg, creds, "raise")
    assert ServiceClientOptions(config=cfg, service_key=creds).error_mode == "result"
    assert BearerClientOptions(cfg).error_mode == "result"
