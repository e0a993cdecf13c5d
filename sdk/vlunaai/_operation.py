"""The description of one API operation, as the generated operation table lists them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# Operations whose 4xx answers are business decisions (a denial with hints), not transient
# failures: retrying them would only repeat the decision and burn quota.
DECISION_OPERATIONS = frozenset({"gate_authorize", "gate_preflight"})


@dataclass(frozen=True)
class OperationSpec:
    client: Literal["service", "bearer"]
    name: str
    method: str
    path: str
    path_params: tuple[str, ...]
    returns: str
    releases: tuple[str, ...]

    @property
    def is_decision(self) -> bool:
        return self.name in DECISION_OPERATIONS
