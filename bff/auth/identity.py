from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from litestar import Request


@dataclass(frozen=True)
class Identity:
    """An authenticated user of the team's application, as their identity system describes them."""

    claims: Mapping[str, Any] = field(repr=False)
    method: str


class Authenticator(Protocol):
    name: str

    async def authenticate(self, request: Request[Any, Any, Any]) -> Identity | None:
        """None: this method does not apply to the request (no credential of its kind).
        Raises ``Unauthenticated``/``Forbidden`` when a credential is present but not acceptable."""
        ...
