"""The enabled methods in their configured order: the first that recognises a credential decides.
Every refusal is told to the operator once (bff/auth/diagnostics.py) and passed on unchanged."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from litestar import Request

from bff.auth.diagnostics import AuthDiagnostics
from bff.auth.identity import Authenticator, Identity
from bff.auth.jwt import JwtVerifier
from bff.errors import BffError, Forbidden, ServiceUnavailable, Unauthenticated


class AuthChain:
    def __init__(
        self,
        authenticators: Sequence[Authenticator],
        diagnostics: AuthDiagnostics | None = None,
        verifier: JwtVerifier | None = None,
    ) -> None:
        self._auth = list(authenticators)
        self._diagnostics = diagnostics or AuthDiagnostics()
        self._verifier = verifier

    async def key_problem(self) -> str | None:
        """For readiness: why tokens cannot be verified now (no key known), or None."""
        return await self._verifier.key_problem() if self._verifier is not None else None

    @property
    def methods(self) -> list[str]:
        return [a.name for a in self._auth]

    async def authenticate(self, request: Request[Any, Any, Any]) -> Identity:
        for authenticator in self._auth:
            # A present-but-bad credential raises here: no falling through to a weaker method.
            try:
                identity = await authenticator.authenticate(request)
            except BffError as exc:
                self._tell(exc, authenticator.name)
                raise
            if identity is not None:
                return identity
        refusal = Unauthenticated("authentication required", code="unauthenticated", invalid=False)
        self._tell(refusal, None)
        raise refusal

    def _tell(self, exc: BffError, method: str | None) -> None:
        if isinstance(exc, Unauthenticated):
            reason, details = exc.reason, exc.details
            if method == "introspection" and reason == "invalid_token":
                reason = "session_rejected"
        elif isinstance(exc, Forbidden):
            reason, details = exc.code, {}
        elif isinstance(exc, ServiceUnavailable):
            reason = "keys_unavailable" if exc.code == "auth_unavailable" else "introspection_unavailable"
            details = {}
        else:
            return
        self._diagnostics.rejected(reason, method, details)
