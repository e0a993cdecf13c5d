"""Credentials never leak: repr/str, logs, error details; signed headers cannot be overridden."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest
from vlunaai import (
    BearerClient,
    BearerClientOptions,
    RequestContext,
    ServiceClient,
    ServiceClientOptions,
    ServiceKeyAuth,
    ServiceKeyCredentials,
    VlunaAIError,
)

from .support import (
    ACCESS_TOKEN,
    KEY_ID,
    REALM,
    SECRET_B64,
    ScriptedTransport,
    assert_signed,
    bearer_config,
    error,
    ok,
    service_config,
)

ServiceFactory = Callable[..., ServiceClient]
BearerFactory = Callable[..., BearerClient]


def test_credentials_repr_and_str_hide_the_secret() -> None:
    creds = ServiceKeyCredentials(key_id=KEY_ID, secret=SECRET_B64)
    for text in (repr(creds), str(creds), f"{creds}", repr([creds]), repr({"k": creds})):
        assert SECRET_B64 not in text
        assert KEY_ID in text
    assert creds.secret == SECRET_B64  # still usable
    options = ServiceClientOptions(config=service_config(), service_key=creds)
    assert SECRET_B64 not in repr(options)
    assert SECRET_B64 not in repr(ServiceKeyAuth(creds))


def test_request_context_repr_hides_the_access_token() -> None:
    ctx = RequestContext(access_token=ACCESS_TOKEN, principal_id="org:1")
    assert ACCESS_TOKEN not in repr(ctx)
    assert ACCESS_TOKEN not in str(ctx)
    assert "org:1" in repr(ctx)
    assert ctx.access_token == ACCESS_TOKEN


def test_clients_repr_hide_credentials() -> None:
    client = ServiceClient(
        ServiceClientOptions(config=service_config(), service_key=ServiceKeyCredentials(KEY_ID, SECRET_B64))
    )
    assert SECRET_B64 not in repr(client)
    assert REALM in repr(client)


@pytest.mark.parametrize(
    "bad_secret",
    ["not base64!!", "c2VjcmV0", "===", "", "c2Vj cmV0$", "héllo"],
)
def test_bad_secret_fails_at_construction_without_echoing_it(bad_secret: str) -> None:
    if bad_secret == "c2VjcmV0":
        bad_secret = "c2VjcmV0@"  # valid base64 plus a stray character
    with pytest.raises(ValueError) as info:
        ServiceClient(
            ServiceClientOptions(
                config=service_config(), service_key=ServiceKeyCredentials(KEY_ID, bad_secret)
            )
        )
    message = str(info.value)
    assert "secret" in message.lower()
    if bad_secret:
        assert bad_secret not in message
    assert info.value.__cause__ is None or bad_secret not in str(info.value.__cause__)
    assert info.value.__suppress_context__ or info.value.__context__ is None


def test_bad_key_id_fails_at_construction() -> None:
    for key_id in ("", "pk 1", "pk,1"):
        with pytest.raises(ValueError, match="key id"):
            ServiceClient(
                ServiceClientOptions(
                    config=service_config(), service_key=ServiceKeyCredentials(key_id, SECRET_B64)
                )
            )


async def test_debug_log_has_request_facts_and_no_secrets(
    service: ServiceFactory, bearer: BearerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    svc = service(ScriptedTransport(error(503), ok([]), error(404, "RESOURCE.NOT_FOUND")))
    ctx = RequestContext(principal_id="org:secret-principal", billing_account_id="ba_1", user_id="u")
    await svc.list_meters(query={"cursor": "query-value-xyz"}, context=ctx)
    await svc.get_meter("m-1", context=ctx)
    brr = bearer(ScriptedTransport(ok([])))
    await brr.list_catalog_products(context=RequestContext(access_token=ACCESS_TOKEN))
    conn = service(ScriptedTransport(httpx.ConnectError("refused")), max_retries=0)
    with pytest.raises(VlunaAIError):
        await conn.list_meters()

    records = [r for r in caplog.records if r.name.startswith("vlunaai")]
    messages = [r.getMessage() for r in records]
    assert len(records) == 5, messages
    assert all(r.levelno == logging.DEBUG for r in records)
    assert "GET /mgt/v1/meters -> 503 attempt=0" in messages[0]
    assert "GET /mgt/v1/meters -> 200 attempt=1" in messages[1]
    assert "GET /mgt/v1/meters/m-1 -> 404 attempt=0" in messages[2]
    assert "GET /api/v1/catalog/products -> 200 attempt=0" in messages[3]
    assert "transport-error" in messages[4]
    assert all("duration_ms=" in m for m in messages)

    # Nothing secret anywhere in the captured log (httpx's own records included) ...
    for forbidden in (SECRET_B64, ACCESS_TOKEN, "SVC-AUTH", "sig=", "Bearer"):
        assert forbidden not in caplog.text, forbidden
    # ... and the SDK's records name the route only: no query values or identity headers.
    ours = "\n".join(messages) + repr([r.args for r in records])
    for forbidden in (SECRET_B64, ACCESS_TOKEN, "query-value-xyz", "secret-principal", "ba_1"):
        assert forbidden not in ours, forbidden


async def test_error_details_carry_no_credentials(service: ServiceFactory, bearer: BearerFactory) -> None:
    svc = service(ScriptedTransport(error(401, "AUTH.INVALID_SERVICE_SIGNATURE")), error_mode="raise")
    with pytest.raises(VlunaAIError) as info:
        await svc.upsert_meter(body={"meter_code": "m"})
    brr = bearer(ScriptedTransport(error(401, "AUTH.UNAUTHORIZED")), error_mode="raise")
    with pytest.raises(VlunaAIError) as info2:
        await brr.list_budgets(context=RequestContext(access_token=ACCESS_TOKEN))
    for err in (info.value, info2.value):
        dump = repr(err.__dict__) + str(err) + repr(err)
        for forbidden in (SECRET_B64, ACCESS_TOKEN, "SVC-AUTH", "authorization"):
            assert forbidden not in dump


SIGNED_OVERRIDES = {
    "Authorization": "SVC-AUTH keyId=evil,sig=x,ts=x,nonce=x,alg=HMAC-SHA256",
    "Content-Digest": "sha-256=:AAAA:",
    "Content-Type": "text/plain",
    "X-Realm-Id": "other-realm",
    "Idempotency-Key": "fixed-by-defaults",
    "X-Principal-Id": "evil-principal",
    "X-User-Id": "evil-user",
    "X-Billing-Account-ID": "evil-account",
    "X-Billing-User-Id": "evil-billing-user",
    "x-realm-admin": "true",
    "Host": "evil.example",
}


async def test_default_headers_cannot_override_signed_headers(service: ServiceFactory) -> None:
    transport = ScriptedTransport(ok({}))
    client = service(transport, default_headers={**SIGNED_OVERRIDES, "X-Custom": "kept", "User-Agent": "x/1"})
    await client.upsert_meter(body={"meter_code": "m"}, context=RequestContext(principal_id="p-1"))
    await client.list_meters()
    for req in transport.requests:
        h = req.headers
        assert h["x-custom"] == "kept"
        assert h["x-realm-id"] == REALM
        assert h["authorization"].startswith(f"SVC-AUTH keyId={KEY_ID},")
        assert h["idempotency-key"] != "fixed-by-defaults"
        assert h["content-type"] == "application/json; charset=utf-8"
        assert h["host"] == "vluna.test"
        assert "x-realm-admin" not in h
        assert "x-billing-user-id" not in h
        assert "x-billing-account-id" not in h
        assert h["user-agent"].endswith(f"vlunaai-python/{__import__('vlunaai').__version__}")
        assert_signed(req)
    assert transport.requests[0].headers["x-principal-id"] == "p-1"
    assert "x-principal-id" not in transport.requests[1].headers


async def test_default_headers_cannot_override_bearer_auth(bearer: BearerFactory) -> None:
    transport = ScriptedTransport(ok([]))
    client = bearer(transport, default_headers=SIGNED_OVERRIDES)
    await client.list_budgets(context=RequestContext(access_token=ACCESS_TOKEN))
    h = transport.last.headers
    assert h["authorization"] == f"Bearer {ACCESS_TOKEN}"
    assert h["x-realm-id"] == REALM
    for name in ("x-principal-id", "x-user-id", "x-billing-account-id", "x-realm-admin", "content-digest"):
        assert name not in h


async def test_injected_http_client_headers_cannot_override_signed_headers() -> None:
    transport = ScriptedTransport(ok({}))
    injected = httpx.AsyncClient(transport=transport, headers={**SIGNED_OVERRIDES, "X-Custom": "kept"})
    client = ServiceClient(
        ServiceClientOptions(
            config=service_config(),
            service_key=ServiceKeyCredentials(KEY_ID, SECRET_B64),
            http_client=injected,
        )
    )
    try:
        await client.list_meters()
        await client.upsert_meter(body={"meter_code": "m"})
    finally:
        await client.close()
        await injected.aclose()
    for req in transport.requests:
        h = req.headers
        assert h["x-custom"] == "kept"
        assert h["x-realm-id"] == REALM
        for name in (
            "x-principal-id",
            "x-user-id",
            "x-billing-account-id",
            "x-billing-user-id",
            "x-realm-admin",
        ):
            assert name not in h, name
        assert h["host"] == "vluna.test"
        assert h["content-type"] == "application/json; charset=utf-8"
        assert_signed(req)


async def test_injected_http_client_headers_cannot_override_bearer_headers() -> None:
    transport = ScriptedTransport(ok([]))
    injected = httpx.AsyncClient(transport=transport, headers=SIGNED_OVERRIDES)
    client = BearerClient(BearerClientOptions(config=bearer_config(), http_client=injected))
    try:
        await client.list_budgets(context=RequestContext(access_token=ACCESS_TOKEN))
    finally:
        await client.close()
        await injected.aclose()
    h = transport.last.headers
    assert h["authorization"] == f"Bearer {ACCESS_TOKEN}"
    for name in ("x-principal-id", "x-user-id", "x-billing-account-id", "x-realm-admin", "idempotency-key"):
        assert name not in h, name
    assert h["host"] == "vluna.test"
