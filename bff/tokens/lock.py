"""A Redis lock with expiry, plus wake-ups for those waiting on it.

The holder sets ``lock`` with NX and an expiry, so a crashed holder blocks others only until the
expiry. Releasing deletes the lock only if it is still ours and announces it:

- one Redis (or Sentinel): the release script publishes on the key's channel, and one pattern
  subscription per process (``Notifier``) turns those messages into ``asyncio.Event``s;
- Redis Cluster (no pattern subscriptions across a cluster): the holder sends ``SPUBLISH`` on
  one of ``SHARD_CHANNELS`` sharded channels (chosen by the key; the message names the key),
  and every process holds ``SSUBSCRIBE``s to all of them, one connection per master serving them
  (``ShardedNotifier``). A sharded message only travels within its shard, not over the whole
  cluster bus as ``PUBLISH`` does.

Either way waiters wake as soon as the token is in the cache instead of polling; while the
subscriptions are down (``connected`` False) they re-check every 50 ms.

Outside a Cluster (``scripted``) a cold issuance is two round trips, each one script:
``read_or_acquire`` reads the cache and, when the token is missing, takes the lock and counts the
issuance for the user's limit (bff/tokens/limits.py; ``acquire_and_read`` does the same for a
fill that did not read first); ``store_and_release`` checks the sign-out marker, stores the entry,
frees the lock and publishes. On a Cluster those keys live in different slots
(their names are HMACs, without hash tags), so there they are separate commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Iterator
from typing import Any

from redis.asyncio import ConnectionPool, Redis, RedisCluster
from redis.asyncio.client import PubSub
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.commands.core import AsyncScript
from redis.exceptions import RedisClusterException

from bff.redis_client import REDIS_ERRORS, RedisClient
from bff.tokens.keys import CacheKeys

log = logging.getLogger("bff.lock")

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
redis.call('publish', ARGV[2], '1')
return 1
"""

# Cluster: the announcement is an SPUBLISH of its own (its channel lives in another slot).
_RELEASE_QUIET = """
if redis.call('get', KEYS[1]) == ARGV[1] then redis.call('del', KEYS[1]) end
return 1
"""


# Lock, then (only if ours) re-read the token and, when absent, count the issuance it announces.
_ACQUIRE = """
if not redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0} end
local v = redis.call('get', KEYS[2])
local n = false
if not v and #KEYS > 2 then
  n = redis.call('incr', KEYS[3])
  redis.call('expire', KEYS[3], ARGV[3])
end
return {1, v, n}
"""

# Read the token; only when it is absent, lock, and count the issuance that follows.
_READ_OR_ACQUIRE = """
local v = redis.call('get', KEYS[1])
if v then return {0, v} end
if not redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {0} end
local n = false
if #KEYS > 2 then
  n = redis.call('incr', KEYS[3])
  redis.call('expire', KEYS[3], ARGV[3])
end
return {1, false, n}
"""

# Store the entry unless the user signed out since the issuance started (the marker holds the
# sign-out's time), telling the first levels (ARGV[6], when given) to drop what they hold under the
# key, then release as _RELEASE does. 0 when the sign-out kept it out.
_STORE_AND_RELEASE = """
local out = tonumber(redis.call('get', KEYS[3]) or '')
local stored = 1
if out and out >= tonumber(ARGV[4]) then
  stored = 0
elseif tonumber(ARGV[2]) > 0 then
  redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
  if ARGV[6] then redis.call('publish', ARGV[6], KEYS[1]) end
end
if redis.call('get', KEYS[2]) == ARGV[3] then redis.call('del', KEYS[2]) end
redis.call('publish', ARGV[5], '1')
return stored
"""


def _script(redis: RedisClient, text: str) -> AsyncScript:
    # redis-py annotates register_script for Redis only; RedisCluster has it too (ScriptCommands),
    # and runs a script on the node that serves its keys.
    return redis.register_script(text)  # type: ignore[misc]


