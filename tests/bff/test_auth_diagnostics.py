"""Refused sign-ins told to the operator (bff/auth/diagnostics.py): one INFO line per refusal with
a reason code and expected vs received non-secret claims, never the token; rate-limited per reason;
`vluna_bff_auth_failures_total{reason}`. And the readiness call's httpx line at debug."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from vlunaai.testing import VlunaEmulator

from bff.auth.diagnostics import REASONS, AuthDiagnostics, LogBudget, shown
from bff.observability.logging import configure_logging
from bff.settings import SettingsError, validate_settings

from .support import AUDIENCE, ISSUER, FakeIssuer, Keys, base_settings, client_for, make_settings


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "bff.auth"]


def failures(metrics: str, reason: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(metrics):
        for s in family.samples:
            if s.name == "vluna_bff_auth_failures_total" and s.labels["reason"] == reason:
                return float(s.value)
    raise AssertionError(reason)


@pytest.mark.parametrize(
    ("token_kw", "reason", "message"),
    [
        ({"aud": "someone-else"}, "audience_mismatch", f"expected aud {AUDIENCE}; received aud someone-else"),
        (
            {"iss": ISSUER.rstrip("/")},
            "issuer_mismatch",
            f"expected iss '{ISSUER}'; received iss '{ISSUER.rstrip('/')}'",
        ),
        ({"exp_in": -3600}, "expired", "alg RS256; kid rsa-1"),
        ({"kid": "k9", "key": "other"}, "bad_signature", "alg RS256; kid k9"),
        ({"alg": "HS256"}, "algorithm_not_allowed", "expected alg ES256,RS256; received alg HS256"),
    ],
)
async def test_each_refusal_is_one_info_line_with_expected_and_received(
    keys: Keys, caplog: pytest.LogCaptureFixture, token_kw: dict[str, Any], reason: str, message: str
) -> None:
    caplog.set_level(logging.INFO, logger="bff.auth")
    if token_kw.get("key") == "other":
        token_kw = {**token_kw, "key": keys.rsa_other}
    token = keys.token(**token_kw)
    async with client_for(make_settings(keys), FakeIssuer()) as client:
        before = failures((await client.get("/metrics")).text, reason)
        r = await client.get("/vluna/token", headers=bearer(token))
        assert r.status_code == 401
        after = failures((await client.get("/metrics")).text, reason)
    (line,) = refusals(caplog)
    assert line.levelno == logging.INFO
    assert line.getMessage().startswith(f"sign-in refused: {reason} (bearer): ")
    assert message in line.getMessage()
    assert line.reason == reason and line.auth_method == "bearer"  # type: ignore[attr-defined]
    assert after == before + 1
    assert token not in caplog.text and token.split(".")[1] not in caplog.text


async def test_other_refusals_have_their_reason(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="bff.auth")
    async with client_for(make_settings(keys), FakeIssuer()) as client:
        assert (await client.get("/vluna/token")).status_code == 401
        assert (await client.get("/vluna/token", headers=bearer("a.b.c"))).status_code == 401
        r = await client.get("/vluna/token", headers={"Cookie": f"vluna_session={keys.token()}"})
        assert r.status_code == 403
    lines = refusals(caplog)
    assert [(r.reason, r.levelname) for r in lines] == [  # type: ignore[attr-defined]
        ("no_credentials", "DEBUG"),  # anonymous callers are no news
        ("malformed", "INFO"),
        ("csrf_header_missing", "INFO"),
    ]


async def test_a_flood_of_bad_tokens_is_counted_but_not_logged_line_by_line(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bff.auth")
    async with client_for(make_settings(keys), FakeIssuer()) as client:
        before = failures((await client.get("/metrics")).text, "bad_signature")
        for i in range(40):
            forged = keys.token(f"user-{i}", key=keys.rsa_other, kid=f"forged-{i}")
            r = await client.get("/vluna/token", headers=bearer(forged))
            assert r.status_code == 401
        after = failures((await client.get("/metrics")).text, "bad_signature")
    assert after - before == 40
    assert len(refusals(caplog)) == 5


def test_the_budget_reports_what_it_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    diagnostics = AuthDiagnostics(LogBudget(burst=2, interval=10.0, clock=lambda: now[0]))
    caplog.set_level(logging.INFO, logger="bff.auth")
    for _ in range(6):
        diagnostics.rejected("expired", "bearer", {"kid": "k1"})
    diagnostics.rejected("issuer_mismatch", "bearer", {})  # another reason has its own budget
    now[0] = 10.0
    diagnostics.rejected("expired", "bearer", {"kid": "k1"})
    messages = [r.getMessage() for r in refusals(caplog)]
    assert messages == [
        "sign-in refused: expired (bearer): kid k1",
        "sign-in refused: expired (bearer): kid k1",
        "sign-in refused: issuer_mismatch (bearer)",
        "sign-in refused: expired (bearer): kid k1; 4 similar rejection(s) not logged",
    ]


def test_received_values_are_cut_short_and_printable() -> None:
    assert shown("a\nb\x00c") == "a?b?c"
    assert shown("x" * 500) == "x" * 120 + "..."
    assert shown(["a", "b"]) == "a,b"
    assert len(REASONS) == len(set(REASONS))


async def test_json_log_line_carries_the_fields(keys: Keys) -> None:
    stream = io.StringIO()
    configure_logging("info", "json", stream)
    try:
        async with client_for(make_settings(keys), FakeIssuer()) as client:
            await client.get("/vluna/token", headers=bearer(keys.token(aud="other")))
    finally:
        configure_logging("info", "text")
    (record,) = [json.loads(x) for x in stream.getvalue().splitlines() if '"bff.auth"' in x]
    assert record["reason"] == "audience_mismatch" and record["auth_method"] == "bearer"
    assert record["expected_aud"] == AUDIENCE and record["received_aud"] == "other"
    assert record["level"] == "info"


async def test_the_readiness_call_logs_its_httpx_line_at_debug(keys: Keys) -> None:

    async with VlunaEmulator() as emulator:
        await readiness_then_issuance(keys, emulator)


async def readiness_then_issuance(keys: Keys, emulator: VlunaEmulator) -> None:
    from .observability_support import emulator_client, emulator_vluna

    stream = io.StringIO()
    configure_logging("info", "text", stream)
    try:
        settings = make_settings(keys, vluna=emulator_vluna(emulator))
        async with client_for(settings, None, vluna=emulator_client(emulator)) as client:
            assert (await client.get("/readyz")).status_code == 200
            assert (await client.get("/vluna/token", headers=bearer(keys.token()))).status_code == 200
    finally:
        configure_logging("info", "text")
    text = stream.getvalue()
    assert "feature-families" not in text  # the probe's call: debug, not shown at info
    assert "HTTP Request: POST" in text and "token/issue" in text  # an issuance still is


@pytest.mark.parametrize(
    ("jwt_settings", "field"),
    [
        ({"discovery": True, "jwks_url": "https://id.example.test/jwks"}, "auth.jwt.discovery"),
        ({"discovery": True, "issuer": None}, "auth.jwt.issuer"),
        ({"jwks_url": "id.example.test/jwks"}, "auth.jwt.jwks_url"),
    ],
)
def test_discovery_settings_are_checked(keys: Keys, jwt_settings: dict[str, Any], field: str) -> None:
    data = base_settings(keys)
    data["auth"]["jwt"].update(jwt_settings)
    with pytest.raises(SettingsError) as err:
        validate_settings(data)
    assert field in [f for f, _ in err.value.problems]
