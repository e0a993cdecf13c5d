"""Tests of the generated models and of lenient response parsing."""

from __future__ import annotations

import datetime as dt
import enum
import json
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from uuid import UUID

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, RootModel, TypeAdapter, ValidationError
from vlunaai._models import VlunaModel, VlunaRootModel, parse_response
from vlunaai.generated import admin_models, billing_mgt_models, billing_models, gate_models
from vlunaai.generated import billing_models as billing
from vlunaai.generated import gate_models as gate

from tests.support.envelopes import extra

SCHEMAS = Path(__file__).resolve().parents[2] / "spec" / "vluna-api"
MODULES = {
    "admin": admin_models,
    "billing": billing_models,
    "billing_mgt": billing_mgt_models,
    "gate": gate_models,
}
NOW = "2026-11-24T19:20:31Z"


def _defs(release_dir: Path, module: str) -> list[str]:
    return sorted(json.loads((release_dir / f"schemas-{module}.json").read_text())["$defs"])


# -- every model of both generations ------------------------------------------------------------


@pytest.mark.parametrize("release", ["", "v0.1.2"])
@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_schema_model_exists(release: str, module: str) -> None:
    mod = MODULES[module]
    missing = [name for name in _defs(SCHEMAS / release, module) if not hasattr(mod, name)]
    assert missing == []
    for name in _defs(SCHEMAS / release, module):
        cls = getattr(mod, name)
        assert issubclass(cls, (VlunaModel, VlunaRootModel, enum.Enum)), name


def test_names_programs_import() -> None:
    for cls in (
        billing.WalletConsumeRequest,
        gate.CancelRequest,
        gate.SeatActionRequest,
        billing.CreateCheckoutSessionRequest,
        billing.CheckoutEnvelope,
        gate.Source,
        gate.Source1,
    ):
        assert isinstance(cls, type)
    assert gate.Type("rate.limit") is gate.Type.rate_limit


# -- minimal valid payloads ------------------------------------------------------------------

_STR_CANDIDATES = ["1", "x", "abc", "a1", NOW, "2026-11-24", "USD", "usd", "a.b", "a:b", "pk-1"]


def _minimal(tp: Any) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is typing.Annotated:
        adapter: TypeAdapter[Any] = TypeAdapter(tp)
        for candidate in [_minimal(args[0]), *_STR_CANDIDATES, [], [_minimal_item(args[0])]]:
            try:
                adapter.validate_python(candidate)
            except ValidationError:
                continue
            return candidate
        raise AssertionError(f"no candidate for {tp}")
    if origin in (Union, types.UnionType):
        return None if type(None) in args else _minimal(args[0])
    if origin is Literal:
        return args[0]
    if origin is list:
        return []
    if origin is dict:
        return {}
    if isinstance(tp, type):
        if issubclass(tp, RootModel):
            return _minimal(tp.model_fields["root"].annotation)
        if issubclass(tp, BaseModel):
            return _minimal_model(tp)
        if issubclass(tp, enum.Enum):
            return next(iter(tp)).value
        simple = {str: "x", int: 1, float: 1.0, bool: True, dt.datetime: NOW, dt.date: "2026-11-24"}
        if tp in simple:
            return simple[tp]
        if tp is UUID:
            return "00000000-0000-0000-0000-000000000001"
    return {}


def _minimal_item(tp: Any) -> Any:
    args = get_args(tp)
    return _minimal(args[0]) if args else "x"


