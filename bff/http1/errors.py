"""What a call through the HTTP/1.1 client (bff/http1/pool.py) is bounded by, and how it fails.

Only these errors escape the client, and none carries a header value in its message: the headers
it sends hold platform tokens and signatures.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timeouts:
    """Seconds: to connect, between two reads of the answer, and for the whole exchange (waiting
    for a pooled connection included)."""

    connect: float
    read: float
    total: float


class UpstreamError(Exception):
    """No usable answer: the connection failed or broke, or the answer was unusable."""

    kind = "connection"


class UpstreamTimeout(UpstreamError):
    kind = "timeout"


class UpstreamTooLarge(UpstreamError):
    kind = "too_large"
