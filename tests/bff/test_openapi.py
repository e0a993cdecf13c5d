"""The OpenAPI document the service serves (bff/openapi.py): where and when it is served, what it
says about the token route, the proxy allowlist, errors and security, that `vluna-bff openapi`
prints the same document, and that no secret is in it. tests/hostile/test_schemathesis.py runs
schemathesis against the served document on a real process."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from bff.cli import main
from bff.openapi import document
from bff.settings import SettingsError, validate_settings
from tests.support.asgi import asgi_transport

from .support import HMAC_KEY, SERVICE_SECRET, FakeIssuer, Keys, client_for, make_settings

DOC = "/vluna/openapi/openapi.json"


async def served(settings: Any, path: str = DOC) -> tuple[int, Any]:
    async with client_for(settings, FakeIssuer()) as client:
        r = await client.get(path)
        return r.status_code, (r.json() if r.status_code == 200 else r.text)


async def test_not_served_in_production_by_default(keys: Keys) -> None:
    status, _ = await served(make_settings(keys))
    assert status == 404
    status, _ = await served(make_settings(keys), "/schema/openapi.json")
    assert status == 404, "Litestar's default location must not serve it either"


async def test_served_when_enabled_at_the_configured_path(keys: Keys) -> None:
    settings = make_settings(keys, openapi={"enabled": True, "path": "/api-docs"})
    status, doc = await served(settings, "/api-docs/openapi.json")
    assert status == 200 and doc["info"]["title"] == "vluna-bff"
    assert (await served(settings, "/api-docs"))[1] == doc
    assert (await served(settings, DOC))[0] == 404


async def test_on_by_default_in_dev_mode(keys: Keys) -> None:
    from bff.dev import create_dev_app
    from bff.settings import load_settings

    settings = load_settings(
        None, environ={}, overrides={"dev": {"enabled": True}, "cache": {"backend": "memory"}}
    )
    import httpx

    app = create_dev_app(settings).app
    async with (
        app.lifespan(),
        httpx.AsyncClient(transport=asgi_transport(app), base_url="http://t") as c,
    ):
        r = await c.get(DOC)
    assert r.status_code == 200 and "/vluna/token" in r.json()["paths"]


async def test_token_route_errors_and_security(keys: Keys) -> None:
    _, doc = await served(make_settings(keys, openapi={"enabled": True}))
    get = doc["paths"]["/vluna/token"]["get"]
    assert get["operationId"] == "getToken"
    assert set(get["responses"]) == {"200", "400", "401", "403", "429", "502", "503"}
    for status in ("400", "401", "403", "429", "502", "503"):
        schema = get["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}, status
    assert doc["components"]["schemas"]["Error"]["required"] == ["error", "message"]
    token = doc["components"]["schemas"]["TokenBody"]
    assert set(token["required"]) == {
        "access_token",
        "token_type",
        "expires_in",
        "expires_at",
        "lifetime_sec",
        "issued_at",
        "billing_account_id",
        "billing_user_id",
        "scopes",
        "realm_id",
        "api_base_url",
    }
    assert token["properties"]["scopes"]["items"]["enum"] == ["checkout", "portal"]
    assert get["security"] == [{"bearerAuth": []}, {"sessionCookie": [], "csrfHeader": []}]
    schemes = doc["components"]["securitySchemes"]
    assert schemes["sessionCookie"] == {
        "type": "apiKey",
        "in": "cookie",
        "name": "vluna_session",
        "description": schemes["sessionCookie"]["description"],
    }
    assert schemes["csrfHeader"]["name"] == "X-Vluna-CSRF"
    delete = doc["paths"]["/vluna/token"]["delete"]
    assert "content" not in delete["responses"]["204"]
    # the probes need no credentials and keep their own body on 503
    assert "security" not in doc["paths"]["/readyz"]["get"]
    assert "503" in doc["paths"]["/readyz"]["get"]["responses"]


async def test_proxy_allowlist_is_one_operation_per_allowed_call(keys: Keys) -> None:
    settings = make_settings(
        keys,
        openapi={"enabled": True},
        proxy={
            "routes": [
                {"method": "GET", "path": "/catalog/products", "public": True, "query": ["limit"]},
                {"method": "POST", "path": "/checkouts"},
                {"method": "GET", "path": "/checkouts/{checkout_id}"},
            ]
        },
    )
    _, doc = await served(settings)
    proxied = {p: set(item) for p, item in doc["paths"].items() if p.startswith("/vluna/api/")}
    assert proxied == {
        "/vluna/api/v1/catalog/products": {"get"},
        "/vluna/api/v1/checkouts": {"post"},
        "/vluna/api/v1/checkouts/{checkout_id}": {"get"},
    }
    products = doc["paths"]["/vluna/api/v1/catalog/products"]["get"]
    assert [p["name"] for p in products["parameters"]] == ["limit"]
    assert "304" in products["responses"]
    post = doc["paths"]["/vluna/api/v1/checkouts"]["post"]
    assert post["operationId"] == "postCheckouts"
    assert [p["name"] for p in post["parameters"]] == ["Idempotency-Key"]
    assert post["requestBody"]["content"]["application/json"]["schema"] == {"type": "object"}
    one = doc["paths"]["/vluna/api/v1/checkouts/{checkout_id}"]["get"]
    assert one["operationId"] == "getCheckoutsByCheckoutId"
    (param,) = one["parameters"]
    assert param["in"] == "path" and param["schema"]["pattern"] == settings.proxy.id_pattern
    assert one["responses"]["429"]["content"]["application/json"]["schema"]["$ref"].endswith("/Error")
    # proxy off: no proxy operations at all
    _, doc = await served(make_settings(keys, openapi={"enabled": True}, proxy={"enabled": False}))
    assert not [p for p in doc["paths"] if p.startswith("/vluna/api/")]


async def test_document_is_valid_openapi_3_1(keys: Keys) -> None:
    _, doc = await served(make_settings(keys, openapi={"enabled": True}))
    assert doc["openapi"].startswith("3.1")
    # every $ref resolves
    text = json.dumps(doc)
    refs = set(re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text))
    assert refs and refs <= set(doc["components"]["schemas"])
    # every schema in it is a valid JSON Schema (2020-12, what OpenAPI 3.1 uses)
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


async def test_cli_prints_the_served_document_without_secrets(
    keys: Keys, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    from .support import base_settings

    data = base_settings(keys, openapi={"enabled": True})
    config = tmp_path / "bff.yaml"
    config.write_text(yaml.safe_dump(data))
    settings = validate_settings(data)
    _, doc = await served(settings)
    assert main(["openapi", "-c", str(config)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == doc == document(settings)
    assert main(["openapi", "-c", str(config), "-o", str(tmp_path / "out.json")]) == 0
    assert json.loads((tmp_path / "out.json").read_text()) == doc
    text = json.dumps(doc)
    for secret in (SERVICE_SECRET, HMAC_KEY, "realm_test", "pk-test"):
        assert secret not in text


@pytest.mark.parametrize("path", ["openapi", "/healthz", "/metrics", "/a b", "/"])
def test_a_bad_path_is_named(keys: Keys, path: str) -> None:
    from .support import base_settings

    with pytest.raises(SettingsError) as err:
        validate_settings(base_settings(keys, openapi={"path": path}))
    assert [f for f, _ in err.value.problems] == ["openapi.path"]
