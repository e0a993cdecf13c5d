"""The README's SDK quickstart runs end to end against the emulator and prints each step."""

from __future__ import annotations

import pytest

from examples import quickstart


async def test_quickstart_runs_every_step(capsys: pytest.CaptureFixture[str]) -> None:
    await quickstart.main()
    out = capsys.readouterr().out
    assert "platform token for alice@org:acme" in out
    assert "catalog: 3 products" in out
    assert "preflight openai.gpt-4o-mini: allowed" in out
    assert "committed: ok=True" in out
