from __future__ import annotations

import time
from typing import Any

import jwt
import pytest

from bff import principals
from bff.auth.identity import Identity
from bff.auth.jwt import JwtVerifier
from bff.errors import Forbidden
from bff.principals import ObservedPrincipalMapper, Principal, PrincipalMapper
from bff.settings import MappingSettings
from bff.telemetry import context
from bff.telemetry.context import IdHasher, RequestInfo, current_request

RULES = MappingSettings.model_validate(
    {
        "principal": [
            {"claim": "org_id", "template": "org:{value}"},
            {"claim": "team", "template": "team:{tenant}:{value}"},
            {"claim": "sub", "template": "user:{value}"},
        ],
        "user_claim": "sub",
        "traits": {"email": "email", "name": "name", "admin": "is_admin"},
    }
)


async def mapped(claims: dict[str, Any], settings: MappingSettings = RULES) -> Principal:
    return await PrincipalMapper(settings).map(Identity(claims=claims, method="bearer"))


async def test_first_present_claim_wins_with_template() -> None:
    p = await mapped(
        {"sub": "u1", "org_id": "acme", "email": "a@x", "name": "A", "is_admin": True, "extra": "no"}
    )
    assert (p.principal_id, p.user_id) == ("org:acme", "u1")
    assert p.traits == {"email": "a@x", "name": "A", "admin": True}


async def test_fallback_and_other_claims_in_template() -> None:
    assert (await mapped({"sub": "u1"})).principal_id == "user:u1"
    assert (await mapped({"sub": "u1", "team": "t9", "tenant": "eu"})).principal_id == "team:eu:t9"
    # A template whose other placeholder is missing does not match; the next rule does.
    assert (await mapped({"sub": "u1", "team": "t9"})).principal_id == "user:u1"
    assert (await mapped({"sub": 42})).principal_id == "user:42"


async def test_template_cannot_reach_attributes() -> None:
    s = MappingSettings.model_validate({"principal": [{"claim": "sub", "template": "{value.__class__}"}]})
    p = await mapped({"sub": "x"}, s)
    assert p.principal_id == "{value.__class__}"  # left as text, never evaluated


@pytest.mark.parametrize(
    "claims",
    [
        {},
        {"org_id": "acme"},  # no user id
        {"sub": ""},
        {"sub": True},
        {"sub": ["a"]},
        {"sub": "x" * 300},
        {"sub": "bad\nid"},
        {"sub": {"nested": 1}},
    ],
)
async def test_unmappable_users_are_forbidden_with_a_clear_message(claims: dict[str, Any]) -> None:
    with pytest.raises(Forbidden) as info:
        await mapped(claims)
    assert info.value.code == "unmapped_principal"
    assert info.value.status == 403


async def test_hook_replaces_rules() -> None:
    async def hook(identity: Identity) -> Any:
        if identity.claims.get("banned"):
            return None
        return {"principal_id": f"acct:{identity.claims['acct']}", "user_id": identity.claims["sub"]}

    mapper = PrincipalMapper(RULES, hook)
    p = await mapper.map(Identity(claims={"sub": "u", "acct": "7"}, method="hook"))
    assert (p.principal_id, p.user_id) == ("acct:7", "u")
    with pytest.raises(Forbidden):
        await mapper.map(Identity(claims={"sub": "u", "banned": True}, method="hook"))


async def test_several_claims_never_collide() -> None:
    """The reported case: t:{value}:{dept} mapped (acme:x, eng) and (acme, x:eng) alike."""
    s = MappingSettings.model_validate({"principal": [{"claim": "org", "template": "t:{value}:{dept}"}]})
    a = await mapped({"sub": "u", "org": "acme:x", "dept": "eng"}, s)
    b = await mapped({"sub": "u", "org": "acme", "dept": "x:eng"}, s)
    assert (a.principal_id, b.principal_id) == ("t:acme%3Ax:eng", "t:acme:x%3Aeng")
    c = await mapped({"sub": "u", "org": "acme%3Ax", "dept": "eng"}, s)
    assert c.principal_id == "t:acme%253Ax:eng"  # "%" is encoded too: no forging an encoding
    # One placeholder: values are used as they are (prefix and suffix are fixed).
    assert (await mapped({"sub": "a:b%c"})).principal_id == "user:a:b%c"


async def test_traits_are_bounded_scalars() -> None:
    p = await mapped(
        {"sub": "u1", "email": "x" * 5000, "name": 10**30, "is_admin": float("nan")},
    )
    assert p.traits == {}
    p = await mapped({"sub": "u1", "email": "a@x", "name": 2**53, "is_admin": 1.5})
    assert p.traits == {"email": "a@x", "name": 2**53, "admin": 1.5}


# -- the rules' memo -------------------------------------------------------------------------------


