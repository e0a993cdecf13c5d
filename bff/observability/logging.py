"""Structured logs: one JSON object per line, every secret and token redacted.

Redaction happens in the formatter, on the final text of every record (message, arguments,
exception): the configured secrets by value (service-key secret, encryption and HMAC keys, Redis
URL, ...), plus anything shaped like a credential (JWTs, ``Bearer ...``, ``access_token=...``,
passwords in URLs). The service's own code does not log such values in the first place; this is
the net under it, for third-party libraries too.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, SecretStr

from bff.telemetry.context import current_request, quiet_http

REDACTED = "[REDACTED]"

_PATTERNS = [
    # JWTs (platform tokens, sign-in tokens): header.payload.signature, base64url.
    (re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"), REDACTED),
    (re.compile(r"(?i)\b(bearer|basic|svc-auth[\w-]*)\s+[A-Za-z0-9._~+/=,:;-]{8,}"), rf"\1 {REDACTED}"),
    (
        re.compile(
            r"(?i)((?:access_token|refresh_token|id_token|token|secret|password|passwd|api_key|"
            r"authorization|cookie|set-cookie|signature)[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}&]{4,}"
        ),
        rf"\1{REDACTED}",
    ),
    # Credentials in URLs: scheme://user:password@host
    (re.compile(r"(://[^:/@\s]*:)[^@\s/]+@"), rf"\1{REDACTED}@"),
]

# Every pattern above needs one of these (case-insensitive) to match at all: text without any of
# them is left as it is without running the patterns (most log values: ids, hashes, routes).
_TRIGGER = re.compile(
    r"eyJ|bearer|basic|svc-auth|token|secret|passw|api_key|authorization|cookie|signature|://", re.I
)

_secrets: set[str] = set()
_secrets_longest_first: tuple[str, ...] = ()
# Texts found clean before (log values repeat: messages, routes, methods, identity hashes);
# bounded, and emptied whenever the set of secrets changes.
_redacted: dict[str, str] = {}
_REDACTED_MAX = 2048
_MEMO_MAX_LEN = 256

# LogRecord attributes that are not extras.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn: the same message with ANSI colours
}


def register_secret(value: str | None) -> None:
    """A value that must never appear in a log line (shorter than 6 characters: ignored)."""
    global _secrets_longest_first
    if value and len(value) >= 6:
        _secrets.add(value)
        # An encryption key spec "<id>:<base64>": its key part alone is the secret too.
        tail = value.split(":", 1)[1] if ":" in value else ""
        if len(tail) >= 6:
            _secrets.add(tail)
        _secrets_longest_first = tuple(sorted(_secrets, key=len, reverse=True))
        _redacted.clear()


def register_settings_secrets(settings: BaseModel) -> None:
    """Every ``SecretStr`` anywhere in the settings tree."""
    for secret in _walk_secrets(settings):
        register_secret(secret)


def _walk_secrets(node: Any) -> Iterable[str]:
    if isinstance(node, SecretStr):
        yield node.get_secret_value()
    elif isinstance(node, BaseModel):
        for name in type(node).model_fields:
            yield from _walk_secrets(getattr(node, name))
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from _walk_secrets(item)
    elif isinstance(node, dict):
        for item in node.values():
            yield from _walk_secrets(item)


def redact(text: str) -> str:
    done = _redacted.get(text)
    if done is not None:
        return done
    out = text
    for secret in _secrets_longest_first:
        if secret in out:
            out = out.replace(secret, REDACTED)
    if _TRIGGER.search(out):
        for pattern, replacement in _PATTERNS:
            out = pattern.sub(replacement, out)
    if out == text and len(text) <= _MEMO_MAX_LEN:
        # Only texts with nothing to redact are kept: no credential is held here longer.
        if len(_redacted) >= _REDACTED_MAX:
            _redacted.clear()
        _redacted[text] = out
    return out


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return redact(str(value))


_last_second: tuple[int, str] = (-1, "")


def _second(epoch: int) -> str:
    """``YYYY-MM-DDTHH:MM:SS`` (UTC) of ``epoch``, formatted once per second."""
    global _last_second
    last = _last_second
    if last[0] == epoch:
        return last[1]
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
    _last_second = (epoch, text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _second(int(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        info = current_request.get()
        if info is not None and "request_id" not in record.__dict__:
            out["request_id"] = info.request_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = _clean(value)
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


_ACCESS_FIELDS = ("method", "route", "status", "duration_ms")


class TextFormatter(logging.Formatter):
    """For humans (dev mode): the message, then the record's extra fields as ``key=value``; an
    access line reads ``GET /vluna/token 200 3.1 ms`` followed by the rest of its fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        extras = {
            k: v
            for k, v in record.__dict__.items()
            if k not in _STANDARD and not k.startswith("_") and v is not None
        }
        if all(k in extras for k in _ACCESS_FIELDS):
            method, route, status, ms = (extras.pop(k) for k in _ACCESS_FIELDS)
            message = f"{method} {route} {status} {ms} ms"
        line = f"{self.formatTime(record)} {record.levelname} {record.name}: {message}"
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return redact(line)


class ProbeCallsAtDebug(logging.Filter):
    """On the ``httpx`` logger: the INFO line of a probe's own call (``quiet_http`` set) becomes a
    DEBUG line, shown only when the root logger is at debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and quiet_http.get():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def configure_logging(level: str, fmt: str = "json", stream: Any = None) -> logging.Handler:
    """Root handler on stderr in the chosen format; uvicorn's loggers go through it too."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_vluna_bff", False):
            root.removeHandler(old)
    handler._vluna_bff = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    httpx_log = logging.getLogger("httpx")
    if not any(isinstance(f, ProbeCallsAtDebug) for f in httpx_log.filters):
        httpx_log.addFilter(ProbeCallsAtDebug())
    # Our own access log replaces uvicorn's (which would print raw paths with query strings).
    logging.getLogger("uvicorn.access").disabled = True
    return handler
