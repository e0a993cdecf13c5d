"""VlunaAI Python SDK: async clients for the Billing and Usage Gate APIs.

A drop-in for the published `vlunaai` client (0.1.2 and 0.3.2): the same public names and wire
format, on a core that retries with backoff, bounds every attempt in time, raises typed errors
and percent-encodes path parameters.
"""

from ._version import __version__
from .bearer_client import BearerClient, BearerClientOptions, create_bearer_client
from .config import RequestContext, VlunaAIConfig
from .errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    UnprocessableEntityError,
    VlunaAIError,
)
from .gate_results import GatePreflightError, GatePreflightResult, GatePreflightSuccess
from .pagination import paginate
from .service_client import ServiceClient, ServiceClientOptions, create_service_client
from .signing import ServiceKeyAuth, ServiceKeyCredentials

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "BearerClient",
    "BearerClientOptions",
    "ConflictError",
    "GatePreflightError",
    "GatePreflightResult",
    "GatePreflightSuccess",
    "InternalServerError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestContext",
    "ServiceClient",
    "ServiceClientOptions",
    "ServiceKeyAuth",
    "ServiceKeyCredentials",
    "UnprocessableEntityError",
    "VlunaAIConfig",
    "VlunaAIError",
    "__version__",
    "create_bearer_client",
    "create_service_client",
    "paginate",
]
