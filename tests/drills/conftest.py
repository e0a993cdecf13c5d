"""Drills: real processes (the emulator with its controls, `vluna-bff serve`, a private
redis-server), loopback only, each bounded in time. Helpers come from tests/support."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.support.emulator import Emulator, start_emulator
from tests.support.keys import UserKeys
from tests.support.processes import Proc
from tests.support.redis_servers import cleanup_prefix, start_redis
from tests.support.service import bff_config, start_bff, write_config


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.drill)


@pytest.fixture(scope="session")
def user_keys() -> UserKeys:
    return UserKeys()


@pytest.fixture
def emulator() -> Iterator[Emulator]:
    with start_emulator() as emu:
        yield emu


@pytest.fixture
def own_redis() -> Iterator[Proc]:
    """A redis-server of this test's own: drills may stop it (the shared one is never touched)."""
    with start_redis() as proc:
        yield proc


@pytest.fixture
def start_service(emulator: Emulator, user_keys: UserKeys, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start `vluna-bff serve` processes against the emulator; all are stopped in teardown."""
    procs: list[Proc] = []
    prefixes: list[tuple[str, str]] = []

    def start(
        *,
        redis_url: str = "",
        workers: int = 1,
        like: Proc | None = None,
        ready_timeout: float = 60,
        **sections: Any,
    ) -> Proc:
        """A new service; `like=other` starts a replica with other's exact configuration."""
        if like is not None:
            data = like.extra["config"]
        else:
            data = bff_config(emulator.url, user_keys.pem(), redis_url=redis_url, **sections)
            prefixes.append((data["cache"]["key_prefix"], redis_url))
        # Its stderr in a file of the test's own: what a drill quotes when a promise fails.
        log = tempfile.NamedTemporaryFile("w+", dir=tmp_path, prefix="bff-", suffix=".log", delete=False)  # noqa: SIM115
        proc = start_bff(
            write_config(data, tmp_path), workers=workers, ready_timeout=ready_timeout, stderr=log
        )
        proc.extra["config"] = data
        proc.extra["log"] = Path(log.name)
        procs.append(proc)
        return proc

    def start_many(count: int, **kwargs: Any) -> list[Proc]:
        """`count` replicas of one configuration, started side by side (each start-up is
        mostly imports and checks, which take long on a busy machine)."""
        # Generous: on a machine busy with other test runs, a start-up has taken over 60 s.
        first = start(ready_timeout=180, **kwargs)
        with ThreadPoolExecutor(count - 1) as pool:
            others = list(pool.map(lambda _: start(like=first, ready_timeout=180), range(count - 1)))
        return [first, *others]

    start.many = start_many  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for p in procs:
            p.stop()
        for prefix, url in prefixes:
            if url:  # none: a Sentinel or Cluster of the test's own, stopped with it
                cleanup_prefix(prefix, url)
