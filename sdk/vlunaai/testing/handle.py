"""`VlunaEmulator`: an in-process emulator for tests, with SDK clients wired to it (no socket).

async with VlunaEmulator() as emu:
    svc = emu.service_client()
    token = await svc.issue_platform_token(body={"principal_id": "org:1", "user_id": "u1"})
    bearer = emu.bearer_client()
    await bearer.list_catalog_products(context=RequestContext(access_token=token.data.access_token))
    emu.inject_fault("list_catalog_products", status=503, retry_after=0, times=1)
    emu.calls("list_catalog_products")
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from .app import create_app
from .core import BEARER_PREFIX, SERVICE_PREFIX, CoreBase, EmulatorSettings
from .faults import ConnectionDropped, Fault
from .seed import Seed, load_seed

if TYPE_CHECKING:
    from vlunaai import BearerClient, ServiceClient
    from vlunaai._http import ErrorMode

EMULATOR_BASE = "http://vluna-emulator.test"


class EmulatorTransport(httpx.AsyncBaseTransport):
    """An ASGI transport that turns a dropped connection into the error a socket would give."""

    def __init__(self, app: Any) -> None:
        self._inner = httpx.ASGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._inner.handle_async_request(request)
        except Exception as exc:
            if _is_drop(exc):
                raise httpx.RemoteProtocolError(
                    "Server disconnected without sending a complete response", request=request
                ) from None
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()


def _is_drop(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ConnectionDropped):
            return True
        group = getattr(exc, "exceptions", None)
        if group and any(_is_drop(e) for e in group):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class VlunaEmulator:
    """One emulator: its ASGI app, state, counters, faults, and SDK clients bound to it."""

    def __init__(
        self,
        *,
        realm_id: str = "realm_demo",
        service_key_id: str = "pk-emulator",
        service_key_secret: str | None = None,
        seed: Seed | str | Path | None = None,
        controls_enabled: bool = True,
        settings: EmulatorSettings | None = None,
        **overrides: Any,
    ) -> None:
        if settings is None:
            overrides.setdefault("public_url", EMULATOR_BASE)  # hosted URLs reachable in-process
            settings = EmulatorSettings(
                realm_id=realm_id,
                service_key_id=service_key_id,
                service_key_secret=service_key_secret,
                controls_enabled=controls_enabled,
                **overrides,
            )
        loaded = seed if isinstance(seed, Seed) else load_seed(seed)
        self.app = create_app(settings, loaded)
        self.core: CoreBase = self.app.state.emulator
        self.settings = settings
        self._clients: list[Any] = []
        self._service: ServiceClient | None = None
        self._bearer: BearerClient | None = None

    # --- identity ------------------------------------------------------------------------------

    @property
    def realm_id(self) -> str:
        return self.settings.realm_id

    @property
    def service_key_id(self) -> str:
        return self.core.primary_key.key_id

    @property
    def service_key_secret(self) -> str:
        return self.core.primary_key.secret

    @property
    def service_base_url(self) -> str:
        return EMULATOR_BASE + SERVICE_PREFIX

    @property
    def bearer_base_url(self) -> str:
        return EMULATOR_BASE + BEARER_PREFIX

    def transport(self) -> httpx.AsyncBaseTransport:
        """A fresh in-process transport to this emulator (for your own httpx clients)."""
        return EmulatorTransport(self.app)

    def http_client(self) -> httpx.AsyncClient:
        client = httpx.AsyncClient(transport=self.transport(), base_url=EMULATOR_BASE)
        self._clients.append(client)
        return client

    # --- SDK clients ------------------------------------------------------------------------

    def service_client(
        self, *, error_mode: ErrorMode = "result", max_retries: int = 2, **options: Any
    ) -> ServiceClient:
        from vlunaai import ServiceClientOptions, ServiceKeyCredentials, VlunaAIConfig, create_service_client

        client = create_service_client(
            ServiceClientOptions(
                config=VlunaAIConfig(base_url=self.service_base_url, realm_id=self.realm_id),
                service_key=ServiceKeyCredentials(key_id=self.service_key_id, secret=self.service_key_secret),
                error_mode=error_mode,
                max_retries=max_retries,
                transport=self.transport(),
                **options,
            )
        )
        self._clients.append(client)
        return client

    def bearer_client(
        self, *, error_mode: ErrorMode = "result", max_retries: int = 2, **options: Any
    ) -> BearerClient:
        from vlunaai import BearerClientOptions, VlunaAIConfig, create_bearer_client

        client = create_bearer_client(
            BearerClientOptions(
                config=VlunaAIConfig(base_url=self.bearer_base_url, realm_id=self.realm_id),
                error_mode=error_mode,
                max_retries=max_retries,
                transport=self.transport(),
                **options,
            )
        )
        self._clients.append(client)
        return client

    @property
    def service(self) -> ServiceClient:
        """A ready `ServiceClient` (default options), created on first use and reused."""
        if self._service is None:
            self._service = self.service_client()
        return self._service

    @property
    def bearer(self) -> BearerClient:
        """A ready `BearerClient` (default options); pass `RequestContext(access_token=...)`."""
        if self._bearer is None:
            self._bearer = self.bearer_client()
        return self._bearer

    async def issue_token(self, principal_id: str, user_id: str, **body: Any) -> str:
        """Issue a platform access token through the service API and return it."""
        envelope = await self.service.issue_platform_token(
            body={"principal_id": principal_id, "user_id": user_id, **body}
        )
        if not envelope.ok or envelope.data is None:
            raise RuntimeError(f"token issuance failed: {envelope.code}")
        token: str = envelope.data.access_token
        return token

    async def aclose(self) -> None:
        self._service = self._bearer = None
        clients, self._clients = self._clients, []
        for client in clients:
            close = getattr(client, "aclose", None) or getattr(client, "close", None)
            if close is not None:
                await close()

    async def __aenter__(self) -> VlunaEmulator:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        await self.aclose()

    # --- counters, faults, clock --------------------------------------------------------------

    def calls(self, operation: str | None = None) -> Any:
        """Calls per operation (`{"service.gate_authorize": 2, ...}`), or one operation's count
        (`"gate_authorize"` sums both clients; `"service.gate_authorize"` is one)."""
        if operation is None:
            return dict(self.core.faults.calls)
        return self.core.faults.count(operation)

    def inject_fault(
        self,
        operation: str = "*",
        *,
        status: int | None = None,
        retry_after: float | None = None,
        latency: float = 0.0,
        drop_connection: bool = False,
        after_processing: bool = False,
        times: int | None = 1,
        code: str | None = None,
    ) -> Fault:
        """Arm a fault for the next `times` calls of `operation` (None: every call).

        `operation` is an SDK method name (both clients), a qualified `service.<name>` /
        `bearer.<name>`, or `*`. `drop_connection` loses the connection before the call is
        served, or after it with `after_processing=True` (the write happened; a retry with the
        same Idempotency-Key gets the stored answer).
        """
        return self.core.faults.add(
            Fault(
                target=operation,
                status=status,
                retry_after=retry_after,
                latency_seconds=latency,
                drop_connection=drop_connection,
                after_processing=after_processing,
                times=times,
                code=code,
            )
        )

    def clear_faults(self) -> None:
        self.core.faults.clear()

    def reset_counters(self) -> None:
        self.core.faults.reset_counters()

    def reset(self) -> None:
        """Forget all state (accounts, tokens' accounts, leases, ...), counters and faults."""
        self.core.reset()

    def advance_time(self, seconds: float) -> None:
        """Move the emulator's clock (token expiry, leases, quota windows) forward."""
        self.core.time_offset += seconds

    def complete_checkout(self, checkout_id: str) -> None:
        """Finish a checkout as if the customer paid on the hosted page."""
        self.core.complete_checkout(checkout_id)

    def balance_xusd(self, billing_account_id: str) -> int:
        """The account's credit (the "oss" flavour: what its grants have left)."""
        return self.core.balance_xusd(billing_account_id)
