"""Per-operation call counters and fault injection.

A fault targets one operation (`gate_authorize`, matching both clients, or a qualified
`service.gate_authorize` / `bearer.list_catalog_products`) or every operation (`*`), for the
next `times` calls or for all calls (`times=None`). A fault can answer a status code (with an
optional Retry-After), add latency before the real answer, or drop the connection without an
answer, either before the call is served or after it (the write happened, the answer is lost).
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


class ConnectionDropped(Exception):
    """Raised by the app to drop the connection without a (complete) response."""


@dataclass
class Fault:
    target: str = "*"
    status: int | None = None
    retry_after: float | None = None
    latency_seconds: float = 0.0
    drop_connection: bool = False
    after_processing: bool = False  # with drop_connection: serve the call, then lose the answer
    times: int | None = 1
    code: str | None = None
    message: str | None = None
    fault_id: int = 0
    hits: int = field(default=0)

    def matches(self, qualified: str, name: str) -> bool:
        return self.target in ("*", name, qualified)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.fault_id,
            "target": self.target,
            "status": self.status,
            "retry_after": self.retry_after,
            "latency_seconds": self.latency_seconds,
            "drop_connection": self.drop_connection,
            "after_processing": self.after_processing,
            "times": self.times,
            "hits": self.hits,
        }


class Faults:
    """Armed faults and call counters. Cheap when nothing is armed (one truthiness check)."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._next_id = 1
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()

    @property
    def armed(self) -> bool:
        return bool(self._faults)

    def add(self, fault: Fault) -> Fault:
        if fault.times is not None and fault.times < 1:
            raise ValueError("times must be >= 1, or None for every call")
        if fault.status is None and not fault.drop_connection and fault.latency_seconds <= 0:
            raise ValueError("a fault needs a status, a latency or drop_connection")
        if fault.status is not None and not 100 <= fault.status <= 599:
            raise ValueError("status must be an HTTP status code")
        with self._lock:
            fault.fault_id = self._next_id
            self._next_id += 1
            self._faults.append(fault)
        return fault

    def take(self, qualified: str, name: str) -> Fault | None:
        """The first armed fault for this operation, consuming one of its uses."""
        if not self._faults:
            return None
        with self._lock:
            for fault in self._faults:
                if fault.matches(qualified, name):
                    fault.hits += 1
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    def list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [f.describe() for f in self._faults]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def count(self, op: str) -> int:
        """Calls of an operation: qualified (`service.x`) or by name over both clients."""
        if "." in op:
            return self.calls.get(op, 0)
        return self.calls.get(f"service.{op}", 0) + self.calls.get(f"bearer.{op}", 0)

    def reset_counters(self) -> None:
        self.calls.clear()
