"""Dev mode serves every client: the token answer names where to call, the dev port answers the
embedded emulator's /api/v1 and /mgt/v1 (for the SDK, mobile apps and the published client),
launch URLs open on the dev server, the banner comes once the socket is bound, a busy port is one
clear line, and the human log lines say method, route, status and duration."""

from __future__ import annotations

import io
import logging
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from litestar.types import Scope
from vlunaai import (
    BearerClientOptions,
    RequestContext,
    ServiceClientOptions,
    ServiceKeyCredentials,
    VlunaAIConfig,
    create_bearer_client,
    create_service_client,
)

from bff.dev import DevRuntime, create_dev_app
from bff.dev_emulator import confined_hosted_path
from bff.observability.logging import configure_logging
from bff.settings import load_settings
from examples import mobile_app
from tests.support.asgi import asgi_transport
from tests.support.emulator import core_of
from tests.support.envelopes import data_of
from tests.support.processes import REPO
from tests.support.service import start_dev

BASE = "http://127.0.0.1:18080"  # what the in-process dev app believes its address is


@asynccontextmanager
async def dev_app() -> AsyncIterator[tuple[httpx.AsyncClient, DevRuntime, Any]]:
    settings = load_settings(REPO / "config/bff.dev.yaml", environ={}, overrides={"dev": {"enabled": True}})
    runtime = create_dev_app(settings, base_url=BASE)
    transport = asgi_transport(runtime.app)
    async with runtime.app.lifespan(), httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        yield client, runtime, transport


async def signed_in(client: httpx.AsyncClient) -> tuple[str, dict[str, Any]]:
    session = (await client.get("/dev/login", params={"user": "alice", "org": "acme"})).json()["token"]
    r = await client.get("/vluna/token", headers={"Authorization": f"Bearer {session}"})
    assert r.status_code == 200, r.text
    return session, r.json()


async def test_the_token_answer_says_where_to_call_and_for_how_long() -> None:
    async with dev_app() as (client, runtime, _):
        before = time.time()
        _, body = await signed_in(client)
        assert body["realm_id"] == runtime.realm_id == "realm_demo"
        assert body["api_base_url"] == f"{BASE}/api/v1"
        assert body["lifetime_sec"] == 900  # tokens.session_ttl_sec of the dev configuration
        assert body["lifetime_sec"] - 2 <= body["expires_in"] <= body["lifetime_sec"]
        expires_at = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00")).timestamp()
        issued_at = datetime.fromisoformat(body["issued_at"].replace("Z", "+00:00")).timestamp()
        assert expires_at - issued_at == pytest.approx(body["lifetime_sec"], abs=1)
        assert before - 1 <= issued_at <= time.time() + 1
        # The fields that were there before are all still there.
        for key in ("access_token", "token_type", "billing_account_id", "billing_user_id", "scopes"):
            assert body[key], key


async def test_the_sdk_calls_the_dev_ports_api_with_the_token_and_the_service_key() -> None:
    async with dev_app() as (client, runtime, transport):
        _, body = await signed_in(client)
        config = VlunaAIConfig(base_url=body["api_base_url"], realm_id=body["realm_id"])
        async with create_bearer_client(
            BearerClientOptions(config=config, transport=transport, error_mode="raise")
        ) as bearer:
            ctx = RequestContext(access_token=body["access_token"])
            products = await bearer.list_catalog_products(context=ctx)
            assert [p.name for p in products.data.root] == ["Starter", "Pro", "Credit pack"]
            price = products.data.root[0].default_price
            assert price is not None
            checkout = await bearer.create_checkout(
                body={
                    "items": [{"catalog_price_id": price.catalog_price_id, "quantity": 1}],
                    "return_url": "https://app.example/done",
                },
                context=ctx,
            )
            portal = await bearer.create_portal_session(
                body={"return_url": "https://app.example/"}, context=ctx
            )
        # Launch URLs are the dev server's own pages, which it serves.
        launch = checkout.data.launch_url
        assert launch.startswith(f"{BASE}/hosted/checkout/{checkout.data.checkout_id}")
        page = await client.get(launch)
        assert page.status_code == 200 and "Checkout (emulated)" in page.text
        assert data_of(portal).portal_url.startswith(f"{BASE}/hosted/portal/")
        assert "Billing portal (emulated)" in (await client.get(data_of(portal).portal_url)).text
        # Paying on the hosted page completes the checkout and sends the browser back.
        paid = await client.post(f"{launch}/complete")
        assert paid.status_code == 303 and paid.headers["location"] == "https://app.example/done"
        assert core_of(runtime.emulator).state.checkouts[str(checkout.data.checkout_id)].status == "completed"

        # The service API (/mgt/v1) too, with the emulator's own key (printed by the banner).
        emulator = runtime.emulator
        async with create_service_client(
            ServiceClientOptions(
                config=VlunaAIConfig(base_url=f"{BASE}/mgt/v1", realm_id=emulator.realm_id),
                service_key=ServiceKeyCredentials(
                    key_id=emulator.service_key_id, secret=emulator.service_key_secret
                ),
                transport=transport,
                error_mode="raise",
            )
        ) as service:
            issued = await service.issue_platform_token(body={"principal_id": "org:x", "user_id": "u"})
            assert issued.data is not None and issued.data.access_token


