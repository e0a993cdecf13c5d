"""Gate: leases (single use, expiry, cancel), quotas, rate limits, funding and budget denials."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from vlunaai import GatePreflightError, GatePreflightSuccess, RequestContext
from vlunaai.testing import VlunaEmulator, load_seed
from vlunaai.testing.seed import Feature, Quota, RateLimit

from tests.support.envelopes import data_of

from .support import Raw, assert_error

CTX = RequestContext(principal_id="org:gate", user_id="user:gate")


def gate_seed(balance: int = 5_000_000) -> Any:
    seed = load_seed()
    seed.new_account_balance_xusd = balance
    seed.features += [
        Feature(
            code="tiny.quota",
            family_code="llm.standard",
            name="Tiny",
            unit_price_xusd_per_1k=1000,
            quota=Quota(100, "day"),
        ),
        Feature(code="tiny.rate", family_code="llm.standard", name="Rate", rate_limit=RateLimit(2, 60)),
    ]
    return seed


@pytest.fixture
async def gate() -> AsyncIterator[tuple[VlunaEmulator, Raw]]:
    async with VlunaEmulator(seed=gate_seed()) as emu, httpx.AsyncClient(transport=emu.transport()) as client:
        yield emu, Raw(emu, client)


async def authorize(raw: Raw, feature: str = "openai.gpt-4o", **extra: Any) -> httpx.Response:
    return await raw.svc("POST", "/mgt/v1/gate/authorize", {"feature_code": feature, **extra})


async def commit(
    raw: Raw, lease: str, feature: str = "openai.gpt-4o", quantity: str = "1000", **kw: Any
) -> httpx.Response:
    return await raw.svc(
        "POST",
        "/mgt/v1/gate/commits",
        {"lease": lease, "feature_code": feature, "quantity_minor": quantity},
        **kw,
    )


async def test_authorize_commit_and_single_use_lease(raw: Raw) -> None:
    granted = await authorize(raw)
    assert granted.status_code == 200, granted.text
    data = granted.json()["data"]
    assert data["feature_family_code"] == "llm.standard" and data["lease"] == data["lease_token"]
    done = await commit(raw, data["lease"])
    assert done.status_code == 200 and done.json()["data"]["amount_xusd"] == "5"
    again = await commit(raw, data["lease"])
    body = assert_error(again, 409, "GATE.INVALID_LEASE", "lease_closed")
    assert body["hints"] == [{"type": "lease.closed_at_commit"}]


async def test_commit_retry_with_same_idempotency_key_replays(raw: Raw) -> None:
    lease = (await authorize(raw)).json()["data"]["lease"]
    first = await commit(raw, lease, idempotency_key="r" * 32)
    second = await commit(raw, lease, idempotency_key="r" * 32)
    assert first.content == second.content and second.headers["idempotent-replayed"] == "true"


async def test_expired_lease(raw: Raw) -> None:
    lease = (await authorize(raw)).json()["data"]["lease"]
    raw.emu.advance_time(raw.emu.settings.lease_ttl_seconds + 1)
    body = assert_error(await commit(raw, lease), 409, "GATE.INVALID_LEASE", "lease_expired")
    assert body["hints"] == [{"type": "lease.expired"}]


async def test_unknown_lease_feature_mismatch_and_other_account(raw: Raw) -> None:
    assert_error(await commit(raw, "lease_nope"), 409, "GATE.INVALID_LEASE", "unknown_lease")
    lease = (await authorize(raw)).json()["data"]["lease"]
    assert_error(
        await commit(raw, lease, feature="embeddings.small"),
        422,
        "VALIDATION.INVALID_INPUT",
        "feature_mismatch",
    )
    stolen = await commit(raw, lease, principal_id="org:thief")
    assert_error(stolen, 409, "GATE.INVALID_LEASE", "unknown_lease")
    assert (await commit(raw, lease)).status_code == 200


async def test_missing_runtime_bindings(raw: Raw) -> None:
    response = await raw.svc(
        "POST", "/mgt/v1/gate/authorize", {"feature_code": "openai.gpt-4o"}, user_id=None
    )
    assert_error(response, 401, "AUTH.MISSING_RUNTIME_BINDINGS")
    response = await raw.svc("GET", "/mgt/v1/wallet/balance", principal_id=None)
    assert_error(response, 401, "AUTH.MISSING_RUNTIME_BINDINGS")


async def test_unknown_feature_is_auto_registered(raw: Raw) -> None:
    granted = await authorize(raw, "brand.new", feature_family_code="llm.premium")
    assert granted.json()["data"]["feature_family_code"] == "llm.premium"
    assert (await commit(raw, granted.json()["data"]["lease"], feature="brand.new")).json()["data"][
        "amount_xusd"
    ] == "0"


async def test_quota_denial_429_with_hints(gate: tuple[VlunaEmulator, Raw]) -> None:
    emu, raw = gate
    first = await authorize(raw, "tiny.quota")
    assert first.json()["hints"] == [{"type": "quota.remaining", "max_quantity_minor": 100}]
    assert (
        await commit(raw, first.json()["data"]["lease"], feature="tiny.quota", quantity="100")
    ).status_code == 200
    denied = await authorize(raw, "tiny.quota")
    body = assert_error(denied, 429, "GATE.QUOTA_EXCEEDED", "quota_exceeded")
    assert body["hints"] == [{"type": "quota.remaining", "max_quantity_minor": 0}]
    assert body["meta"]["feature_code"] == "tiny.quota" and body["meta"]["resource_type"] == "quota"
    assert int(denied.headers["retry-after"]) > 0
    # The next window resets the quota.
    emu.advance_time(24 * 3600)
    assert (await authorize(raw, "tiny.quota")).status_code == 200


async def test_preflight_through_the_sdk(gate: tuple[VlunaEmulator, Raw]) -> None:
    emu, _raw = gate
    svc = emu.service_client()
    ok = await svc.gate_preflight(body={"feature_code": "tiny.quota"}, context=CTX)
    assert isinstance(ok, GatePreflightSuccess) and ok.data.feature_family_code == "llm.standard"
    lease = data_of(await svc.gate_authorize(body={"feature_code": "tiny.quota"}, context=CTX)).lease
    await svc.gate_commit(
        body={"lease": lease, "feature_code": "tiny.quota", "quantity_minor": "150"}, context=CTX
    )
    denied = await svc.gate_preflight(body={"feature_code": "tiny.quota"}, context=CTX)
    assert isinstance(denied, GatePreflightError)
    assert denied.status == 429 and denied.code == "GATE.QUOTA_EXCEEDED"
    unknown = await svc.gate_preflight(body={"feature_code": "never.seen"}, context=CTX)
    assert isinstance(unknown, GatePreflightError) and unknown.status == 404


async def test_rate_limit_429(gate: tuple[VlunaEmulator, Raw]) -> None:
    emu, raw = gate
    assert (await authorize(raw, "tiny.rate")).status_code == 200
    assert (await authorize(raw, "tiny.rate")).status_code == 200
    denied = await authorize(raw, "tiny.rate")
    body = assert_error(denied, 429, "GATE.RATE_LIMITED", "rate_limited")
    assert body["hints"][0]["type"] == "rate.limit" and "retry-after" in denied.headers
    emu.advance_time(61)
    assert (await authorize(raw, "tiny.rate")).status_code == 200


async def test_insufficient_funds_402_then_top_up() -> None:
    async with (
        VlunaEmulator(seed=gate_seed(balance=0)) as emu,
        httpx.AsyncClient(transport=emu.transport()) as client,
    ):
        raw = Raw(emu, client)
        denied = await authorize(raw)
        body = assert_error(denied, 402, "GATE.INSUFFICIENT_FUNDS", "insufficient_funds")
        assert body["hints"] == [{"type": "funding.xusd_shortfall", "shortfall_xusd": 1}]
        # Buying a credit pack funds the wallet.
        token = await raw.token("org:acme", "user:alice")
        checkout = {
            "items": [{"catalog_price_id": "price_credits_10", "quantity": 1}],
            "return_url": "https://a.example/",
        }
        created = await raw.bearer("POST", "/api/v1/checkouts", token["access_token"], checkout)
        emu.complete_checkout(created.json()["data"]["checkout_id"])
        assert emu.balance_xusd(token["billing_account_id"]) == 10_000_000
        assert (await authorize(raw)).status_code == 200


async def test_budget_exhaustion_402(raw: Raw) -> None:
    created = await raw.svc("POST", "/mgt/v1/budgets", {"budget": "team-a", "limit_xusd": "10"})
    assert created.status_code == 201, created.text
    lease = (await authorize(raw, budget="team-a")).json()["data"]["lease"]
    done = (await commit(raw, lease, quantity="2000")).json()["data"]
    assert done["budget_consumed_delta_xusd"] == "10" and done["budget_remaining_xusd"] == "0"
    body = assert_error(
        await authorize(raw, budget="team-a"), 402, "GATE.BUDGET_EXHAUSTED", "insufficient_budget"
    )
    assert body["hints"][0]["type"] == "budget.shortfall"
    budget_id = created.json()["data"]["budget_id"]
    closed = await raw.svc("POST", f"/mgt/v1/budgets/{budget_id}/close", {})
    assert closed.json()["data"]["consumed_xusd"] == "10"


async def test_cancel_releases_the_lease(raw: Raw) -> None:
    lease = (await authorize(raw)).json()["data"]["lease"]
    cancelled = await raw.svc("POST", "/mgt/v1/gate/cancel", {"lease_token": lease})
    assert cancelled.json()["data"]["cancelled"] is True
    assert_error(await commit(raw, lease), 409, "GATE.INVALID_LEASE", "lease_closed")


async def test_batch_commit_reports_each_item(raw: Raw) -> None:
    lease = (await authorize(raw)).json()["data"]["lease"]
    items = [
        {"lease": lease, "feature_code": "openai.gpt-4o", "quantity_minor": "10", "idempotency_key": "1"},
        {"lease": lease, "feature_code": "openai.gpt-4o", "quantity_minor": "10", "idempotency_key": "2"},
    ]
    data = (await raw.svc("POST", "/mgt/v1/gate/commits/batch", {"items": items})).json()["data"]
    assert data["committed_count"] == 1 and data["failed_count"] == 1
    assert data["items"][1]["code"] == "GATE.INVALID_LEASE"


async def test_feature_limits_show_usage(gate: tuple[VlunaEmulator, Raw]) -> None:
    emu, raw = gate
    lease = (await authorize(raw, "tiny.quota")).json()["data"]["lease"]
    await commit(raw, lease, feature="tiny.quota", quantity="40")
    await authorize(raw, "tiny.rate")
    svc = emu.service_client()
    limits = await svc.gate_list_feature_limits(query={"feature_family_code": "llm.standard"}, context=CTX)
    by_code = {item.feature_code: item for item in limits.data or []}
    assert (by_code["tiny.quota"].quotas or [])[0].used_minor == "0"  # CTX is another principal
    mine = await raw.svc("GET", "/mgt/v1/gate/limits?feature_code=tiny.quota")
    quota = mine.json()["data"][0]["quotas"][0]
    assert (quota["limit_minor"], quota["used_minor"]) == ("100", "40")
    rate = (await raw.svc("GET", "/mgt/v1/gate/limits?feature_code=tiny.rate")).json()["data"][0]["rates"][0]
    assert (rate["limit_minor"], rate["used_minor"]) == ("2", "1")
