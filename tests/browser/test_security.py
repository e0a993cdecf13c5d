"""What other sites can do with a signed-in user's browser: nothing.

- CSRF: pages on other origins submit forms to the service (the session cookie goes along) and
  are refused with 403 ``csrf_header_missing``; no token is issued meanwhile.
- CORS: scripts on an unlisted origin get no CORS grant (the browser blocks them, the service
  never reflects the origin), while the listed origin works, from the same code.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
from playwright.sync_api import BrowserContext, Response

from .support import Service, dev_login, jwt_claims

ATTACK_FORM = """<!doctype html><html><body>
<form id="f" method="{method}" action="{action}" enctype="text/plain">
  <input name='{{"items":[{{"catalog_price_id":"price_pro_monthly","quantity":1}}],"x":"' value='"}}'>
</form>
<script>document.getElementById('f').submit();</script>
</body></html>"""


def submit_from(context: BrowserContext, page_url: str, target: str) -> tuple[int, dict[str, Any]]:
    """Open another site's page that submits a form to the service; the service's answer."""
    page = context.new_page()
    try:
        with page.expect_response(lambda r: r.url.startswith(target)) as info:
            page.goto(page_url)
        response: Response = info.value
        body: dict[str, Any] = response.json()
        return response.status, body
    finally:
        page.close()


def test_cross_site_forms_are_refused_and_issue_nothing(context: BrowserContext, service: Service) -> None:
    user = f"victim-{uuid.uuid4().hex[:6]}"
    dev_login(context, service, user)  # the victim is signed in: the cookie sits in this browser
    attack_started = int(time.time())
    other = service.other
    cases = [
        # Another site altogether (localhost vs 127.0.0.1): a top-level GET carries the Lax cookie.
        (other.url.replace("127.0.0.1", "localhost"), "GET", "/vluna/token"),
        # Another origin of the same site: the cookie goes along even on POST.
        (other.url, "GET", "/vluna/token"),
        (other.url, "POST", "/vluna/api/v1/checkouts"),
        (other.url, "POST", "/dev/logout"),
    ]
    for i, (origin, method, path) in enumerate(cases):
        target = service.url + path
        other.page(f"attack{i}.html", ATTACK_FORM.format(method=method, action=target))
        status, body = submit_from(context, f"{origin}/attack{i}.html", target)
        # 403 (not 401): the cookie did arrive, and was refused for want of the header.
        assert status == 403, (origin, method, path, status, body)
        assert body["error"] == "csrf_header_missing"
        assert "access_token" not in body

    # Scripts of another origin fare no better: with the cookie but no header the service refuses;
    # with the header the browser's preflight fails (unlisted origin) and nothing is sent.
    page = context.new_page()
    page.goto(other.page("script.html", "<!doctype html><title>other</title>"))
    answers: list[int] = []
    page.on("response", lambda r: answers.append(r.status) if "/vluna/token" in r.url else None)
    outcome = page.evaluate(
        """async (url) => {
            const out = [];
            for (const headers of [{}, { 'X-Vluna-CSRF': '1' }]) {
                try { await fetch(url, { credentials: 'include', headers }); out.push('read'); }
                catch (e) { out.push(e.name); }
            }
            return out;
        }""",
        f"{service.url}/vluna/token",
    )
    assert outcome == ["TypeError", "TypeError"]
    assert 200 not in answers

    # The session survived (the logout form was refused) and no token was issued during the attack:
    # the victim's first token is issued now, after it.
    time.sleep(1.1)
    r = context.request.get(f"{service.url}/vluna/token", headers={"X-Vluna-CSRF": "1"})
    assert r.status == 200
    assert jwt_claims(r.json()["access_token"])["iat"] > attack_started


def test_cors_grants_listed_origins_only(context: BrowserContext, service: Service) -> None:
    jwt = dev_login(context, service, f"cors-{uuid.uuid4().hex[:6]}")
    script = """async ([bff, jwt]) => {
        const c = window.VlunaBff.createClient({
            baseUrl: bff, credentials: 'omit', getAuthToken: () => jwt });
        try {
            const t = await c.getToken();
            const products = await c.catalog.products();
            const checkout = await c.checkout.create({
                items: [{ catalog_price_id: products[0].default_price.catalog_price_id, quantity: 1 }],
                return_url: location.href,
            });
            return { token: t.token_type, products: products.length, checkout: checkout.status };
        } catch (e) { return { error: e.code }; }
    }"""
    results = {}
    for name, origin in (("listed", service.allowed), ("unlisted", service.other)):
        page = context.new_page()
        page.goto(
            origin.page(
                f"app-{name}.html",
                f'<!doctype html><script src="{service.url}/vluna/client.global.js"></script>',
            )
        )
        page.wait_for_function("typeof window.VlunaBff === 'object'")
        results[name] = page.evaluate(script, [service.url, jwt])
        page.close()
    # The same code works from the listed origin and is blocked by the browser from the other one.
    assert results["listed"] == {"token": "Bearer", "products": 3, "checkout": "open"}
    assert results["unlisted"] == {"error": "network_error"}

    # What the service answers: the listed origin echoed, the unlisted one never.
    headers = {"Authorization": f"Bearer {jwt}"}
    origins: list[tuple[str, bool]] = [
        (service.allowed.url, True),
        (service.other.url, False),
        ("null", False),
    ]
    for origin_url, granted in origins:
        preflight = httpx.options(
            f"{service.url}/vluna/token",
            headers={
                "Origin": origin_url,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        actual = httpx.get(f"{service.url}/vluna/token", headers={**headers, "Origin": origin_url})
        for r in (preflight, actual):
            acao = r.headers.get("access-control-allow-origin")
            assert acao == (origin_url if granted else None), (origin_url, r.request.method, acao)
