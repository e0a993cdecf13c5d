"""The Python mobile flow in docs/frontend.md runs as printed, against a real `vluna-bff dev`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from tests.support.service import start_dev

DOC = Path(__file__).resolve().parents[2] / "docs" / "frontend.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


async def test_the_documented_mobile_flow_runs_against_dev_mode() -> None:
    blocks = [b for b in python_blocks() if "async def billing_screen(" in b]
    assert len(blocks) == 1, "docs/frontend.md must keep its billing_screen example"
    namespace: dict[str, Any] = {}
    exec(compile(blocks[0], str(DOC), "exec"), namespace)
    proc = start_dev()
    try:
        async with httpx.AsyncClient(base_url=proc.url, timeout=30) as client:
            login = await client.get("/dev/login", params={"user": "doc", "org": "docs"})
        names = await namespace["billing_screen"](proc.url, login.json()["token"])
    finally:
        proc.stop()
    assert names == ["Starter", "Pro", "Credit pack"]
