"""Dev mode only: the embedded Vluna emulator on the dev port, for every kind of client.

- ``/api/v1/...`` and ``/mgt/v1/...``: the emulator's two API surfaces, exactly as a Vluna
  deployment answers them, so a mobile app, the SDK's ``BearerClient`` or the published
  ``vlunaai`` client can use a token from ``GET /vluna/token`` (and a service client the
  emulator's service key) against ``vluna-bff dev``.
- ``/hosted/...``: the pages behind checkout, portal and subscription ``launch_url``s (the
  emulator's ``public_url`` is the dev server, so those URLs open in a browser).

Nothing else of the emulator is reachable: its ``/__emulator__`` controls are not even built in
dev mode, the API mounts hand requests to the emulator's API core (which knows only the API
routes), and a hosted path must match one of the hosted page shapes exactly, checked on the raw
(still percent-encoded) path, so ``..``, encoded slashes or dots never reach a different page.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

import httpx
from litestar import Request, Response, route
from litestar.handlers import asgi
from litestar.types import ASGIApp, ControllerRouterHandler, Receive, Scope, Send

from bff.errors import NotFound

if TYPE_CHECKING:
    from vlunaai.testing import VlunaEmulator

_ID = r"[A-Za-z0-9_-]{1,128}"
# The emulator's hosted pages, and nothing else: /hosted/checkout/<id>[/complete|/cancel],
# /hosted/portal/<session>, /hosted/subscription/<session>.
HOSTED_PATH = re.compile(
    rf"/hosted/(?:checkout/{_ID}(?:/complete|/cancel)?|portal/{_ID}|subscription/{_ID})", re.ASCII
)
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "date", "server"}
)


def confined_hosted_path(scope: Scope) -> str | None:
    """The hosted page a request names, or None when its path is anything but one exactly.

    Both the raw request target and the decoded path must match: a percent-encoding (``%2F``,
    ``%2e``), a dot segment or a double slash fails one or the other."""
    raw = scope.get("raw_path")
    path = str(scope.get("path", ""))
    raw_text = raw.decode("latin-1") if isinstance(raw, bytes) else path
    raw_text = raw_text.split("?", 1)[0]
    if HOSTED_PATH.fullmatch(raw_text) and raw_text == path:
        return path
    return None


def emulator_routes(emulator: VlunaEmulator) -> list[ControllerRouterHandler]:
    """The emulator's API surfaces and hosted pages, as routes of the dev app."""
    core = emulator.core
    # The emulator speaks plain ASGI with dict messages (vlunaai.testing.core.Scope): the same
    # calls as Litestar's, in a looser vocabulary.
    core_asgi = cast("ASGIApp", core.asgi)
    app: Any = emulator.app  # an ASGI app (httpx's type for one is narrower than Litestar's)
    base_url = emulator.bearer_base_url.rsplit("/api/v1", 1)[0]

    def label(scope: Scope, prefix: str) -> None:
        # The access log and metrics name the operation's template (a bounded set), never the
        # raw path; the observability layer reads it from this same scope after the call.
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if isinstance(raw, bytes) else str(scope.get("path", ""))
        found = core.resolve(str(scope.get("method", "GET")).upper(), path.split("?", 1)[0])
        scope["path_template"] = prefix + (found[0].template if found else "/<unknown>")

    @asgi("/api/v1", is_mount=True, copy_scope=False)
    async def bearer_api(scope: Scope, receive: Receive, send: Send) -> None:
        label(scope, "/api/v1")
        await core_asgi(scope, receive, send)

    @asgi("/mgt/v1", is_mount=True, copy_scope=False)
    async def service_api(scope: Scope, receive: Receive, send: Send) -> None:
        label(scope, "/mgt/v1")
        await core_asgi(scope, receive, send)

    @route("/hosted/{rest:path}", http_method=["GET", "POST"], include_in_schema=False)
    async def hosted(request: Request[Any, Any, Any]) -> Response[bytes]:
        path = confined_hosted_path(request.scope)
        if path is None:
            raise NotFound("no such hosted page")
        # Forwarded to the emulator's own page handlers in-process: method, form body, redirect.
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url) as client:
            upstream = await client.request(
                request.method,
                path,
                content=await request.body(),
                headers={"content-type": request.headers.get("content-type", "")},
            )
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
        media_type = headers.pop("content-type", "text/plain").split(";")[0]
        return Response(
            upstream.content, status_code=upstream.status_code, headers=headers, media_type=media_type
        )

    return [bearer_api, service_api, hosted]
