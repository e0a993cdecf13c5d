"""The service's own OpenAPI document (``openapi.path``, JSON).

Litestar generates it from the route handlers (their parameters, return types and declared error
answers); this module completes what a handler signature cannot say:

- the security schemes of the configured sign-in methods, on every operation that needs them;
- the one error body (``{"error", "message"}``) on every 4xx/5xx answer, where Litestar would
  describe its own validation error (the app's exception handlers answer in our shape);
- the API proxy's allowlist (``proxy.routes``) as one operation per allowed call, so a generated
  client has a method per call (the proxy itself is an ASGI app mounted on its prefix, which
  Litestar leaves out of the document).

Served when ``openapi.enabled`` is true (default: in dev mode only); ``vluna-bff openapi`` prints
the same document without serving it.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from litestar import Litestar, Request
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

from bff.settings import Settings

TITLE = "vluna-bff"
ERROR_SCHEMA = "Error"
_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "a stable code, e.g. unauthenticated, invalid_scopes"},
        "message": {"type": "string", "description": "what is wrong, safe to show"},
    },
}
_PROXY_ERRORS = {
    400: "the path, query, body or Idempotency-Key is invalid",
    401: "no valid credential",
    403: "anti-forgery header missing, or no principal for this user",
    404: "not an allowed call",
    413: "the body is too large",
    414: "the path or query is too long",
    415: "the body is not JSON",
    429: "the user's rate limit is reached (Retry-After)",
    502: "Vluna refused or answered something unusable",
    503: "Vluna or the platform token is unavailable (Retry-After)",
    504: "Vluna did not answer in time",
}
# Vluna's own 4xx answers (its error envelope) pass through the proxy unchanged.
_VLUNA_PASSED = (400, 402, 404, 409, 422)
_NON_WORD = re.compile(r"[^A-Za-z0-9]+")


def enabled(settings: Settings) -> bool:
    flag = settings.openapi.enabled
    return settings.dev.enabled if flag is None else flag


def openapi_config(settings: Settings) -> OpenAPIConfig | None:
    if not enabled(settings):
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        release = version("vluna-bff")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        release = "0"
    return OpenAPIConfig(
        title=TITLE,
        version=release,
        description=(
            "Platform tokens for the signed-in user (GET/DELETE /vluna/token) and the allowlisted "
            "Vluna end-user calls (/vluna/api/v1/...), with the caller's token attached by the service."
        ),
        path=settings.openapi.path,
        render_plugins=[CompletedJson(settings)],
    )


class CompletedJson(JsonRenderPlugin):
    """Litestar's JSON rendering of ``document(settings)``, made once. Not of the serving app's
    own schema: its token route and proxy are ASGI apps, which Litestar leaves out; the document
    comes from the documented route handlers (``TOKEN_ROUTES``, the health routes), completed as
    the module docstring says, as ``vluna-bff openapi`` prints it."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(path="/openapi.json")
        self._settings = settings
        self._done: bytes | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._done is None:
            self._done = self.render_json(request, document(self._settings))
        return self._done


def document(settings: Settings) -> dict[str, Any]:
    """The document ``vluna-bff serve`` serves with these settings (``vluna-bff openapi``), built
    without the services: an app of the documented route handlers (the token routes as
    ``TOKEN_ROUTES`` describe them, the health routes), completed."""
    from litestar._openapi.plugin import OpenAPIPlugin

    from bff.app import dependency_placeholders
    from bff.observability.health import health_routes
    from bff.routes.token import TOKEN_ROUTES

    on = settings.model_copy(update={"openapi": settings.openapi.model_copy(update={"enabled": True})})
    app = Litestar(
        route_handlers=[
            *TOKEN_ROUTES,
            *health_routes(on),
        ],
        dependencies=dependency_placeholders(),
        openapi_config=openapi_config(on),
        logging_config=None,  # the process's logging is configured elsewhere (or not at all)
    )
    return complete(app.plugins.get(OpenAPIPlugin).provide_openapi_schema(), on)


def _error_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"}}},
    }


