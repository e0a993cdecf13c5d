"""Published import path of the request context."""

from vlunaai.config import RequestContext

__all__ = ["RequestContext"]
