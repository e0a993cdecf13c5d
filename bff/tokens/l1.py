"""A first-level, in-process cache of decrypted token entries, coherent across replicas.

A cache hit otherwise costs a Redis GET, an AES-GCM decryption and a JSON parse. This keeps the
decrypted entry in the process, under exactly the Redis cache key (an HMAC of realm, principal,
user and scopes), and serves it only while this process can prove it would have heard of a
sign-out:

- Every sign-out (``TokenBroker.forget``) publishes the deleted keys on one channel,
  ``<prefix>l1:inval``, after deleting them in Redis; every replica subscribes to it and drops
  those keys (and counts an invalidation epoch). Every token stored publishes its key there too
  (bff/tokens/lock.py ``store_and_release``, bff/tokens/store.py): when a key is filled twice (two
  issuances during a Redis failover), no replica keeps serving the token Redis no longer holds.
- Every ``heartbeat_sec`` each replica publishes the time it sent the heartbeat on a channel of
  its own, received on the *same* subscription connection. Redis delivers a connection's
  messages in the order it executed the PUBLISHes, so a heartbeat sent at ``t`` and received
  proves that every invalidation published before ``t`` has been received (and applied: one
  task reads and applies the messages in order).
- An entry is served only while the last heartbeat received was sent less than
  ``invalidation_window_sec`` ago. A sign-out waits that window after its PUBLISH before it
  answers 204: a replica serving from L1 after the 204 holds a heartbeat sent after the PUBLISH,
  so it has already dropped the keys. A replica that cannot hear Redis (connection lost, Redis
  down, event loop stalled) stops serving from L1 within the window and reads Redis instead.
- A Redis read fills L1 only if no invalidation (and no reconnection) happened since the read
  started, so a value read just before a sign-out is never put back after it.
- An entry never outlives the token: it is served until the earliest of its refresh point
  (``refresh_ahead_ratio`` of its life: then Redis is read and the renewal starts as before),
  its expiry minus the safety margin (when Redis expires it too) and ``max_ttl_sec`` after it was
  read (a bound for deletions this service did not make, such as an eviction).

Every replica must use the same ``cache.l1`` settings (the window is waited by the signing-out
replica and trusted by the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from redis.asyncio import Redis

from bff.redis_client import REDIS_ERRORS
from bff.stats import Stats

if TYPE_CHECKING:
    from bff.tokens.broker import TokenEntry

log = logging.getLogger("bff.l1")

STOP_TIMEOUT_SEC = 2.0
_ALL = b"*"


class L1Cache:
    def __init__(
        self,
        redis: Redis,
        prefix: str,
        stats: Stats,
        *,
        max_entries: int = 10_000,
        max_ttl_sec: float = 30.0,
        invalidation_window_sec: float = 0.5,
        heartbeat_sec: float = 0.1,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._stats = stats
        self._max = max_entries
        self.max_ttl_sec = max_ttl_sec
        self.window_sec = invalidation_window_sec
        self._heartbeat_sec = heartbeat_sec
        self._monotonic = monotonic
        self.channel = f"{prefix}l1:inval"
        self._heartbeat_channel = f"{prefix}l1:hb:{secrets.token_hex(8)}"
        # key -> (entry, serve until: epoch seconds on the broker's clock)
        self._entries: dict[str, tuple[TokenEntry, float]] = {}
        # Incremented by every invalidation received and every change of the subscription.
        self.epoch = 0
        # Monotonic time until which entries may be served (last heartbeat's send time + window).
        self._fresh_until = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self.subscribed = asyncio.Event()  # set while subscribed (tests wait on it)
        self.heard = asyncio.Event()  # set by every heartbeat or invalidation received

    def __repr__(self) -> str:
        return f"L1Cache(entries={len(self._entries)})"

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def usable(self) -> bool:
        return self._monotonic() < self._fresh_until

    # -- the hit path ---------------------------------------------------------------------------

    def get(self, key: str, now: float) -> TokenEntry | None:
        item = self._entries.get(key)
        if item is None:
            return None
        if now >= item[1]:
            del self._entries[key]
            return None
        if self._monotonic() >= self._fresh_until:
            return None
        return item[0]

    def put(self, key: str, entry: TokenEntry, until: float, epoch: int) -> None:
        """Keep ``entry`` (read from Redis when ``self.epoch`` was ``epoch``) until ``until``."""
        if epoch != self.epoch or not self.usable:
            return
        if key not in self._entries and len(self._entries) >= self._max:
            # The oldest insertion goes (dicts keep insertion order).
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (entry, until)

    # -- sign-out -------------------------------------------------------------------------------

    def drop(self, keys: Sequence[str]) -> None:
        self.epoch += 1
        for key in keys:
            self._entries.pop(key, None)

    async def invalidate(self, keys: Sequence[str]) -> None:
        """Tell every replica (this one included) to drop ``keys``; raises a Redis error when the
        message could not be published."""
        self.drop(keys)
        await self._redis.publish(self.channel, "\n".join(keys))

    # -- subscription ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen(), name="bff-l1-invalidations"),
            asyncio.create_task(self._beat(), name="bff-l1-heartbeat"),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded, like the lock notifier: closing a pub/sub connection can stall in redis-py.
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_SEC)
        self._lost()

    def _lost(self) -> None:
        self._fresh_until = 0.0
        self.epoch += 1
        self._entries.clear()
        self.subscribed.clear()

    def _apply(self, channel: bytes | str, data: bytes | str) -> None:
        if isinstance(channel, str):
            channel = channel.encode()
        if isinstance(data, str):
            data = data.encode()
        if channel == self._heartbeat_channel.encode():
            try:
                sent = float(data)
            except ValueError:
                return
            self._fresh_until = max(self._fresh_until, sent + self.window_sec)
        elif data == _ALL:
            self.epoch += 1
            self._entries.clear()
            self._stats.inc("l1_invalidations")
        else:
            self.drop([k.decode() for k in data.split(b"\n") if k])
            self._stats.inc("l1_invalidations")
        self.heard.set()

    async def _listen(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.channel, self._heartbeat_channel)
                confirmed = 0
                while True:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is None:
                        continue
                    kind = msg.get("type")
                    if kind == "subscribe":
                        confirmed += 1
                        if confirmed == 2:
                            # Whatever was read before this point may have missed invalidations.
                            self._entries.clear()
                            self.epoch += 1
                            self.subscribed.set()
                            backoff = 0.1
                    elif kind == "message":
                        self._apply(msg["channel"], msg["data"])
            except asyncio.CancelledError:
                raise
            except REDIS_ERRORS as exc:
                if self.subscribed.is_set():
                    log.warning("token invalidations interrupted (%s); L1 cache off", type(exc).__name__)
                self._stats.inc("l1_subscription_lost")
                self._lost()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self._lost()
                with contextlib.suppress(*REDIS_ERRORS, asyncio.TimeoutError):
                    await asyncio.wait_for(pubsub.aclose(), STOP_TIMEOUT_SEC)

    async def _beat(self) -> None:
        while True:
            if self.subscribed.is_set():
                # The send time is taken before the PUBLISH goes out: the proof it carries
                # ("every invalidation published before this time was received") is conservative.
                sent = self._monotonic()
                # Failed: no heartbeat, no L1 (the entries stop being served within the window).
                with contextlib.suppress(*REDIS_ERRORS):
                    await self._redis.publish(self._heartbeat_channel, repr(sent))
            await asyncio.sleep(self._heartbeat_sec)
