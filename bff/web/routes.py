"""``/vluna/client.js`` (ES module), ``/vluna/client.global.js`` (classic script, ``window.VlunaBff``)
and, in dev mode only, the demo page at ``/`` and ``POST /dev/logout`` (the embedded emulator's
pages and API on the dev port: ``bff/dev_emulator.py``).

Both client builds come from one file, ``static/client.js``: the global build is that file with
its ``// esm-only`` lines (the ``export`` statements) removed, wrapped in a function. They are
built once at import and answered with an ETag, so browsers revalidate cheaply.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.types import ControllerRouterHandler

from bff.errors import Forbidden

_JS = "text/javascript"
_ESM_ONLY = "// esm-only"


def _read(name: str) -> str:
    return resources.files("bff.web").joinpath("static").joinpath(name).read_text(encoding="utf-8")


@dataclass(frozen=True)
class Asset:
    body: bytes
    etag: str
    media_type: str

    @classmethod
    def of(cls, text: str, media_type: str) -> Asset:
        body = text.encode("utf-8")
        return cls(body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"', media_type)

    def respond(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        headers = {
            "ETag": self.etag,
            # Always revalidate: a deployment's new client reaches browsers at once.
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
        }
        if request.headers.get("if-none-match") == self.etag:
            return Response(b"", status_code=304, headers=headers)
        return Response(self.body, media_type=self.media_type, headers=headers)


def global_build(module_source: str) -> str:
    """The classic-script build of the ES module: export lines dropped, wrapped in a function."""
    kept = [line for line in module_source.splitlines() if not line.rstrip().endswith(_ESM_ONLY)]
    return "(function () {\n" + "\n".join(kept) + "\n})();\n"


_SOURCE = _read("client.js")
CLIENT_MODULE = Asset.of(_SOURCE, _JS)
CLIENT_GLOBAL = Asset.of(global_build(_SOURCE), _JS)


def client_routes() -> list[ControllerRouterHandler]:
    @get("/vluna/client.js", include_in_schema=False)
    async def client_module(request: Request[Any, Any, Any]) -> Response[bytes]:
        return CLIENT_MODULE.respond(request)

    @get("/vluna/client.global.js", include_in_schema=False)
    async def client_global(request: Request[Any, Any, Any]) -> Response[bytes]:
        return CLIENT_GLOBAL.respond(request)

    return [client_module, client_global]


def demo_routes(
    *,
    cookie_name: str,
    csrf_header: str,
    csrf_value: str,
) -> list[ControllerRouterHandler]:
    """Dev mode only: the demo page and a sign-out for the dev cookie."""
    page = Asset.of(_read("demo.html"), "text/html")
    csrf = csrf_header.lower()

    @get("/", include_in_schema=False)
    async def demo_page(request: Request[Any, Any, Any]) -> Response[bytes]:
        return page.respond(request)

    @post("/dev/logout", status_code=204, include_in_schema=False)
    async def dev_logout(request: Request[Any, Any, Any]) -> Response[None]:
        if request.headers.get(csrf) != csrf_value:
            raise Forbidden(f"sign-out requires the {csrf_header} header", code="csrf_header_missing")
        return Response(
            None,
            status_code=204,
            headers={"Cache-Control": "no-store"},
            cookies=[Cookie(key=cookie_name, value="", max_age=0, path="/", httponly=True, samesite="lax")],
        )

    return [demo_page, dev_logout]
