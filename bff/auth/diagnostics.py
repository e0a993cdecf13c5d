"""Why a credential was refused, told to the operator: one INFO line per rejection (rate-limited
per reason, so a flood of bad tokens cannot flood the log) and ``auth_failures_total{reason}``.

The line names the reason code and, for claim mismatches, the expected and received values of
non-secret claims and header fields (``iss``, ``aud``, ``alg``, ``kid``, the missing claim), never
the token. Received values come from the caller, so they are cut short and reduced to printable
characters; the log formatter's redaction runs over them as well.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

from bff.telemetry import metrics

log = logging.getLogger("bff.auth")

# Every reason a sign-in can fail with: the label set of vluna_bff_auth_failures_total.
REASONS = (
    "no_credentials",
    "malformed",
    "algorithm_not_allowed",
    "unknown_kid",
    "bad_signature",
    "expired",
    "not_yet_valid",
    "issuer_mismatch",
    "audience_mismatch",
    "missing_claim",
    "invalid_token",
    "keys_unavailable",
    "csrf_header_missing",
    "session_rejected",
    "introspection_unavailable",
)
_MAX_VALUE = 120
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def shown(value: Any) -> str:
    """A received value fit for a log line: printable ASCII, at most 120 characters."""
    text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    text = _UNPRINTABLE.sub("?", text)
    return text if len(text) <= _MAX_VALUE else text[:_MAX_VALUE] + "..."


class LogBudget:
    """A token bucket per reason: ``burst`` lines at once, then one per ``interval`` seconds.
    Lines left out are counted and reported on the next line of the same reason."""

    def __init__(self, burst: int = 5, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self._burst = float(burst)
        self._interval = interval
        self._clock = clock
        self._tokens: dict[str, tuple[float, float]] = {}
        self._suppressed: dict[str, int] = {}

    def take(self, reason: str) -> int | None:
        """None: stay quiet; otherwise log, mentioning that many suppressed lines before it."""
        now = self._clock()
        tokens, at = self._tokens.get(reason, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) / self._interval)
        if tokens < 1:
            self._tokens[reason] = (tokens, now)
            self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
            return None
        self._tokens[reason] = (tokens - 1, now)
        return self._suppressed.pop(reason, 0)


class AuthDiagnostics:
    def __init__(self, budget: LogBudget | None = None) -> None:
        self._budget = budget or LogBudget()
        for reason in REASONS:
            metrics.AUTH_FAILURES.labels(reason=reason)

    def rejected(self, reason: str, method: str | None, details: Mapping[str, str]) -> None:
        if reason not in REASONS:
            reason = "invalid_token"
        metrics.AUTH_FAILURES.labels(reason=reason).inc()
        level = logging.DEBUG if reason == "no_credentials" else logging.INFO
        if not log.isEnabledFor(level):
            return
        suppressed = self._budget.take(reason)
        if suppressed is None:
            return
        parts = [f"{k} {v}" for k, v in details.items()]
        text = "; ".join(parts)
        if suppressed:
            text += ("; " if text else "") + f"{suppressed} similar rejection(s) not logged"
        log.log(
            level,
            "sign-in refused: %s%s%s",
            reason,
            f" ({method})" if method else "",
            f": {text}" if text else "",
            extra={
                "reason": reason,
                "auth_method": method,
                **{k.replace(" ", "_"): v for k, v in details.items()},
            },
        )
