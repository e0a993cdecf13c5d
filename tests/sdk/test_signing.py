"""SVC-AUTH: known vectors computed by hand from the wire rules, and properties over the wire.

Expected values are never computed with `vlunaai.signing`: the vectors below were computed once
with `hmac`/`hashlib` from the literal canonical strings written out here, and the property tests
rebuild the canonical string from the captured request with `support.canonical_from_request`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import vlunaai.signing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vlunaai import RequestContext, ServiceClient, ServiceKeyAuth, ServiceKeyCredentials

from .support import (
    KEY_ID,
    REALM,
    SECRET_B64,
    SECRET_BYTES,
    ScriptedTransport,
    assert_signed,
    auth_fields,
    make_service,
    ok,
)

FIXED_TS = "2026-11-24T19:20:31.123456+00:00"
FIXED_NONCE = "0123456789abcdef0123456789abcdef"
IDEM = "5f0c6a1e2b3d4c5e6f708192a3b4c5d6"
EMPTY_DIGEST = "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"

# Vector A: GET with a query and an account header, no body.
CANONICAL_A = (
    "GET\n"
    "/mgt/v1/meters?limit=10\n"
    f"ts:{FIXED_TS}\n"
    f"nonce:{FIXED_NONCE}\n"
    f"content-digest:{EMPTY_DIGEST}\n"
    "content-type:application/json; charset=utf-8\n"
    "x-realm-id:realm-unit\n"
    "x-principal-id:\n"
    "x-user-id:\n"
    "x-billing-account-id:ba_123\n"
    "x-billing-user-id:\n"
    f"idempotency-key:{IDEM}"
)
SIG_A = "jdGIZ/4Xy85Y/Lf5pYUnm8RD6LDJS9cg64yKJFMSxig="

# Vector B: POST with a JSON body and principal/user headers.
BODY_B = b'{"principal_id": "org:123", "user_id": "user-1", "scopes": ["checkout"]}'
DIGEST_B = "sha-256=:YSxu9BcV06vcVkbmTe+5amqDmruWriWACBuOxiLeTOo=:"
CANONICAL_B = (
    "POST\n"
    "/mgt/v1/token/issue\n"
    f"ts:{FIXED_TS}\n"
    f"nonce:{FIXED_NONCE}\n"
    f"content-digest:{DIGEST_B}\n"
    "content-type:application/json; charset=utf-8\n"
    "x-realm-id:realm-unit\n"
    "x-principal-id:org:123\n"
    "x-user-id:user-1\n"
    "x-billing-account-id:\n"
    "x-billing-user-id:\n"
    f"idempotency-key:{IDEM}"
)
SIG_B = "ZJm5Y8n1cOCCAuPBnYTa9ciIscxicQKN7dnTpDgjOeA="

# Vector C: a write without a body: no Content-Type is sent and the content-type line is empty
# (the open-source server refuses an announced JSON body that is empty).
CANONICAL_C = (
    "DELETE\n"
    "/mgt/v1/billing-plans/plan_1/entitlements/bpe_1\n"
    f"ts:{FIXED_TS}\n"
    f"nonce:{FIXED_NONCE}\n"
    f"content-digest:{EMPTY_DIGEST}\n"
    "content-type:\n"
    "x-realm-id:realm-unit\n"
    "x-principal-id:\n"
    "x-user-id:\n"
    "x-billing-account-id:\n"
    "x-billing-user-id:\n"
    f"idempotency-key:{IDEM}"
)
SIG_C = "rwjeovpbsMlfMOUIWJ22xyNFumbtWqdXaaSrfmDXasQ="


@pytest.fixture
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vlunaai.signing, "utc_timestamp", lambda: FIXED_TS)
    monkeypatch.setattr(vlunaai.signing, "new_nonce", lambda: FIXED_NONCE)


def _hmac_b64(canonical: str) -> str:
    return base64.b64encode(hmac.new(SECRET_BYTES, canonical.encode(), hashlib.sha256).digest()).decode()


def test_known_vectors_are_self_consistent() -> None:
    # Guards the constants themselves: they are the HMAC of the literal canonical strings.
    assert _hmac_b64(CANONICAL_A) == SIG_A
    assert _hmac_b64(CANONICAL_B) == SIG_B
    assert _hmac_b64(CANONICAL_C) == SIG_C
    assert base64.b64encode(hashlib.sha256(b"").digest()).decode() in EMPTY_DIGEST
    assert base64.b64encode(hashlib.sha256(BODY_B).digest()).decode() in DIGEST_B


@pytest.mark.usefixtures("fixed_clock")
async def test_known_vector_get(service: Callable[..., ServiceClient]) -> None:
    transport = ScriptedTransport(ok([]))
    client = service(transport)
    await client.list_meters(
        query={"limit": 10}, context=RequestContext(billing_account_id="ba_123", idempotency_key=IDEM)
    )
    req = transport.last
    assert req.url.raw_path == b"/mgt/v1/meters?limit=10"
    assert req.content == b""
    assert req.headers["content-digest"] == EMPTY_DIGEST
    assert req.headers["authorization"] == (
        f"SVC-AUTH keyId={KEY_ID},sig={SIG_A},ts={FIXED_TS},nonce={FIXED_NONCE},alg=HMAC-SHA256"
    )
    assert req.headers["x-realm-id"] == REALM
    assert req.headers["x-billing-account-id"] == "ba_123"
    assert req.headers["idempotency-key"] == IDEM
    # The signed content type goes on the wire even without a body, as the published client.
    assert req.headers["content-type"] == "application/json; charset=utf-8"


@pytest.mark.usefixtures("fixed_clock")
async def test_known_vector_post(service: Callable[..., ServiceClient]) -> None:
    transport = ScriptedTransport(ok({"access_token": "t"}))
    client = service(transport)
    await client.issue_platform_token(
        body={"principal_id": "org:123", "user_id": "user-1", "scopes": ["checkout"]},
        context=RequestContext(principal_id="org:123", user_id="user-1", idempotency_key=IDEM),
    )
    req = transport.last
    assert req.method == "POST"
    assert req.url.raw_path == b"/mgt/v1/token/issue"
    assert req.content == BODY_B
    assert req.headers["content-digest"] == DIGEST_B
    assert req.headers["content-type"] == "application/json; charset=utf-8"
    assert req.headers["authorization"] == (
        f"SVC-AUTH keyId={KEY_ID},sig={SIG_B},ts={FIXED_TS},nonce={FIXED_NONCE},alg=HMAC-SHA256"
    )
    assert req.headers["x-principal-id"] == "org:123"
    assert req.headers["x-user-id"] == "user-1"
    assert "x-billing-account-id" not in req.headers


@pytest.mark.usefixtures("fixed_clock")
async def test_known_vector_bodyless_write(service: Callable[..., ServiceClient]) -> None:
    transport = ScriptedTransport(ok({}))
    client = service(transport)
    await client.delete_billing_plan_entitlement(
        "plan_1", "bpe_1", context=RequestContext(idempotency_key=IDEM)
    )
    req = transport.last
    assert req.method == "DELETE"
    assert req.content == b""
    assert "content-type" not in req.headers
    assert req.headers["content-digest"] == EMPTY_DIGEST
    assert req.headers["authorization"] == (
        f"SVC-AUTH keyId={KEY_ID},sig={SIG_C},ts={FIXED_TS},nonce={FIXED_NONCE},alg=HMAC-SHA256"
    )


@pytest.mark.usefixtures("fixed_clock")
def test_known_vector_direct_signer() -> None:
    # The signer's unit edge: same vector, same headers, without any HTTP in between.
    signer = ServiceKeyAuth(ServiceKeyCredentials(key_id=KEY_ID, secret=SECRET_B64))
    headers = signer.sign(
        method="post",
        url="https://vluna.test/mgt/v1/token/issue",
        body=BODY_B.decode(),
        idempotency_key=IDEM,
        realm_id=REALM,
        principal_id="org:123",
        user_id="user-1",
    )
    assert headers["authorization"].split(",")[1] == f"sig={SIG_B}"
    assert headers["content-digest"] == DIGEST_B
    assert headers["idempotency-key"] == IDEM


async def test_every_call_has_a_fresh_nonce_and_timestamp(service: Callable[..., ServiceClient]) -> None:
    transport = ScriptedTransport(ok([]))
    client = service(transport)
    for _ in range(5):
        await client.list_meters()
    nonces = [auth_fields(r)["nonce"] for r in transport.requests]
    assert len(set(nonces)) == 5
    assert all(re.fullmatch(r"[0-9a-f]{32}", n) for n in nonces)
    for req in transport.requests:
        ts = auth_fields(req)["ts"]
        # ISO-8601 UTC with an explicit offset, as the README's example.
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00", ts), ts
        assert_signed(req)


async def test_get_carries_empty_body_digest_and_no_body(service: Callable[..., ServiceClient]) -> None:
    transport = ScriptedTransport(ok({}))
    client = service(transport)
    await client.get_meter("m-1")
    req = transport.last
    assert req.content == b""
    assert req.headers["content-digest"] == EMPTY_DIGEST
    assert_signed(req)


async def test_authorization_header_format_has_no_spaces(service: Callable[..., ServiceClient]) -> None:
    transport = ScriptedTransport(ok({}))
    client = service(transport)
    await client.upsert_meter(body={"code": "tokens"})
    value = transport.last.headers["authorization"]
    assert value.startswith("SVC-AUTH keyId=")
    assert " " not in value.removeprefix("SVC-AUTH ")
    assert [part.split("=", 1)[0] for part in value.removeprefix("SVC-AUTH ").split(",")] == [
        "keyId",
        "sig",
        "ts",
        "nonce",
        "alg",
    ]


async def test_tampering_is_detected_by_the_verifier(service: Callable[..., ServiceClient]) -> None:
    # The verifier used everywhere else must be able to fail: change one signed header.
    transport = ScriptedTransport(ok({}))
    client = service(transport)
    await client.upsert_meter(body={"code": "tokens"}, context=RequestContext(principal_id="p-1"))
    req = transport.last
    assert_signed(req)
    forged = httpx.Request(
        req.method, req.url, headers={**req.headers, "x-principal-id": "p-2"}, content=req.content
    )
    with pytest.raises(AssertionError):
        assert_signed(forged)
    other_body = httpx.Request(req.method, req.url, headers=req.headers, content=b'{"code": "other"}')
    with pytest.raises(AssertionError):
        assert_signed(other_body)


# -- properties --------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)
bodies = st.dictionaries(st.text(), json_values, max_size=6)
header_ids = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters=","),
    min_size=1,
    max_size=40,
)
queries = st.dictionaries(
    st.text(min_size=1, max_size=12), st.text(max_size=20) | st.integers() | st.booleans(), max_size=5
)


def _run(call: Callable[[ServiceClient], Any]) -> ScriptedTransport:
    async def go() -> ScriptedTransport:
        transport = ScriptedTransport(ok({}))
        client = make_service(transport)
        try:
            await call(client)
        finally:
            await client.close()
        return transport

    return asyncio.run(go())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, principal=header_ids | st.none(), account=header_ids | st.none())
def test_property_any_json_body_is_signed_over_its_exact_bytes(
    body: dict[str, Any], principal: str | None, account: str | None
) -> None:
    ctx = RequestContext(principal_id=principal, billing_account_id=account)
    transport = _run(lambda c: c.upsert_meter(body=body, context=ctx))
    req = transport.last
    assert req.content == json.dumps(body).encode()
    assert json.loads(req.content) == body
    assert_signed(req)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(query=queries)
def test_property_any_query_is_signed_as_sent(query: dict[str, Any]) -> None:
    transport = _run(lambda c: c.list_meters(query=query))
    req = transport.last
    sent = dict(httpx.QueryParams(req.url.query))
    expected = {k: ("true" if v is True else "false" if v is False else str(v)) for k, v in query.items()}
    assert sent == expected
    assert_signed(req)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(meter_id=st.text(min_size=1, max_size=30), note=st.text(max_size=30))
def test_property_unicode_ids_and_bodies_are_signed(meter_id: str, note: str) -> None:
    transport = _run(lambda c: c.update_meter(meter_id, body={"note": note}))
    req = transport.last
    assert req.url.raw_path.decode("ascii").startswith("/mgt/v1/meters/")
    assert_signed(req)
