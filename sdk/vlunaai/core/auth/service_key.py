"""Published import path of the service-key signer."""

from vlunaai.signing import EMPTY_BODY_DIGEST, ServiceKeyAuth, ServiceKeyCredentials

EMPTY_SHA256 = EMPTY_BODY_DIGEST.removeprefix("sha-256=:").removesuffix(":")

__all__ = ["EMPTY_SHA256", "ServiceKeyAuth", "ServiceKeyCredentials"]