def security(settings: Settings) -> tuple[dict[str, Any], list[dict[str, list[str]]]]:
    """Security schemes of the enabled sign-in methods, and the alternatives an operation accepts."""
    a = settings.auth
    methods = set(a.methods) | ({"bearer", "cookie"} if settings.dev.enabled else set())
    schemes: dict[str, Any] = {}
    alternatives: list[dict[str, list[str]]] = []
    if "bearer" in methods:
        schemes["bearerAuth"] = {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": "a JWT of your identity provider (auth.jwt)",
        }
        alternatives.append({"bearerAuth": []})
    if "cookie" in methods:
        schemes["sessionCookie"] = {
            "type": "apiKey",
            "in": "cookie",
            "name": a.cookie.name,
            "description": "the same JWT in a cookie; needs the anti-forgery header too",
        }
        schemes["csrfHeader"] = {
            "type": "apiKey",
            "in": "header",
            "name": a.cookie.csrf_header,
            "description": f"anti-forgery header, value {a.cookie.csrf_value!r}, with the session cookie",
        }
        alternatives.append({"sessionCookie": [], "csrfHeader": []})
    if "introspection" in methods:
        schemes["backendSession"] = {
            "type": "apiKey",
            "in": "cookie" if "cookie" in a.introspection.forward else "header",
            "name": "Cookie" if "cookie" in a.introspection.forward else "Authorization",
            "description": "your backend's session, checked by asking your backend (auth.introspection)",
        }
        alternatives.append({"backendSession": []})
    return schemes, alternatives


def _operation_id(method: str, template: str) -> str:
    words = [w for w in _NON_WORD.split(template.replace("{", "by_").replace("}", "")) if w]
    return method.lower() + "".join(w[:1].upper() + w[1:] for w in words)


def _proxy_operations(settings: Settings, needs: list[dict[str, list[str]]]) -> dict[str, dict[str, Any]]:
    from bff.proxy.service import PREFIX
    from bff.settings import template_params

    p = settings.proxy
    paths: dict[str, dict[str, Any]] = {}
    for route in p.routes:
        method = route.method.lower()
        params: list[dict[str, Any]] = [
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "pattern": p.id_pattern},
            }
            for name in template_params(route.path)
        ]
        params += [
            {"name": q, "in": "query", "required": False, "schema": {"type": "string"}} for q in route.query
        ]
        responses: dict[str, Any] = {
            "200": {
                "description": "Vluna's answer",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
        }
        if method != "get":
            params.append(
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "description": "replays of the same write; generated when absent",
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"},
                }
            )
            responses["201"] = {
                "description": "Vluna's answer",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        if route.public:
            responses["304"] = {"description": "not modified (If-None-Match matched the ETag)"}
        for status, text in _PROXY_ERRORS.items():
            responses[str(status)] = _error_response(text)
        for status in _VLUNA_PASSED:
            responses[str(status)] = {
                "description": "refused by the service, or Vluna's own answer passed through",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        op: dict[str, Any] = {
            "tags": ["proxy"],
            "operationId": _operation_id(route.method, route.path),
            "summary": f"{route.method} /api/v1{route.upstream_path or route.path} on Vluna, as the caller",
            "parameters": params,
            "responses": responses,
            "security": needs,
        }
        if method in ("post", "put", "patch"):
            op["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": {"type": "object"}}},
                "description": f"a JSON object of at most {p.max_body_bytes} bytes",
            }
        paths.setdefault(PREFIX + route.path, {})[method] = op
    return paths


def complete(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    out = copy.deepcopy(doc)
    schemes, needs = security(settings)
    components = out.setdefault("components", {})
    components.setdefault("schemas", {})[ERROR_SCHEMA] = _ERROR
    if schemes:
        components["securitySchemes"] = schemes
    paths: dict[str, Any] = out.setdefault("paths", {})
    for path, item in paths.items():
        if not path.startswith("/vluna/"):
            continue  # probes and dev helpers answer in their own shapes, without credentials
        for op in item.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            for status, resp in op["responses"].items():
                if status[:1] in ("4", "5"):
                    op["responses"][status] = _error_response(resp.get("description") or "error")
                elif status == "204":
                    resp.pop("content", None)  # no body at all
            op["security"] = needs
    token = components["schemas"].get("TokenBody")
    if token is not None:
        props = token["properties"]
        props["expires_in"]["minimum"] = 0
        props["expires_at"]["pattern"] = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$"
        props["scopes"]["items"]["enum"] = list(settings.tokens.allowed_scopes)
    if settings.proxy.enabled:
        paths.update(_proxy_operations(settings, needs))
    return out
