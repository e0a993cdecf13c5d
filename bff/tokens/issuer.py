"""The one call upstream: ``issue_platform_token`` through the vlunaai SDK, behind a protocol so
the broker can be exercised with any issuer."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import httpx
from pydantic import SecretStr
from vlunaai import InternalServerError, RequestContext, ServiceClient, VlunaAIError

from bff.settings import VlunaSettings
from bff.telemetry import metrics, tracing
from bff.vluna import create_vluna_client, is_transient

log = logging.getLogger("bff.issuer")


@dataclass(frozen=True)
class IssuedToken:
    access_token: str = field(repr=False)
    token_type: str
    expires_in: int
    billing_account_id: str | None
    billing_user_id: str | None
    expires_at: float | None = None  # epoch seconds, as the server stated it


class IssuerUnavailable(Exception):
    """Vluna is down, slow, rate limiting or failing: retry later, serve a cached token meanwhile."""


class IssuerRejected(Exception):
    """Vluna refused the request (bad service key, invalid principal): retrying will not help."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class TokenIssuer(Protocol):
    async def issue(
        self, principal_id: str, user_id: str, scopes: Sequence[str], traits: Mapping[str, Any]
    ) -> IssuedToken: ...

    async def aclose(self) -> None: ...


def parse_expires_at(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# The answer of a server that failed unexpectedly. The open-source Vluna server gives it to the
# first call for a principal that has no billing account yet (the account is created anyway, and
# the 500 is not stored under the Idempotency-Key): the same request sent again succeeds.
FIRST_CALL_FAILURE = (500, "SERVER.UNEXPECTED")


def first_call_retries(max_retries: int) -> int:
    """Attempts the issuer adds on top of the SDK's own for one 500 ``SERVER.UNEXPECTED``: the
    SDK already retries a 500 (same Idempotency-Key) when ``max_retries`` >= 1, so only with 0."""
    return 0 if max_retries >= 1 else 1


class SdkTokenIssuer:
    """Calls ``ServiceClient.issue_platform_token`` in raise mode and sorts its errors by the
    SDK's classes (``bff.vluna.is_transient``). The client is the app's one Vluna client
    (``bff.vluna``), shared with readiness; the issuer closes it only when it built it.

    Every issuance carries its own Idempotency-Key, kept across every attempt. A 500
    ``SERVER.UNEXPECTED`` is tried once more even with ``vluna.max_retries: 0`` (see
    ``FIRST_CALL_FAILURE``), so a new principal's first token never fails because of it.
    """

    def __init__(
        self,
        client: ServiceClient,
        session_ttl_sec: int,
        *,
        first_call_retries: int = 0,
        owns_client: bool = False,
    ) -> None:
        self._client = client
        self._ttl = session_ttl_sec
        self._first_call_retries = first_call_retries
        self._owns_client = owns_client

    def __repr__(self) -> str:
        return "SdkTokenIssuer()"

    @classmethod
    def create(
        cls,
        *,
        base_url: str,
        realm_id: str,
        key_id: str,
        secret: str,
        session_ttl_sec: int,
        timeout_sec: float,
        max_retries: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> SdkTokenIssuer:
        """An issuer with a client of its own (closed with it)."""
        v = VlunaSettings(
            base_url=base_url,
            realm_id=realm_id,
            service_key_id=key_id,
            service_key_secret=SecretStr(secret),
            timeout_sec=timeout_sec,
            max_retries=max_retries,
        )
        client = create_vluna_client(v, transport=transport)
        assert client is not None
        return cls(
            client, session_ttl_sec, first_call_retries=first_call_retries(max_retries), owns_client=True
        )

    async def issue(
        self, principal_id: str, user_id: str, scopes: Sequence[str], traits: Mapping[str, Any]
    ) -> IssuedToken:
        body: dict[str, Any] = {
            "principal_id": principal_id,
            "user_id": user_id,
            "scopes": list(scopes),
            "session_ttl_sec": self._ttl,
        }
        if traits:
            body["traits"] = dict(traits)
        started = time.monotonic()
        try:
            env = await self._issue(body)
        except VlunaAIError as exc:
            status, code = exc.status, exc.code
            if is_transient(exc):
                log.warning(
                    "token issuance unavailable: %s status=%s code=%s", type(exc).__name__, status, code
                )
                raise IssuerUnavailable(f"{type(exc).__name__} status={status} code={code}") from None
            log.error("token issuance rejected: %s status=%s code=%s", type(exc).__name__, status, code)
            raise IssuerRejected("Vluna rejected the token request", status=status, code=code) from None
        except (OSError, TimeoutError) as exc:
            raise IssuerUnavailable(type(exc).__name__) from None
        data = env.data
        if data is None:
            raise IssuerUnavailable("empty issuance response")
        log.debug("token issued in %.0f ms", (time.monotonic() - started) * 1000)
        token_type = getattr(data.token_type, "value", data.token_type)
        return IssuedToken(
            access_token=data.access_token,
            token_type=str(token_type),
            expires_in=int(data.expires_in),
            billing_account_id=data.billing_account_id,
            billing_user_id=data.billing_user_id,
            expires_at=parse_expires_at(getattr(data, "expires_at", None)),
        )

    async def _issue(self, body: dict[str, Any]) -> Any:
        context = RequestContext(idempotency_key=secrets.token_hex(16))
        extra = self._first_call_retries
        while True:
            try:
                return await self._client.issue_platform_token(body=body, context=context)
            except InternalServerError as exc:
                if extra <= 0 or (exc.status, exc.code) != FIRST_CALL_FAILURE:
                    raise
                extra -= 1
                log.info("token issuance answered 500 SERVER.UNEXPECTED; trying once more with the same key")

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.close()


ISSUE_OPERATION = "issue_platform_token"


class MeteredIssuer:
    """Wraps any token issuer: a CLIENT span and the upstream metrics per call."""

    def __init__(self, inner: TokenIssuer) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"MeteredIssuer({self.inner!r})"

    async def issue(
        self, principal_id: str, user_id: str, scopes: Sequence[str], traits: Mapping[str, Any]
    ) -> IssuedToken:
        started = time.perf_counter()
        outcome = "error"
        with tracing.span(
            "vluna " + ISSUE_OPERATION, kind="client", attributes={"rpc.method": ISSUE_OPERATION}
        ) as sp:
            try:
                token = await self.inner.issue(principal_id, user_id, scopes, traits)
                outcome = "ok"
                return token
            except IssuerUnavailable:
                outcome = "unavailable"
                raise
            except IssuerRejected:
                outcome = "rejected"
                raise
            finally:
                sp.set_attribute("bff.upstream.outcome", outcome)
                if outcome != "ok":
                    sp.set_status_error(outcome)
                metrics.observe_upstream(ISSUE_OPERATION, outcome, time.perf_counter() - started)

    async def aclose(self) -> None:
        await self.inner.aclose()
