"""Published import path of the body serializer."""

from typing import Any

from vlunaai._client_base import serialize_body


def serialize_request_body(body: Any) -> Any:
    return serialize_body(body)


__all__ = ["serialize_request_body"]
