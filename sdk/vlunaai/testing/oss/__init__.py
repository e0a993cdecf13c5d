"""The "oss" flavour of the emulator: the open-source Vluna server (vlunaai/vluna, commit 11e6371)
as spec/vluna-api/recorded/ recorded it, its quirks included, so that what passes here passes
against that server. `OssCore` is its request pipeline; `routes.ROUTES` lists what it serves.
"""

from __future__ import annotations

from .core import OssCore

__all__ = ["OssCore"]
