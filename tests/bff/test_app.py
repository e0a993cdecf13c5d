"""The HTTP surface: /vluna/token through Litestar, real Redis, the issuer faked at the edge."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from bff.app import create_app
from bff.settings import Settings
from bff.tokens.issuer import IssuerRejected
from tests.support.redis_servers import TcpProxy

from .support import (
    AUDIENCE,
    ENC_KEY_1,
    HMAC_KEY,
    HS_SECRET,
    SERVICE_SECRET,
    FakeClock,
    FakeIssuer,
    Keys,
    client_for,
    make_settings,
    redis_settings,
)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_token_endpoint_happy_path(
    keys: Keys, prefix: str, redis_client: aioredis.Redis, issuer: FakeIssuer
) -> None:
    clock = FakeClock()
    settings = redis_settings(keys, prefix)
    async with client_for(settings, issuer, redis_client, clock=clock) as client:
        jwt_ = keys.token("alice", org_id="acme", email="alice@acme.test", name="Alice")
        r = await client.get("/vluna/token", headers=bearer(jwt_))
        assert r.status_code == 200
        assert r.headers["cache-control"] == "no-store"
        body = r.json()
        assert set(body) == {
            "access_token",
            "token_type",
            "expires_in",
            "expires_at",
            "billing_account_id",
            "billing_user_id",
            "scopes",
            "lifetime_sec",
            "issued_at",
            "realm_id",
            "api_base_url",
        }
        assert body["token_type"] == "Bearer" and body["scopes"] == ["checkout", "portal"]
        assert body["realm_id"] == settings.vluna.realm_id
        # Not configured: Vluna's /api/v1 beside vluna.base_url (the /mgt/v1 one).
        assert body["api_base_url"] == settings.vluna.base_url.replace("/mgt/v1", "/api/v1")
        assert body["lifetime_sec"] == 900 and body["issued_at"].endswith("Z")
        assert body["billing_account_id"] == "ba_org:acme" and body["billing_user_id"] == "bu_alice"
        assert body["expires_at"].endswith("Z")
        assert 890 <= body["expires_in"] <= 900
        assert issuer.calls == [
            ("org:acme", "alice", ("checkout", "portal"), {"email": "alice@acme.test", "name": "Alice"})
        ]
        clock.advance(100)
        r2 = await client.get("/vluna/token", headers=bearer(jwt_))
        assert r2.json()["access_token"] == body["access_token"]
        # What is left, not the original lifetime.
        assert r2.json()["expires_in"] <= body["expires_in"] - 100
        assert r2.json()["expires_at"] == body["expires_at"]
        assert len(issuer.calls) == 1


async def test_scopes_parameter(keys: Keys, issuer: FakeIssuer) -> None:
    async with client_for(make_settings(keys), issuer) as client:
        h = bearer(keys.token("alice"))
        r = await client.get("/vluna/token", params={"scopes": "portal"}, headers=h)
        assert r.status_code == 200 and r.json()["scopes"] == ["portal"]
        r = await client.get("/vluna/token", params={"scopes": "portal, checkout,portal"}, headers=h)
        assert r.json()["scopes"] == ["checkout", "portal"]
        r = await client.get("/vluna/token", params={"scopes": "portal,admin"}, headers=h)
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_scopes" and "admin" in r.json()["message"]
        anonymous = await client.get("/vluna/token", params={"scopes": "portal,admin"})
        assert anonymous.status_code == 401 and "portal" not in anonymous.text
        assert [c[2] for c in issuer.calls] == [("portal",), ("checkout", "portal")]


async def test_scopes_allowlist_from_settings(keys: Keys, issuer: FakeIssuer) -> None:
    settings = make_settings(keys, tokens={"allowed_scopes": ["portal"], "default_scopes": ["portal"]})
    async with client_for(settings, issuer) as client:
        h = bearer(keys.token("alice"))
        assert (await client.get("/vluna/token", params={"scopes": "checkout"}, headers=h)).status_code == 400
        assert (await client.get("/vluna/token", headers=h)).json()["scopes"] == ["portal"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda k: k.token(exp_in=-120), "expired"),
        (lambda k: k.token(aud="other"), "audience"),
        (lambda k: k.token(iss="https://evil/"), "issuer"),
        (lambda k: k.token(kid="nope", key=k.rsa_other), "signature"),
        (lambda k: k.token(key=k.rsa_other), "signature"),
        (lambda k: k.token()[:-4] + "AAAA", "signature"),
        (
            lambda k: __import__("jwt").encode(
                {"sub": "a", "iss": "https://id.example.test/", "aud": AUDIENCE, "exp": 4102444800},
                None,
                algorithm="none",
            ),
            "algorithm",
        ),
        (lambda k: k.token(alg="HS256", kid=None), "algorithm"),
    ],
)
async def test_rejections_are_401_json_with_challenge(
    keys: Keys, issuer: FakeIssuer, make: Any, message: str
) -> None:
    async with client_for(make_settings(keys), issuer) as client:
        r = await client.get("/vluna/token", headers=bearer(make(keys)))
        assert r.status_code == 401
        assert r.json()["error"] == "unauthenticated" and message in r.json()["message"]
        assert r.headers["www-authenticate"].startswith('Bearer realm="vluna-bff", error="invalid_token"')
        assert "Traceback" not in r.text
    assert issuer.calls == []


async def test_no_credentials(keys: Keys, issuer: FakeIssuer) -> None:
    async with client_for(make_settings(keys), issuer) as client:
        for headers in ({}, {"Authorization": "Basic YTpi"}, {"Authorization": "Bearer opaque"}):
            r = await client.get("/vluna/token", headers=headers)
            assert r.status_code == 401
            assert r.headers["www-authenticate"] == 'Bearer realm="vluna-bff"'
        assert (await client.delete("/vluna/token")).status_code == 401


async def test_cookie_needs_the_anti_forgery_header(keys: Keys, issuer: FakeIssuer) -> None:
    async with client_for(make_settings(keys), issuer) as client:
        client.cookies.set("vluna_session", keys.token("alice"))
        r = await client.get("/vluna/token")
        assert r.status_code == 403 and r.json()["error"] == "csrf_header_missing"
        r = await client.get("/vluna/token", headers={"X-Vluna-CSRF": "0"})
        assert r.status_code == 403
        r = await client.get("/vluna/token", headers={"X-Vluna-CSRF": "1"})
        assert r.status_code == 200
        client.cookies.set("vluna_session", keys.token("alice", exp_in=-300))
        r = await client.get("/vluna/token", headers={"X-Vluna-CSRF": "1"})
        assert r.status_code == 401
    assert len(issuer.calls) == 1


async def test_hs_secret_mode(keys: Keys, issuer: FakeIssuer) -> None:
    settings = make_settings(
        keys, auth={"jwt": {"algorithms": ["HS256"], "hs_secret": HS_SECRET, "public_keys_pem": []}}
    )
    async with client_for(settings, issuer) as client:
        assert (
            await client.get("/vluna/token", headers=bearer(keys.token(alg="HS256", kid=None)))
        ).status_code == 200
        assert (await client.get("/vluna/token", headers=bearer(keys.token()))).status_code == 401


async def test_unmappable_user_is_403(keys: Keys, issuer: FakeIssuer) -> None:
    settings = make_settings(keys, mapping={"principal": [{"claim": "org_id", "template": "org:{value}"}]})
    async with client_for(settings, issuer) as client:
        r = await client.get("/vluna/token", headers=bearer(keys.token("alice")))
        assert r.status_code == 403
        assert r.json()["error"] == "unmapped_principal" and "org_id" in r.json()["message"]
        ok = await client.get("/vluna/token", headers=bearer(keys.token("alice", org_id="acme")))
        assert ok.status_code == 200
    assert issuer.calls[0][0] == "org:acme"


async def test_vluna_down_is_503_with_retry_after(keys: Keys, issuer: FakeIssuer) -> None:
    issuer.fail = True
    async with client_for(make_settings(keys, tokens={"retry_after_sec": 7}), issuer) as client:
        r = await client.get("/vluna/token", headers=bearer(keys.token()))
        assert r.status_code == 503
        assert r.headers["retry-after"] == "7"
        assert r.json()["error"] == "token_unavailable"


async def test_vluna_rejecting_is_502(keys: Keys) -> None:
    class Rejecting(FakeIssuer):
        async def issue(self, *args: Any) -> Any:
            raise IssuerRejected("bad key", status=401, code="AUTH.INVALID_SERVICE_SIGNATURE")

    async with client_for(make_settings(keys), Rejecting()) as client:
        r = await client.get("/vluna/token", headers=bearer(keys.token()))
        assert r.status_code == 502 and r.json()["error"] == "upstream_rejected"


async def test_unexpected_errors_are_500_json_without_details(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(FakeIssuer):
        async def issue(self, *args: Any) -> Any:
            raise RuntimeError(f"boom {SERVICE_SECRET}")

    async with client_for(make_settings(keys), Broken()) as client:
        r = await client.get("/vluna/token", headers=bearer(keys.token()))
        assert r.status_code == 500
        assert r.json() == {"error": "internal_error", "message": "internal error"}
        assert "boom" not in r.text and "Traceback" not in r.text
        assert (await client.get("/nowhere")).json()["error"] == "not_found"
        assert (await client.post("/vluna/token")).status_code == 405
    assert SERVICE_SECRET not in caplog.text


async def test_sign_out_drops_cached_tokens(
    keys: Keys, prefix: str, redis_client: aioredis.Redis, issuer: FakeIssuer
) -> None:
    async with client_for(redis_settings(keys, prefix), issuer, redis_client) as client:
        h = bearer(keys.token("alice"))
        first = (await client.get("/vluna/token", headers=h)).json()["access_token"]
        await client.get("/vluna/token", params={"scopes": "portal"}, headers=h)
        other = (await client.get("/vluna/token", headers=bearer(keys.token("bob")))).json()["access_token"]
        r = await client.delete("/vluna/token", headers=h)
        assert r.status_code == 204 and r.headers["cache-control"] == "no-store"
        assert (await client.get("/vluna/token", headers=h)).json()["access_token"] != first
        assert (await client.get("/vluna/token", headers=bearer(keys.token("bob")))).json()[
            "access_token"
        ] == other
    assert len(issuer.calls) == 4


async def test_redis_down_never_500(
    keys: Keys, prefix: str, redis_client: aioredis.Redis, issuer: FakeIssuer
) -> None:
    proxy = await TcpProxy().start()
    try:
        async with client_for(redis_settings(keys, prefix, url=proxy.url), issuer) as client:
            h = bearer(keys.token("alice"))
            assert (await client.get("/vluna/token", headers=h)).status_code == 200
            await proxy.stop()
            for _ in range(3):
                r = await client.get("/vluna/token", headers=bearer(keys.token("bob")))
                assert r.status_code == 200
            # A sign-out that cannot reach Redis is not promised: 503, try again later.
            r = await client.delete("/vluna/token", headers=h)
            assert r.status_code == 503 and r.headers["retry-after"] == "5"
            assert r.json()["error"] == "sign_out_incomplete"
            assert client.app.state.services.stats.get("redis_errors") >= 1
    finally:
        await proxy.stop()
    assert [c[1] for c in issuer.calls] == ["alice", "bob"]


async def test_nothing_secret_in_logs(
    keys: Keys, prefix: str, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    issuer = FakeIssuer()
    proxy = await TcpProxy().start()
    tokens: list[str] = []
    try:
        async with client_for(redis_settings(keys, prefix, url=proxy.url), issuer) as client:
            h = bearer(keys.token("alice"))
            tokens.append((await client.get("/vluna/token", headers=h)).json()["access_token"])
            await proxy.stop()
            tokens.append(
                (await client.get("/vluna/token", headers=bearer(keys.token("bob")))).json()["access_token"]
            )
            issuer.fail = True
            await client.get("/vluna/token", headers=bearer(keys.token("carol")))
            await client.get("/vluna/token", headers=bearer(keys.token(exp_in=-100)))
            assert repr(client.app.state.services)
            text = caplog.text + repr(client.app.state.services.broker) + repr(client.app.state.services)
    finally:
        await proxy.stop()
    assert "(db 0) unavailable: " in caplog.text  # the logging did happen, naming where
    for secret in [
        *tokens,
        SERVICE_SECRET,
        HS_SECRET,
        HMAC_KEY,
        ENC_KEY_1.split(":")[1],
        h["Authorization"][7:],
    ]:
        assert secret not in text


class TeamBackend:
    """The team's session endpoint: the edge for introspection tests."""

    def __init__(self) -> None:
        self.calls: list[httpx.Request] = []
        self.status = 200
        self.down = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        if self.down:
            raise httpx.ConnectError("refused", request=request)
        if self.status != 200:
            return httpx.Response(self.status)
        cookie = request.headers.get("cookie", "")
        auth = request.headers.get("authorization", "")
        if "sid=good" in cookie or auth == "Session good":
            return httpx.Response(200, json={"active": True, "user": {"sub": "u-7", "org_id": "acme"}})
        if "sid=inactive" in cookie:
            return httpx.Response(200, json={"active": False, "user": {"sub": "u-8"}})
        return httpx.Response(401)


