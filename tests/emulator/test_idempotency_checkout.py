"""Idempotency (replay, conflict, missing key, 24 h window) and checkouts/portal sessions."""

from __future__ import annotations

import httpx
from vlunaai import RequestContext
from vlunaai.testing import VlunaEmulator, load_seed

from tests.support.emulator import core_of
from tests.support.envelopes import data_of

from .support import Raw, assert_error

CHECKOUT = {
    "items": [{"catalog_price_id": "price_credits_10", "quantity": 2}],
    "return_url": "https://app.example/return",
}
LEGACY = {
    "items": [{"catalog_price_id": "price_pro_monthly", "quantity": 1}],
    "success_url": "https://app.example/ok",
    "cancel_url": "https://app.example/cancel",
}


async def test_same_key_same_body_replays(raw: Raw) -> None:
    token = (await raw.token())["access_token"]
    first = await raw.bearer("POST", "/api/v1/checkouts", token, CHECKOUT, idem="a" * 32)
    second = await raw.bearer("POST", "/api/v1/checkouts", token, CHECKOUT, idem="a" * 32)
    assert first.status_code == second.status_code == 201
    assert first.content == second.content
    assert second.headers["idempotent-replayed"] == "true"
    assert len(core_of(raw.emu).state.checkouts) == 1
    third = await raw.bearer("POST", "/api/v1/checkouts", token, CHECKOUT, idem="b" * 32)
    assert third.json()["data"]["checkout_id"] != first.json()["data"]["checkout_id"]


async def test_same_key_different_body_conflicts(raw: Raw) -> None:
    token = (await raw.token())["access_token"]
    assert (await raw.bearer("POST", "/api/v1/checkouts", token, CHECKOUT, idem="c" * 32)).status_code == 201
    changed = CHECKOUT | {"return_url": "https://app.example/other"}
    response = await raw.bearer("POST", "/api/v1/checkouts", token, changed, idem="c" * 32)
    assert_error(response, 409, "WRITE.INVALID_PAYLOAD", "idempotency_conflict")
    # The window is 24 h: afterwards the key is free again.
    raw.emu.advance_time(24 * 3600 + 1)
    token = (await raw.token())["access_token"]
    late = await raw.bearer("POST", "/api/v1/checkouts", token, changed, idem="c" * 32)
    assert late.status_code == 201, late.text


async def test_signed_writes_replay_across_signatures(raw: Raw) -> None:
    body = {"principal_id": "org:idem", "user_id": "u"}
    first = await raw.svc("POST", "/mgt/v1/token/issue", body, idempotency_key="d" * 32)
    again = await raw.svc("POST", "/mgt/v1/token/issue", body, idempotency_key="d" * 32)
    assert again.headers.get("idempotent-replayed") == "true"
    assert first.json()["data"]["access_token"] == again.json()["data"]["access_token"]
    other = await raw.svc("POST", "/mgt/v1/token/issue", body | {"user_id": "v"}, idempotency_key="d" * 32)
    assert_error(other, 409, "WRITE.INVALID_PAYLOAD", "idempotency_conflict")


async def test_writes_without_key_answer_400(raw: Raw) -> None:
    token = (await raw.token())["access_token"]
    response = await raw.bearer("POST", "/api/v1/checkouts", token, CHECKOUT, idem=None)
    assert_error(response, 400, "VALIDATION.INVALID_INPUT", "missing_idempotency_key")
    headers = raw.signed_headers(
        "POST", "/mgt/v1/token/issue", '{"principal_id":"p","user_id":"u"}', idempotency_key="x"
    )
    headers["idempotency-key"] = ""
    # An empty key breaks the signature first; sign over an empty key to reach the check.
    from vlunaai.signing import canonical_string, compute_signature, decode_secret, parse_authorization

    parsed = parse_authorization(headers["authorization"])
    assert parsed is not None
    canonical = canonical_string(
        method="POST",
        path_with_query="/mgt/v1/token/issue",
        timestamp=parsed.timestamp,
        nonce=parsed.nonce,
        content_digest=headers["content-digest"],
        content_type=headers["content-type"],
        realm_id=raw.emu.realm_id,
        principal_id=headers.get("x-principal-id"),
        user_id=headers.get("x-user-id"),
        idempotency_key="",
    )
    sig = compute_signature(decode_secret(raw.emu.service_key_secret), canonical)
    headers["authorization"] = headers["authorization"].replace(parsed.signature, sig)
    del headers["idempotency-key"]
    response = await raw.send("POST", "/mgt/v1/token/issue", headers, '{"principal_id":"p","user_id":"u"}')
    assert_error(response, 400, "VALIDATION.INVALID_INPUT", "missing_idempotency_key")


async def test_checkout_routes_carry_hosted_urls(raw: Raw) -> None:
    token = (await raw.token())["access_token"]
    new = (await raw.bearer("POST", "/api/v1/checkouts", token, CHECKOUT)).json()["data"]
    assert new["status"] == "open" and new["kind"] == "one_time"
    assert new["launch_url"].startswith(raw.emu.settings.public_url + "/hosted/checkout/")
    old = await raw.bearer("POST", "/api/v1/checkout/sessions", token, LEGACY, idem="e" * 32)
    assert old.status_code == 201
    assert "/hosted/checkout/" in old.json()["data"]["checkout_url"]
    svc_new = (await raw.svc("POST", "/mgt/v1/checkouts", CHECKOUT)).json()["data"]
    assert "/hosted/checkout/" in svc_new["launch_url"]
    svc_old = (await raw.svc("POST", "/mgt/v1/checkout/sessions", LEGACY)).json()["data"]
    assert "/hosted/checkout/" in svc_old["checkout_url"]