class RedisLock:
    def __init__(self, redis: RedisClient, keys: CacheKeys, *, sharded: bool = False) -> None:
        self._redis = redis
        self._keys = keys
        self._sharded = sharded
        self._release = _script(redis, _RELEASE_QUIET if sharded else _RELEASE)
        self._acquire = None if sharded else _script(redis, _ACQUIRE)
        self._read_or_acquire = None if sharded else _script(redis, _READ_OR_ACQUIRE)
        self._store_and_release = None if sharded else _script(redis, _STORE_AND_RELEASE)

    @property
    def scripted(self) -> bool:
        """The holder's work runs as the two scripts (one Redis or Sentinel, not a Cluster)."""
        return not self._sharded

    async def acquire_and_read(
        self, lock_key: str, ttl_sec: float, token_key: str, counter: tuple[str, int] | None
    ) -> tuple[str | None, bytes | None, int | None]:
        """(owner, the cached value, the counter's new value) once the lock is ours, else (None,
        None, None). ``counter`` (key, expiry in seconds) is incremented only when the value is
        absent, that is when an issuance follows."""
        assert self._acquire is not None
        owner = secrets.token_hex(16)
        keys = [lock_key, token_key]
        args: list[Any] = [owner, max(1, int(ttl_sec * 1000))]
        if counter is not None:
            keys.append(counter[0])
            args.append(counter[1])
        reply = await self._acquire(keys=keys, args=args)
        if not int(reply[0]):
            return None, None, None
        value, count = reply[1], reply[2]
        return owner, bytes(value) if value is not None else None, int(count) if count is not None else None

    async def read_or_acquire(
        self, token_key: str, lock_key: str, ttl_sec: float, counter: tuple[str, int] | None
    ) -> tuple[str | None, bytes | None, int | None]:
        """(None, the cached value, None) when the cache has one; else (owner, None, the counter's
        new value) once the lock is ours, or (None, None, None) when another holds it."""
        assert self._read_or_acquire is not None
        owner = secrets.token_hex(16)
        keys = [token_key, lock_key]
        args: list[Any] = [owner, max(1, int(ttl_sec * 1000))]
        if counter is not None:
            keys.append(counter[0])
            args.append(counter[1])
        reply = await self._read_or_acquire(keys=keys, args=args)
        if not int(reply[0]):
            value = reply[1] if len(reply) > 1 else None
            return None, bytes(value) if value is not None else None, None
        count = reply[2]
        return owner, None, int(count) if count is not None else None

    async def store_and_release(
        self,
        lock_key: str,
        owner: str,
        token_key: str,
        value: bytes,
        ttl_sec: float,
        marker_key: str,
        since: float,
        l1_channel: str | None = None,
    ) -> bool:
        """Stores ``value`` (for ``ttl_sec``; not at all if <= 0) unless the sign-out marker holds a
        time >= ``since`` (and when stored, publishes the key on ``l1_channel``: every first level
        drops what it holds under it, bff/tokens/l1.py), then frees the lock (if still ours) and
        tells the waiters. False when the sign-out kept the value out."""
        assert self._store_and_release is not None
        args: list[bytes | str | int] = [
            value,
            int(ttl_sec * 1000),
            owner,
            repr(since),
            self._keys.channel(token_key),
        ]
        if l1_channel is not None:
            args.append(l1_channel)
        stored = await self._store_and_release(keys=[token_key, lock_key, marker_key], args=args)
        return bool(int(stored))

    async def acquire(self, lock_key: str, ttl_sec: float) -> str | None:
        owner = secrets.token_hex(16)
        ok = await self._redis.set(lock_key, owner, nx=True, px=max(1, int(ttl_sec * 1000)))
        return owner if ok else None

    async def release(self, lock_key: str, owner: str, token_key: str) -> None:
        """Frees the lock (if still ours) and tells the waiters of ``token_key``."""
        if not self._sharded:
            await self._release(keys=[lock_key], args=[owner, self._keys.channel(token_key)])
            return
        await self._release(keys=[lock_key], args=[owner])
        channel, message = self._keys.shard_channel(token_key)
        await self._redis.execute_command("SPUBLISH", channel, message)

    async def remaining_sec(self, lock_key: str) -> float:
        """Seconds until the lock expires; 0 when it is gone."""
        ms = await self._redis.pttl(lock_key)
        return max(0.0, int(ms) / 1000)


