"""What both clients share: the HTTP core, the call path of an operation, and their lifecycle."""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from ._http import ErrorMode, HttpCore, RawResponse, encode_path, status_error
from ._models import parse_response
from ._operation import OperationSpec
from .config import (
    DEFAULT_CONNECT_TIMEOUT_SECONDS,
    DEFAULT_TIMEOUT_SECONDS,
    RequestContext,
    VlunaAIConfig,
    user_agent_for,
)
from .errors import VlunaAIError, explain
from .gate_results import GatePreflightResult, parse_gate_preflight_result
from .signing import ServiceKeyAuth

M = TypeVar("M", bound=BaseModel)
Self = TypeVar("Self", bound="BaseClient")

# Statuses at which a preflight answer is a business decision: returned, not raised.
PREFLIGHT_DENIAL_STATUSES = frozenset({402, 403, 409, 429})


def serialize_body(body: Any) -> Any:
    """A request model is sent as JSON by alias without unset optionals; a dict as given."""
    if isinstance(body, BaseModel):
        return body.model_dump(mode="json", by_alias=True, exclude_none=True)
    if isinstance(body, Mapping):
        return dict(body)
    raise TypeError(f"body must be a request model or a dict, not {type(body).__name__}")


def build_timeout(config: VlunaAIConfig) -> tuple[httpx.Timeout, float]:
    """httpx per-phase timeouts plus the whole-attempt bound, from the published config fields."""

    def positive(value: float | None) -> float | None:
        return value if value is not None and value > 0 else None

    total = positive(config.timeout_seconds) or DEFAULT_TIMEOUT_SECONDS
    timeout = httpx.Timeout(
        total,
        connect=positive(config.connect_timeout_seconds) or min(DEFAULT_CONNECT_TIMEOUT_SECONDS, total),
        read=positive(config.read_timeout_seconds) or total,
        write=positive(config.write_timeout_seconds) or total,
        pool=positive(config.pool_timeout_seconds) or total,
    )
    return timeout, total


class BaseClient:
    _requires_access_token = False

    def __init__(
        self,
        *,
        config: VlunaAIConfig,
        default_base_url: str,
        error_mode: ErrorMode,
        signer: ServiceKeyAuth | None,
        max_retries: int,
        http_client: httpx.AsyncClient | None,
        transport: httpx.AsyncBaseTransport | None,
        limits: httpx.Limits | None,
        default_headers: Mapping[str, str] | None,
    ) -> None:
        if not config.realm_id:
            raise ValueError("VlunaAIConfig.realm_id is required")
        timeout, attempt_timeout = build_timeout(config)
        self._http = HttpCore(
            base_url=config.base_url or default_base_url,
            realm_id=config.realm_id,
            user_agent=user_agent_for(config.user_agent),
            timeout=timeout,
            attempt_timeout_seconds=attempt_timeout,
            max_retries=max_retries,
            error_mode=error_mode,
            signer=signer,
            http_client=http_client,
            transport=transport,
            limits=limits,
            default_headers=default_headers,
        )

    async def close(self) -> None:
        """Release pooled connections (not those of an injected httpx client, which you own)."""
        await self._http.close()

    async def __aenter__(self: Self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _send(
        self,
        op: OperationSpec,
        *,
        path_params: Mapping[str, str] | None,
        query: Mapping[str, Any] | None,
        body: Any,
        context: RequestContext | None,
        raise_for_status: bool | None = None,
    ) -> RawResponse:
        if self._requires_access_token and (context is None or not context.access_token):
            raise VlunaAIError("Missing access token for bearer request")
        path = encode_path(op.path, path_params) if path_params else op.path
        return await self._http.send(
            operation=op.name,
            method=op.method,
            path=path,
            query=query,
            body=None if body is None else serialize_body(body),
            context=context,
            decision=op.is_decision,
            raise_for_status=raise_for_status,
        )

    async def _call(
        self,
        op: OperationSpec,
        model: type[M],
        *,
        path_params: Mapping[str, str] | None = None,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        context: RequestContext | None = None,
    ) -> M:
        raw = await self._send(op, path_params=path_params, query=query, body=body, context=context)
        if raw.is_success:
            return parse_response(model, raw.body)
        return parse_response(model, error_envelope(raw))

    async def _call_preflight(
        self,
        op: OperationSpec,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        context: RequestContext | None = None,
    ) -> GatePreflightResult:
        # A denial is an answer: even in raise mode it comes back typed instead of raising, so
        # the error decision is taken here rather than in the HTTP core.
        raw = await self._send(
            op, path_params=None, query=query, body=body, context=context, raise_for_status=False
        )
        if self._http.error_mode == "raise" and not raw.is_success and not _is_denial(raw):
            raise status_error(op.name, op.method, self._http._build_url(op.path, None), raw)
        return parse_gate_preflight_result(raw.status, raw.body)


def _is_denial(raw: RawResponse) -> bool:
    """A business denial (quota, funding, entitlement), as opposed to an auth or input error."""
    code = raw.body.get("code") if isinstance(raw.body, dict) else None
    auth_failure = isinstance(code, str) and code.startswith("AUTH.")
    return raw.status in PREFLIGHT_DENIAL_STATUSES and not auth_failure


def error_envelope(raw: RawResponse) -> dict[str, Any]:
    """An error answer as an envelope with `ok=False`, its HTTP status and request id attached."""
    if isinstance(raw.body, dict):
        data = dict(raw.body)
        code, message = data.get("code"), data.get("message")
        if isinstance(code, str) and isinstance(message, str):
            data["message"] = explain(code, message)
    else:
        text = raw.body if isinstance(raw.body, str) else json.dumps(raw.body)
        data = {"code": None, "message": text}
    data["ok"] = False
    data["status"] = raw.status
    if raw.request_id:
        data["request_id"] = raw.request_id
    return data