def introspection_settings(keys: Keys) -> Settings:
    return make_settings(
        keys,
        auth={
            "methods": ["bearer", "introspection"],
            "introspection": {
                "url": "https://app.example.test/api/session",
                "claims_path": "user",
                "active_field": "active",
                "cache_ttl_sec": 60,
            },
        },
    )


async def test_introspection(keys: Keys, issuer: FakeIssuer) -> None:
    backend = TeamBackend()
    http = httpx.AsyncClient(transport=httpx.MockTransport(backend.handler))
    async with client_for(introspection_settings(keys), issuer, http=http) as client:
        csrf = {"X-Vluna-CSRF": "1"}
        client.cookies.set("sid", "good")
        r = await client.get("/vluna/token", headers=csrf)
        assert r.status_code == 200
        assert issuer.calls[0][:2] == ("org:acme", "u-7")
        assert backend.calls[0].headers["cookie"] == "sid=good"
        await client.get("/vluna/token", headers=csrf)
        assert len(backend.calls) == 1  # the positive answer is cached
        # A cookie without the anti-forgery header is refused before the backend is asked.
        assert (await client.get("/vluna/token")).status_code == 403
        client.cookies.set("sid", "inactive")
        assert (await client.get("/vluna/token", headers=csrf)).status_code == 401
        client.cookies.set("sid", "stolen")
        r = await client.get("/vluna/token", headers=csrf)
        assert r.status_code == 401 and "www-authenticate" in r.headers
        # Opaque Authorization header: forwarded as is.
        client.cookies.clear()
        r = await client.get("/vluna/token", headers={"Authorization": "Session good"})
        assert r.status_code == 200
        assert backend.calls[-1].headers["authorization"] == "Session good"
        # The backend failing is not the user's fault: 503, not 401.
        backend.down = True
        r = await client.get("/vluna/token", headers={"Authorization": "Session other"})
        assert r.status_code == 503 and "retry-after" in r.headers
        backend.down = False
        backend.status = 500
        assert (await client.get("/vluna/token", headers={"Authorization": "Session x"})).status_code == 503
        # A JWT bearer is handled by the bearer method first (listed before introspection).
        calls = len(backend.calls)
        assert (await client.get("/vluna/token", headers=bearer(keys.token("zed")))).status_code == 200
        assert len(backend.calls) == calls
    await http.aclose()


