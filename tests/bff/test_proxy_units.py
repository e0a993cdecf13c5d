"""The proxy's parts on their own: allowlist matching, its configuration, the breaker, dev mode."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from bff.proxy.breaker import BreakerOpen, CircuitBreaker
from bff.proxy.paths import Allowlist, PathRefused
from bff.settings import ProxySettings, SettingsError, derive_upstream_base, load_settings, validate_settings
from bff.stats import Stats
from tests.support.asgi import asgi_transport


def allowlist(**kw: Any) -> Allowlist:
    return Allowlist(ProxySettings(**kw))


@pytest.mark.parametrize(
    ("method", "path", "upstream"),
    [
        ("GET", "/catalog/products", "/catalog/products"),
        ("GET", "/checkouts/ck_1-A", "/checkouts/ck_1-A"),
        ("POST", "/checkouts", "/checkouts"),
        ("GET", "/invoices", "/invoices"),
    ],
)
def test_allowlisted_paths_match(method: str, path: str, upstream: str) -> None:
    assert allowlist().match(method, path).upstream_path == upstream


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/../mgt/v1/token/issue", 400),
        ("/checkouts/..", 400),
        ("/checkouts/%2e%2e", 400),
        ("/catalog%2Fproducts", 400),
        ("//catalog/products", 400),
        ("/catalog\\products", 400),
        ("/catalog/products\x00", 400),
        ("/checkouts/a;b", 400),
        ("/checkouts/" + "a" * 129, 404),
        ("/checkouts/_x", 404),
        ("/mgt/v1/token/issue", 404),
        ("/" + "a" * 600, 414),
        ("/catalog/products/", 404),
        ("", 400),
    ],
)
def test_refusals(path: str, status: int) -> None:
    with pytest.raises(PathRefused) as info:
        allowlist().match("GET", path)
    assert info.value.status == status


def test_rewrites_and_literal_routes_win_over_parameters() -> None:
    a = allowlist(
        routes=[
            {
                "method": "GET",
                "path": "/checkouts/{checkout_id}",
                "upstream_path": "/checkout/sessions/{checkout_id}",
            },
            {"method": "GET", "path": "/checkouts/latest", "upstream_path": "/checkouts/newest"},
        ]
    )
    assert a.match("GET", "/checkouts/ck_9").upstream_path == "/checkout/sessions/ck_9"
    assert a.match("GET", "/checkouts/latest").upstream_path == "/checkouts/newest"


@pytest.mark.parametrize(
    "proxy",
    [
        {"routes": [{"method": "GET", "path": "/mgt/v1/token/issue"}]},
        {"routes": [{"method": "GET", "path": "/x", "upstream_path": "/../mgt/v1/x"}]},
        {"routes": [{"method": "GET", "path": "/x/{a}", "upstream_path": "/y/{b}"}]},
        {"routes": [{"method": "GET", "path": "/x", "query": ["billing_account_id"]}]},
        {"routes": [{"method": "POST", "path": "/x", "public": True}]},
        {"routes": [{"method": "GET", "path": "/x"}, {"method": "GET", "path": "/x"}]},
        {"routes": [{"method": "TRACE", "path": "/x"}]},
        {"id_pattern": ".*"},
        {"id_pattern": "[A-Za-z./]+"},
        {"upstream_base_url": "https://api.vluna.ai/mgt/v1"},
        {"upstream_base_url": "ftp://x"},
        {"read_timeout_sec": 30, "total_timeout_sec": 5},
        {"surprise": 1},
    ],
)
def test_bad_proxy_settings_are_refused(proxy: dict[str, Any]) -> None:
    with pytest.raises(SettingsError) as info:
        validate_settings({"dev": {"enabled": True}, "proxy": proxy})
    assert "proxy" in str(info.value)


def test_route_scopes_must_be_allowed() -> None:
    with pytest.raises(SettingsError, match=r"proxy.routes\[0\].scopes"):
        validate_settings(
            {
                "dev": {"enabled": True},
                "proxy": {"routes": [{"method": "GET", "path": "/x", "scopes": ["admin"]}]},
            }
        )


def test_upstream_base_derivation_and_env_overrides() -> None:
    p = ProxySettings()
    assert derive_upstream_base(p, "https://eu.api.vluna.ai/mgt/v1") == "https://eu.api.vluna.ai/api/v1"
    assert derive_upstream_base(p, "https://eu.api.vluna.ai/mgt/v1/") == "https://eu.api.vluna.ai/api/v1"
    p2 = ProxySettings(upstream_base_url="https://edge.example/api/v1/")
    assert derive_upstream_base(p2, "https://x/mgt/v1") == "https://edge.example/api/v1"
    s = load_settings(
        None,
        environ={
            "VLUNA_BFF__DEV__ENABLED": "true",
            "VLUNA_BFF__CACHE__BACKEND": "memory",
            "VLUNA_BFF__PROXY__MAX_BODY_BYTES": "1024",
            "VLUNA_BFF__RATE_LIMIT__REQUESTS": "7",
        },
    )
    assert s.proxy.max_body_bytes == 1024 and s.rate_limit.requests == 7


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_states() -> None:
    clock = Clock()
    stats = Stats()
    b = CircuitBreaker("u", failure_threshold=2, open_sec=5, probe_timeout_sec=3, stats=stats, clock=clock)
    assert b.before() is False
    b.failure()
    b.success()
    b.failure()
    assert b.state == "closed"
    b.failure()
    assert b.state == "open"
    with pytest.raises(BreakerOpen) as info:
        b.before()
    assert info.value.retry_after == 5
    clock.now = 5
    assert b.before() is True  # the probe
    with pytest.raises(BreakerOpen):
        b.before()  # one probe at a time
    clock.now = 9  # the probe never reported: given up, another may go
    assert b.before() is True
    b.success()
    assert b.snapshot()["state"] == "closed"
    assert stats.get("proxy.breaker.open") == 1 and stats.get("proxy.breaker.closed") == 1


async def test_dev_mode_proxies_to_the_embedded_emulator() -> None:
    from bff.dev import create_dev_app

    settings = load_settings("config/bff.dev.yaml", environ={}, overrides={"dev": {"enabled": True}})
    rt = create_dev_app(settings)
    async with (
        rt.app.lifespan(),
        httpx.AsyncClient(transport=asgi_transport(rt.app), base_url="http://d") as c,
    ):
        h = {"Authorization": f"Bearer {rt.signin.mint('alice', 'acme')}"}
        r = await c.get("/vluna/api/v1/catalog/products", headers=h)
        assert r.status_code == 200 and r.json()["data"]
        r = await c.post("/vluna/api/v1/portal/sessions", headers=h, json={"return_url": "http://localhost/"})
        assert r.status_code == 201
        rt.emulator.inject_fault("get_credit_balance", drop_connection=True, times=1)
        r = await c.get("/vluna/api/v1/wallet/balance", headers=h)
        assert r.status_code == 200
        assert rt.emulator.calls("get_credit_balance") == 2
        r = await c.get("/vluna/api/v1/budgets", headers=h)
        assert r.status_code == 404
        assert rt.emulator.calls("list_budgets") == 0
