"""Error answers of the emulator: one exception type, rendered as the Vluna error envelope."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answer: HTTP status, `DOMAIN.REASON` code, message, and optional extras.

    `reason` goes to `meta.reason` (the short machine reason the real service puts there, e.g.
    `missing_idempotency_key`); `meta` entries are merged into the envelope's meta.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        reason: str | None = None,
        hints: list[dict[str, Any]] | None = None,
        meta: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.reason = reason
        self.hints = hints
        self.meta = meta
        self.error = error
        self.headers = headers or {}

    def envelope(self, trace_id: str) -> dict[str, Any]:
        meta: dict[str, Any] = {"status": self.status}
        if self.reason is not None:
            meta["reason"] = self.reason
        if self.meta:
            meta.update(self.meta)
        body: dict[str, Any] = {
            "ok": False,
            "code": self.code,
            "message": self.message,
            "meta": meta,
            "trace_id": trace_id,
        }
        if self.hints:
            body["hints"] = self.hints
        if self.error is not None:
            body["error"] = self.error
        return body


def invalid_input(message: str, *, reason: str | None = None, status: int = 422) -> ApiError:
    return ApiError(status, "VALIDATION.INVALID_INPUT", message, reason=reason)


def not_found(what: str) -> ApiError:
    return ApiError(404, "RESOURCE.NOT_FOUND", f"{what} not found", reason="not_found")


def unauthorized(reason: str, message: str) -> ApiError:
    return ApiError(401, "AUTH.UNAUTHORIZED", message, reason=reason)


def bad_signature(reason: str, message: str) -> ApiError:
    return ApiError(401, "AUTH.INVALID_SERVICE_SIGNATURE", message, reason=reason)