async def test_hosted_checkout_completion_credits_the_wallet(vluna_emulator: VlunaEmulator) -> None:
    svc = vluna_emulator.service_client()
    issued = await svc.issue_platform_token(body={"principal_id": "org:buyer", "user_id": "u"})
    bearer = vluna_emulator.bearer_client()
    ctx = RequestContext(access_token=data_of(issued).access_token)
    checkout = await bearer.create_checkout(body=CHECKOUT, context=ctx)
    launch = str(checkout.data.launch_url)
    path = launch[len(vluna_emulator.settings.public_url) :]
    async with httpx.AsyncClient(transport=vluna_emulator.transport(), base_url="http://emu") as browser:
        page = await browser.get(path)
        assert page.status_code == 200 and "Pay (test)" in page.text
        done = await browser.post(path + "/complete")
        assert done.status_code == 303 and done.headers["location"] == CHECKOUT["return_url"]
    again = await bearer.get_checkout(str(checkout.data.checkout_id), context=ctx)
    assert again.data.status == "completed"
    balance = await bearer.get_credit_balance(context=ctx)
    available = data_of(balance).available_balance
    assert available is not None
    assert available.xusd == str(5_000_000 + 2 * 10_000_000)


async def test_get_checkout_of_another_account_is_not_found(raw: Raw) -> None:
    mine = (await raw.token("org:a", "u"))["access_token"]
    theirs = (await raw.token("org:b", "u"))["access_token"]
    checkout_id = (await raw.bearer("POST", "/api/v1/checkouts", mine, CHECKOUT)).json()["data"][
        "checkout_id"
    ]
    assert (await raw.bearer("GET", f"/api/v1/checkouts/{checkout_id}", mine)).status_code == 200
    assert_error(
        await raw.bearer("GET", f"/api/v1/checkouts/{checkout_id}", theirs), 404, "RESOURCE.NOT_FOUND"
    )


async def test_invalid_checkout_bodies(raw: Raw) -> None:
    token = (await raw.token())["access_token"]
    bad_price = {
        "items": [{"catalog_price_id": "price_nope", "quantity": 1}],
        "return_url": "https://a.example",
    }
    assert_error(
        await raw.bearer("POST", "/api/v1/checkouts", token, bad_price, idem="1" * 32),
        422,
        "VALIDATION.INVALID_INPUT",
    )
    no_items = {"items": [], "return_url": "https://a.example"}
    assert_error(
        await raw.bearer("POST", "/api/v1/checkouts", token, no_items, idem="2" * 32),
        422,
        "VALIDATION.INVALID_INPUT",
    )
    bad_url = CHECKOUT | {"return_url": "javascript:alert(1)"}
    assert_error(
        await raw.bearer("POST", "/api/v1/checkouts", token, bad_url, idem="3" * 32),
        422,
        "VALIDATION.INVALID_INPUT",
    )
    response = await raw.send(
        "POST",
        "/api/v1/checkouts",
        {"authorization": f"Bearer {token}", "x-realm-id": raw.emu.realm_id, "idempotency-key": "4" * 32},
        "{not json",
    )
    assert_error(response, 422, "VALIDATION.INVALID_INPUT", "invalid_json")


async def test_realm_without_payment_provider_fails_checkout_with_500() -> None:
    seed = load_seed()
    seed.realms = [r.__class__(realm_id=r.realm_id, name=r.name, payment_provider=None) for r in seed.realms]
    async with VlunaEmulator(seed=seed) as emu, httpx.AsyncClient(transport=emu.transport()) as client:
        raw = Raw(emu, client)
        token = (await raw.token())["access_token"]
        assert_error(await raw.bearer("POST", "/api/v1/checkouts", token, CHECKOUT), 500, "SERVER.UNEXPECTED")
        portal = await raw.bearer(
            "POST", "/api/v1/portal/sessions", token, {"return_url": "https://a.example"}, idem="p" * 32
        )
        assert_error(portal, 500, "SERVER.UNEXPECTED")


async def test_portal_session_url(raw: Raw) -> None:
    token = (await raw.token())["access_token"]
    response = await raw.bearer(
        "POST", "/api/v1/portal/sessions", token, {"return_url": "https://app.example/account"}
    )
    assert response.status_code == 201
    assert "/hosted/portal/" in response.json()["data"]["portal_url"]


async def test_catalog_and_budget_pagination_with_the_sdk_helper(vluna_emulator: VlunaEmulator) -> None:
    from vlunaai import paginate

    svc = vluna_emulator.service_client()
    first = await svc.list_catalog_prices(query={"limit": 4})
    assert first.meta is not None and first.meta.has_more is True and first.meta.next_cursor
    ids = [p.catalog_price_id async for p in paginate(svc.list_catalog_prices, query={"limit": 4})]
    assert ids == [p["catalog_price_id"] for p in vluna_emulator.core.seed.prices]
    filtered = await svc.list_catalog_prices(query={"catalog_product_id": "prod_pro"})
    assert [p.catalog_price_id for p in filtered.data.root] == ["price_pro_monthly", "price_pro_yearly"]
    ctx = RequestContext(principal_id="org:pages", user_id="u")
    for n in range(3):
        await svc.create_budget(body={"budget": f"b{n}"}, context=ctx)
    page = await svc.list_budgets(query={"limit": 2}, context=ctx)
    assert page.data is not None and len(page.data.items or []) == 2 and page.data.next_cursor
    rest = await svc.list_budgets(query={"limit": 2, "cursor": page.data.next_cursor}, context=ctx)
    assert rest.data is not None and len(rest.data.items or []) == 1 and rest.data.next_cursor is None
    bad = await svc.list_budgets(query={"cursor": "!!"}, context=ctx)
    assert bad.ok is False and bad.code == "VALIDATION.INVALID_INPUT"