STOP_TIMEOUT_SEC = 2.0


class Waiters:
    """Waiters of this process by token key, woken by whatever subscription a subclass runs."""

    def __init__(self, redis: RedisClient, keys: CacheKeys) -> None:
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
        raise NotImplementedError


class Notifier(Waiters):
    """One Redis (or the master Sentinel names): one pattern subscription per process.

    With Sentinel it also follows the master (``_follow_master``): redis-py asks the sentinels
    only when it opens a connection, so pooled connections (and this subscription) would stay
    with a demoted master. After ``SENTINEL FAILOVER`` the old master goes on accepting writes
    until the sentinels reconfigure it, about 10 s later: replicas talking to it and replicas
    talking to the new master would each hold their own locks. Every ``SENTINEL_CHECK_SEC`` the
    sentinels are asked for the master; when it changed, pooled connections to any other server
    are closed (idle ones at once; on the next two checks also those still in use, which by then
    are subscriptions, such as the first-level cache's) and this subscription is opened again."""

    def __init__(self, redis: Redis, keys: CacheKeys) -> None:
        super().__init__(redis, keys)
        self._plain = redis  # (typed: pub/sub is a Redis client's, not a cluster client's)
        pool = getattr(redis, "connection_pool", None)
        self._sentinel_pool = pool if isinstance(pool, SentinelConnectionPool) else None
        self._master: tuple[str, int] | None = None
        self._resubscribe = False
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        if self._sentinel_pool is not None:
            self._watch = asyncio.create_task(self._follow_master(), name="bff-sentinel-watch")

    async def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
            self._watch = None
        await super().stop()

    async def _follow_master(self) -> None:
        pool = self._sentinel_pool
        assert pool is not None
        sweeps = 0
        while True:
            try:
                address = await pool.sentinel_manager.discover_master(pool.service_name)
            except REDIS_ERRORS:
                address = None  # no sentinel answered, or none names a master: nothing to follow
            if address is not None:
                master = (str(address[0]), int(address[1]))
                if self._master is not None and master != self._master:
                    log.warning("Sentinel names another master; moving this replica's connections to it")
                    sweeps = 3
                    self._resubscribe = True
                self._master = master
            if sweeps and self._master is not None:
                # After the first check, connections still held to another server are the
                # long-lived ones (pub/sub subscriptions such as the first-level cache's): their
                # readers see the connection close and subscribe again, on the new master.
                await _close_elsewhere(pool, self._master, in_use=sweeps < 3)
                sweeps -= 1
            await asyncio.sleep(SENTINEL_CHECK_SEC)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            pubsub = self._plain.pubsub()
            try:
                await pubsub.psubscribe(self._keys.channel_pattern())
                self.connected = True
                backoff = 0.1
                while True:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if self._resubscribe:
                        self._resubscribe = False
                        break  # on a connection to the master Sentinel names now
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


SENTINEL_CHECK_SEC = 0.5


async def _close_elsewhere(pool: SentinelConnectionPool, master: tuple[str, int], *, in_use: bool) -> None:
    """Disconnects the pool's idle connections (and with ``in_use`` the ones in use) to any server
    but ``master``; they reconnect, through the sentinels, when next used."""
    conns = list(getattr(pool, "_available_connections", ()))
    if in_use:
        conns += list(getattr(pool, "_in_use_connections", ()))
    for conn in conns:
        if (conn.host, int(conn.port)) != master:
            with contextlib.suppress(*REDIS_ERRORS):
                await conn.disconnect()


class _Resubscribe(Exception):
    """A master gave up a slot of ours (failover, resharding): subscribe again where it went."""


# Besides Redis errors: what redis-py leaks when a connection is closed under a read (see
# bff/redis_cluster.py); the subscription is then opened again like after any other failure.
_RESUBSCRIBE_ON: tuple[type[BaseException], ...] = (
    *REDIS_ERRORS,
    RedisClusterException,
    AttributeError,
    TypeError,
    RuntimeError,
    _Resubscribe,
)


