"""A real Sentinel deployment (one master, one replica, three `redis-server --sentinel`) under three
service processes and steady token load, failed over twice:

1. by `SENTINEL FAILOVER` (the replica is promoted, the old master demoted to its replica);
2. by killing the master (SIGKILL; the sentinels agree it is down, then promote the replica).

Each time: nothing stuck, failures and duplicate issuances only within the measured window, and
exact again afterwards (see failover_load.check_promises).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import pytest

from tests.support.emulator import Emulator
from tests.support.keys import UserKeys
from tests.support.processes import Proc
from tests.support.redis_topologies import RedisSentinel, start_sentinel
from tests.support.service import ServiceStarter

from .failover_load import FailoverLoad, check_promises, process_figures

# How long after Redis is whole again a process may still use its in-process cache: its Redis
# breaker's probe_interval_sec (1 s) plus one PING (ping_timeout_sec 2 s), with a margin.
RECOVERY_SEC = 5.0
SETTLE_SEC = RECOVERY_SEC + 7.0
TAIL_USERS = 8


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    topo = start_sentinel(tmp_path_factory.mktemp("redis-sentinel"), sentinels=3, down_after_ms=1000)
    try:
        yield topo
    finally:
        topo.stop()


async def _phase(
    name: str,
    procs: list[Proc],
    emulator: Emulator,
    user_keys: UserKeys,
    trigger: Callable[[], object],
    wait_promoted: Callable[[], object],
) -> dict[str, object]:
    async with FailoverLoad(procs, user_keys, tag=name) as load:
        await load.warm_up()
        before = emulator.issuances()
        stop = asyncio.Event()
        runner = asyncio.create_task(load.run(stop))
        try:
            await asyncio.sleep(3.0)
            t_event = time.monotonic()
            await asyncio.to_thread(trigger)
            await asyncio.to_thread(wait_promoted)
            t_healthy = time.monotonic()
            await asyncio.sleep(SETTLE_SEC)
        finally:
            stop.set()
            await asyncio.wait_for(runner, 60)
        figures = load.summary(t_event, t_healthy)
        figures["issuances"] = emulator.issuances() - before
        print(f"\nsentinel, {name}: {figures}")
        await check_promises(load, t_event, t_healthy, backoff=RECOVERY_SEC, tail=TAIL_USERS)
    return figures


async def test_sentinel_failovers_under_load(
    sentinel: RedisSentinel, emulator: Emulator, start_service: ServiceStarter, user_keys: UserKeys
) -> None:
    procs: list[Proc] = start_service.many(
        3,
        cache={
            "redis": {
                "url": None,
                "sentinels": sentinel.sentinel_addresses,
                "sentinel_service": sentinel.service,
            }
        },
        rate_limit={"enabled": False},
    )
    emulator.fault("issue_platform_token", latency_seconds=0.3, times=None)

    first = sentinel.master_port()
    await _phase(
        "sentinel-failover",
        procs,
        emulator,
        user_keys,
        sentinel.failover,
        lambda: sentinel.wait_new_master(first),
    )
    second = sentinel.master_port()
    assert second != first
    await asyncio.to_thread(sentinel.wait_settled)  # the old master replicates the new one

    await _phase(
        "master-killed",
        procs,
        emulator,
        user_keys,
        lambda: sentinel.kill(second),
        lambda: sentinel.wait_new_master(second),
    )
    assert sentinel.master_port() == first
    print(f"\nper process: {process_figures(procs)}")