async def test_memo_keeps_users_apart_and_each_request_still_records_its_hashes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tokens verified through the verifier's cache (the same claims object per token): each
    request gets its own user's principal, the rules run once per user, and every request's log
    identity is recorded."""
    secret = b"a-test-hmac-secret-of-32-bytes!!"
    verifier = JwtVerifier(algorithms=["HS256"], issuers=[], audiences=[], key_source=None, hs_secret=secret)
    exp = int(time.time()) + 600
    tokens = {
        user: jwt.encode({"sub": user, "org_id": f"org-{user}", "exp": exp}, secret, algorithm="HS256")
        for user in ("alice", "bob")
    }
    mapper = ObservedPrincipalMapper(RULES)
    runs: list[str] = []
    by_rules = mapper._by_rules

    def counted(claims: Any) -> Principal:
        runs.append(claims["sub"])
        return by_rules(claims)

    monkeypatch.setattr(mapper, "_by_rules", counted)
    hasher = IdHasher(b"k" * 32)
    monkeypatch.setattr(context, "_hasher", hasher)  # restored afterwards
    for _ in range(3):
        for user in ("alice", "bob", "bob", "alice"):
            info = RequestInfo(request_id="r", method="GET")
            reset = current_request.set(info)
            try:
                claims = await verifier.verify(tokens[user])
                p = await mapper.map(Identity(claims=claims, method="bearer"))
            finally:
                current_request.reset(reset)
            assert (p.principal_id, p.user_id) == (f"org:org-{user}", user)
            assert (info.principal, info.user) == (hasher.hash(f"org:org-{user}"), hasher.hash(user))
    assert sorted(runs) == ["alice", "bob"]  # remembered after the first request of each


async def test_memo_never_confuses_claims_objects_that_come_and_go() -> None:
    # Fresh claims each time, the previous one dropped: a memo keyed by id() alone would hand
    # user i the principal of user i-1 (CPython reuses the freed object's id).
    mapper = PrincipalMapper(RULES)
    for i in range(200):
        p = await mapper.map(Identity(claims={"sub": f"u{i}"}, method="bearer"))
        assert (p.principal_id, p.user_id) == (f"user:u{i}", f"u{i}")


async def test_memo_follows_a_claims_object_changed_in_place() -> None:
    # An authentication hook may hand back one dict it fills anew for each caller: the memo reads
    # the values, never the object's identity, so each caller still gets its own principal.
    mapper = PrincipalMapper(RULES)
    claims: dict[str, Any] = {"sub": "alice", "org_id": "acme"}
    for user, org in [("alice", "acme"), ("bob", "acme"), ("bob", None), ("alice", "acme"), ("bob", "beta")]:
        claims.clear()
        claims["sub"] = user
        if org is not None:
            claims["org_id"] = org
        p = await mapper.map(Identity(claims=claims, method="hook"))
        assert (p.principal_id, p.user_id) == ((f"org:{org}" if org else f"user:{user}"), user)


async def test_memo_tells_claim_types_apart() -> None:
    # 1, 1.0 and True are equal (and hash alike) in Python; as ids only the integer is usable.
    mapper = PrincipalMapper(RULES)
    assert (await mapper.map(Identity(claims={"sub": 1}, method="bearer"))).user_id == "1"
    for unusable in (True, 1.0):
        with pytest.raises(Forbidden):
            await mapper.map(Identity(claims={"sub": unusable}, method="bearer"))
    # A list in a claim the rules read: mapped without the memo, correctly.
    p = await mapper.map(Identity(claims={"sub": "u", "org_id": ["a", "b"]}, method="bearer"))
    assert (p.principal_id, p.user_id) == ("user:u", "u")


async def test_memo_is_bounded_and_keeps_no_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(principals, "MEMO_MAX_ENTRIES", 8)
    mapper = PrincipalMapper(RULES)
    kept = [{"sub": f"u{i}"} for i in range(20)]
    for claims in kept:
        await mapper.map(Identity(claims=claims, method="bearer"))
    assert len(mapper._memo) == 8
    for i, claims in enumerate(kept):  # the dropped ones are mapped again, correctly
        assert (await mapper.map(Identity(claims=claims, method="bearer"))).user_id == f"u{i}"
    bad: dict[str, Any] = {"email": "no-sub@x"}
    for _ in range(2):
        with pytest.raises(Forbidden):
            await mapper.map(Identity(claims=bad, method="bearer"))


async def test_hook_results_are_never_remembered() -> None:
    answers = iter(["p1", "p2", "p3"])

    async def hook(identity: Identity) -> Any:
        return {"principal_id": next(answers), "user_id": identity.claims["sub"]}

    mapper = PrincipalMapper(RULES, hook)
    identity = Identity(claims={"sub": "u"}, method="hook")
    assert [(await mapper.map(identity)).principal_id for _ in range(3)] == ["p1", "p2", "p3"]
