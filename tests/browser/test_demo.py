"""The dev demo page, end to end in Chromium: sign in, watch the token tick down and renew ahead
of expiry, list the catalog through the proxy, start a checkout, pay on the emulator's hosted
page, sign out. Screenshots after checkout land in artifacts/ (desktop and phone width)."""

from __future__ import annotations

import re
import time
import uuid

from playwright.sync_api import Browser, Page, Request, expect

from .support import ARTIFACTS, TOKEN_TTL_SEC, Service, jwt_claims

SECONDS = re.compile(r"^(\d+) s$")


def remaining(page: Page) -> int:
    text = page.locator("#token-remaining").inner_text()
    m = SECONDS.match(text)
    assert m, text
    return int(m.group(1))


def sign_in(page: Page, user: str, org: str = "acme") -> None:
    page.fill("#user", user)
    page.fill("#org", org)
    page.click("#signin")
    page.wait_for_function("window.vluna.token !== null")
    expect(page.locator("#token-remaining")).to_have_text(SECONDS)
    expect(page.get_by_test_id("who")).to_have_text(f"{user} @ {org}")


def test_demo_whole_flow(page: Page, service: Service) -> None:
    user = f"alice-{uuid.uuid4().hex[:6]}"
    token_gets: list[Request] = []
    page.on(
        "request", lambda r: token_gets.append(r) if r.method == "GET" and "/vluna/token" in r.url else None
    )
    page.goto(f"{service.url}/?renew_ahead=0.85")
    expect(page.locator("body")).to_have_attribute("data-ready", "1")
    expect(page.get_by_test_id("who")).to_have_text("signed out")
    token_gets.clear()

    sign_in(page, user)
    first = page.evaluate("window.vluna.token.access_token")
    assert jwt_claims(first)["exp"] - jwt_claims(first)["iat"] == TOKEN_TTL_SEC

    # The catalog, through /vluna/api/v1: the three seeded products, each with a price and a Buy button.
    products = page.locator("#catalog li")
    expect(products).to_have_count(3)
    expect(page.locator("#catalog")).to_contain_text("Starter")
    expect(page.locator("#catalog")).to_contain_text("$19.00 / month")
    expect(page.locator("#catalog button.buy")).to_have_count(3)

    # The remaining life ticks down...
    before = remaining(page)
    page.wait_for_timeout(2200)
    assert remaining(page) < before

    # ... and the token is renewed ahead of expiry (renew_ahead=0.85: once under 51 of its 60 s).
    expect(page.get_by_test_id("token-renewals")).to_have_text("1", timeout=25_000)
    renewed = page.evaluate("window.vluna.token.access_token")
    assert renewed != first
    assert jwt_claims(renewed)["iat"] < jwt_claims(first)["exp"]  # before the old one ran out
    assert remaining(page) > 45
    expect(page.get_by_test_id("log")).to_contain_text("renewed ahead of expiry")
    # A handful of token requests, not a storm: the first, the renewal and at most one retry
    # while the service renewed in the background.
    assert 2 <= len(token_gets) <= 4, [r.url for r in token_gets]

    # Checkout: the emulator's hosted URL is shown.
    page.locator("#catalog li[data-product-id=prod_starter] button.buy").click()
    expect(page.get_by_test_id("checkout-url")).to_contain_text(f"{service.url}/hosted/checkout/")
    expect(page.get_by_test_id("checkout-status")).to_have_text("open")
    checkout_id = page.get_by_test_id("checkout-id").inner_text()
    assert checkout_id in page.get_by_test_id("checkout-url").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "demo-after-checkout.png"), full_page=True)

    # Pay on the hosted page (served by dev mode for the embedded emulator); it sends us back.
    page.get_by_test_id("checkout-open").click()
    expect(page.locator("h1")).to_have_text("Checkout (emulated)")
    assert page.url == f"{service.url}/hosted/checkout/{checkout_id}"  # the launch_url itself
    page.get_by_role("button", name="Pay (test)").click()
    page.wait_for_url(re.compile(r"returned=1"))
    expect(page.get_by_test_id("checkout-status")).to_have_text("completed")
    expect(page.get_by_test_id("checkout-id")).to_have_text(checkout_id)

    # Sign out: the service forgets the cached token and the session cookie is gone.
    page.wait_for_timeout(1100)
    signed_out_at = int(time.time())
    page.click("#signout")
    expect(page.get_by_test_id("signed-out-note")).to_contain_text("dropped the cached platform token")
    expect(page.get_by_test_id("who")).to_have_text("signed out")
    r = page.request.get(f"{service.url}/vluna/token", headers={"X-Vluna-CSRF": "1"})
    assert r.status == 401
    assert page.evaluate("window.vluna.token") is None

    # Signing in again gets a token issued after the sign-out: the cached one was dropped.
    sign_in(page, user)
    again = page.evaluate("window.vluna.token.access_token")
    assert jwt_claims(again)["iat"] >= signed_out_at
    expect(page.get_by_test_id("error")).to_be_hidden()


def test_demo_on_a_phone(browser: Browser, service: Service) -> None:
    ctx = browser.new_context(
        viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    try:
        page = ctx.new_page()
        page.goto(service.url + "/")
        expect(page.locator("body")).to_have_attribute("data-ready", "1")
        sign_in(page, f"pat-{uuid.uuid4().hex[:6]}", "globex")
        expect(page.locator("#catalog li")).to_have_count(3)
        page.locator("#catalog li[data-product-id=prod_pro] button.buy").tap()
        expect(page.get_by_test_id("checkout-url")).to_contain_text("/hosted/checkout/")
        # Nothing wider than the screen: no sideways scrolling on a phone.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "demo-after-checkout-phone.png"), full_page=True)
    finally:
        ctx.close()
