"""The team's own code decides: ``async def hook(request) -> Identity | dict | None``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from litestar import Request

from bff.auth.identity import Identity
from bff.hooks import call_hook


class HookAuthenticator:
    name = "hook"

    def __init__(self, fn: Callable[..., Any]) -> None:
        self._fn = fn

    async def authenticate(self, request: Request[Any, Any, Any]) -> Identity | None:
        result = await call_hook(self._fn, request)
        if result is None:
            return None
        if isinstance(result, Identity):
            return result
        if isinstance(result, Mapping):
            return Identity(claims=dict(result), method=self.name)
        raise TypeError("auth hook must return an Identity, a mapping of claims or None")