async def test_hooks_for_auth_and_mapping(keys: Keys, issuer: FakeIssuer) -> None:
    settings = make_settings(
        keys,
        auth={"methods": ["hook", "bearer"], "hook": {"callable": "tests.bff.hooks:auth_from_header"}},
        mapping={"hook": "tests.bff.hooks:map_to_team"},
    )
    async with client_for(settings, issuer) as client:
        r = await client.get("/vluna/token", headers={"X-Test-User": "hank", "X-Test-Org": "blue"})
        assert r.status_code == 200
        assert issuer.calls[-1] == ("team:blue", "hank", ("checkout", "portal"), {"via": "hook"})
        r = await client.get("/vluna/token", headers={"X-Test-User": "nobody"})
        assert r.status_code == 403
        # The hook does not apply: the bearer method still does.
        r = await client.get("/vluna/token", headers=bearer(keys.token("alice", org_id="red")))
        assert r.status_code == 200 and [c[0] for c in issuer.calls][-1] == "team:red"


def test_bad_hook_fails_at_start(keys: Keys, issuer: FakeIssuer) -> None:
    from bff.hooks import HookError

    settings = make_settings(
        keys, auth={"methods": ["hook"], "hook": {"callable": "tests.bff.hooks:missing"}}
    )
    with pytest.raises(HookError, match="has no"):
        create_app(settings, issuer=issuer)


