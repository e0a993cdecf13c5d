"""What is served where (no browser needed): the client in every mode, the demo only in dev mode,
the global build derived from the module, revalidation by ETag."""

from __future__ import annotations

import base64
import hashlib

from litestar.testing import TestClient

from bff.app import create_app
from bff.settings import validate_settings
from bff.web.routes import CLIENT_GLOBAL, CLIENT_MODULE, global_build

PRODUCTION = {
    "vluna": {
        "base_url": "http://vluna.test/mgt/v1",
        "realm_id": "realm_test",
        "service_key_id": "pk-test",
        "service_key_secret": base64.b64encode(b"s" * 32).decode(),
    },
    "auth": {
        "methods": ["bearer"],
        "jwt": {
            "algorithms": ["HS256"],
            "hs_secret": "browser-routes-hs-secret-0123456789",
            "issuer": "https://id.test",
            "audience": ["a"],
        },
    },
    "cache": {
        "backend": "memory",
        "encryption_keys": ["k1:" + base64.b64encode(hashlib.sha256(b"browser routes").digest()).decode()],
        "hmac_key": "browser-routes-hmac-key-0123456789",
    },
}


def test_production_serves_the_client_but_no_demo() -> None:
    with TestClient(app=create_app(validate_settings(PRODUCTION))) as client:
        module = client.get("/vluna/client.js")
        assert module.status_code == 200
        assert module.headers["content-type"].startswith("text/javascript")
        assert module.headers["x-content-type-options"] == "nosniff"
        assert "export { createClient" in module.text
        classic = client.get("/vluna/client.global.js")
        assert classic.status_code == 200 and "export " not in classic.text
        again = client.get("/vluna/client.js", headers={"If-None-Match": module.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        assert client.get("/").status_code == 404
        assert client.get("/hosted/checkout/x").status_code == 404
        assert client.post("/dev/logout", headers={"X-Vluna-CSRF": "1"}).status_code in (404, 405)


def test_global_build_is_the_module_without_its_exports() -> None:
    source = CLIENT_MODULE.body.decode()
    built = CLIENT_GLOBAL.body.decode()
    assert built == global_build(source)
    assert built.startswith("(function () {\n") and built.endswith("})();\n")
    dropped = [line for line in source.splitlines() if line not in built.splitlines()]
    assert dropped and all(line.startswith("export ") for line in dropped)
    assert "globalThis.VlunaBff = VlunaBff;" in built
    assert CLIENT_MODULE.etag != CLIENT_GLOBAL.etag
