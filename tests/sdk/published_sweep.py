"""Call every operation of a published `vlunaai` release against a running emulator.

Runs INSIDE a virtual environment holding the unmodified published package (and nothing of this
repository: standard library, httpx and pydantic only, which the package depends on):

    python -I published_sweep.py <emulator base URL> <realm> <key id> <base64 secret> <operations.json>

Prints one JSON line: for each operation, the HTTP status of its answer and, for a 2xx, whether
the release's own models parsed it (and the error when they did not).

vlunaai 0.1.2 signs an older canonical string that Vluna refuses (the emulator too): its requests
are signed again here, the current way, in the transport, so that its models can still be checked
against the emulator's answers. Its RequestContext has no user id; the emulator for this sweep
accepts principal-only runtime calls (--allow-principal-only).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import json
import re
import sys
from importlib.metadata import version
from typing import Any

import httpx
import vlunaai
from vlunaai import RequestContext

BASE, REALM, KEY_ID, SECRET, OPERATIONS = sys.argv[1:6]
RELEASE = version("vlunaai")
PRINCIPAL, USER = "org:published", "user:published"
FEATURE = "openai.gpt-4o"
RETURN_URL = "https://app.example/return"


def _digest(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


class Recorder(httpx.AsyncBaseTransport):
    """Remembers the status of the last answer; re-signs SVC-AUTH requests when asked to."""

    def __init__(self, *, resign: bool) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._resign = resign
        self.last_status = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._resign and request.headers.get("authorization", "").startswith("SVC-AUTH "):
            self._sign(request)
        response = await self._inner.handle_async_request(request)
        self.last_status = response.status_code
        return response

    @staticmethod
    def _sign(request: httpx.Request) -> None:
        h = request.headers
        fields = dict(p.split("=", 1) for p in h["authorization"][len("SVC-AUTH ") :].split(","))
        body = request.content
        h["content-digest"] = _digest(body)
        canonical = "\n".join(
            [
                request.method,
                request.url.raw_path.decode("ascii"),
                f"ts:{fields['ts']}",
                f"nonce:{fields['nonce']}",
                f"content-digest:{h['content-digest']}",
                f"content-type:{h.get('content-type', '')}",
                f"x-realm-id:{h.get('x-realm-id', '')}",
                f"x-principal-id:{h.get('x-principal-id', '')}",
                f"x-user-id:{h.get('x-user-id', '')}",
                f"x-billing-account-id:{h.get('x-billing-account-id', '')}",
                "x-billing-user-id:",
                f"idempotency-key:{h.get('idempotency-key', '')}",
            ]
        )
        mac = hmac.new(base64.b64decode(SECRET), canonical.encode(), hashlib.sha256).digest()
        fields["sig"] = base64.b64encode(mac).decode()
        order = ("keyId", "sig", "ts", "nonce", "alg")
        h["authorization"] = "SVC-AUTH " + ",".join(f"{k}={fields[k]}" for k in order)


def _client(kind: str, recorder: Recorder) -> Any:
    plane = "mgt" if kind == "service" else "api"
    config = vlunaai.VlunaAIConfig(base_url=f"{BASE}/{plane}/v1", realm_id=REALM)
    if kind == "service":
        options = vlunaai.ServiceClientOptions(
            config=config, service_key=vlunaai.ServiceKeyCredentials(key_id=KEY_ID, secret=SECRET)
        )
        client: vlunaai.ServiceClient | vlunaai.BearerClient = vlunaai.create_service_client(options)
    else:
        client = vlunaai.create_bearer_client(vlunaai.BearerClientOptions(config=config))
    # The published clients build their own httpx client; give it ours (same base URL and timeout).
    http = client._http
    old = http._client
    http._client = httpx.AsyncClient(base_url=old.base_url, timeout=old.timeout, transport=recorder)
    return client


def _context(**values: Any) -> Any:
    known = inspect.signature(RequestContext).parameters
    return RequestContext(**{k: v for k, v in values.items() if k in known})


class Sweep:
    def __init__(self) -> None:
        self.recorder = Recorder(resign=RELEASE.startswith("0.1."))
        self.service = _client("service", self.recorder)
        self.bearer = _client("bearer", self.recorder)
        self.who = _context(principal_id=PRINCIPAL, user_id=USER)
        self.fx: dict[str, Any] = {}
        self.n = 0

    async def setup(self) -> None:
        token = await self.service.issue_platform_token(
            body={"principal_id": PRINCIPAL, "user_id": USER}, context=self.who
        )
        self.fx["access"] = token.data.access_token
        self.fx["billing_account_id"] = token.data.billing_account_id
        # 0.1.2's token model has no billing_user_id.
        self.fx["billing_user_id"] = getattr(token.data, "billing_user_id", None) or "billing_user_id-1"
        self.bearer_ctx = _context(access_token=self.fx["access"])
        clients = (("service", self.service, self.who), ("bearer", self.bearer, self.bearer_ctx))
        for kind, client, ctx in clients:
            budget = await client.create_budget(
                body={"budget": f"{kind}-budget", "limit_xusd": "100000"}, context=ctx
            )
            self.fx[f"budget_id.{kind}"] = budget.data.budget_id
            checkout_id = await self._checkout(client, ctx)
            if checkout_id:
                self.fx[f"checkout_id.{kind}"] = checkout_id
        made = await self.service.create_billing_plan_assignment(body=self._assignment(), context=self.who)
        self.fx["assignment_id.service"] = made.data.assignment_id

    def _assignment(self) -> dict[str, Any]:
        body = {
            "billing_account_id": self.fx["billing_account_id"],
            "plan_id": "plan_pro",
            "source_kind": "ops.manual",
            "source_ref": "published-sweep",
            "window_start": "2026-01-01T00:00:00Z",
        }
        if RELEASE.startswith("0.3"):
            body["assignment_scope"] = "account"  # required by 0.3.2, unknown to 0.1.2
        return body

    async def _checkout(self, client: Any, ctx: Any) -> str | None:
        items = [{"catalog_price_id": "price_credits_10", "quantity": 1}]
        if hasattr(client, "create_checkout"):
            made = await client.create_checkout(body={"items": items, "return_url": RETURN_URL}, context=ctx)
            return str(made.data.checkout_id)
        made = await client.create_checkout_session(
            body={"items": items, "success_url": RETURN_URL, "cancel_url": RETURN_URL}, context=ctx
        )
        return str(getattr(made.data, "checkout_id", "") or "") or None

    async def _lease(self) -> str:
        authz = await self.service.gate_authorize(body={"feature_code": FEATURE}, context=self.who)
        data = authz.data
        return str(getattr(data, "lease", None) or getattr(data, "lease_token", None))

    async def body(self, name: str) -> dict[str, Any]:
        self.n += 1
        items = [{"catalog_price_id": "price_credits_10", "quantity": 1}]
        bodies: dict[str, dict[str, Any]] = {
            "issue_platform_token": {"principal_id": PRINCIPAL, "user_id": USER},
            "create_checkout": {"items": items, "return_url": RETURN_URL},
            "create_checkout_session": {"items": items, "success_url": RETURN_URL, "cancel_url": RETURN_URL},
            "create_portal_session": {"return_url": RETURN_URL},
            "create_subscription_management_session": {"return_url": RETURN_URL, "subscription_id": "sub_1"},
            "create_budget": {"budget": f"budget-{self.n}", "limit_xusd": "5000"},
            "gate_authorize": {"feature_code": FEATURE, "estimated_quantity_minor": "10"},
            "gate_preflight": {"feature_code": FEATURE, "estimated_quantity_minor": "10"},
            "gate_ingest": {"feature_code": FEATURE, "quantity_minor": "3"},
            "wallet_consume": {"amount": "1", "unit": "xusd"},
            "wallet_adjust": {"delta": "100", "unit": "xusd", "kind": "adjustment"},
        }
        if name == "create_billing_plan_assignment":
            return self._assignment()
        key = "lease" if RELEASE.startswith("0.3") else "lease_token"
        if name == "gate_commit":
            return {key: await self._lease(), "feature_code": FEATURE, "quantity_minor": "10"}
        if name == "gate_cancel":
            return {"lease_token": await self._lease()}
        if name == "gate_commit_batch":
            item = {key: await self._lease(), "feature_code": FEATURE, "quantity_minor": "5"}
            return {"items": [{**item, "idempotency_key": f"i{self.n}"}]}
        return bodies.get(name, {})

    def path_value(self, kind: str, name: str) -> str:
        if name in ("checkout_id", "budget_id", "assignment_id"):
            return str(self.fx.get(f"{name}.{kind}", f"{name}-1"))
        if name in ("billing_account_id", "billing_user_id"):
            return str(self.fx[name])
        if name == "feature_family_id":
            return "llm.standard"
        return f"{name}-1"

    async def call(self, op: dict[str, Any]) -> dict[str, Any]:
        kind = "service" if op["client"].startswith("service") else "bearer"
        client = self.service if kind == "service" else self.bearer
        method = getattr(client, op["name"])
        params = inspect.signature(method).parameters
        args = [self.path_value(kind, p) for p in re.findall(r"\{([a-z_]+)\}", op["path"])]
        kwargs: dict[str, Any] = {"context": self.who if kind == "service" else self.bearer_ctx}
        if "body" in params:
            kwargs["body"] = await self.body(op["name"])
        if "query" in params and params["query"].default is inspect.Parameter.empty:
            kwargs["query"] = {}
        self.recorder.last_status = 0
        result: dict[str, Any] = {"operation": f"{kind}.{op['name']}"}
        try:
            await method(*args, **kwargs)
            result["parsed"] = True
        except Exception as exc:  # the release's own models refusing the answer, typically
            result["parsed"] = False
            result["error"] = f"{type(exc).__name__}: {str(exc)[:600]}"
        result["status"] = self.recorder.last_status
        return result


async def main() -> None:
    sweep = Sweep()
    await sweep.setup()
    with open(OPERATIONS, encoding="utf-8") as f:  # noqa: ASYNC230 (a small file, read once)
        operations = json.load(f)
    results = [await sweep.call(op) for op in operations]
    print(json.dumps({"release": RELEASE, "results": results}))


asyncio.run(main())