async def test_cors_preflight(keys: Keys, issuer: FakeIssuer) -> None:
    settings = make_settings(keys, server={"cors_allow_origins": ["https://app.example.test"]})
    async with client_for(settings, issuer) as client:
        r = await client.options(
            "/vluna/token",
            headers={
                "Origin": "https://app.example.test",
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "x-vluna-csrf",
            },
        )
        assert r.status_code in (200, 204)
        assert r.headers["access-control-allow-origin"] == "https://app.example.test"
        assert r.headers["access-control-allow-credentials"] == "true"
        r = await client.get("/vluna/token", headers={"Origin": "https://evil.test", **bearer(keys.token())})
        assert "access-control-allow-origin" not in r.headers


async def test_an_ambiguous_session_is_refused(keys: Keys, issuer: FakeIssuer) -> None:
    async with client_for(make_settings(keys), issuer) as client:
        mine, theirs = keys.token("alice", org_id="acme"), keys.token("mallory", org_id="evil")
        csrf = {"X-Vluna-CSRF": "1"}
        r = await client.get("/vluna/token", headers={**csrf, "Cookie": f"vluna_session={mine}"})
        assert r.status_code == 200
        for cookie in (
            f"vluna_session={theirs}; vluna_session={mine}",
            f"vluna_session={mine}; other=1; vluna_session={mine}",
            f"vluna_session=; vluna_session={mine}",
        ):
            r = await client.get("/vluna/token", headers={**csrf, "Cookie": cookie})
            assert r.status_code == 400 and r.json()["error"] == "ambiguous_session", cookie
            assert "vluna_session" in r.json()["message"]
        r = await client.get(
            "/vluna/token",
            headers=[("Authorization", f"Bearer {mine}"), ("Authorization", f"Bearer {theirs}")],
        )
        assert r.status_code == 400 and r.json()["error"] == "ambiguous_credentials"
    assert [c[1] for c in issuer.calls] == ["alice"]


