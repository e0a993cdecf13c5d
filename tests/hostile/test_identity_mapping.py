"""Identity mapping: distinct claim tuples never yield the same principal (so two tenants never
share a billing account), proven for every template the settings accept by a property test, and
shown end to end on a running service with the reported template."""

from __future__ import annotations

import asyncio
import string
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bff.auth.identity import Identity
from bff.errors import Forbidden
from bff.principals import PrincipalMapper
from bff.settings import SettingsError, validate_settings
from tests.support.keys import UserKeys

from .support import Target, serving

NAMES = ["value", "dept", "region", "team"]
# What the settings accept between placeholders: no letters, digits or "%".
SEPARATOR_CHARS = ":/|-._@#!~ +=,;[]()<>*&^$'\""
VALUE_CHARS = SEPARATOR_CHARS + "%aA0zé\u2603" + string.ascii_lowercase[:4]


@st.composite
def templates(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A template with 2-4 placeholders (one of them {value}), separators the settings accept,
    and any prefix and suffix."""
    names = draw(st.permutations(NAMES).map(lambda p: list(p[: draw(st.integers(2, 4))])))
    if "value" not in names:
        names[0] = "value"
    seps = [draw(st.text(SEPARATOR_CHARS, min_size=1, max_size=3)) for _ in names[1:]]
    prefix = draw(st.text(string.ascii_letters + ":-", max_size=4))
    suffix = draw(st.text(string.ascii_letters + ":-", max_size=3))
    body = "{" + names[0] + "}" + "".join(sep + "{" + n + "}" for sep, n in zip(seps, names[1:], strict=True))
    return prefix + body + suffix, names


def mapper_for(template: str) -> PrincipalMapper:
    s = validate_settings(
        {"dev": {"enabled": True}, "mapping": {"principal": [{"claim": "org", "template": template}]}}
    )
    return PrincipalMapper(s.mapping)


def claims_for(names: list[str], values: list[str]) -> dict[str, Any]:
    claims: dict[str, Any] = {"sub": "same-user"}
    for name, value in zip(names, values, strict=True):
        claims["org" if name == "value" else name] = value
    return claims


def principal(mapper: PrincipalMapper, claims: dict[str, Any]) -> str | None:
    try:
        p = asyncio.run(mapper.map(Identity(claims=claims, method="bearer")))
    except Forbidden:
        return None  # refused (too long, unprintable): never a collision
    return p.principal_id


values = st.text(VALUE_CHARS, min_size=1, max_size=8).filter(lambda v: bool(v.strip()))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_distinct_claim_tuples_never_share_a_principal(data: st.DataObject) -> None:
    template, names = data.draw(templates())
    mapper = mapper_for(template)
    first = data.draw(st.lists(values, min_size=len(names), max_size=len(names)))
    second = data.draw(st.lists(values, min_size=len(names), max_size=len(names)))
    assume(first != second)
    a, b = principal(mapper, claims_for(names, first)), principal(mapper, claims_for(names, second))
    if a is not None and b is not None:
        assert a != b, (template, first, second)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_values_built_from_the_separators_never_collide(data: st.DataObject) -> None:
    """The adversarial shape: the second tuple moves a separator from one value to its neighbour
    (the reported ("acme:x", "eng") against ("acme", "x:eng"))."""
    template, names = data.draw(templates())
    mapper = mapper_for(template)
    pieces = template.split("}")
    sep = pieces[1].split("{")[0]  # the text between the first two placeholders
    left, middle, right = (data.draw(values) for _ in range(3))
    rest = [data.draw(values) for _ in names[2:]]
    a = principal(mapper, claims_for(names, [left + sep + middle, right, *rest]))
    b = principal(mapper, claims_for(names, [left, middle + sep + right, *rest]))
    if a is not None and b is not None:
        assert a != b, (template, left, middle, right)


@pytest.mark.parametrize(
    "template", ["{value}{dept}", "t:{value}a{dept}", "{value}%{dept}", "{value}:7{dept}"]
)
def test_templates_that_cannot_tell_values_apart_are_refused_at_start_up(template: str) -> None:
    with pytest.raises(SettingsError) as info:
        mapper_for(template)
    assert "mapping.principal[0].template" in str(info.value)


@pytest.fixture(scope="module")
def tenants(user_keys: UserKeys) -> Iterator[Target]:
    mapping = {"principal": [{"claim": "org_id", "template": "t:{value}:{dept}"}], "user_claim": "sub"}
    with serving(user_keys, mapping=mapping) as t:
        yield t


def test_the_reported_tenants_get_two_billing_accounts(tenants: Target) -> None:
    accounts = set()
    tokens = set()
    for org, dept in (("acme:x", "eng"), ("acme", "x:eng"), ("acme%3Ax", "eng")):
        token = tenants.keys.token("same-user", org=org, dept=dept)
        headers = {"Authorization": f"Bearer {token}"}
        r = httpx.get(f"{tenants.bff.url}/vluna/token", headers=headers, timeout=20)
        assert r.status_code == 200, r.text
        accounts.add(r.json()["billing_account_id"])
        tokens.add(r.json()["access_token"])
    assert len(accounts) == 3 and len(tokens) == 3
