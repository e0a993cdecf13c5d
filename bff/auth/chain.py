"""The enabled methods in their configured order: the first that recognises a credential decides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from litestar import Request

from bff.auth.identity import Authenticator, Identity
from bff.errors import Unauthenticated


class AuthChain:
    def __init__(self, authenticators: Sequence[Authenticator]) -> None:
        self._auth = list(authenticators)

    @property
    def methods(self) -> list[str]:
        return [a.name for a in self._auth]

    async def authenticate(self, request: Request[Any, Any, Any]) -> Identity:
        for authenticator in self._auth:
            # A present-but-bad credential raises here: no falling through to a weaker method.
            identity = await authenticator.authenticate(request)
            if identity is not None:
                return identity
        raise Unauthenticated("authentication required", code="unauthenticated", invalid=False)
