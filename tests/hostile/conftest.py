"""Hostile input against a real `vluna-bff serve` process. Vluna (the emulator) sits behind a
byte-counting TCP relay, so "nothing reached Vluna" is checked twice: the emulator's operation
counters, and not one byte relayed (which also covers paths the emulator would not count)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.keys import UserKeys

from .support import Target, serving


@pytest.fixture(scope="module")
def user_keys() -> UserKeys:
    return UserKeys()


@pytest.fixture(scope="module")
def target(user_keys: UserKeys) -> Iterator[Target]:
    with serving(user_keys, proxy={"max_body_bytes": 16 * 1024}, openapi={"enabled": True}) as t:
        yield t


@pytest.fixture(scope="module")
def schemathesis_auth(target: Target) -> dict[str, str]:
    """A signed-in user of the service (with rate limits, their own, high enough for the run)."""
    return {"Authorization": f"Bearer {target.keys.token('schemathesis', org='schemathesis')}"}
