"""The "oss" flavour answers every exchange recorded from the open-source Vluna server as that
server did (see recorded_replay.py for how the replay rebuilds signatures, tokens and ids)."""

from __future__ import annotations

import pytest

from .recorded_replay import Outcome, records, replay_all, report, shape, shape_diff

# Recorded exchanges the emulator does not reproduce, with the reason. Empty: all of them match.
NOT_REPRODUCED: dict[str, str] = {}


async def test_every_recorded_exchange_is_reproduced(capsys: pytest.CaptureFixture[str]) -> None:
    outcomes = await replay_all("oss")
    assert len(outcomes) == len(records()) == 508
    summary = report(outcomes)
    with capsys.disabled():
        print("\n" + summary.splitlines()[0])
    failed = {o.name for o in outcomes if not o.matched}
    assert failed == set(NOT_REPRODUCED), summary


async def test_the_comparison_has_teeth() -> None:
    # The 0.3.2 flavour differs from the recorded server in many ways (even with its timestamp
    # and nonce checks off): replayed the same way, most exchanges must be reported as different
    # (a comparison that always agrees proves nothing).
    outcomes: list[Outcome] = await replay_all("0.3.2", strict_auth=False)
    matched = sum(o.matched for o in outcomes)
    assert matched < len(outcomes) // 4, report(outcomes)


def test_shapes_compare_keys_and_types_not_values() -> None:
    recorded = {"ok": True, "data": {"id": "a", "n": 1, "items": [{"x": 1}, {"x": 2}], "metadata": {"k": 1}}}
    same = {"ok": True, "data": {"id": "b", "n": 7, "items": [{"x": 9}], "metadata": {"other": "v"}}}
    assert shape_diff(shape(recorded), shape(same)) == []
    missing = {"ok": True, "data": {"id": "b", "items": [{"x": 9}], "metadata": {}}}
    assert shape_diff(shape(recorded), shape(missing)) == ["$.data.n: missing"]
    retyped = {"ok": True, "data": {"id": 1, "n": 7, "items": [{"x": "9"}], "metadata": {}}}
    assert len(shape_diff(shape(recorded), shape(retyped))) == 2
    assert shape_diff(shape({"a": None}), shape({"a": "x"})) != []
    assert shape_diff(shape({"a": []}), shape({"a": [1]})) != []
