"""Fixtures of the emulator suite (helpers live in `support.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from vlunaai.testing import VlunaEmulator

from .support import Raw


@pytest.fixture
async def raw(vluna_emulator: VlunaEmulator) -> AsyncIterator[Raw]:
    async with httpx.AsyncClient(transport=vluna_emulator.transport()) as client:
        yield Raw(vluna_emulator, client)
