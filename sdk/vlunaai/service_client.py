"""`ServiceClient`: every `/mgt/v1` operation, signed with the service key (SVC-AUTH)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from ._http import ErrorMode
from .config import VlunaAIConfig
from .generated.service_operations import ServiceOperations
from .signing import ServiceKeyAuth, ServiceKeyCredentials

DEFAULT_SERVICE_BASE_URL = "https://us-central1.api.vluna.ai/mgt/v1"


@dataclass
class ServiceClientOptions:
    """The published options (config, service_key, error_mode) plus the sturdier core's knobs."""

    config: VlunaAIConfig
    service_key: ServiceKeyCredentials
    error_mode: ErrorMode = "result"
    max_retries: int = 2
    http_client: httpx.AsyncClient | None = field(default=None, repr=False)
    transport: httpx.AsyncBaseTransport | None = field(default=None, repr=False)
    limits: httpx.Limits | None = None
    default_headers: Mapping[str, str] | None = None


class ServiceClient(ServiceOperations):
    def __init__(self, options: ServiceClientOptions) -> None:
        # Built first: a malformed secret fails here, with a clear message, not on the first call.
        signer = ServiceKeyAuth(options.service_key)
        super().__init__(
            config=options.config,
            default_base_url=DEFAULT_SERVICE_BASE_URL,
            error_mode=options.error_mode,
            signer=signer,
            max_retries=options.max_retries,
            http_client=options.http_client,
            transport=options.transport,
            limits=options.limits,
            default_headers=options.default_headers,
        )

    def __repr__(self) -> str:
        return f"ServiceClient(realm_id={self._http.realm_id!r})"


def create_service_client(options: ServiceClientOptions) -> ServiceClient:
    return ServiceClient(options)
