"""Token issuance (accounts, users, scopes, TTL) and bearer verification on /api/v1."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import pytest
from vlunaai import RequestContext
from vlunaai.testing import VlunaEmulator

from tests.support.emulator import core_of
from tests.support.envelopes import data_of

from .support import Raw, assert_error

PRODUCTS = "/api/v1/catalog/products"
KEY = b"k" * 32


def claims_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


async def test_token_claims_and_response(raw: Raw) -> None:
    data = await raw.token("org:acme", "user:alice", scopes=["checkout"])
    assert data["token_type"] == "Bearer"
    assert data["expires_in"] == 900
    assert data["expires_at"].endswith("Z")
    claims = claims_of(data["access_token"])
    assert claims["realm_id"] == raw.emu.realm_id
    assert claims["billing_principal_id"] == "org:acme"
    assert claims["sub"] == claims["business_user_id"] == "user:alice"
    assert claims["billing_account_id"] == data["billing_account_id"]
    assert claims["billing_user_id"] == data["billing_user_id"]
    assert claims["plt_scopes"] == ["checkout"]
    assert claims["scope"] == "billing:read billing:write"
    assert jwt.get_unverified_header(data["access_token"])["kid"] == f"plt:v1:realm:{raw.emu.realm_id}"


async def test_principal_maps_to_one_account_and_users_to_billing_users(raw: Raw) -> None:
    a1 = await raw.token("org:acme", "user:alice")
    a2 = await raw.token("org:acme", "user:alice")
    b = await raw.token("org:acme", "user:bob")
    other = await raw.token("org:globex", "user:alice")
    assert a1["billing_account_id"] == a2["billing_account_id"] == b["billing_account_id"]
    assert a1["billing_user_id"] == a2["billing_user_id"] != b["billing_user_id"]
    assert other["billing_account_id"] != a1["billing_account_id"]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, ["checkout", "portal"]),
        ([], ["checkout", "portal"]),
        (["portal", "admin"], ["portal"]),
        (["nope"], []),
    ],
)
async def test_scopes_are_filtered(raw: Raw, given: list[str] | None, expected: list[str]) -> None:
    extra: dict[str, Any] = {} if given is None else {"scopes": given}
    data = await raw.token(**extra)
    assert sorted(claims_of(data["access_token"])["plt_scopes"]) == expected


@pytest.mark.parametrize(
    ("ttl", "expected"), [(5, 60), (60, 60), (1200, 1200), (3600, 3600), (999_999, 3600)]
)
async def test_ttl_is_clamped(raw: Raw, ttl: int, expected: int) -> None:
    data = await raw.token(session_ttl_sec=ttl)
    assert data["expires_in"] == expected
    claims = claims_of(data["access_token"])
    assert claims["exp"] - claims["iat"] == expected


@pytest.mark.parametrize(
    "body",
    [
        {"user_id": "u"},
        {"principal_id": "p"},
        {"principal_id": "", "user_id": "u"},
        {"principal_id": "p", "user_id": "u", "session_ttl_sec": "x"},
    ],
)
async def test_invalid_issue_body(raw: Raw, body: dict[str, Any]) -> None:
    assert_error(await raw.svc("POST", "/mgt/v1/token/issue", body), 422, "VALIDATION.INVALID_INPUT")


async def test_bearer_accepts_a_valid_token(raw: Raw) -> None:
    token = (await raw.token())["access_token"]
    response = await raw.bearer("GET", PRODUCTS, token)
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True and body["meta"] == {"next_cursor": None, "has_more": False, "limit": 50}


async def test_missing_and_unsupported_authorization(raw: Raw) -> None:
    headers = {"x-realm-id": raw.emu.realm_id}
    assert_error(await raw.send("GET", PRODUCTS, headers), 401, "AUTH.UNAUTHORIZED", "missing_token")
    headers["authorization"] = "Basic dXNlcjpwYXNz"
    assert_error(
        await raw.send("GET", PRODUCTS, headers), 401, "AUTH.UNAUTHORIZED", "unsupported_authorization_scheme"
    )


async def test_garbage_and_tampered_tokens(raw: Raw) -> None:
    assert_error(await raw.bearer("GET", PRODUCTS, "not-a-jwt"), 401, "AUTH.UNAUTHORIZED", "invalid_token")
    token = (await raw.token())["access_token"]
    header, payload, sig = token.split(".")
    forged_claims = claims_of(token) | {"billing_principal_id": "org:victim"}
    forged = jwt.encode(forged_claims, "x" * 32, algorithm="HS256").split(".")[1]
    assert_error(
        await raw.bearer("GET", PRODUCTS, f"{header}.{forged}.{sig}"),
        401,
        "AUTH.UNAUTHORIZED",
        "invalid_token",
    )
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    assert_error(
        await raw.bearer("GET", PRODUCTS, f"{header}.{payload}.{flipped}"),
        401,
        "AUTH.UNAUTHORIZED",
        "invalid_token",
    )
    none_alg = jwt.encode(claims_of(token), key="", algorithm="none")
    assert_error(await raw.bearer("GET", PRODUCTS, none_alg), 401, "AUTH.UNAUTHORIZED", "invalid_token")


async def test_expired_token(raw: Raw) -> None:
    data = await raw.token(session_ttl_sec=60)
    assert (await raw.bearer("GET", PRODUCTS, data["access_token"])).status_code == 200
    raw.emu.advance_time(61)
    assert_error(
        await raw.bearer("GET", PRODUCTS, data["access_token"]), 401, "AUTH.UNAUTHORIZED", "invalid_token"
    )


async def test_wrong_audience() -> None:
    async with (
        VlunaEmulator(token_signing_key=KEY) as emu,
        httpx.AsyncClient(transport=emu.transport()) as client,
    ):
        raw = Raw(emu, client)
        good = (await raw.token())["access_token"]
        assert (await raw.bearer("GET", PRODUCTS, good)).status_code == 200
        claims = claims_of(good) | {"aud": "some-other-api"}
        wrong = jwt.encode(claims, KEY, algorithm="HS256")
        assert_error(await raw.bearer("GET", PRODUCTS, wrong), 401, "AUTH.UNAUTHORIZED", "invalid_token")
        claims = claims_of(good) | {"exp": int(time.time()) + 600}
        assert (
            await raw.bearer("GET", PRODUCTS, jwt.encode(claims, KEY, algorithm="HS256"))
        ).status_code == 200


async def test_wrong_realm_header(raw: Raw) -> None:
    token = (await raw.token())["access_token"]
    response = await raw.bearer("GET", PRODUCTS, token, realm_id="realm_elsewhere")
    assert_error(response, 403, "AUTH.INSUFFICIENT_SCOPE", "realm_mismatch")
    response = await raw.send("GET", PRODUCTS, {"authorization": f"Bearer {token}"})
    assert_error(response, 400, "VALIDATION.INVALID_INPUT", "missing_realm")


async def test_missing_scope(raw: Raw) -> None:
    portal_only = (await raw.token(scopes=["portal"]))["access_token"]
    checkout_only = (await raw.token(scopes=["checkout"]))["access_token"]
    checkout = {
        "items": [{"catalog_price_id": "price_pro_monthly", "quantity": 1}],
        "return_url": "https://app.example/r",
    }
    response = await raw.bearer("POST", "/api/v1/checkouts", portal_only, checkout)
    assert_error(response, 403, "AUTH.INSUFFICIENT_SCOPE", "insufficient_scope")
    legacy = {
        "items": checkout["items"],
        "success_url": "https://a.example/s",
        "cancel_url": "https://a.example/c",
    }
    response = await raw.bearer("POST", "/api/v1/checkout/sessions", portal_only, legacy, idem="l" * 32)
    assert_error(response, 403, "AUTH.INSUFFICIENT_SCOPE")
    response = await raw.bearer(
        "POST", "/api/v1/portal/sessions", checkout_only, {"return_url": "https://a.example/"}
    )
    assert_error(response, 403, "AUTH.INSUFFICIENT_SCOPE", "insufficient_scope")
    assert (
        await raw.bearer("POST", "/api/v1/portal/sessions", portal_only, {"return_url": "https://a.example/"})
    ).status_code == 201


async def test_token_of_another_account_cannot_read_its_data(raw: Raw) -> None:
    mine = await raw.token("org:acme", "user:alice")
    theirs = await raw.token("org:globex", "user:eve")
    path = f"/api/v1/invoices?billing_account_id={theirs['billing_account_id']}"
    assert_error(await raw.bearer("GET", path, mine["access_token"]), 403, "AUTH.INSUFFICIENT_SCOPE")
    path = f"/api/v1/invoices?billing_account_id={mine['billing_account_id']}"
    assert (await raw.bearer("GET", path, mine["access_token"])).status_code == 200


async def test_quickstart_flows_with_the_sdk(vluna_emulator: VlunaEmulator) -> None:
    """The published quickstarts, unchanged apart from the base URL and transport."""
    svc = vluna_emulator.service_client()
    ctx = RequestContext(principal_id="org:quickstart", user_id="user:qs")
    authz = await svc.gate_authorize(
        body={"feature_code": "openai.gpt-4o", "feature_family_code": "llm.standard"}, context=ctx
    )
    assert authz.data is not None
    lease = authz.data.lease
    commit = await svc.gate_commit(
        body={"lease": lease, "feature_code": "openai.gpt-4o", "quantity_minor": "12345"}, context=ctx
    )
    assert commit.ok and data_of(commit).amount_xusd == "62"
    balance = await svc.get_credit_balance(context=ctx)
    available = data_of(balance).available_balance
    assert available is not None
    assert available.xusd == str(5_000_000 - 62)
    token_envelope = await svc.issue_platform_token(
        body={
            "principal_id": "org:quickstart",
            "user_id": "user:qs",
            "scopes": ["checkout", "portal"],
            "session_ttl_sec": 900,
        },
        context=ctx,
    )
    assert token_envelope.data is not None
    access_token = token_envelope.data.access_token

    bearer = vluna_emulator.bearer_client()
    bctx = RequestContext(access_token=access_token)
    products = await bearer.list_catalog_products(context=bctx)
    assert products.ok and [p.catalog_product_id for p in products.data.root] == [
        "prod_starter",
        "prod_pro",
        "prod_credits",
    ]
    billing_state = await bearer.get_current_billing_state(context=bctx)
    wallet = billing_state.data.wallet_balance
    assert wallet is not None and wallet.available_balance.xusd == str(5_000_000 - 62)

    # 0.1.2 quickstart: lease_token in, lease_token out.
    legacy = await svc.gate_authorize(
        body={"feature_code": "openai.gpt5.2", "feature_family_code": "llm.premium"}, context=ctx
    )
    assert data_of(legacy).lease_token == data_of(legacy).lease
    commit = await svc.gate_commit(
        body={
            "lease_token": data_of(legacy).lease_token,
            "feature_code": "openai.gpt5.2",
            "quantity_minor": "12345",
        },
        context=ctx,
    )
    assert commit.ok


async def test_quickstart_0_1_2_principal_only_context() -> None:
    """The 0.1.2 README sends only a principal; strict by default, accepted when allowed."""
    async with VlunaEmulator() as strict:
        svc = strict.service_client()
        denied = await svc.gate_authorize(
            body={"feature_code": "openai.gpt5.2", "feature_family_code": "llm.premium"},
            context=RequestContext(principal_id="org:legacy"),
        )
        assert denied.ok is False and denied.code == "AUTH.MISSING_RUNTIME_BINDINGS"
    async with VlunaEmulator(require_runtime_bindings=False) as lenient:
        client = lenient.service_client()
        ctx = RequestContext(principal_id="org:legacy")
        feature_code = "openai.gpt5.2"
        authz = await client.gate_authorize(
            body={"feature_code": feature_code, "feature_family_code": "llm.premium"}, context=ctx
        )
        assert authz.data is not None
        lease_token = authz.data.lease_token
        commit = await client.gate_commit(
            body={"lease_token": lease_token, "feature_code": feature_code, "quantity_minor": "12345"},
            context=ctx,
        )
        assert commit.ok is True
        balance = await client.get_credit_balance(context=ctx)
        assert balance.ok is True
        token_envelope = await client.issue_platform_token(
            body={
                "principal_id": "org:legacy",
                "user_id": "user:legacy",
                "scopes": ["checkout", "portal"],
                "session_ttl_sec": 900,
            },
            context=ctx,
        )
        assert token_envelope.data is not None and token_envelope.data.access_token


async def test_api_ignores_spoofed_identity_headers(raw: Raw) -> None:
    """Unlike some deployments: no SVC-AUTH on /api/v1, and headers never widen a token."""
    mine = await raw.token("org:acme", "user:alice")
    headers = raw.signed_headers("GET", "/api/v1/wallet/balance")
    response = await raw.send("GET", "/api/v1/wallet/balance", headers)
    assert_error(response, 401, "AUTH.UNAUTHORIZED", "unsupported_authorization_scheme")
    spoofed = {
        "authorization": f"Bearer {mine['access_token']}",
        "x-realm-id": raw.emu.realm_id,
        "x-principal-id": "org:victim",
        "x-user-id": "user:victim",
        "x-realm-admin": "true",
    }
    balance = (await raw.send("GET", "/api/v1/wallet/balance", spoofed)).json()["data"]
    assert balance["billing_account_id"] == mine["billing_account_id"]
    assert balance["billing_user_id"] == mine["billing_user_id"]
    assert all(a.principal_id != "org:victim" for a in core_of(raw.emu).state.accounts.values())
