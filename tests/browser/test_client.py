"""`/vluna/client.js` in Chromium: one token request however many callers ask, renewal ahead of
expiry as a single background request, the anti-forgery header, a 401 retried once after renewal,
the catalog / checkout / portal helpers over the proxy, sign-out, and the global build."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, Request, Route, expect

from .support import Service, dev_login


def start(page: Page, service: Service, user: str | None = None) -> Callable[[], list[Request]]:
    """A page on the service's origin with a signed-in cookie and `window.c` = a client whose clock
    (`window.fakeNow`) the test moves; returns a function listing the /vluna/token requests."""
    dev_login(page.context, service, user or f"cli-{uuid.uuid4().hex[:6]}")
    seen: list[Request] = []
    page.on("request", lambda r: seen.append(r) if "/vluna/token" in r.url else None)
    page.goto(f"{service.url}/vluna/client.js")
    page.evaluate(
        """async () => {
            const m = await import('/vluna/client.js');
            window.fakeNow = Date.now();
            window.c = m.createClient({ now: () => window.fakeNow });
            window.mod = m;
        }"""
    )
    return lambda: [r for r in seen if r.method == "GET"]


def test_concurrent_callers_share_one_token_request(page: Page, service: Service) -> None:
    token_gets = start(page, service)
    distinct = page.evaluate(
        """async () => {
            const all = await Promise.all(Array.from({ length: 25 }, () => c.getToken()));
            return new Set(all.map((t) => t.access_token)).size;
        }"""
    )
    assert distinct == 1
    assert len(token_gets()) == 1
    assert token_gets()[0].headers.get("x-vluna-csrf") == "1"
    # Cached: asking again costs nothing.
    page.evaluate("async () => { for (let i = 0; i < 10; i++) await c.getToken(); }")
    assert len(token_gets()) == 1


def test_renewal_ahead_of_expiry_is_one_background_request(page: Page, service: Service) -> None:
    token_gets = start(page, service)
    first = page.evaluate("async () => (await c.getToken()).access_token")
    expires_in = page.evaluate("c.token.expires_in")
    # Into the last 25% of its life (still usable): callers get the current token at once while
    # one renewal runs behind them.
    result: dict[str, Any] = page.evaluate(
        """async (ahead) => {
            fakeNow += ahead * 1000;
            const all = await Promise.all(Array.from({ length: 25 }, () => c.getToken()));
            const during = all.every((t) => t.access_token === all[0].access_token);
            await c.renew();   // joins the renewal under way: no extra request
            return { during, first: all[0].access_token };
        }""",
        expires_in - 10,
    )
    assert result == {"during": True, "first": first}
    assert len(token_gets()) == 2
    # The service's copy is young (its clock did not move), so it handed back the same token: the
    # client waits renewRetryMs before asking again instead of asking on every call.
    page.evaluate("async () => { for (let i = 0; i < 20; i++) await c.getToken(); }")
    assert len(token_gets()) == 2
    # Past expiry: callers wait for one fresh request together.
    distinct = page.evaluate(
        """async () => {
            fakeNow += 120000;
            const all = await Promise.all(Array.from({ length: 25 }, () => c.getToken()));
            return new Set(all.map((t) => t.access_token)).size;
        }"""
    )
    assert distinct == 1
    assert len(token_gets()) == 3


def test_a_401_is_retried_once_after_renewal(page: Page, service: Service) -> None:
    token_gets = start(page, service)
    page.evaluate("c.getToken()")
    calls: list[str] = []

    def once_unauthorized(route: Route) -> None:
        calls.append(route.request.url)
        if len(calls) == 1:
            route.fulfill(status=401, content_type="application/json", body=json.dumps({"error": "expired"}))
        else:
            route.continue_()

    page.route("**/vluna/api/v1/catalog/products*", once_unauthorized)
    names = page.evaluate("async () => (await c.catalog.products()).map((p) => p.name)")
    assert names == ["Starter", "Pro", "Credit pack"]
    assert len(calls) == 2
    assert len(token_gets()) == 2  # the first token, then the renewal between the two attempts
    page.unroute("**/vluna/api/v1/catalog/products*")

    # Still 401 after renewal: the caller gets the error, no loop.
    attempts: list[str] = []

    def always_unauthorized(route: Route) -> None:
        attempts.append(route.request.url)
        route.fulfill(status=401, content_type="application/json", body=json.dumps({"error": "nope"}))

    page.route("**/vluna/api/v1/wallet/balance*", always_unauthorized)
    err = page.evaluate(
        """async () => {
            try { await c.wallet.balance(); return null; }
            catch (e) { return { name: e.name, status: e.status, code: e.code }; }
        }"""
    )
    assert err == {"name": "VlunaBffError", "status": 401, "code": "nope"}
    assert len(attempts) == 2


def test_helpers_over_the_proxy_send_the_anti_forgery_header(page: Page, service: Service) -> None:
    start(page, service)
    proxied: list[Request] = []
    page.on("request", lambda r: proxied.append(r) if "/vluna/api/v1/" in r.url else None)
    out = page.evaluate(
        """async () => {
            const prices = await c.catalog.prices();
            const checkout = await c.checkout.create({
                items: [{ catalog_price_id: prices[0].catalog_price_id, quantity: 1 }],
                return_url: location.origin + '/done',
            });
            const again = await c.checkout.get(checkout.checkout_id);
            const session = await c.checkout.session({
                items: [{ catalog_price_id: prices[0].catalog_price_id, quantity: 1 }],
            });
            const portal = await c.portal.create({ return_url: location.origin + '/' });
            return { n: prices.length, url: checkout.launch_url,
                     id: again.checkout_id === checkout.checkout_id,
                     status: again.status, session: session.checkout_url, portal: portal.portal_url };
        }"""
    )
    assert out["n"] >= 3
    # Dev mode's launch URLs are the dev server's own pages: a SPA opens them as they are.
    assert out["url"].startswith(f"{service.url}/hosted/checkout/")
    assert out["id"] is True and out["status"] == "open"
    assert "/hosted/checkout/" in out["session"]
    assert out["portal"].startswith(f"{service.url}/hosted/portal/")
    assert [r.method for r in proxied] == ["GET", "POST", "GET", "POST", "POST"]
    assert proxied[3].url.endswith("/vluna/api/v1/checkout/sessions")
    assert all(r.headers.get("x-vluna-csrf") == "1" for r in proxied)
    page.goto(out["url"])
    expect(page.locator("h1")).to_have_text("Checkout (emulated)")
    page.goto(out["portal"])
    expect(page.locator("h1")).to_have_text("Billing portal (emulated)")


def test_without_a_session_the_error_is_typed(page: Page, service: Service) -> None:
    page.goto(f"{service.url}/vluna/client.js")
    err = page.evaluate(
        """async () => {
            const { createClient } = await import('/vluna/client.js');
            const c = createClient();
            let signedOut = 0;
            c.on('signout', () => { signedOut += 1; });
            try { await c.getToken(); return null; }
            catch (e) { return { status: e.status, code: e.code, signedOut, isErr: e instanceof Error }; }
        }"""
    )
    assert err == {"status": 401, "code": "unauthenticated", "signedOut": 1, "isErr": True}


def test_sign_out_drops_the_token_everywhere(page: Page, service: Service) -> None:
    start(page, service)
    deletes: list[Request] = []
    page.on("request", lambda r: deletes.append(r) if r.method == "DELETE" else None)
    before = page.evaluate("async () => (await c.getToken()).access_token")
    page.wait_for_timeout(1100)  # so that a token issued after the sign-out has a later iat
    page.evaluate("async () => { await c.signOut(); }")
    assert page.evaluate("c.token") is None
    assert len(deletes) == 1 and deletes[0].headers.get("x-vluna-csrf") == "1"
    after = page.evaluate("async () => (await c.getToken()).access_token")
    assert after != before  # the service's cache was dropped: a new token was issued


def refuse_sign_outs(page: Page, times: int) -> list[str]:
    """The service's answer when it cannot record a sign-out (its Redis away), `times` times;
    then DELETEs reach the real service. Returns the log of token requests as they happen."""
    log: list[str] = []
    left = [times]

    def handle(route: Route) -> None:
        log.append(route.request.method)
        if route.request.method == "DELETE" and left[0] > 0:
            left[0] -= 1
            route.fulfill(
                status=503,
                headers={"Retry-After": "1", "Cache-Control": "no-store"},
                content_type="application/json",
                body=json.dumps({"error": "sign_out_incomplete", "message": "send it again"}),
            )
        else:
            route.continue_()

    page.route("**/vluna/token*", handle)
    return log


def test_a_refused_sign_out_is_retried_and_token_requests_wait_for_it(page: Page, service: Service) -> None:
    start(page, service)
    before = page.evaluate("async () => (await c.getToken()).access_token")
    page.wait_for_timeout(1100)  # so that a token issued after the sign-out has a later iat
    log = refuse_sign_outs(page, 2)
    out = page.evaluate(
        """async () => {
            let signedOut = 0;
            c.on('signout', () => { signedOut += 1; });
            const started = performance.now();
            const done = c.signOut();
            // Asked for while the sign-out is being retried: sent only once it went through.
            const next = c.getToken();
            await done;
            const tookMs = performance.now() - started;
            return { token: (await next).access_token, signedOut, tookMs };
        }"""
    )
    assert log == ["DELETE", "DELETE", "DELETE", "GET"]
    assert out["token"] != before and out["signedOut"] == 1
    assert out["tookMs"] >= 2000  # Retry-After (1 s) honoured twice


def test_a_sign_out_refused_too_often_fails(page: Page, service: Service) -> None:
    start(page, service)
    page.evaluate("async () => { await c.getToken(); }")
    log = refuse_sign_outs(page, 10)
    err = page.evaluate(
        """async () => {
            const { createClient } = await import('/vluna/client.js');
            const c2 = createClient({ signOutRetries: 1 });
            try { await c2.signOut(); return null; }
            catch (e) { return { status: e.status, code: e.code, retryAfter: e.retryAfter }; }
        }"""
    )
    assert err == {"status": 503, "code": "sign_out_incomplete", "retryAfter": 1}
    assert log == ["DELETE", "DELETE"]


@pytest.mark.parametrize("how", ["module", "global"])
def test_one_file_two_builds(context: BrowserContext, service: Service, how: str) -> None:
    page = context.new_page()
    dev_login(context, service, f"g-{uuid.uuid4().hex[:6]}")
    page.goto(f"{service.url}/dev/jwks.json")
    if how == "global":
        page.add_script_tag(url="/vluna/client.global.js")
    else:
        page.add_script_tag(type="module", content="import '/vluna/client.js';")
    page.wait_for_function("typeof window.VlunaBff === 'object'")
    out = page.evaluate(
        """async () => {
            const c = window.VlunaBff.createClient();
            const t = await c.getToken();
            return { version: window.VlunaBff.version, ok: t.token_type === 'Bearer' && t.expires_in > 0 };
        }"""
    )
    assert out == {"version": "1.0.0", "ok": True}


def test_a_failed_background_renewal_backs_off(page: Page, service: Service) -> None:
    token_gets = start(page, service)
    page.evaluate("async () => { await c.getToken(); }")
    page.route(
        "**/vluna/token*",
        lambda route: route.fulfill(
            status=503,
            headers={"Retry-After": "3"},
            content_type="application/json",
            body=json.dumps({"error": "token_unavailable", "message": "try later"}),
        ),
    )
    out = page.evaluate(
        """async () => {
            const errors = [];
            c.on('error', (e) => errors.push(`${e.code}:${e.retryAfter}`));
            const before = c.token.access_token;
            const pause = () => new Promise((r) => setTimeout(r, 20));
            fakeNow += (c.token.expires_in - 10) * 1000;   // due, still usable
            for (let i = 0; i < 10; i++) { await c.getToken(); await pause(); }
            for (let i = 0; i < 250 && errors.length < 1; i++) await pause();
            for (let i = 0; i < 10; i++) { await c.getToken(); await pause(); }  // backing off
            const kept = c.token.access_token === before;
            fakeNow += 3500;                                 // past Retry-After
            await c.getToken();
            // The background attempt answers through the route handler: wait for its error
            // (bounded, real time; a busy machine takes more than a few milliseconds).
            const settle = Date.now() + 10000;
            while (errors.length < 2 && Date.now() < settle) await pause();
            await pause();
            return { kept, errors };
        }"""
    )
    # The good token keeps being handed out; one attempt, then none until Retry-After has passed.
    assert out == {"kept": True, "errors": ["token_unavailable:3", "token_unavailable:3"]}
    assert len(token_gets()) == 3
