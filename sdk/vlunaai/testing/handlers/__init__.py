"""Operation handlers by domain. Keys: `service.<name>`, `bearer.<name>` or `<name>` (both)."""

from __future__ import annotations

from ..core import Handler
from . import catalog, checkout, gate, plans, tokens, wallet
from .generic import generic

HANDLERS: dict[str, Handler] = {}
for _module in (tokens, catalog, checkout, wallet, gate, plans):
    HANDLERS.update(_module.HANDLERS)

__all__ = ["HANDLERS", "generic"]
