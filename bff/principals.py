"""From an authenticated identity to the Vluna principal, user and traits.

Rules are tried in order; the first whose claim is present gives the principal, e.g.
``[{claim: org_id, template: "org:{value}"}, {claim: sub, template: "user:{value}"}]``.
Templates substitute ``{value}`` and ``{<claim>}`` only (no attribute access, no format specs).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from bff.auth.identity import Identity
from bff.errors import Forbidden
from bff.hooks import call_hook
from bff.settings import MappingSettings
from bff.tokens.broker import Principal

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_ID_LEN = 256


def _scalar(value: Any) -> str | None:
    # bool is an int subclass; `True` as an org id is a mistake, not an id.
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _valid_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID_LEN and value.isprintable()


class PrincipalMapper:
    def __init__(self, settings: MappingSettings, hook: Callable[..., Any] | None = None) -> None:
        self._s = settings
        self._hook = hook

    async def map(self, identity: Identity) -> Principal:
        if self._hook is not None:
            result = await call_hook(self._hook, identity)
            if result is None:
                raise Forbidden(
                    "this user cannot be mapped to a billing principal", code="unmapped_principal"
                )
            if isinstance(result, Principal):
                return self._checked(result)
            if isinstance(result, Mapping):
                try:
                    return self._checked(
                        Principal(
                            principal_id=str(result["principal_id"]),
                            user_id=str(result["user_id"]),
                            traits=dict(result.get("traits") or {}),
                        )
                    )
                except KeyError:
                    pass
            raise TypeError(
                "mapping hook must return a Principal, a mapping with principal_id and user_id, or None"
            )
        return self._checked(self._by_rules(identity.claims))

    def _by_rules(self, claims: Mapping[str, Any]) -> Principal:
        principal_id: str | None = None
        for rule in self._s.principal:
            value = _scalar(claims.get(rule.claim))
            if value is None:
                continue
            principal_id = self._render(rule.template, value, claims)
            if principal_id is not None:
                break
        if principal_id is None:
            wanted = ", ".join(r.claim for r in self._s.principal)
            raise Forbidden(
                f"no billing principal for this user: none of the claims [{wanted}] is usable",
                code="unmapped_principal",
            )
        user_id = _scalar(claims.get(self._s.user_claim))
        if user_id is None:
            raise Forbidden(
                f"no billing user for this user: the {self._s.user_claim!r} claim is missing",
                code="unmapped_principal",
            )
        traits: dict[str, Any] = {}
        for trait, claim in self._s.traits.items():
            v = claims.get(claim)
            if isinstance(v, (str, int, float, bool)):
                traits[trait] = v
        return Principal(principal_id=principal_id, user_id=user_id, traits=traits)

    @staticmethod
    def _render(template: str, value: str, claims: Mapping[str, Any]) -> str | None:
        missing = False

        def sub(m: re.Match[str]) -> str:
            nonlocal missing
            name = m.group(1)
            v = value if name == "value" else _scalar(claims.get(name))
            if v is None:
                missing = True
                return ""
            return v

        out = _FIELD.sub(sub, template)
        return None if missing else out

    @staticmethod
    def _checked(p: Principal) -> Principal:
        if not _valid_id(p.principal_id) or not _valid_id(p.user_id):
            raise Forbidden(
                "the mapped principal or user id is empty, too long or has control characters",
                code="unmapped_principal",
            )
        return p