async def test_each_handler_resolves_its_dependencies_one_per_batch(keys: Keys, issuer: FakeIssuer) -> None:
    # Litestar resolves two or more dependencies of one batch in a task group per request (a
    # proxied cache hit paid ~40% more CPU for it): each HTTP route takes one dependency. The
    # token route and the proxy take none: they are ASGI apps (Litestar resolves no dependencies
    # for those), which authenticate the caller with the same chain. The documented token
    # handlers (TOKEN_ROUTES: the OpenAPI document's, answering as the served route does) take
    # one caller-bound dependency (tokens), which authenticates the caller itself.
    from litestar import Litestar
    from litestar.routes import ASGIRoute, HTTPRoute

    from bff.app import dependency_placeholders
    from bff.routes.token import TOKEN_ROUTES

    def batches_of(app: Litestar) -> tuple[dict[str, list[list[str]]], list[str]]:
        seen: dict[str, list[list[str]]] = {}
        asgi: list[str] = []
        for route in app.routes:
            if isinstance(route, ASGIRoute):
                asgi.append(route.path)
                continue
            if not isinstance(route, HTTPRoute):
                continue
            for method, (_, kwargs_model) in route.route_handler_map.items():
                batches = [sorted(d.key for d in batch) for batch in kwargs_model.dependency_batches]
                seen[f"{method} {route.path}"] = batches
                assert all(len(batch) == 1 for batch in batches), (method, route.path, batches)
        return seen, asgi

    async with client_for(make_settings(keys), issuer) as client:
        seen, asgi = batches_of(client.app)
        assert seen["GET /readyz"] == [["readiness"]]
        assert sorted(asgi) == ["/vluna/api/v1", "/vluna/token"]
        assert not any(key.endswith("/vluna/token") or "/vluna/api/v1" in key for key in seen)
    documented, _ = batches_of(
        Litestar(TOKEN_ROUTES, dependencies=dependency_placeholders(), openapi_config=None)
    )
    assert documented == {
        "GET /vluna/token": [["tokens"]],
        "DELETE /vluna/token": [["tokens"]],
        "OPTIONS /vluna/token": [],
    }


