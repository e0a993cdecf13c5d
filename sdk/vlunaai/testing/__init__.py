"""A local Vluna emulator for tests and dev mode (like stripe-mock or moto for their APIs).

- `VlunaEmulator(...)`: in-process handle with SDK clients wired to it, counters, faults.
- `create_app(...)`: the Litestar ASGI app serving `/mgt/v1` and `/api/v1` on one port.
- `python -m vlunaai.testing` / `vlunaai-emulator`: run it with uvicorn on 127.0.0.1.
- pytest fixture `vluna_emulator` (plugin `vlunaai.testing.pytest_plugin`).
"""

from __future__ import annotations

from .app import CONTROL_HEADER, CONTROL_HEADER_VALUE, create_app
from .core import EmulatorSettings
from .faults import Fault
from .handle import VlunaEmulator
from .seed import Seed, load_seed

__all__ = [
    "CONTROL_HEADER",
    "CONTROL_HEADER_VALUE",
    "EmulatorSettings",
    "Fault",
    "Seed",
    "VlunaEmulator",
    "create_app",
    "load_seed",
]
