"""A short-lived, per-process cache of the answers of routes marked ``public`` (the catalog).

Only 200 answers are stored. The caller (principal and user) is part of every key: catalog items
carry per-account fields (``subscription_state``), so nothing fetched with one user's token is
served to another. The ETag is a digest of the body, so every replica computes the same one.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class CachedAnswer:
    body: bytes
    content_type: str
    etag: str
    expires_at: float


def etag_of(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        c = candidate.strip()
        if c == "*" or c.removeprefix("W/") == etag:
            return True
    return False


class PublicCache:
    def __init__(self, ttl_sec: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl_sec
        self._max = max_entries
        self._clock = clock
        self._data: OrderedDict[tuple[str, ...], CachedAnswer] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.ttl > 0

    def get(self, key: tuple[str, ...]) -> CachedAnswer | None:
        item = self._data.get(key)
        if item is None:
            return None
        if item.expires_at <= self._clock():
            del self._data[key]
            return None
        return item

    def put(self, key: tuple[str, ...], body: bytes, content_type: str) -> CachedAnswer:
        answer = CachedAnswer(body, content_type, etag_of(body), self._clock() + self.ttl)
        if self.enabled:
            self._data[key] = answer
            self._data.move_to_end(key)
            while len(self._data) > self._max:
                self._data.popitem(last=False)
        return answer

    def clear(self) -> None:
        self._data.clear()
