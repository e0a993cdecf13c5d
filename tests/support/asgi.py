"""An ASGI app called in-process through httpx (no server, no socket)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

import httpx


def asgi_transport(app: Any) -> httpx.ASGITransport:
    """``httpx.ASGITransport`` over a Litestar app (or any ASGI app): httpx types an app's messages
    as plain mappings, Litestar as its TypedDicts; the calls are the same."""
    return httpx.ASGITransport(app=cast("Callable[..., Awaitable[None]]", app))
