"""Routes answered by an ASGI app of the service's own (the token route, the proxy's mount) in
place of a Litestar HTTP route, and what such an app must do to answer as that route did.

- ``ExceptionHandlersOnce``: a route handler whose exception handlers are resolved once
  (Litestar's router asks for them on every request);
- ``not_routed``: a refusal the router raised before any route was chosen (an unknown method, a
  websocket on an HTTP-only route), so the request keeps no route label in metrics and logs;
- ``send_options``: the answer of Litestar's automatic ``OPTIONS`` handler (204 with ``Allow``).
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.enums import MediaType
from litestar.exceptions import HTTPException
from litestar.handlers import BaseRouteHandler
from litestar.types import ExceptionHandlersMap, Receive, Scope, Send


class ExceptionHandlersOnce(BaseRouteHandler):
    """A Litestar route handler whose exception handlers are resolved once per registered copy:
    Litestar's router asks for them on every request (to put them in the request's scope state)
    and merges the layers' maps each time; they are fixed once the app is built. (Remembered
    with the owner they were resolved under: a copy registered elsewhere resolves its own.) The
    proxy's mount and the token route are made with it."""

    _exception_handlers: tuple[object, ExceptionHandlersMap] | None = None

    def resolve_exception_handlers(self) -> ExceptionHandlersMap:
        memo = self._exception_handlers
        if memo is None or memo[0] is not self.owner:
            memo = self._exception_handlers = (self.owner, super().resolve_exception_handlers())
        return memo[1]


def not_routed(scope: Scope, exc: HTTPException) -> HTTPException:
    """``exc`` as Litestar's router raised it before choosing a route: the route label the router
    set for the ASGI app is taken back (metrics, access log lines and spans say ``<unmatched>``)."""
    scope.pop("path_template", None)  # type: ignore[misc]
    return exc


async def send_options(
    allow: str, request: Request[Any, Any, Any], scope: Scope, receive: Receive, send: Send
) -> None:
    """What Litestar's automatic ``OPTIONS`` handler of an HTTP route answers: 204, ``Allow``."""
    response = Response(None, status_code=204, headers={"Allow": allow}, media_type=MediaType.TEXT)
    await response.to_asgi_response(app=None, request=request)(scope, receive, send)
