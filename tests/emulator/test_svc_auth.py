"""SVC-AUTH verification on /mgt/v1: every rejection, skew window and nonce replay."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from vlunaai.signing import (
    ServiceKeyAuth,
    ServiceKeyCredentials,
    canonical_string,
    compute_signature,
    content_digest,
    decode_secret,
    format_authorization,
)
from vlunaai.testing import VlunaEmulator, load_seed
from vlunaai.testing.seed import Realm

from .support import Raw, assert_error

PATH = "/mgt/v1/catalog/products?limit=10"


def manual_headers(
    raw: Raw, *, ts: str, nonce: str, method: str = "GET", path: str = PATH, body: str | None = None
) -> dict[str, str]:
    digest = content_digest(body)
    canonical = canonical_string(
        method=method,
        path_with_query=path,
        timestamp=ts,
        nonce=nonce,
        content_digest=digest,
        content_type="application/json; charset=utf-8",
        realm_id=raw.emu.realm_id,
        idempotency_key="i" * 32,
    )
    sig = compute_signature(decode_secret(raw.emu.service_key_secret), canonical)
    return {
        "authorization": format_authorization(
            key_id=raw.emu.service_key_id, signature=sig, timestamp=ts, nonce=nonce
        ),
        "content-digest": digest,
        "content-type": "application/json; charset=utf-8",
        "x-realm-id": raw.emu.realm_id,
        "idempotency-key": "i" * 32,
    }


async def test_valid_signature_is_accepted(raw: Raw) -> None:
    response = await raw.svc("GET", PATH)
    assert response.status_code == 200, response.text
    assert response.json()["ok"] is True


async def test_missing_authorization(raw: Raw) -> None:
    headers = raw.signed_headers("GET", PATH)
    del headers["authorization"]
    assert_error(
        await raw.send("GET", PATH, headers), 401, "AUTH.INVALID_SERVICE_SIGNATURE", "missing_authorization"
    )


@pytest.mark.parametrize(
    "mangle",
    [
        lambda v: v.replace(",", ", "),  # spaces after commas
        lambda v: v.replace("alg=HMAC-SHA256", "alg=HMAC-SHA1"),
        lambda v: v.replace("SVC-AUTH keyId", "SVC-AUTH key"),
        lambda v: v.split(",nonce=")[0],
    ],
    ids=["spaces", "algorithm", "field-name", "truncated"],
)
async def test_malformed_header(raw: Raw, mangle: object) -> None:
    headers = raw.signed_headers("GET", PATH)
    headers["authorization"] = mangle(headers["authorization"])  # type: ignore[operator]
    assert_error(
        await raw.send("GET", PATH, headers), 401, "AUTH.INVALID_SERVICE_SIGNATURE", "malformed_authorization"
    )


async def test_bearer_token_is_never_accepted_on_mgt(raw: Raw) -> None:
    token = (await raw.token())["access_token"]
    headers = {
        "authorization": f"Bearer {token}",
        "x-realm-id": raw.emu.realm_id,
        "content-digest": content_digest(None),
    }
    assert_error(
        await raw.send("GET", PATH, headers), 401, "AUTH.UNAUTHORIZED", "unsupported_authorization_scheme"
    )
    body = json.dumps({"principal_id": "org:x", "user_id": "u"})
    headers["idempotency-key"] = "a" * 32
    response = await raw.send("POST", "/mgt/v1/token/issue", headers, body)
    assert_error(response, 401, "AUTH.UNAUTHORIZED", "unsupported_authorization_scheme")


async def test_unknown_key(raw: Raw) -> None:
    other = ServiceKeyAuth(ServiceKeyCredentials("pk-nobody", raw.emu.service_key_secret))
    response = await raw.svc("GET", PATH, auth=other)
    assert_error(response, 401, "AUTH.SERVICE_KEY_NOT_FOUND")


async def test_disabled_key(raw: Raw) -> None:
    key = raw.emu.core.keys["pk-emulator-disabled"]
    response = await raw.svc("GET", PATH, auth=ServiceKeyAuth(ServiceKeyCredentials(key.key_id, key.secret)))
    assert_error(response, 403, "AUTH.SERVICE_KEY_DISABLED")


async def test_expired_key(raw: Raw) -> None:
    key = raw.emu.core.keys["pk-emulator-expired"]
    response = await raw.svc("GET", PATH, auth=ServiceKeyAuth(ServiceKeyCredentials(key.key_id, key.secret)))
    assert_error(response, 403, "AUTH.SERVICE_KEY_EXPIRED")


async def test_realm_the_key_may_not_use_and_unknown_realm() -> None:
    seed = load_seed()
    seed.realms.append(Realm(realm_id="realm_other", name="Other"))
    async with VlunaEmulator(seed=seed) as emu:
        import httpx

        async with httpx.AsyncClient(transport=emu.transport()) as client:
            raw = Raw(emu, client)
            assert_error(
                await raw.svc("GET", PATH, realm_id="realm_other"), 403, "AUTH.SERVICE_KEY_REALM_FORBIDDEN"
            )
            body = assert_error(
                await raw.svc("GET", PATH, realm_id="realm_nowhere"), 404, "AUTH.UNKNOWN_REALM"
            )
            assert body["meta"]["clear_cached_realm"] is True


async def test_missing_realm_header(raw: Raw) -> None:
    headers = raw.signed_headers("GET", PATH)
    del headers["x-realm-id"]
    assert_error(await raw.send("GET", PATH, headers), 400, "VALIDATION.INVALID_INPUT", "missing_realm")


async def test_missing_content_digest(raw: Raw) -> None:
    headers = raw.signed_headers("GET", PATH)
    del headers["content-digest"]
    assert_error(
        await raw.send("GET", PATH, headers), 401, "AUTH.INVALID_SERVICE_SIGNATURE", "missing_content_digest"
    )


async def test_wrong_content_digest(raw: Raw) -> None:
    body = json.dumps({"principal_id": "org:1", "user_id": "u1"})
    headers = raw.signed_headers("POST", "/mgt/v1/token/issue", body)
    tampered = body.replace("org:1", "org:2")
    response = await raw.send("POST", "/mgt/v1/token/issue", headers, tampered)
    assert_error(response, 401, "AUTH.INVALID_SERVICE_SIGNATURE", "content_digest_mismatch")
    # Recomputing the digest does not help: the signature covers it.
    headers = raw.signed_headers("POST", "/mgt/v1/token/issue", body)
    headers["content-digest"] = content_digest(tampered)
    response = await raw.send("POST", "/mgt/v1/token/issue", headers, tampered)
    assert_error(response, 401, "AUTH.INVALID_SERVICE_SIGNATURE", "invalid_signature")


@pytest.mark.parametrize(
    "what", ["secret", "principal", "path", "query", "method", "idempotency-key", "content-type"]
)
async def test_bad_signature(raw: Raw, what: str) -> None:
    method, path = "GET", PATH
    auth = None
    if what == "secret":
        auth = ServiceKeyAuth(
            ServiceKeyCredentials(raw.emu.service_key_id, "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==")
        )
    headers = raw.signed_headers(method, path, auth=auth)
    if what == "principal":
        headers["x-principal-id"] = "org:someone-else"
    elif what == "path":
        path = "/mgt/v1/catalog/prices?limit=10"
    elif what == "query":
        path = "/mgt/v1/catalog/products?limit=11"
    elif what == "method":
        method = "POST"
    elif what == "idempotency-key":
        headers["idempotency-key"] = "b" * 32
    elif what == "content-type":
        headers["content-type"] = "text/plain"
    if method == "POST":
        path = "/mgt/v1/token/issue"
    assert_error(
        await raw.send(method, path, headers), 401, "AUTH.INVALID_SERVICE_SIGNATURE", "invalid_signature"
    )


@pytest.mark.parametrize("offset", [-301, 301, -3600])
async def test_timestamp_outside_skew_window(raw: Raw, offset: int) -> None:
    ts = (datetime.now(timezone.utc) + timedelta(seconds=offset)).isoformat()
    headers = manual_headers(raw, ts=ts, nonce="c" * 32)
    assert_error(
        await raw.send("GET", PATH, headers), 401, "AUTH.INVALID_SERVICE_SIGNATURE", "timestamp_out_of_window"
    )


async def test_timestamp_inside_window_and_malformed(raw: Raw) -> None:
    ts = (datetime.now(timezone.utc) - timedelta(seconds=120)).isoformat()
    assert (await raw.send("GET", PATH, manual_headers(raw, ts=ts, nonce="d" * 32))).status_code == 200
    bad = manual_headers(raw, ts="yesterday", nonce="e" * 32)
    assert_error(
        await raw.send("GET", PATH, bad), 401, "AUTH.INVALID_SERVICE_SIGNATURE", "malformed_timestamp"
    )


async def test_nonce_replay_is_rejected(raw: Raw) -> None:
    headers = raw.signed_headers("GET", PATH)
    assert (await raw.send("GET", PATH, headers)).status_code == 200
    assert_error(
        await raw.send("GET", PATH, headers), 401, "AUTH.INVALID_SERVICE_SIGNATURE", "nonce_replayed"
    )
    # A fresh signature (new nonce) of the same request is fine.
    assert (await raw.svc("GET", PATH)).status_code == 200


async def test_sdk_service_client_signs_every_attempt(vluna_emulator: VlunaEmulator) -> None:
    # Retries re-sign with a fresh nonce, so the nonce cache never rejects them.
    vluna_emulator.inject_fault("list_catalog_products", status=503, retry_after=0, times=2)
    svc = vluna_emulator.service_client()
    result = await svc.list_catalog_products()
    assert result.ok is True
    assert vluna_emulator.calls("service.list_catalog_products") == 3


async def test_published_0_1_2_signature_form_is_refused_and_named(raw: Raw) -> None:
    # Signed exactly as vlunaai 0.1.2 signs (written out here from its canonical form): the
    # billing-account line before the principal line, and no user lines.
    body = json.dumps({"principal_id": "org:acme", "user_id": "user:alice"})
    ts, nonce, idem = datetime.now(timezone.utc).isoformat(), "b" * 32, "c" * 32
    digest = content_digest(body)
    canonical = "\n".join(
        [
            "POST",
            "/mgt/v1/token/issue",
            f"ts:{ts}",
            f"nonce:{nonce}",
            f"content-digest:{digest}",
            "content-type:application/json; charset=utf-8",
            f"x-realm-id:{raw.emu.realm_id}",
            "x-billing-account-id:",
            "x-principal-id:org:acme",
            f"idempotency-key:{idem}",
        ]
    )
    sig = compute_signature(decode_secret(raw.emu.service_key_secret), canonical)
    headers = {
        "authorization": format_authorization(
            key_id=raw.emu.service_key_id, signature=sig, timestamp=ts, nonce=nonce
        ),
        "content-digest": digest,
        "content-type": "application/json; charset=utf-8",
        "x-realm-id": raw.emu.realm_id,
        "x-principal-id": "org:acme",
        "idempotency-key": idem,
    }
    response = await raw.send("POST", "/mgt/v1/token/issue", headers, body)
    error = assert_error(response, 401, "AUTH.INVALID_SERVICE_SIGNATURE", "legacy_signature")
    assert "pre-0.3 canonical form" in error["message"]
    assert "0.3.2" in error["message"]
    # A plain forgery is not mistaken for the old form.
    headers["authorization"] = format_authorization(
        key_id=raw.emu.service_key_id, signature=sig[:-4] + "AAA=", timestamp=ts, nonce="d" * 32
    )
    response = await raw.send("POST", "/mgt/v1/token/issue", headers, body)
    assert_error(response, 401, "AUTH.INVALID_SERVICE_SIGNATURE", "invalid_signature")
