"""`BearerClient`: every `/api/v1` operation, authorised by a platform access token per call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import httpx

from ._http import ErrorMode
from .config import VlunaAIConfig
from .generated.bearer_operations import BearerOperations

DEFAULT_BEARER_BASE_URL = "https://us-central1.api.vluna.ai/api/v1"


@dataclass
class BearerClientOptions:
    config: VlunaAIConfig
    error_mode: ErrorMode = "result"
    max_retries: int = 2
    http_client: httpx.AsyncClient | None = field(default=None, repr=False)
    transport: httpx.AsyncBaseTransport | None = field(default=None, repr=False)
    limits: httpx.Limits | None = None
    default_headers: Mapping[str, str] | None = None


class BearerClient(BearerOperations):
    """Pass the token as `RequestContext(access_token=...)`; without one a call raises at once."""

    _requires_access_token = True

    def __init__(self, options: BearerClientOptions) -> None:
        super().__init__(
            config=options.config,
            default_base_url=DEFAULT_BEARER_BASE_URL,
            error_mode=options.error_mode,
            signer=None,
            max_retries=options.max_retries,
            http_client=options.http_client,
            transport=options.transport,
            limits=options.limits,
            default_headers=options.default_headers,
        )

    def __repr__(self) -> str:
        return f"BearerClient(realm_id={self._http.realm_id!r})"


def create_bearer_client(options: BearerClientOptions) -> BearerClient:
    return BearerClient(options)
