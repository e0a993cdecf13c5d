"""The proxy route is an ASGI app mounted on ``/vluna/api/v1`` (bff/proxy/routes.py): what the
HTTP route ``/vluna/api/v1/{sub:path}`` answered before, it answers the same. These are the parts
the endpoint does itself instead of Litestar's HTTP route machinery: which paths and methods are
its own, OPTIONS, the route label of metrics and logs, the request a hook authenticator sees, and
the app's request body size limit."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from tests.bff import hooks

from .observability_support import sample
from .proxy_support import (
    EmulatorServer,
    proxy_client,
    proxy_settings,
    raw_request,
)
from .support import AppClient, Keys

P = "/vluna/api/v1"
TEMPLATE = "/vluna/api/v1/{sub}"
REQUESTS = "vluna_bff_http_requests_total"


def auth(keys: Keys, user: str = "alice") -> dict[str, str]:
    return {"Authorization": f"Bearer {keys.token(user, org_id='acme')}"}


def error(body: bytes) -> tuple[str, str]:
    parsed = json.loads(body)
    assert set(parsed) == {"error", "message"}
    return parsed["error"], parsed["message"]


async def counted(client: AppClient, labels: dict[str, str]) -> float:
    r = await client.get("/metrics")
    assert r.status_code == 200
    return sample(r.text, REQUESTS, labels)


async def test_the_prefix_alone_and_look_alike_paths_are_no_route(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    unmatched = {"method": "GET", "route": "<unmatched>", "status": "404"}
    before = await counted(client, unmatched)
    for path in (P, P + "/", P + "//", P + "x", P + "x/catalog/products", P + "-/catalog/products"):
        r = await raw_request(client.app, "GET", path, auth(keys))
        assert r.status == 404 and error(r.body) == ("not_found", "Not Found"), path
    assert await counted(client, unmatched) - before == 6
    assert server.recorder.api_calls() == []


async def test_other_methods_are_405_with_the_allowed_ones(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    for method in ("HEAD", "TRACE", "CONNECT", "PROPFIND"):
        r = await raw_request(client.app, method, f"{P}/catalog/products", auth(keys))
        assert r.status == 405, method
        assert set(r.headers["allow"].split(", ")) == {"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
        if method != "HEAD":
            assert error(r.body) == ("method_not_allowed", "Method Not Allowed")
    # Refused before the route is known, as the router refused them: counted as unmatched.
    unmatched = {"method": "TRACE", "route": "<unmatched>", "status": "405"}
    before = await counted(client, unmatched)
    r = await raw_request(client.app, "TRACE", f"{P}/catalog/products", auth(keys))
    assert r.status == 405
    assert await counted(client, unmatched) - before == 1
    assert await counted(client, {"method": "TRACE", "route": TEMPLATE, "status": "405"}) == 0
    assert server.recorder.api_calls() == []


async def test_options_without_a_preflight_lists_the_methods(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    labels = {"method": "OPTIONS", "route": TEMPLATE, "status": "204"}
    before = await counted(client, labels)
    r = await raw_request(client.app, "OPTIONS", f"{P}/catalog/products")
    assert r.status == 204 and r.body == b""
    assert r.headers["allow"] == "DELETE, GET, OPTIONS, PATCH, POST, PUT"
    assert "content-type" not in r.headers and r.headers["x-request-id"]
    assert await counted(client, labels) - before == 1
    assert server.recorder.api_calls() == []


async def test_proxied_calls_are_labelled_with_the_route_template(
    client: AppClient, keys: Keys, server: EmulatorServer
) -> None:
    statuses = ("200", "401", "404")
    before = [await counted(client, {"method": "GET", "route": TEMPLATE, "status": s}) for s in statuses]
    r = await client.get(f"{P}/catalog/products", headers=auth(keys))
    assert r.status_code == 200 and r.headers["x-request-id"]
    r = await client.get(f"{P}/catalog/products")
    assert r.status_code == 401
    r = await client.get(f"{P}/not/allowed", headers=auth(keys))
    assert r.status_code == 404 and r.json()["error"] == "not_found"  # the allowlist's refusal
    after = [await counted(client, {"method": "GET", "route": TEMPLATE, "status": s}) for s in statuses]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]


async def test_a_hook_authenticator_sees_the_request_as_on_any_route(
    keys: Keys, server: EmulatorServer, prefix: str
) -> None:
    settings = proxy_settings(
        keys,
        server,
        prefix,
        auth={"methods": ["hook"], "hook": {"callable": "tests.bff.hooks:auth_recording_the_request"}},
    )
    hooks.seen_by_hook.clear()
    async with proxy_client(settings, server) as c:
        who = {"X-Test-User": "alice", "X-Test-Org": "acme"}
        r = await c.get("/vluna/token", headers=who)
        assert r.status_code == 200
        r = await c.get(f"{P}/catalog//products/", headers=who)
        assert r.status_code == 400  # (the allowlist refuses the raw path: empty segment)
        r = await c.get(f"{P}/catalog/products", headers=who)
        assert r.status_code == 200
    # The path as Litestar's router gives a route: normalised, the prefix included.
    assert hooks.seen_by_hook == [
        ("GET", "/vluna/token", "alice"),
        ("GET", f"{P}/catalog/products", "alice"),
        ("GET", f"{P}/catalog/products", "alice"),
    ]


async def test_a_body_over_the_apps_limit_is_refused_while_it_is_read(
    keys: Keys, server: EmulatorServer, prefix: str
) -> None:
    # proxy.max_body_bytes may be set above Litestar's request body limit (10 MB, the app's
    # default): the app's limit still holds, as it did on the HTTP route.
    settings = proxy_settings(keys, server, prefix, proxy={"max_body_bytes": 16 * 1024 * 1024})
    big = b'{"return_url": "https://a/", "pad": "' + b"x" * 10_000_000 + b'"}'
    async with proxy_client(settings, server) as c:
        h = {**auth(keys), "Content-Type": "application/json"}
        # With Content-Length (raw_request sends it): refused before the body is read.
        r = await raw_request(c.app, "POST", f"{P}/portal/sessions", h, big)
        assert r.status == 413 and error(r.body) == ("http_error", "Request Entity Too Large")

        async def chunks() -> AsyncIterator[bytes]:
            for at in range(0, len(big), 1024 * 1024):
                yield big[at : at + 1024 * 1024]

        # Chunked: refused once more than the limit has arrived.
        resp = await c.post(f"{P}/portal/sessions", headers=h, content=chunks())
        assert resp.status_code == 413 and error(resp.content) == ("http_error", "Request Entity Too Large")
        small = b'{"return_url": "https://a/", "pad": "' + b"x" * 9_000_000 + b'"}'
        r = await raw_request(c.app, "POST", f"{P}/portal/sessions", h, small)
        assert r.status == 201, r.body[:200]
    assert server.recorder.api_calls()[-1].body == small


async def test_a_websocket_is_refused_as_on_the_http_route(client: AppClient, keys: Keys) -> None:
    async def attempt(path: str) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []
        connect: list[dict[str, Any]] = [{"type": "websocket.connect"}]

        async def receive() -> dict[str, Any]:
            return connect.pop() if connect else {"type": "websocket.disconnect", "code": 1000}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        headers = [(b"host", b"bff.test"), *((k.lower().encode(), v.encode()) for k, v in auth(keys).items())]
        scope: dict[str, Any] = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "scheme": "ws",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "server": ("127.0.0.1", 8000),
            "client": ("127.0.0.1", 5555),
            "subprotocols": [],
            "state": {},
        }
        app: Any = client.app
        await app(scope, receive, send)
        return sent

    # The route's path: no websocket handler there (400); not the route's path: 404.
    assert [(m["type"], m["reason"]) for m in await attempt(f"{P}/catalog/products")] == [
        ("websocket.close", "Bad Request")
    ]
    for path in (P, P + "x/y"):
        assert [(m["type"], m["reason"]) for m in await attempt(path)] == [("websocket.close", "Not Found")]
