"""Error mapping: result mode returns an `ok=False` envelope, raise mode raises the typed error."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from vlunaai import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    BearerClient,
    ConflictError,
    GatePreflightError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RequestContext,
    ServiceClient,
    UnprocessableEntityError,
    VlunaAIError,
)

from tests.support.envelopes import extra

from .support import ACCESS_TOKEN, SERVICE_BASE, ScriptedTransport, error

ServiceFactory = Callable[..., ServiceClient]

STATUS_CLASSES: list[tuple[int, str, type[APIStatusError]]] = [
    (400, "VALIDATION.INVALID_INPUT", BadRequestError),
    (401, "AUTH.INVALID_SERVICE_SIGNATURE", AuthenticationError),
    (403, "AUTH.INSUFFICIENT_SCOPE", PermissionDeniedError),
    (404, "RESOURCE.NOT_FOUND", NotFoundError),
    (409, "WRITE.INVALID_PAYLOAD", ConflictError),
    (422, "VALIDATION.INVALID_INPUT", UnprocessableEntityError),
    (429, "RATE.LIMITED", RateLimitError),
    (500, "SERVER.UNEXPECTED", InternalServerError),
    (502, "SERVER.UPSTREAM", InternalServerError),
    (503, "SERVER.UNAVAILABLE", InternalServerError),
]


def _answer(status: int, code: str) -> httpx.Response:
    return error(
        status,
        code,
        f"failed with {status}",
        headers={"x-request-id": f"req-{status}"},
        hints=[{"type": "funding.xusd_shortfall", "shortfall_xusd": 1}],
        trace_id=f"trace-{status}",
    )


@pytest.mark.parametrize(("status", "code", "cls"), STATUS_CLASSES)
async def test_result_mode_returns_an_error_envelope(
    service: ServiceFactory, status: int, code: str, cls: type[APIStatusError]
) -> None:
    transport = ScriptedTransport(_answer(status, code))
    client = service(transport, max_retries=0)
    # A model whose `data` is required on success: an error answer must still parse.
    result = await client.get_meter("m-1", context=RequestContext(billing_account_id="ba"))
    assert result.ok is False
    assert result.data is None
    assert result.code == code
    assert result.message == f"failed with {status}"
    assert extra(result, "status") == status
    assert result.request_id == f"req-{status}"
    assert result.trace_id == f"trace-{status}"


@pytest.mark.parametrize(("status", "code", "cls"), STATUS_CLASSES)
async def test_raise_mode_raises_the_typed_error(
    service: ServiceFactory, status: int, code: str, cls: type[APIStatusError]
) -> None:
    transport = ScriptedTransport(_answer(status, code))
    client = service(transport, error_mode="raise", max_retries=0)
    with pytest.raises(cls) as info:
        await client.list_meters(query={"limit": 5, "principal": "secret-ish"})
    err = info.value
    assert type(err) is cls
    assert isinstance(err, APIStatusError)
    assert isinstance(err, VlunaAIError)
    assert err.message == f"failed with {status}"
    assert err.code == code
    assert err.status == status
    assert err.operation == "list_meters"
    assert err.trace_id == f"trace-{status}"
    assert err.request_id == f"req-{status}"
    assert err.hints == [{"type": "funding.xusd_shortfall", "shortfall_xusd": 1}]
    assert err.meta == {"status": status}
    assert err.details is not None
    assert err.details["method"] == "GET"
    assert err.details["path"] == "/mgt/v1/meters"
    assert err.details["operation"] == err.details["api_name"] == "list_meters"
    assert err.details["url"] == f"{SERVICE_BASE}/meters"  # no query: it may carry identifiers
    assert err.details["body"]["code"] == code
    text = str(err)
    assert f"status={status}" in text and code in text and "list_meters" in text


async def test_unlisted_status_maps_to_the_status_base_class(service: ServiceFactory) -> None:
    client = service(ScriptedTransport(error(418, "TEAPOT")), error_mode="raise")
    with pytest.raises(APIStatusError) as info:
        await client.list_meters()
    assert type(info.value) is APIStatusError
    assert info.value.status == 418


@pytest.mark.parametrize("mode", ["result", "raise"])
async def test_non_json_error_body(service: ServiceFactory, mode: str) -> None:
    html = httpx.Response(502, text="<html>Bad Gateway</html>", headers={"content-type": "text/html"})
    client = service(ScriptedTransport(html), error_mode=mode, max_retries=0)
    if mode == "result":
        result = await client.get_meter("m")
        assert result.ok is False
        assert extra(result, "status") == 502
        assert "Bad Gateway" in (result.message or "")
    else:
        with pytest.raises(InternalServerError) as info:
            await client.get_meter("m")
        assert info.value.status == 502
        assert info.value.code is None
        assert info.value.details is not None and "Bad Gateway" in info.value.details["body"]


async def test_empty_error_body(service: ServiceFactory) -> None:
    client = service(ScriptedTransport(httpx.Response(404)), max_retries=0)
    result = await client.get_meter("m")
    assert result.ok is False
    assert extra(result, "status") == 404


async def test_result_mode_never_raises_validation_error_on_odd_error_bodies(service: ServiceFactory) -> None:
    odd_bodies: list[Any] = [
        {"ok": False},
        {"code": 5, "message": ["not", "a", "string"], "meta": "x", "hints": "y"},
        [1, 2, 3],
        "plain",
        None,
    ]
    for body in odd_bodies:
        answer = httpx.Response(400, json=body) if body is not None else httpx.Response(400, content=b"null")
        client = service(ScriptedTransport(answer), max_retries=0)
        try:
            result = await client.get_meter("m")
        except ValidationError as exc:  # pragma: no cover - the failure this test guards against
            pytest.fail(f"ValidationError for {body!r}: {exc}")
        assert result.ok is False
        assert extra(result, "status") == 400


async def test_preflight_auth_failure_raises_in_raise_mode(service: ServiceFactory) -> None:
    # Denials come back typed; an auth failure on the same call is a real error.
    answer = _answer(401, "AUTH.INVALID_SERVICE_SIGNATURE")
    client = service(ScriptedTransport(answer), error_mode="raise")
    with pytest.raises(AuthenticationError) as info:
        await client.gate_preflight(body={"feature_code": "f"})
    assert info.value.operation == "gate_preflight"
    assert info.value.request_id == "req-401"
    assert info.value.details is not None
    assert info.value.details["path"] == "/mgt/v1/gate/preflight"
    assert info.value.details["url"] == f"{SERVICE_BASE}/gate/preflight"

    result_client = service(ScriptedTransport(answer))
    result = await result_client.gate_preflight(body={"feature_code": "f"})
    assert isinstance(result, GatePreflightError)
    assert result.status == 401


async def test_bearer_raise_mode(bearer: Callable[..., BearerClient]) -> None:
    client = bearer(ScriptedTransport(_answer(401, "AUTH.UNAUTHORIZED")), error_mode="raise")
    with pytest.raises(AuthenticationError) as info:
        await client.list_catalog_products(context=RequestContext(access_token=ACCESS_TOKEN))
    assert info.value.details is not None
    assert info.value.details["path"] == "/api/v1/catalog/products"
    assert ACCESS_TOKEN not in repr(info.value.__dict__)


def test_error_mode_is_validated() -> None:
    from .support import make_service

    with pytest.raises(ValueError, match="error_mode"):
        make_service(ScriptedTransport(), error_mode="silent")


# -- the error objects themselves ---------------------------------------------------------------

ALL_ERROR_CLASSES = [
    VlunaAIError,
    APIConnectionError,
    APITimeoutError,
    APIStatusError,
    BadRequestError,
    AuthenticationError,
    PermissionDeniedError,
    NotFoundError,
    ConflictError,
    UnprocessableEntityError,
    RateLimitError,
    InternalServerError,
]


@pytest.mark.parametrize("cls", ALL_ERROR_CLASSES, ids=lambda c: c.__name__)
def test_errors_pickle_round_trip(cls: type[VlunaAIError]) -> None:
    err = cls(
        "boom",
        "X.Y",
        500,
        "list_meters",
        {"path": "/mgt/v1/meters", "body": {"ok": False}},
        [{"type": "hint"}],
        {"status": 500},
        "trace-1",
        request_id="req-1",
    )
    clone = pickle.loads(pickle.dumps(err))
    assert type(clone) is cls
    assert clone == err
    assert clone.args == err.args == ("boom",)
    assert (clone.message, clone.code, clone.status, clone.operation) == ("boom", "X.Y", 500, "list_meters")
    assert clone.details == {"path": "/mgt/v1/meters", "body": {"ok": False}}
    assert clone.hints == [{"type": "hint"}]
    assert clone.meta == {"status": 500}
    assert clone.trace_id == "trace-1"
    assert clone.request_id == "req-1"
    assert str(clone) == str(err)
    assert clone != cls("other")


def test_published_keyword_construction_still_works() -> None:
    err = VlunaAIError(message="Request failed", code="A.B", status=400, operation="op", trace_id="t")
    assert (err.message, err.code, err.status, err.operation, err.trace_id) == (
        "Request failed",
        "A.B",
        400,
        "op",
        "t",
    )
    assert str(err) == "Request failed (status=400) code=A.B operation=op"
    assert VlunaAIError("m") == VlunaAIError("m")
    assert VlunaAIError("m") != APIStatusError("m")


def test_hierarchy() -> None:
    assert issubclass(APITimeoutError, APIConnectionError)
    for cls in ALL_ERROR_CLASSES:
        assert issubclass(cls, VlunaAIError)
        assert issubclass(cls, Exception)
    for _, _, cls in STATUS_CLASSES:
        assert issubclass(cls, APIStatusError)


@pytest.mark.parametrize("flavor", ["0.3.2", "oss"])
async def test_missing_runtime_bindings_says_which_context_field_to_set(flavor: str) -> None:
    # A gate call with a principal but no user id, as the published quickstart makes it: refused
    # by both flavours (and by the open-source server, recorded).
    from vlunaai.testing import VlunaEmulator

    async with VlunaEmulator(flavor=flavor) as emu:
        raising = emu.service_client(error_mode="raise", max_retries=0)
        with pytest.raises(AuthenticationError) as caught:
            await raising.gate_authorize(
                body={"feature_code": "openai.gpt-4o"}, context=RequestContext(principal_id="org:1")
            )
        assert caught.value.code == "AUTH.MISSING_RUNTIME_BINDINGS"
        assert "RequestContext(principal_id=..., user_id=...)" in str(caught.value)
        result = await emu.service_client(max_retries=0).gate_authorize(
            body={"feature_code": "openai.gpt-4o"}, context=RequestContext(principal_id="org:1")
        )
        assert not result.ok
        assert result.code == "AUTH.MISSING_RUNTIME_BINDINGS"
        assert "user_id" in (result.message or "")
