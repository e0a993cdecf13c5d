"""SIGTERM under load: requests in flight complete, then the process exits 0."""

from __future__ import annotations

import asyncio
import signal
import socket
import time

import httpx

from tests.support.emulator import Emulator
from tests.support.keys import UserKeys
from tests.support.ports import LOOPBACK
from tests.support.redis_servers import SHARED_REDIS_URL
from tests.support.service import ServiceStarter
from tests.support.waiting import poll_until


def _refused(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        try:
            s.connect((LOOPBACK, port))
        except OSError:
            return True
    return False


async def test_sigterm_lets_requests_in_flight_finish(
    emulator: Emulator, start_service: ServiceStarter, user_keys: UserKeys
) -> None:
    bff = start_service(
        redis_url=SHARED_REDIS_URL,
        rate_limit={"enabled": False},
        proxy={"public_cache_ttl_sec": 0},
        observability={"shutdown_grace_sec": 300},
    )
    warm = {"Authorization": f"Bearer {user_keys.token('warm', org='warm')}"}
    fresh = [{"Authorization": f"Bearer {user_keys.token(f't{i}', org=f't{i}')}"} for i in range(20)]
    async with httpx.AsyncClient(base_url=bff.url, timeout=30) as c:
        assert (await c.get("/vluna/token", headers=warm)).status_code == 200
        emulator.reset("counters")
        emulator.fault("*", latency_seconds=1.5, times=None)
        tokens = [asyncio.create_task(c.get("/vluna/token", headers=h)) for h in fresh]
        proxied = [
            asyncio.create_task(c.get("/vluna/api/v1/catalog/products", headers=warm)) for _ in range(10)
        ]
        # Every request has reached Vluna (counted on arrival) and waits on its slow answer.
        deadline = time.monotonic() + 10
        while emulator.issuances() < 20 or emulator.calls("list_catalog_products") < 10:
            assert time.monotonic() < deadline, emulator.counters()
            await asyncio.sleep(0.05)
        bff.signal(signal.SIGTERM)
        responses = await asyncio.wait_for(asyncio.gather(*tokens, *proxied), 20)
    assert [r.status_code for r in responses] == [200] * 30
    assert len({r.json()["access_token"] for r in responses[:20]}) == 20
    # Once they are done the process stops accepting and exits cleanly: it does not sit out its
    # 300 s grace (the waits below give up long before it would end).
    poll_until(lambda: _refused(bff.port), 60, what="listener closed")
    assert bff.popen.wait(timeout=60) == 0