def _minimal_model(model: type[BaseModel]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if field.is_required():
            annotated = (field.annotation, *field.metadata)
            tp = Annotated[annotated] if field.metadata else field.annotation
            out[field.alias or name] = _minimal(tp)
    for a, _b in getattr(model, "__vluna_require_one_of__", ()):
        out[a] = _minimal(_non_null(model.model_fields[a].annotation))
    return out


def _non_null(tp: Any) -> Any:
    return next(a for a in get_args(tp) if a is not type(None))


def _envelopes() -> list[tuple[str, type[VlunaModel]]]:
    found = []
    for module, mod in MODULES.items():
        for name in mod.__all__:
            cls = getattr(mod, name)
            if name.endswith("Envelope") and issubclass(cls, VlunaModel) and "data" in cls.model_fields:
                found.append((f"{module}.{name}", cls))
    return found


ENVELOPES = _envelopes()


@pytest.mark.parametrize(("name", "model"), ENVELOPES, ids=[n for n, _ in ENVELOPES])
def test_envelope_parses_minimal_success(name: str, model: type[VlunaModel]) -> None:
    data = _minimal(model.model_fields["data"].annotation)
    if data is None:  # data is optional: give the non-null member
        data = _minimal(_non_null(model.model_fields["data"].annotation))
    envelope = {"ok": True, "code": "OK", "data": data}
    strict = model.model_validate(envelope, context={"vluna_response": True})
    dumped = strict.model_dump(by_alias=True)
    assert dumped["ok"] is True
    assert dumped["code"] == "OK"
    assert parse_response(model, envelope) == strict


# -- lenient parsing never raises --------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=12,
)


def _shaped(model: type[BaseModel], depth: int = 0) -> st.SearchStrategy[Any]:
    """JSON objects that use the model's own keys, with arbitrary (sometimes well-typed) values."""
    keys = [f.alias or n for n, f in model.model_fields.items()] + ["extra_key"]
    values: st.SearchStrategy[Any] = _json
    if depth < 2:
        nested = [
            _shaped(a, depth + 1)
            for f in model.model_fields.values()
            for a in get_args(f.annotation)
            if isinstance(a, type) and issubclass(a, VlunaModel)
        ]
        if nested:
            values = values | st.one_of(*nested)
    return st.dictionaries(st.sampled_from(keys), values | st.just(NOW), max_size=len(keys))


FUZZED = [
    gate.AuthorizeEnvelope,
    gate.CommitEnvelope,
    billing.WalletBalanceWithBreakdownEnvelope,
    billing.InvoiceListEnvelope,
    billing_mgt_models.ContractTermEnvelope,
    admin_models.GrantCampaignEnvelope,
]


@pytest.mark.parametrize("model", FUZZED, ids=[m.__name__ for m in FUZZED])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_lenient_parsing_never_raises(model: type[VlunaModel], data: st.DataObject) -> None:
    payload = data.draw(_json | _shaped(model))
    parsed = parse_response(model, payload)
    assert isinstance(parsed, model)
    if not isinstance(payload, dict):
        assert all(getattr(parsed, name) is None for name in model.model_fields)
    else:
        for key, value in payload.items():
            if key not in {f.alias or n for n, f in model.model_fields.items()}:
                assert parsed.model_extra is not None
                assert parsed.model_extra[key] == value


@settings(max_examples=40, deadline=None)
@given(payload=_json)
def test_lenient_parsing_root_models(payload: Any) -> None:
    for model in (gate.PricingSnapshot, gate.IngestCommit, billing_mgt_models.ContractTermUpsertRequest):
        assert isinstance(parse_response(model, payload), model)


# -- lease / lease_token -----------------------------------------------------------------------


def _authorize(lease_key: str, **overrides: Any) -> dict[str, Any]:
    data = {
        lease_key: "lease-1",
        "feature_code": "chat",
        "feature_family_code": "llm",
        "window_start": NOW,
        "window_end": NOW,
        **overrides,
    }
    return {"ok": True, "code": "OK", "data": data}


@pytest.mark.parametrize("lease_key", ["lease", "lease_token"])
def test_lease_synonym_strict(lease_key: str) -> None:
    env = parse_response(gate.AuthorizeEnvelope, _authorize(lease_key))
    gate.AuthorizeEnvelope.model_validate(_authorize(lease_key))  # it is the strict path
    assert env.data is not None
    assert env.data.lease == "lease-1"
    assert env.data.lease_token == "lease-1"


