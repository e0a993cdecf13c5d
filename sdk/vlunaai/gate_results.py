"""Gate preflight answers: a typed success or a typed denial, never an exception for a denial."""

from __future__ import annotations

from typing import Any, Union

from ._models import parse_response
from .generated import gate_models as gate


class GatePreflightSuccess(gate.PreflightEnvelope):
    status: int = 200


class GatePreflightError(gate.PreflightErrorEnvelope):
    status: int = 0


GatePreflightResult = Union[GatePreflightSuccess, GatePreflightError]  # noqa: UP007 (public alias)


def parse_gate_preflight_result(status: int, body: Any) -> GatePreflightResult:
    """Build the result from the HTTP status and body; lenient, so it never raises on shape."""
    payload: dict[str, Any] = dict(body) if isinstance(body, dict) else {"body": body}
    payload["status"] = status
    if 200 <= status < 300:
        return parse_response(GatePreflightSuccess, payload)
    payload["ok"] = False
    return parse_response(GatePreflightError, payload)