def documented_token_app(served: Any) -> Any:
    """A plain Litestar app of the documented token handlers (TOKEN_ROUTES: the OpenAPI
    document's), with ``served``'s services and exception handlers: what the served token route
    must answer like."""
    from litestar import Litestar
    from litestar.exceptions import HTTPException

    from bff.app import _bff_error, _http_error, _unexpected, dependencies
    from bff.errors import BffError
    from bff.routes.token import TOKEN_ROUTES

    state = served.state
    return Litestar(
        route_handlers=TOKEN_ROUTES,
        dependencies=dependencies(state["services"], state["readiness"]),
        exception_handlers={BffError: _bff_error, HTTPException: _http_error, Exception: _unexpected},
        debug=False,
        logging_config=None,
    )


async def test_token_routes_are_answered_by_the_apps_endpoint_as_their_handlers_would(
    keys: Keys, issuer: FakeIssuer
) -> None:
    # The served token route is the app's TokenEndpoint as an ASGI route (no kwargs, dependency,
    # hooks or response conversion per call); the documented handlers (TOKEN_ROUTES: what the
    # OpenAPI document describes) answer the same through their dependency, OPTIONS and 405s too.
    from litestar.routes import ASGIRoute

    from bff.routes.token import TokenEndpoint
    from tests.support.asgi import asgi_transport

    settings = make_settings(keys, tokens={"allowed_scopes": ["checkout", "portal", "reports"]})
    async with client_for(settings, issuer) as served:
        (route,) = [r for r in served.app.routes if r.path == "/vluna/token"]
        assert isinstance(route, ASGIRoute)
        assert isinstance(getattr(route.route_handler.fn, "__self__", None), TokenEndpoint)
        plain = documented_token_app(served.app)
        alice = bearer(keys.token("alice", org_id="acme"))
        requests: list[tuple[str, str, dict[str, str]]] = [
            ("GET", "/vluna/token", alice),
            ("GET", "/vluna/token?scopes=reports,checkout", alice),
            ("GET", "/vluna/token?scopes=portal&scopes=reports", alice),
            ("GET", "/vluna/token?scopes=%72eports+", alice),
            ("GET", "/vluna/token?scopes=", alice),
            ("GET", "/vluna/token?scopes=admin", alice),
            ("GET", "/vluna/token?scopes=" + "portal," * 50, alice),
            ("GET", "/vluna/token?scopes=admin", {}),
            ("GET", "/vluna/token", bearer("not-a-jwt")),
            ("GET", "/vluna/token", {"Cookie": f"vluna_session={keys.token('alice', org_id='acme')}"}),
            ("DELETE", "/vluna/token", {}),
            ("DELETE", "/vluna/token", alice),
            ("GET", "/vluna/token", alice),
            ("GET", "/vluna/token/", alice),
            ("OPTIONS", "/vluna/token", {}),
            ("OPTIONS", "/vluna/token", alice),
            ("POST", "/vluna/token", alice),
            ("PUT", "/vluna/token", {}),
            ("PATCH", "/vluna/token/", alice),
            ("HEAD", "/vluna/token", alice),
        ]
        async with (
            plain.lifespan(),
            httpx.AsyncClient(transport=asgi_transport(plain), base_url="http://bff.test") as direct,
        ):
            for method, url, headers in requests:
                answers = [await c.request(method, url, headers=headers) for c in (served, direct)]
                heads = [{k: v for k, v in r.headers.items() if k != "x-request-id"} for r in answers]
                assert heads[0] == heads[1], (method, url)
                assert answers[0].status_code == answers[1].status_code, (method, url)
                bodies = [r.json() if r.content else {} for r in answers]
                if "expires_in" in bodies[0]:
                    assert abs(bodies[0].pop("expires_in") - bodies[1].pop("expires_in")) <= 1
                assert bodies[0] == bodies[1], (method, url)
    # Each scope set issued once (the second app of each pair served it from the cache), and again
    # after the sign-out.
    both, one = ("checkout", "portal"), ("checkout", "reports")
    assert [c[2] for c in issuer.calls] == [both, one, ("reports",), both]