class ShardedNotifier(Waiters):
    """Redis Cluster: ``SSUBSCRIBE`` to every shard channel, on the master serving its slot.

    One pub/sub connection per such master (built like the cluster client's own connections:
    same credentials, TLS and timeouts). When one of them fails or Redis says a slot moved
    (``sunsubscribe``, sent on a failover or resharding), all are closed and the slot owners
    are read again (``CLUSTER SLOTS``), with a growing pause while that fails."""

    def __init__(self, redis: RedisCluster, keys: CacheKeys) -> None:
        super().__init__(redis, keys)
        self._cluster = redis
        self._subscribed_nodes: set[int] = set()
        self._node_count = 0
        self._failed_before = False

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            pubsubs: list[Any] = []
            try:
                owners = await self._owners(refresh=self._failed_before)
                readers = []
                for node, channels in owners:
                    pubsub = self.pubsub_on(node)
                    pubsubs.append(pubsub)
                    readers.append(self._subscribe_and_read(pubsub, channels))
                await self._until_first_fails(readers)
            except asyncio.CancelledError:
                raise
            except _RESUBSCRIBE_ON as exc:
                # Waiters re-check on a short timer meanwhile: a lost subscription delays, never blocks.
                if self.connected:
                    log.warning("lock notifications interrupted (%s)", type(exc).__name__)
                    backoff = 0.1
                self.connected = False
                self._failed_before = True
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self.connected = False
                for pubsub in pubsubs:
                    with contextlib.suppress(*REDIS_ERRORS, asyncio.TimeoutError):
                        await asyncio.wait_for(pubsub.aclose(), STOP_TIMEOUT_SEC)

    async def _owners(self, refresh: bool) -> list[tuple[Any, list[str]]]:
        """Shard channels by the master serving each one's slot, from the cluster client's own
        view of the cluster (read again after a failure: the failover may have moved them)."""
        if refresh:
            await self._cluster.nodes_manager.initialize()
        else:
            await self._cluster.initialize()
        owners: dict[str, tuple[Any, list[str]]] = {}
        for channel in self._keys.shard_channels():
            node = self._cluster.get_node_from_key(channel)
            if node is None:
                raise RedisClusterException(f"no node serves the slot of {channel}")
            owners.setdefault(node.name, (node, []))[1].append(channel)
        return list(owners.values())

    @staticmethod
    def pubsub_on(node: Any) -> PubSub:
        """A pub/sub connection to one cluster node (``ClusterNode``)."""
        # Built like the client's connections to that node: credentials, TLS, timeouts.
        pool = ConnectionPool(
            connection_class=node.connection_class, max_connections=1, **node.connection_kwargs
        )
        return PubSub(pool)

    async def _subscribe_and_read(self, pubsub: PubSub, channels: list[str]) -> None:
        pending = set(channels)
        for channel in channels:
            # One command per channel: SSUBSCRIBE takes channels of a single slot only.
            await pubsub.execute_command("SSUBSCRIBE", channel)
        while True:
            msg = await pubsub.get_message(timeout=1.0)
            if msg is None:
                continue
            kind = msg.get("type")
            channel = msg.get("channel")
            if isinstance(channel, bytes):
                channel = channel.decode()
            if kind == "smessage":
                data = msg.get("data")
                if isinstance(data, bytes):
                    data = data.decode()
                token_key = self._keys.token_key_of_shard_message(str(data))
                if token_key is not None:
                    self._wake(token_key)
            elif kind == "ssubscribe":
                pending.discard(str(channel))
                if not pending:
                    self._subscribed_nodes.add(id(pubsub))
                    self.connected = len(self._subscribed_nodes) == self._node_count
            elif kind == "sunsubscribe":
                raise _Resubscribe(f"{channel} moved")

    async def _until_first_fails(self, readers: list[Any]) -> None:
        self._subscribed_nodes = set()
        self._node_count = len(readers)
        tasks = [asyncio.ensure_future(r) for r in readers]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # raises the reader's error
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
