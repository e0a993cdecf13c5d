"""A Redis lock with expiry, plus wake-ups for those waiting on it.

The holder sets ``lock`` with NX and an expiry, so a crashed holder blocks others only until the
expiry. Releasing deletes the lock only if it is still ours and publishes on the key's channel.
One pattern subscription per process (``Notifier``) turns those messages into ``asyncio.Event``s,
so waiters wake as soon as the token is in the cache instead of polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterator
from typing import Any

from bff.redis_client import REDIS_ERRORS
from bff.tokens.keys import CacheKeys

log = logging.getLogger("bff.lock")

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
redis.call('publish', ARGV[2], '1')
return 1
"""


class RedisLock:
    def __init__(self, redis: Any) -> None:
        self._redis = redis
        self._release = redis.register_script(_RELEASE)

    async def acquire(self, lock_key: str, ttl_sec: float) -> str | None:
        owner = secrets.token_hex(16)
        ok = await self._redis.set(lock_key, owner, nx=True, px=max(1, int(ttl_sec * 1000)))
        return owner if ok else None

    async def release(self, lock_key: str, owner: str, channel: str) -> None:
        await self._release(keys=[lock_key], args=[owner, channel])

    async def remaining_sec(self, lock_key: str) -> float:
        """Seconds until the lock expires; 0 when it is gone."""
        ms = await self._redis.pttl(lock_key)
        return max(0.0, int(ms) / 1000)


STOP_TIMEOUT_SEC = 2.0


class Notifier:
    def __init__(self, redis: Any, keys: CacheKeys) -> None:
        self._redis = redis
        self._keys = keys
        self._events: dict[str, set[asyncio.Event]] = {}
        self._task: asyncio.Task[None] | None = None
        self.connected = False

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="bff-lock-notifier")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            # Bounded: closing a pub/sub connection whose read was just cancelled can stall in
            # redis-py, and shutdown must not wait on it (the process is ending anyway).
            done, _ = await asyncio.wait({self._task}, timeout=STOP_TIMEOUT_SEC)
            if not done:
                log.warning("lock notifier did not stop within %.0f s; leaving it", STOP_TIMEOUT_SEC)
            self._task = None

    @contextlib.contextmanager
    def subscription(self, token_key: str) -> Iterator[asyncio.Event]:
        # Register before re-checking the cache: a release published in between is not lost.
        event = asyncio.Event()
        self._events.setdefault(token_key, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._events.get(token_key)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._events[token_key]

    def _wake(self, token_key: str) -> None:
        for event in self._events.get(token_key, ()):
            event.set()

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.psubscribe(self._keys.channel_pattern())
                self.connected = True
                backoff = 0.1
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None or msg.get("type") != "pmessage":
                        continue
                    channel = msg["channel"]
                    if isinstance(channel, bytes):
                        channel = channel.decode()
                    self._wake(self._keys.token_key_of_channel(channel))
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                # Waiters still re-check on a short timer, so a lost subscription delays, never blocks.
                if self.connected:
                    log.warning("lock notifications interrupted (%s)", type(exc).__name__)
                self.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                with contextlib.suppress(*REDIS_ERRORS, asyncio.TimeoutError):
                    await asyncio.wait_for(pubsub.aclose(), STOP_TIMEOUT_SEC)
