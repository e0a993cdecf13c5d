"""schemathesis against the service's OpenAPI document, on a running `vluna-bff serve`: no 5xx,
and every answer conforms to the document.

The service does not serve a document itself (`openapi_config=None` in bff/app.py), so it is
derived here from the app's own route handlers (Litestar's generator) and completed with the
contract bff/README.md states: the token body, `{"error", "message"}` errors with their statuses,
204 on sign-out, what the proxy passes through. A change to a handler's parameters changes the
document; a change to the contract makes this test fail.
"""

from __future__ import annotations

import copy
from typing import Any

import schemathesis
from conftest import Target
from hypothesis import HealthCheck, settings
from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from bff.proxy.routes import proxy_routes
from bff.routes.token import token_routes

MAX_EXAMPLES = 50

ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string", "minLength": 1}, "message": {"type": "string"}},
}
TOKEN = {
    "type": "object",
    "required": [
        "access_token",
        "token_type",
        "expires_in",
        "expires_at",
        "billing_account_id",
        "billing_user_id",
        "scopes",
    ],
    "properties": {
        "access_token": {"type": "string", "minLength": 1},
        "token_type": {"type": "string"},
        "expires_in": {"type": "integer", "minimum": 0},
        "expires_at": {"type": "string", "pattern": r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"},
        "billing_account_id": {"type": ["string", "null"]},
        "billing_user_id": {"type": ["string", "null"]},
        "scopes": {"type": "array", "items": {"type": "string", "enum": ["checkout", "portal"]}},
    },
}
# What Vluna answers passes through the proxy as is (its own envelope), so 4xx bodies there are
# either the service's errors or Vluna's.
ANY_OBJECT = {"type": "object"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _json(ERROR, "error") for s in statuses}


def service_document() -> dict[str, Any]:
    app = Litestar(
        route_handlers=[*token_routes(), *proxy_routes()],
        openapi_config=OpenAPIConfig(title="vluna-bff", version="0.1.0"),
    )
    doc = copy.deepcopy(app.openapi_schema.to_schema())
    paths = doc["paths"]
    token = paths["/vluna/token"]
    token["get"]["responses"] = {
        "200": _json(TOKEN, "the caller's platform token"),
        **_errors(400, 401, 403, 429, 502, 503),
    }
    # 400: ambiguous credentials; 503: the sign-out could not be recorded (Redis away).
    token["delete"]["responses"] = {"204": {"description": "signed out"}, **_errors(400, 401, 403, 503)}
    for op in paths["/vluna/api/v1/{sub}"].values():
        op["responses"] = {
            "200": _json(ANY_OBJECT, "Vluna's answer"),
            "201": _json(ANY_OBJECT, "Vluna's answer"),
            "304": {"description": "not modified (public, cached calls)"},
            **_errors(401, 403, 405, 413, 414, 415, 429, 502, 503, 504),
            **{
                str(s): _json({"anyOf": [ERROR, ANY_OBJECT]}, "refused, or Vluna's answer")
                for s in (400, 402, 404, 409, 422)
            },
        }
    return doc


schema = schemathesis.openapi.from_dict(service_document())


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_conforms(case: Any, target: Target, schemathesis_auth: dict[str, str]) -> None:
    response = case.call(base_url=target.bff.url, headers=schemathesis_auth, timeout=15)
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
