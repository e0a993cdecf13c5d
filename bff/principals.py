"""From an authenticated identity to the Vluna principal, user and traits.

Rules are tried in order; the first whose claim is present gives the principal, e.g.
``[{claim: org_id, template: "org:{value}"}, {claim: sub, template: "user:{value}"}]``.
Templates substitute ``{value}`` and ``{<claim>}`` only (no attribute access, no format specs).

Distinct claim values never give the same principal. With one placeholder that holds by itself
(a fixed prefix and suffix around the value). With several, the text between placeholders
separates the values, so in each value ``%`` and every character of that text are
percent-encoded (UTF-8): ``t:{value}:{dept}`` maps (``acme:x``, ``eng``) to ``t:acme%3Ax:eng``
and (``acme``, ``x:eng``) to ``t:acme:x%3Aeng``. Settings validation makes sure that text is
non-empty and free of letters, digits and ``%`` (which the encoding itself produces).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bff.auth.identity import Identity
from bff.errors import Forbidden
from bff.hooks import call_hook
from bff.settings import MappingSettings
from bff.telemetry.context import note_identity


@dataclass(frozen=True)
class Principal:
    """Who a Vluna token is for: the principal, the user within it, and the user's traits."""

    principal_id: str
    user_id: str
    traits: Mapping[str, Any] = field(default_factory=dict)


_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
MAX_ID_LEN = 256
MAX_TRAIT_LEN = 1024
# Rules-based mappings remembered by the claim values they read (see PrincipalMapper.map).
MEMO_MAX_ENTRIES = 4096
_MAX_SAFE_INT = 2**53  # what every JSON reader keeps exact


def _scalar(value: Any) -> str | None:
    # bool is an int subclass; `True` as an org id is a mistake, not an id.
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _valid_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID_LEN and value.isprintable()


def _trait(value: Any) -> Any:
    """A claim as a trait value, or None when it is not a plain, bounded scalar."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT else None
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if len(value) <= MAX_TRAIT_LEN else None
    return None


def separators(template: str) -> frozenset[str]:
    """The characters that must be encoded in the values of this template: none with a single
    placeholder; with several, ``%`` and every character of the text between placeholders."""
    pieces = _FIELD.split(template)  # literal, name, literal, name, ..., literal
    if len(pieces) <= 3:
        return frozenset()
    between = "".join(pieces[2:-1:2])
    return frozenset(between) | {"%"}


def encode_value(value: str, chars: frozenset[str]) -> str:
    if not chars or not any(c in chars for c in value):
        return value
    return "".join("".join(f"%{b:02X}" for b in c.encode()) if c in chars else c for c in value)


class PrincipalMapper:
    def __init__(self, settings: MappingSettings, hook: Callable[..., Any] | None = None) -> None:
        self._s = settings
        self._hook = hook
        self._separators = [separators(rule.template) for rule in settings.principal]
        # The rules' result is a function of a few claims only: the rules' claims and their
        # templates' fields, the user claim and the traits' claims. It is remembered under those
        # claims' values, each with its type (True, 1 and 1.0 are equal in Python but not here),
        # so a request of a known caller skips the rules, and two callers share an entry only
        # when every claim the rules read is the same. Only rules are remembered (a hook may
        # answer differently each time), only successes, and a bounded number (oldest first).
        read: list[str] = []
        for rule in settings.principal:
            read += [rule.claim, *(n for n in _FIELD.findall(rule.template) if n != "value")]
        read += [settings.user_claim, *settings.traits.values()]
        self._read = tuple(dict.fromkeys(read))
        self._memo: dict[tuple[tuple[type, Any], ...], Principal] = {}

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
        claims = identity.claims
        key = tuple([(type(v), v) for v in map(claims.get, self._read)])
        try:
            hit = self._memo.get(key)
        except TypeError:  # a claim the rules read holds a list or an object: mapped every time
            return self._checked(self._by_rules(claims))
        if hit is not None:
            return hit
        principal = self._checked(self._by_rules(claims))
        memo = self._memo
        if len(memo) >= MEMO_MAX_ENTRIES:
            del memo[next(iter(memo))]
        memo[key] = principal
        return principal

    def _by_rules(self, claims: Mapping[str, Any]) -> Principal:
        principal_id: str | None = None
        for rule, chars in zip(self._s.principal, self._separators, strict=True):
            value = _scalar(claims.get(rule.claim))
            if value is None:
                continue
            principal_id = self._render(rule.template, value, claims, chars)
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
            v = _trait(claims.get(claim))
            if v is not None:
                traits[trait] = v
        return Principal(principal_id=principal_id, user_id=user_id, traits=traits)

    @staticmethod
    def _render(template: str, value: str, claims: Mapping[str, Any], chars: frozenset[str]) -> str | None:
        missing = False

        def sub(m: re.Match[str]) -> str:
            nonlocal missing
            name = m.group(1)
            v = value if name == "value" else _scalar(claims.get(name))
            if v is None:
                missing = True
                return ""
            return encode_value(v, chars)

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


class ObservedPrincipalMapper(PrincipalMapper):
    """Records the hashed principal and user for the request's log line."""

    async def map(self, identity: Identity) -> Principal:
        principal = await super().map(identity)
        note_identity(principal.principal_id, principal.user_id)
        return principal
