"""Redis deployments other than a plain URL: Sentinel (a real sentinel process in front of the
test Redis) and the settings-built client."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis
import redis.asyncio as aioredis

from bff.principals import Principal
from bff.probes import probe_redis
from bff.tokens.lock import ShardedNotifier
from tests.support.ports import free_port
from tests.support.redis_topologies import cluster_port
from tests.support.waiting import until

from .support import DOCUMENTED_ACL, FakeIssuer, Keys, make_settings, redis_dump, running_services

ALICE = Principal("org:acme", "alice")


def redis_server() -> str:
    """The redis-server binary (for a Sentinel and a Cluster node of the tests' own): missing is
    a failure that says how to get it, never a skip."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.fail("redis-server is not installed: ./run test installs it (apt-get install redis-server)")
    return server


@pytest.fixture
def sentinel_port(tmp_path: Path) -> Iterator[int]:
    server = redis_server()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndaemonize no\n"
        "sentinel monitor bffmaster 127.0.0.1 6379 1\n"
        "sentinel down-after-milliseconds bffmaster 60000\n"
    )
    proc: subprocess.Popen[Any] = subprocess.Popen(
        [server, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_sentinel(keys: Keys, prefix: str, redis_client: aioredis.Redis, sentinel_port: int) -> None:
    sentinel = aioredis.Redis(port=sentinel_port)
    for _ in range(200):
        try:
            await sentinel.ping()
            break
        except (OSError, aioredis.ConnectionError):
            await asyncio.sleep(0.02)
    await sentinel.aclose()
    settings = make_settings(
        keys,
        cache={
            "backend": "redis",
            "key_prefix": prefix,
            "redis": {"sentinels": [f"127.0.0.1:{sentinel_port}"], "sentinel_service": "bffmaster"},
        },
    )
    issuer = FakeIssuer()
    async with running_services(settings, issuer) as svc:
        first = await svc.broker.get_token(ALICE, ["checkout"])
        assert (await svc.broker.get_token(ALICE, ["checkout"])).access_token == first.access_token
        assert svc.stats.get("redis_errors") == 0
    assert len(issuer.calls) == 1
    tokens = [k for k in await redis_dump(redis_client, prefix) if b":tok:" in k]
    assert len(tokens) == 1  # it went through to the master


@pytest.fixture
def cluster_url(tmp_path: Path) -> Iterator[str]:
    """A one-node Redis Cluster (all slots on one node): enough to run the cluster client paths."""
    server = redis_server()
    port = cluster_port()
    proc: subprocess.Popen[Any] = subprocess.Popen(
        [
            server,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            str(tmp_path / "nodes.conf"),
            "--dir",
            str(tmp_path),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        node = sync_redis.Redis(host="127.0.0.1", port=port)
        for _ in range(500):
            assert proc.poll() is None, "cluster node exited"
            try:
                node.ping()
                break
            except sync_redis.ConnectionError:
                time.sleep(0.02)
        node.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        for _ in range(500):
            if b"cluster_state:ok" in node.execute_command("CLUSTER", "INFO"):
                break
            time.sleep(0.02)
        node.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_cluster(keys: Keys, prefix: str, cluster_url: str) -> None:
    settings = make_settings(
        keys, cache={"backend": "redis", "key_prefix": prefix, "redis": {"url": cluster_url, "cluster": True}}
    )
    await single_flight_across_two_replicas(settings)


async def single_flight_across_two_replicas(settings: Any) -> None:
    """Two replicas asked for one key at once: one issuance, woken by sharded pub/sub (SSUBSCRIBE,
    one subscription set per process); a sign-out on one is seen by the other; no Redis error."""
    issuers = [FakeIssuer(), FakeIssuer()]
    gate = asyncio.Event()
    for i in issuers:
        i.gate = gate
    async with running_services(settings, issuers[0]) as a, running_services(settings, issuers[1]) as b:
        assert isinstance(a.notifier, ShardedNotifier)
        await until(lambda: a.notifier is not None and a.notifier.connected)
        await until(lambda: b.notifier is not None and b.notifier.connected)
        tasks = [
            asyncio.create_task(svc.broker.get_token(ALICE, ["portal"])) for svc in (a, b) for _ in range(20)
        ]
        await until(lambda: any(i.calls for i in issuers))
        gate.set()
        results = await asyncio.gather(*tasks)
        assert len({r.access_token for r in results}) == 1
        assert sum(len(i.calls) for i in issuers) == 1
        # The replica that did not issue learnt of the release from its sharded subscription.
        assert a.stats.get("lock_wakeups") + b.stats.get("lock_wakeups") > 0
        await a.broker.forget(ALICE)
        assert (await b.broker.get_token(ALICE, ["portal"])).access_token != results[0].access_token
        assert a.stats.get("redis_errors") == b.stats.get("redis_errors") == 0


ACL_PASSWORD = "cluster-acl-password-never-printed-51c2"
REPO = Path(__file__).resolve().parents[2]


def documented_cluster_acl() -> str:
    """The documented user's rules as docs/operations.md adapts them to a Cluster: sharded pub/sub
    instead of pattern pub/sub, and what the cluster client runs to learn the slots."""
    pattern_pubsub = " +publish +psubscribe +punsubscribe"
    rules = DOCUMENTED_ACL.replace(pattern_pubsub, " +spublish +ssubscribe +sunsubscribe")
    assert rules != DOCUMENTED_ACL
    return rules + " +cluster|slots +command"


def test_the_cluster_acl_tested_is_the_documented_one() -> None:
    text = " ".join((REPO / "docs" / "operations.md").read_text().split())
    sharded = "`+spublish +ssubscribe +sunsubscribe` instead of `+publish +psubscribe +punsubscribe`"
    assert "grant " + sharded in text
    assert "`+cluster|slots +command`, which the cluster client runs" in text


async def test_cluster_with_the_documented_acl_user(keys: Keys, cluster_url: str) -> None:
    """A Cluster user restricted to what docs/operations.md grants: the probe passes, tokens are
    issued once under contention (waiters woken by sharded pub/sub), a sign-out takes effect,
    and no command is refused. Without ``+cluster|slots`` the probe says so."""
    port = int(cluster_url.rsplit(":", 1)[1].split("/")[0])
    admin = sync_redis.Redis(host="127.0.0.1", port=port)
    admin.execute_command("ACL SETUSER bffcluster on >" + ACL_PASSWORD + documented_cluster_acl())
    admin.execute_command(
        "ACL SETUSER noslots on >" + ACL_PASSWORD + documented_cluster_acl().replace(" +cluster|slots", "")
    )
    admin.close()

    def settings_for(user: str) -> Any:
        url = f"redis://{user}:{ACL_PASSWORD}@127.0.0.1:{port}/0"
        cache = {"backend": "redis", "key_prefix": "vbff:", "redis": {"url": url, "cluster": True}}
        return make_settings(keys, cache=cache)

    settings = settings_for("bffcluster")
    (line,) = await probe_redis(settings, 5.0)
    assert line.ok, line
    (refused,) = await probe_redis(settings_for("noslots"), 5.0)
    assert not refused.ok
    assert refused.text.endswith(
        "PING: this user has no permissions to run the 'cluster|slots' command"
        " (a Cluster user needs +cluster|slots +command: docs/operations.md)"
    ), refused
    assert ACL_PASSWORD not in str(line) + str(refused)
    await single_flight_across_two_replicas(settings)


@pytest.mark.parametrize("leaked", [AttributeError, TypeError, RuntimeError])
async def test_cluster_client_reports_leaked_errors_as_redis_errors(
    cluster_url: str, monkeypatch: pytest.MonkeyPatch, leaked: type[Exception]
) -> None:
    """What redis-py's cluster client leaks when a connection is closed under a command (seen
    when a master was killed under load) reaches the service as a ConnectionError, its "Redis
    unavailable" path, never as a 500. The leak is simulated at the node, the client's edge."""
    from redis.asyncio.cluster import ClusterNode

    from bff.redis_client import make_redis
    from bff.settings import RedisSettings

    client = make_redis(RedisSettings(url=cluster_url, cluster=True))
    try:
        assert await client.set("probe-key", "1", px=1000)  # the real path works

        async def closed_under_us(self: Any, *args: Any, **kwargs: Any) -> Any:
            raise leaked("'NoneType' object has no attribute 'writelines'")

        monkeypatch.setattr(ClusterNode, "execute_command", closed_under_us)
        monkeypatch.setattr(ClusterNode, "execute_pipeline", closed_under_us)
        with pytest.raises(sync_redis.ConnectionError) as caught:
            await client.get("probe-key")
        assert isinstance(caught.value.__cause__, leaked)
        pipe = client.pipeline(transaction=False)
        pipe.incr("probe-counter")
        with pytest.raises(sync_redis.RedisError):
            await pipe.execute()
    finally:
        monkeypatch.undo()
        await client.aclose()
