"""Drills: real processes (the emulator with its controls, `vluna-bff serve`, a private
redis-server), loopback only, each bounded in time. Helpers come from tests/support."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.emulator import Emulator, start_emulator
from tests.support.keys import UserKeys
from tests.support.processes import Proc
from tests.support.redis_servers import start_redis
from tests.support.service import ServiceStarter


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
def start_service(emulator: Emulator, user_keys: UserKeys, tmp_path: Path) -> Iterator[ServiceStarter]:
    """Start `vluna-bff serve` processes against the emulator; all are stopped in teardown."""
    starter = ServiceStarter(emulator, user_keys, tmp_path)
    try:
        yield starter
    finally:
        starter.stop_all()
