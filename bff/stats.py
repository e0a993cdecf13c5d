"""Process-local counters; the later metrics endpoint exposes them."""

from __future__ import annotations

from collections import Counter


class Stats:
    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def inc(self, name: str, n: int = 1) -> None:
        self._counts[name] += n

    def get(self, name: str) -> int:
        return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)
