"""A local Vluna emulator for tests and dev mode (like stripe-mock or moto for their APIs).

- `VlunaEmulator(...)`: in-process handle with SDK clients wired to it, counters, faults.
- `create_app(...)`: the Litestar ASGI app serving `/mgt/v1` and `/api/v1` on one port.
- `python -m vlunaai.testing` / `vlunaai-emulator`: run it with uvicorn on 127.0.0.1.
- pytest fixture `vluna_emulator` (plugin `vlunaai.testing.pytest_plugin`).

The emulator needs the `testing` extra (`pip install 'vlunaai[testing]'`). Its names are loaded
on first use, so the pytest plugin (registered for every installation of `vlunaai`) never
imports the emulator's dependencies unless a test asks for the fixture.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOMES = {
    "CONTROL_HEADER": ".app",
    "CONTROL_HEADER_VALUE": ".app",
    "create_app": ".app",
    "EmulatorSettings": ".core",
    "Fault": ".faults",
    "VlunaEmulator": ".handle",
    "Seed": ".seed",
    "load_seed": ".seed",
}
_EXTRA_HINT = "vlunaai.testing needs the emulator's dependencies: pip install 'vlunaai[testing]'"


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        module = importlib.import_module(home, __name__)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("litestar", "jwt", "yaml", "uvicorn", "msgspec"):
            raise ModuleNotFoundError(f"{_EXTRA_HINT} ({exc.name} is missing)", name=exc.name) from exc
        raise
    value = getattr(module, name)
    globals()[name] = value
    return value