async def test_api_calls_are_logged_and_counted_by_operation_template() -> None:
    stream = io.StringIO()
    configure_logging("info", "text", stream=stream)
    try:
        async with dev_app() as (client, _, _):
            await client.get("/api/v1/checkouts/some-id", headers={"X-Realm-Id": "realm_demo"})
            await client.get("/api/v1/made/up/path")
    finally:
        logging.getLogger().handlers.clear()
    lines = [line for line in stream.getvalue().splitlines() if "bff.access" in line]
    assert any("GET /api/v1/checkouts/{checkout_id} 401 " in line for line in lines), lines
    assert any("GET /api/v1/<unknown> 404 " in line for line in lines), lines
    assert not any("some-id" in line or "made/up" in line for line in lines)


@pytest.mark.parametrize(
    ("path", "raw", "allowed"),
    [
        ("/hosted/checkout/abc-123", b"/hosted/checkout/abc-123", True),
        ("/hosted/checkout/abc/complete", b"/hosted/checkout/abc/complete", True),
        ("/hosted/checkout/abc/cancel", b"/hosted/checkout/abc/cancel?x=1", True),
        ("/hosted/portal/Zx_9-a", b"/hosted/portal/Zx_9-a", True),
        ("/hosted/subscription/s1", b"/hosted/subscription/s1", True),
        ("/hosted/../__emulator__/counters", b"/hosted/..%2F__emulator__/counters", False),
        ("/hosted/../__emulator__/reset", b"/hosted/..%2F__emulator__%2Freset", False),
        ("/hosted/../__emulator__/counters", b"/hosted/../__emulator__/counters", False),
        ("/hosted/checkout/../../__emulator__", b"/hosted/checkout/%2e%2e/%2e%2e/__emulator__", False),
        ("/hosted/checkout/a/b", b"/hosted/checkout/a%2Fb", False),
        ("/hosted/checkout/abc", b"/hosted/checkout/%61bc", False),  # encoded, even if harmless
        ("/hosted/checkout//abc", b"/hosted/checkout//abc", False),
        ("/hosted/checkout/abc/pay", b"/hosted/checkout/abc/pay", False),
        ("/hosted/portal/a.b", b"/hosted/portal/a.b", False),
        ("/hosted/checkout/" + "a" * 129, b"/hosted/checkout/" + b"a" * 129, False),
        ("/hosted/checkout/ab\\c", b"/hosted/checkout/ab%5Cc", False),
        ("/hosted/checkout/abc\n", b"/hosted/checkout/abc%0A", False),
    ],
)
def test_hosted_paths_are_confined_to_the_hosted_pages(path: str, raw: bytes, allowed: bool) -> None:
    got = confined_hosted_path(cast("Scope", {"path": path, "raw_path": raw}))
    assert got == (path if allowed else None)


# --- the `vluna-bff dev` process ---------------------------------------------------------------


async def test_dev_process_serves_the_mobile_app_and_the_sdk_over_real_sockets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = (tmp_path / "dev.log").open("w+")
    proc = start_dev(stderr=log)
    try:
        banner = proc.extra["banner"]
        assert banner.startswith(f"vluna-bff dev listening on {proc.url} ")
        # The banner came after the bind: the very next request is answered.
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            assert (await client.get("/healthz")).status_code == 200
        tokens = await mobile_app.main(["--bff", proc.url, "--rounds", "2", "--pause", "0"])
        out = capsys.readouterr().out
        assert f"calling Vluna at {proc.url}/api/v1 (realm realm_demo)" in out
        assert "catalog: 3 products: Starter, Pro, Credit pack" in out
        assert f"open {proc.url}/hosted/checkout/" in out
        assert out.count("wallet balance fetched (ok=True)") == 2
        assert tokens.requests == 1
    finally:
        proc.stop()
        log.seek(0)
        text = log.read()
    # Human log lines: method, route template, status and duration.
    assert "bff.access: GET /vluna/token 200 " in text and " ms" in text, text[-2000:]
    assert "bff.access: GET /api/v1/catalog/products 200 " in text, text[-2000:]


def test_a_busy_port_is_one_clear_line_naming_port(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "bff.cli", "dev", "--port", str(port)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 2
    assert "listening on" not in done.stdout  # no success banner
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"127.0.0.1:{port} is already in use" in lines[0] and "--port" in lines[0]
