"""Client configuration and per-request context (the published client's public dataclasses)."""

from __future__ import annotations

from dataclasses import dataclass

from ._version import __version__

DEFAULT_USER_AGENT = "vlunaai-python"
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_CONNECT_TIMEOUT_SECONDS = 5.0


@dataclass
class VlunaAIConfig:
    """Where and how to reach Vluna.

    `base_url` includes the API prefix (`.../mgt/v1` for the service client, `.../api/v1` for the
    bearer client). `timeout_seconds` bounds each attempt as a whole (connect, send, wait and read),
    not just each socket operation; `connect_timeout_seconds` defaults to 5 s.
    """

    base_url: str | None
    realm_id: str
    user_agent: str = DEFAULT_USER_AGENT
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    connect_timeout_seconds: float | None = None
    read_timeout_seconds: float | None = None
    write_timeout_seconds: float | None = None
    pool_timeout_seconds: float | None = None


@dataclass
class RequestContext:
    """Per-call values: account/principal/user headers, idempotency key, bearer token, timeout."""

    billing_account_id: str | None = None
    principal_id: str | None = None
    user_id: str | None = None
    idempotency_key: str | None = None
    access_token: str | None = None
    request_id: str | None = None
    request_timeout_seconds: float | None = None

    def __repr__(self) -> str:
        # The access token is a credential: never print it.
        token = "'***'" if self.access_token else "None"
        return (
            f"RequestContext(billing_account_id={self.billing_account_id!r}, "
            f"principal_id={self.principal_id!r}, user_id={self.user_id!r}, "
            f"idempotency_key={self.idempotency_key!r}, access_token={token}, "
            f"request_id={self.request_id!r}, request_timeout_seconds={self.request_timeout_seconds!r})"
        )


def user_agent_for(configured: str | None) -> str:
    """The User-Agent always names the SDK and its version, after any caller-chosen product."""
    sdk = f"{DEFAULT_USER_AGENT}/{__version__}"
    if not configured or configured == DEFAULT_USER_AGENT:
        return sdk
    return f"{configured} {sdk}"
