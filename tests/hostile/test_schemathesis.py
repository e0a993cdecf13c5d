"""schemathesis against the OpenAPI document the service serves itself (`openapi.path`, Litestar's
document completed by bff/openapi.py), on a running `vluna-bff serve`: no 5xx, and every answer
conforms to the document (status, content type, body schema). The document is the contract:
a handler that answers something it does not declare fails here."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from .support import Target

MAX_EXAMPLES = 50
DOCUMENT = "/vluna/openapi/openapi.json"


@pytest.fixture(scope="module")
def served_schema(target: Target) -> Any:
    return schemathesis.openapi.from_url(target.bff.url + DOCUMENT)


def test_the_served_document_describes_the_api(target: Target) -> None:
    doc = httpx.get(target.bff.url + DOCUMENT, timeout=10).json()
    assert doc["openapi"].startswith("3.")
    token = doc["paths"]["/vluna/token"]
    assert set(token) == {"get", "delete"}
    assert token["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/TokenBody"
    )
    assert {"bearerAuth", "sessionCookie", "csrfHeader"} <= set(doc["components"]["securitySchemes"])
    proxied = {p for p in doc["paths"] if p.startswith("/vluna/api/v1/")}
    assert "/vluna/api/v1/checkouts/{checkout_id}" in proxied and len(proxied) >= 9
    assert not any("{sub}" in p for p in doc["paths"]), "the proxy's catch-all leaked into the document"


def test_api_conforms(served_schema: Any, target: Target, schemathesis_auth: dict[str, str]) -> None:
    # One hypothesis run per operation of the served document. (schemathesis's lazy pytest
    # loader, `from_fixture`, does not run under pytest 9: the strategies are driven here.)
    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]
    failures: dict[str, str] = {}
    operations = [result.ok() for result in served_schema.get_all_operations()]
    assert len(operations) >= 12

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: Any) -> None:
            response = case.call(base_url=target.bff.url, headers=schemathesis_auth, timeout=15)
            case.validate_response(response, checks=checks)

        try:
            run()
        except Exception as exc:  # every operation is run; all failures are reported together
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:2000]
    assert not failures, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
