"""The README's SDK quickstart runs end to end, unchanged, against both emulator flavours (the
0.3.2 API and the open-source server as recorded) and prints each step."""

from __future__ import annotations

import pytest

from examples import quickstart


@pytest.mark.parametrize("flavor", ["0.3.2", "oss"])
async def test_quickstart_runs_every_step(capsys: pytest.CaptureFixture[str], flavor: str) -> None:
    await quickstart.main(flavor)
    out = capsys.readouterr().out
    assert "platform token for alice@org:acme" in out
    assert "catalog: 3 products" in out
    assert "no price" not in out  # expand=default_price: every product shows its price
    if flavor == "oss":
        assert "preflight: not offered by this server" in out
    else:
        assert "preflight openai.gpt-4o-mini: allowed" in out
    assert "committed: ok=True" in out
