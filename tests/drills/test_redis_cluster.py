"""A real Redis Cluster (3 masters, 3 replicas of `redis-server --cluster-enabled yes`, created by
`redis-cli --cluster create`) under three service processes:

- the token, sign-out, proxy and rate-limit flows hold across replicas as on one Redis: one
  issuance per user, waiters woken by sharded pub/sub, limits exact across replicas;
- a master killed (SIGKILL) under load: its replica is promoted, and the measured failover window
  bounds the failures and the duplicate issuances; afterwards everything is exact again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from tests.support.emulator import Emulator
from tests.support.keys import UserKeys
from tests.support.ports import LOOPBACK
from tests.support.processes import Proc
from tests.support.redis_topologies import RedisCluster, start_cluster
from tests.support.service import ServiceStarter, bff_config

from .failover_load import FailoverLoad, check_promises, events, process_figures

CATALOG = "/vluna/api/v1/catalog/products"
# How long after Redis is whole again a process may still use its in-process cache: its Redis
# breaker's probe_interval_sec (1 s) plus one PING (ping_timeout_sec 2 s), with a margin.
RECOVERY_SEC = 5.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    topo = start_cluster(
        tmp_path_factory.mktemp("redis-cluster"), masters=3, replicas_per_master=1, node_timeout_ms=2000
    )
    try:
        yield topo
    finally:
        topo.stop()


def start_three(start_service: ServiceStarter, cluster: RedisCluster, **sections: object) -> list[Proc]:
    cache = {"redis": {"cluster": True}}
    procs: list[Proc] = start_service.many(3, redis_url=cluster.url, cache=cache, **sections)
    return procs


def bearer(user_keys: UserKeys, user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {user_keys.token(user, org=f'org-{user}')}"}


async def test_cluster_token_sign_out_proxy_and_limits_across_three_processes(
    cluster: RedisCluster, emulator: Emulator, start_service: ServiceStarter, user_keys: UserKeys
) -> None:
    limit = 40
    procs = start_three(
        start_service,
        cluster,
        rate_limit={"requests": limit, "window_sec": 3600},
        proxy={"public_cache_ttl_sec": 0},
        tokens={"issuance_limit": {"per_user": 3, "window_sec": 3600}},
    )
    clients = [httpx.AsyncClient(base_url=p.url, timeout=30) for p in procs]
    try:
        # Tokens: 20 cold users, 30 concurrent requests each over the three processes, each
        # issuance slow enough that every request arrives while it runs.
        users = [f"t{i}" for i in range(20)]
        emulator.reset("counters")
        emulator.fault("issue_platform_token", latency_seconds=1.0, times=None)
        answers = await asyncio.gather(
            *[
                clients[k % 3].get("/vluna/token", headers=bearer(user_keys, u))
                for u in users
                for k in range(30)
            ]
        )
        emulator.clear_faults()
        assert Counter(r.status_code for r in answers) == {200: 600}
        per_user: dict[int, set[str]] = {}
        for i, r in enumerate(answers):
            per_user.setdefault(i // 30, set()).add(r.json()["access_token"])
        assert all(len(t) == 1 for t in per_user.values()), per_user
        assert emulator.issuances() == len(users), emulator.counters()
        # The processes that did not issue were woken by the holder's SPUBLISH, not by a timer.
        counts = [events(p) for p in procs]
        assert sum(c.get("lock_wakeups", 0) for c in counts) > 0, counts
        assert sum(c.get("redis_errors", 0) for c in counts) == 0, counts

        # Sign-out on one process: the others serve a new token from then on (one issuance).
        alice = bearer(user_keys, "t0")
        old = per_user[0].pop()
        assert (await clients[0].delete("/vluna/token", headers=alice)).status_code == 204
        again = [await clients[k].get("/vluna/token", headers=alice) for k in (1, 2, 0, 1)]
        assert {r.status_code for r in again} == {200}
        assert len({r.json()["access_token"] for r in again}) == 1
        assert again[0].json()["access_token"] != old
        assert emulator.issuances() == len(users) + 1

        # Issuance limit (per user, counted in the cluster): t1 may be issued 3 tokens an hour;
        # it has one; two more sign-out/sign-in rounds on different processes, then 429.
        bob = bearer(user_keys, "t1")
        seen = []
        for k in range(4):
            assert (await clients[k % 3].delete("/vluna/token", headers=bob)).status_code == 204
            seen.append(await clients[(k + 1) % 3].get("/vluna/token", headers=bob))
        assert [r.status_code for r in seen] == [200, 200, 429, 429], [r.text for r in seen]

        # Proxy and its rate limit: one budget of `limit` calls across the three processes.
        carol = bearer(user_keys, "proxy-user")
        proxied = [await clients[i % 3].get(CATALOG, headers=carol) for i in range(3 * limit)]
        codes = Counter(r.status_code for r in proxied)
        assert codes == {200: limit, 429: 2 * limit}, codes
        assert all(r.json()["error"] == "rate_limited" for r in proxied if r.status_code == 429)
    finally:
        for c in clients:
            await c.aclose()


# How long the load runs on after the cluster is whole again: the recovery allowance, then
# long enough for a tail of new users that must all be exact.
SETTLE_SEC = RECOVERY_SEC + 7.0
TAIL_USERS = 8


async def test_cluster_master_killed_under_load(
    cluster: RedisCluster, emulator: Emulator, start_service: ServiceStarter, user_keys: UserKeys
) -> None:
    procs = start_three(start_service, cluster, rate_limit={"enabled": False})
    emulator.fault("issue_platform_token", latency_seconds=0.3, times=None)
    victim = cluster.masters()[0]
    async with FailoverLoad(procs, user_keys, tag="ck") as load:
        await load.warm_up()
        emulator.reset("counters")
        stop = asyncio.Event()
        runner = asyncio.create_task(load.run(stop))
        try:
            await asyncio.sleep(3.0)
            t_event = time.monotonic()
            await asyncio.to_thread(cluster.kill, victim)
            await asyncio.to_thread(cluster.wait_healthy, 60.0)
            t_healthy = time.monotonic()
            await asyncio.sleep(SETTLE_SEC)
        finally:
            stop.set()
            await asyncio.wait_for(runner, 60)
            # The killed master comes back as a replica of the one promoted in its place.
            if not cluster.nodes[victim].alive():
                await asyncio.to_thread(cluster.start_node, victim)
        figures = load.summary(t_event, t_healthy)
        figures["issuances"] = emulator.issuances()
        figures.update(process_figures(procs))
        print(f"\ncluster master {victim} killed under load: {figures}")
        await check_promises(load, t_event, t_healthy, backoff=RECOVERY_SEC, tail=TAIL_USERS)
    await asyncio.to_thread(cluster.wait_healthy, 60.0)
    assert victim not in cluster.masters()


async def test_cluster_probe_checks_sharded_pub_sub(
    cluster: RedisCluster, emulator: Emulator, user_keys: UserKeys
) -> None:
    """`check-config --probe` on a Cluster: the commands it uses there are checked, sharded
    pub/sub included, for a user with every permission and one without SSUBSCRIBE."""
    from bff.probes import probe_redis
    from bff.settings import validate_settings

    def settings(url: str) -> Any:
        data = bff_config(
            emulator.url, user_keys.pem(), redis_url=url, prefix="vbff:", cache={"redis": {"cluster": True}}
        )
        return validate_settings(data)

    line = (await probe_redis(settings(cluster.url), 5.0))[0]
    assert line.ok, line.text
    assert "Redis Cluster" in line.text
    port = int(cluster.url.rsplit(":", 1)[1].split("/")[0])
    for node, proc in cluster.nodes.items():
        if not proc.alive():
            continue
        c = redis.Redis(host=LOOPBACK, port=node)
        try:
            c.execute_command(
                "ACL", "SETUSER", "noshard", "on", ">pw", "~vbff:*", "&vbff:done:*", "+@all", "-ssubscribe"
            )
        finally:
            c.close()
    line = (await probe_redis(settings(f"redis://noshard:pw@{LOOPBACK}:{port}/0"), 5.0))[0]
    assert not line.ok
    assert "ssubscribe vbff:done:shard00 (release notifications (cluster)" in line.text, line.text
    assert "psubscribe" not in line.text
