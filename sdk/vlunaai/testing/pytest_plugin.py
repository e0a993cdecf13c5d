"""pytest plugin: the `vluna_emulator` fixture (a fresh in-process emulator per test).

Registered through the `pytest11` entry point, so any project that installs `vlunaai` gets the
fixture. This module stays import-light: the emulator is imported when the fixture is used.
Customise it by overriding the `vluna_emulator_options` fixture (keyword arguments of
`VlunaEmulator`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .handle import VlunaEmulator

if TYPE_CHECKING:
    from pytest_asyncio import fixture as _async_fixture
else:
    try:
        from pytest_asyncio import fixture as _async_fixture
    except ImportError:  # pragma: no cover - without pytest-asyncio the fixture cannot be async
        _async_fixture = pytest.fixture


@pytest.fixture
def vluna_emulator_options() -> dict[str, Any]:
    """Keyword arguments for `VlunaEmulator`; override this fixture to change them."""
    return {}


@_async_fixture
async def vluna_emulator(vluna_emulator_options: dict[str, Any]) -> AsyncIterator[VlunaEmulator]:
    """An in-process Vluna emulator with controls enabled; its SDK clients are closed after the test."""
    from .handle import VlunaEmulator

    emulator = VlunaEmulator(**vluna_emulator_options)
    try:
        yield emulator
    finally:
        await emulator.aclose()