async def test_a_websocket_to_the_token_route_is_refused_as_litestar_refused_it(
    keys: Keys, issuer: FakeIssuer
) -> None:
    # The served route is an ASGI app, which Litestar also hands websockets: it must refuse them
    # as the router refused them on the documented (HTTP-only) handlers.
    import asyncio

    async def websocket(app: Any) -> list[Any]:
        sent: list[Any] = []
        inbox: list[dict[str, Any]] = [{"type": "websocket.connect"}]

        async def receive() -> dict[str, Any]:
            if inbox:
                return inbox.pop(0)
            await asyncio.sleep(0.1)
            return {"type": "websocket.disconnect", "code": 1000}

        async def send(message: Any) -> None:
            sent.append(message)

        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "scheme": "ws",
            "path": "/vluna/token",
            "raw_path": b"/vluna/token",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"authorization", f"Bearer {keys.token('alice', org_id='acme')}".encode())],
            "client": ("127.0.0.1", 1),
            "server": ("bff.test", 80),
            "subprotocols": [],
            "state": {},
        }
        await app(scope, receive, send)
        return sent

    async with client_for(make_settings(keys), issuer) as served:
        plain = documented_token_app(served.app)
        async with plain.lifespan():
            answers = [await websocket(app) for app in (served.app, plain)]
    assert answers[0] == answers[1] == [{"type": "websocket.close", "code": 4500, "reason": "Bad Request"}]
    assert not issuer.calls


async def test_apps_in_one_process_each_serve_with_their_own_services(keys: Keys) -> None:
    # The route handlers are declared once, at module level; what they work with comes from the
    # dependencies of the app that serves the request.
    issuers = FakeIssuer(), FakeIssuer()
    settings = [make_settings(keys, vluna={"realm_id": realm}) for realm in ("realm_a", "realm_b")]
    async with client_for(settings[0], issuers[0]) as a, client_for(settings[1], issuers[1]) as b:
        for client, realm, who in ((a, "realm_a", "alice"), (b, "realm_b", "bob"), (a, "realm_a", "carol")):
            r = await client.get("/vluna/token", headers=bearer(keys.token(who, org_id="acme")))
            assert r.status_code == 200 and r.json()["realm_id"] == realm
        assert [c[1] for c in issuers[0].calls] == ["alice", "carol"]
        assert [c[1] for c in issuers[1].calls] == ["bob"]
        r = await b.delete("/vluna/token", headers=bearer(keys.token("bob", org_id="acme")))
        assert r.status_code == 204
        r = await a.get("/vluna/token", headers=bearer(keys.token("alice", org_id="acme")))
        assert r.status_code == 200 and [c[1] for c in issuers[0].calls] == ["alice", "carol"]
        r = await b.get("/vluna/token", headers=bearer(keys.token("bob", org_id="acme")))
        assert r.status_code == 200 and [c[1] for c in issuers[1].calls] == ["bob", "bob"]