@pytest.mark.parametrize("lease_key", ["lease", "lease_token"])
def test_lease_synonym_lenient(lease_key: str) -> None:
    payload = _authorize(lease_key, window_start="not a date", feature_code=None)
    with pytest.raises(ValidationError):
        gate.AuthorizeEnvelope.model_validate(payload)
    env = parse_response(gate.AuthorizeEnvelope, payload)
    assert env.data is not None
    assert env.data.lease == "lease-1"
    assert env.data.lease_token == "lease-1"
    assert env.data.window_start == "not a date"
    assert env.data.window_end == dt.datetime(2026, 11, 24, 19, 20, 31, tzinfo=dt.timezone.utc)


# -- request models ------------------------------------------------------------------------


def test_request_rejects_pattern_violation() -> None:
    with pytest.raises(ValidationError):
        gate.SingleCommit(lease="bad\x00lease", quantity_minor="1", feature_code="chat")
    with pytest.raises(ValidationError):
        billing.GrantBinding(grant_program_code="p", amount_xusd="-5")
    with pytest.raises(ValidationError):
        gate.SingleCommit.model_validate({"lease": "l", "feature_code": "chat"})  # quantity_minor missing


@pytest.mark.parametrize("lease_key", ["lease", "lease_token"])
def test_single_commit_accepts_either_lease(lease_key: str) -> None:
    commit = gate.SingleCommit.model_validate(
        {lease_key: "lease-1", "quantity_minor": "1", "feature_code": "f"}
    )
    assert getattr(commit, lease_key) == "lease-1"
    # A request keeps only what the caller gave: the wire matches the published client's.
    other = "lease_token" if lease_key == "lease" else "lease"
    assert getattr(commit, other) is None


def test_single_commit_rejects_neither_lease() -> None:
    with pytest.raises(ValidationError, match="lease"):
        gate.SingleCommit(quantity_minor="1", feature_code="chat")
    with pytest.raises(ValidationError, match="lease"):
        gate.CancelRequest()


def test_response_missing_required_field_keeps_extra() -> None:
    payload = _authorize("lease", brand_new="kept")
    del payload["data"]["feature_code"]
    payload["server_version"] = "9"
    env = parse_response(gate.AuthorizeEnvelope, payload)
    assert env.data is not None
    assert env.data.feature_code is None
    assert env.data.brand_new == "kept"
    assert env.server_version == "9"
    assert env.data.window_start == dt.datetime(2026, 11, 24, 19, 20, 31, tzinfo=dt.timezone.utc)


def test_nested_models_are_built_leniently() -> None:
    payload = {
        "ok": True,
        "data": {"data": [{"status": "brand-new-status", "x": 1}]},
        "hints": [{"type": "new"}],
    }
    env = parse_response(billing.InvoiceListEnvelope, payload)
    assert env.data is not None
    assert isinstance(env.data, billing.InvoiceList)
    assert extra(env, "hints") is not None


def test_request_serializes_json_names() -> None:
    # (the pydantic plugin knows the field by its alias "from" only; the model takes from_ too)
    time_range = gate.GateReportTimeRange(  # type: ignore[call-arg]
        from_=dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc), to=NOW, granularity="day"
    )
    dumped = time_range.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert dumped == {"from": "2026-01-01T00:00:00Z", "to": "2026-11-24T19:20:31Z", "granularity": "day"}
    assert gate.GateReportTimeRange.model_validate(dumped).from_ == time_range.from_
    commit = gate.SingleCommit(lease_token="lease-1", quantity_minor="5", feature_code="chat")
    assert commit.model_dump(mode="json", by_alias=True, exclude_none=True) == {
        "lease_token": "lease-1",
        "quantity_minor": "5",
        "feature_code": "chat",
    }


def test_legacy_shape_of_union_models() -> None:
    req = billing_mgt_models.ContractTermUpsertRequest(
        term_key="k", kind="pricing", value_json={"a": 1}, effective_at=NOW
    )
    assert req.term_key == "k"
    snapshot = gate.PricingSnapshot.model_validate(
        {"computed_at": NOW, "fingerprint": "f", "unit": "token", "unit_price_xusd": "1"}
    )
    assert snapshot.unit_price_xusd == "1"
