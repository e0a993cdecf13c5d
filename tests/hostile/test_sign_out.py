"""Sign-out semantics: `204` on `DELETE /vluna/token` means no replica serves that user's tokens
again. When that cannot be ensured (Redis paused with SIGSTOP, or refusing connections), the answer
is 503 with Retry-After, and a later sign-out does the job. Redis here is a private
`redis-server` of these tests (the shared one is never paused)."""

from __future__ import annotations

import contextlib
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support.emulator import Emulator, start_emulator
from tests.support.keys import UserKeys
from tests.support.processes import Proc
from tests.support.redis_servers import start_redis
from tests.support.service import bff_config, start_bff, write_config


class Replicas:
    def __init__(self, emulator: Emulator, redis: Proc, bffs: list[Proc], keys: UserKeys) -> None:
        self.emulator = emulator
        self.redis = redis
        self.bffs = bffs
        self.keys = keys

    def user(self) -> dict[str, str]:
        tag = uuid.uuid4().hex[:8]
        return {"Authorization": f"Bearer {self.keys.token(f'so-{tag}', org=f'so-{tag}')}"}

    def get(self, headers: dict[str, str], replica: int = 0, **params: str) -> str:
        r = httpx.get(f"{self.bffs[replica].url}/vluna/token", headers=headers, params=params, timeout=20)
        assert r.status_code == 200, r.text
        token: str = r.json()["access_token"]
        return token

    def delete(self, headers: dict[str, str], replica: int = 0) -> httpx.Response:
        return httpx.delete(f"{self.bffs[replica].url}/vluna/token", headers=headers, timeout=20)

    def sign_out(self, headers: dict[str, str], replica: int = 0) -> int:
        """As the browser client does: DELETE until 204, waiting Retry-After (bounded); returns
        the number of 503s seen."""
        refused = 0
        while (r := self.delete(headers, replica)).status_code == 503:
            assert_refused_sign_out(r)
            refused += 1
            assert refused < 5, "sign-out still refused with Redis back"
            time.sleep(min(int(r.headers["retry-after"]), 1))
        assert r.status_code == 204, r.text
        return refused


@contextlib.contextmanager
def paused(redis: Proc) -> Iterator[None]:
    """SIGSTOP: Redis accepts connections and reads nothing (a hung server, not a refused one)."""
    redis.signal(signal.SIGSTOP)
    try:
        yield
    finally:
        redis.signal(signal.SIGCONT)


@pytest.fixture(scope="module")
def replicas(user_keys: UserKeys) -> Iterator[Replicas]:
    redis = start_redis()
    emulator = start_emulator()
    bffs: list[Proc] = []
    data: dict[str, Any] = bff_config(
        emulator.url,
        user_keys.pem(),
        redis_url=redis.url,
        # A hung Redis: each command gives up after 1 s (the default, 5 s, only makes the test
        # slower); after 3 in a row and a PING without answer the breaker opens, and a PING each
        # second looks for Redis's return.
        cache={"redis": {"socket_timeout_sec": 1, "ping_timeout_sec": 1, "probe_interval_sec": 1}},
        auth={"jwt": {"leeway_sec": 5}},
    )
    cfg = write_config(data)
    started: Replicas | None = None
    try:
        for _ in range(2):
            bffs.append(start_bff(cfg))
        started = Replicas(emulator, redis, bffs, user_keys)
        yield started
    finally:
        cfg.unlink()
        for bff in bffs:
            bff.stop()
        emulator.stop()
        # A test may have replaced the server (stopped, then started again on its port): the
        # one running now is stopped (the first one, if replaced, was stopped by that test).
        current = started.redis if started is not None else redis
        current.signal(signal.SIGCONT)
        current.stop()


def assert_refused_sign_out(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1
    assert r.json() == {"error": "sign_out_incomplete", "message": r.json()["message"]}
    assert r.headers["cache-control"] == "no-store"


def test_a_paused_redis_never_gets_a_204(replicas: Replicas) -> None:
    """The reported case: Redis paused, DELETE; after Redis resumed, GET."""
    h = replicas.user()
    first = replicas.get(h)
    with paused(replicas.redis):
        assert_refused_sign_out(replicas.delete(h))
        # Asked again while Redis is still away (skipped for its backoff, or timing out): 503.
        assert_refused_sign_out(replicas.delete(h))
    # Redis is back: signing out again works at once, and the token is never served again.
    assert replicas.sign_out(h) == 0
    assert replicas.get(h) != first
    assert replicas.get(h, replica=1) != first


def test_a_refused_connection_is_also_a_503(replicas: Replicas) -> None:
    h = replicas.user()
    first = replicas.get(h)
    port = replicas.redis.port
    replicas.redis.stop()
    try:
        for replica in (0, 1):
            assert_refused_sign_out(replicas.delete(h, replica))
    finally:
        replicas.redis = start_redis(port)  # back on the same address, empty
    # Redis came back empty (no persistence): whatever was cached is gone; signing out works.
    replicas.sign_out(h, replica=1)
    assert replicas.get(h, replica=0) != first


def test_a_token_cached_during_an_outage_dies_with_a_sign_out_elsewhere(replicas: Replicas) -> None:
    """Replica 1 issues a token while it cannot reach Redis (kept in its own memory); Redis comes
    back; the user signs out through replica 0. Once replica 1's breaker has closed again (its
    PING every `cache.redis.probe_interval_sec`, 1 s here) it never serves that token: while
    Redis answers, an entry cached in-process during the outage does not count."""
    h = replicas.user()
    with paused(replicas.redis):
        during = replicas.get(h, replica=1)
    assert replicas.sign_out(h, replica=0) == 0
    time.sleep(1.2)  # past replica 1's next PING, which closes its breaker
    seen = {replicas.get(h, replica=1) for _ in range(3)}
    assert during not in seen


def test_sign_out_covers_every_scope_set_on_every_replica(replicas: Replicas) -> None:
    h = replicas.user()
    sets = [{}, {"scopes": "checkout"}, {"scopes": "portal"}, {"scopes": "portal,checkout"}]
    before = {replicas.get(h, i % 2, **params) for i, params in enumerate(sets)}
    issued = replicas.emulator.issuances()
    assert replicas.delete(h, replica=1).status_code == 204
    after = {replicas.get(h, i % 2, **params) for i, params in enumerate(sets)}
    assert not before & after
    assert replicas.emulator.issuances() == issued + 3  # one per distinct scope set
    # Signing out twice is fine.
    assert replicas.delete(h).status_code == 204
    assert replicas.delete(h).status_code == 204
