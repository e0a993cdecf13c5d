"""Error answers as the open-source server writes them:
`{"ok": false, "code": "...", "message": "...", "meta": {"status": <http>, ...}}` — no trace id,
and a few answers (500s, the bearer account check, some not-found and validation errors) without
`meta` at all.
"""

from __future__ import annotations

from typing import Any


class OssError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        meta: dict[str, Any] | None = None,
        bare: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.meta = meta
        self.bare = bare  # no meta object at all

    def envelope(self) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "code": self.code, "message": self.message}
        if not self.bare:
            body["meta"] = {**(self.meta or {}), "status": self.status}
        return body


def unexpected() -> OssError:
    """What the server answers to anything it did not expect (its log has the cause)."""
    return OssError(500, "SERVER.UNEXPECTED", "Unexpected server error. Please try again later.", bare=True)


def invalid(message: str, status: int = 422, *, bare: bool = False) -> OssError:
    return OssError(status, "VALIDATION.INVALID_INPUT", message, bare=bare)


def not_found(message: str, *, code: str = "NOT_FOUND", bare: bool = False) -> OssError:
    return OssError(404, code, message, bare=bare)


def unauthorized(message: str) -> OssError:
    return OssError(401, "AUTH.UNAUTHORIZED", message)


def bad_signature(message: str) -> OssError:
    return OssError(401, "AUTH.INVALID_SERVICE_SIGNATURE", message)
