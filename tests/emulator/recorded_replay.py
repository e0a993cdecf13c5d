"""Replay the exchanges recorded from the open-source Vluna server against the emulator's "oss"
flavour, in order, on one fresh emulator (the recording came from one fresh database), and
compare each answer with the recorded one: status, error code, the shape of the body (keys and
value types, recursively; a list is the set of its items' shapes), the response headers the
recorder kept, and the claims of every platform token issued.

What the recording blanked is rebuilt:
- SVC-AUTH signatures (`sig=<sig>`) are computed again with test secrets for the two recorded
  key ids, over the canonical string the record's purpose describes (most are signed as sent;
  `SIGNING` lists the deliberate deviations: wrong secret, unsigned query or header lines, the
  0.1.2 form, ...); `Content-Digest` (never recorded) is computed the same way;
- `Bearer <platform token>` placeholders become the emulator's own token with the same `jti`
  (mapped when its issuance was replayed); special tokens (tampered, alg none, garbage, expired)
  are made from it; the expired ones are used after moving the emulator's clock past their expiry;
- ids differ: every id (UUID, lease token) the recorded server answered is mapped to the one the
  emulator answered at the same place, and recorded ids in later requests are replaced;
- headers the recorder dropped but a purpose names (Origin, x-realm-admin, X-Billing-User-Id, ...)
  are added back (`EXTRA_HEADERS`).

`metadata` objects are free-form (the server keeps internal bookkeeping there): only their type
is compared.

Run it alone for a report: `.venv/bin/python tests/emulator/recorded_replay.py`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

REPO = Path(__file__).resolve().parents[2]
RECORDED = REPO / "spec" / "vluna-api" / "recorded" / "oss-11e6371.jsonl"

REALM_A, REALM_B = "realm-default", "realm-b"
KEY_A, KEY_B = "pk-BINyf4mwHJf9Ywzr", "pk-EDF4QiZTecinpW1q"
SECRET_A = base64.b64encode(b"replay-secret-of-realm-default-0").decode()
SECRET_B = base64.b64encode(b"replay-secret-of-realm-b-0123456").decode()
WRONG_SECRET = b"not-the-secret-of-any-key-000000"
# Principal B's billing account in the recording (the tampered token claims it).
ACCOUNT_B = "86121cc4-21b1-45cb-8028-91e33074ee1c"
SECRETS = {KEY_A: base64.b64decode(SECRET_A), KEY_B: base64.b64decode(SECRET_B)}

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_LEASE = re.compile(r"^lease\.[0-9a-f-]{36}\.[0-9a-f]{16}$")
FREE_FORM = frozenset({"metadata"})
# Headers the recorder kept whenever they were present, and never saw: none may appear.
NEVER_SEEN = ("idempotent-replayed", "retry-after", "x-request-id", "www-authenticate", "location", "allow")
# The OPTIONS, CORS and HEAD records also kept these; there they must match exactly.
CORS_KEPT = re.compile(r"^(access-control-.*|vary)$")

# Headers named in a record's purpose (the recorder kept only the seven binding headers).
EXTRA_HEADERS: dict[str, dict[str, str]] = {
    "misc_options_preflight_api": {
        "Origin": "http://localhost:3000",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization,x-realm-id",
    },
    "misc_options_preflight_mgt": {
        "Origin": "https://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    },
    "misc_cors_simple_get": {"Origin": "https://evil.example"},
    "misc_request_id_header": {"X-Request-Id": "rec-123"},
    "misc_traceparent_header": {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    "realm_admin_header_bearer_invoices_other": {"x-realm-admin": "true"},
    "realm_admin_header_svc_other_account": {"x-realm-admin": "true"},
    "xacct_contracts_principal_b_account_a_realm_admin": {"x-realm-admin": "true"},
}


@dataclass
class Signing:
    """How one record's SVC-AUTH signature was made, where it was not simply "as sent"."""

    secret: bytes | None = None  # another secret than the key id's
    digest: str | None = None  # Content-Digest sent (and signed) instead of the body's; "" = none
    unsigned: tuple[str, ...] = ()  # canonical lines signed empty: "query", "x-user-id", ...
    billing_user_of: str | None = None  # X-Billing-User-Id: the billing user of this business user
    legacy: bool = False  # the published vlunaai 0.1.2 canonical form


def _digest_of(raw: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(raw).digest()).decode() + ":"


SIGNING: dict[str, Signing] = {
    "auth_wrong_secret": Signing(secret=WRONG_SECRET),
    "auth_missing_content_digest_get": Signing(digest=""),
    "auth_missing_content_digest_post": Signing(digest=""),
    "auth_wrong_content_digest": Signing(digest=_digest_of(b'{"principal_id": "org:other"}')),
    "auth_digest_without_colons": Signing(digest="without-colons"),
    "auth_get_digest_of_empty_json": Signing(digest=_digest_of(b"{}")),
    "auth_user_header_not_signed": Signing(unsigned=("x-user-id",)),
    "auth_principal_header_not_signed": Signing(unsigned=("x-principal-id",)),
    "auth_query_not_signed": Signing(unsigned=("query",)),
    "auth_billing_user_header_signed": Signing(billing_user_of="user:bob-r1"),
    "sig012_token_issue": Signing(legacy=True),
    "sig012_catalog_principal": Signing(legacy=True),
    "sig012_wallet_with_user_header": Signing(legacy=True),
    "sig012_billing_account": Signing(legacy=True),
    "sig012_no_bindings": Signing(legacy=True),
}
# Records after which the recorder waited (~66 s) before using an expired token.
CLOCK_JUMPS = {"bearer_expired_token": 70.0}


def records() -> list[dict[str, Any]]:
    return [json.loads(line) for line in RECORDED.read_text("utf-8").splitlines() if line.strip()]


# --- shapes ---------------------------------------------------------------------------------------


def shape(value: Any, key: str | None = None) -> Any:
    if key in FREE_FORM and isinstance(value, dict):
        return "object"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return ["list", sorted({json.dumps(shape(v), sort_keys=True) for v in value})]
    if isinstance(value, dict):
        return {k: shape(v, k) for k, v in sorted(value.items())}
    return type(value).__name__


def shape_diff(recorded: Any, got: Any, where: str = "$") -> list[str]:
    """Where two shapes differ, as short readable lines."""
    if isinstance(recorded, dict) and isinstance(got, dict):
        out = [f"{where}.{k}: missing" for k in recorded if k not in got]
        out += [f"{where}.{k}: unexpected" for k in got if k not in recorded]
        for k in recorded:
            if k in got:
                out += shape_diff(recorded[k], got[k], f"{where}.{k}")
        return out
    if recorded != got:
        return [f"{where}: recorded {json.dumps(recorded)[:160]} got {json.dumps(got)[:160]}"]
    return []


# --- the replay -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    name: str
    problems: list[str] = field(default_factory=list)

    @property
    def matched(self) -> bool:
        return not self.problems


class Replayer:
    def __init__(self, client: httpx.AsyncClient, advance_clock: Callable[[float], None]) -> None:
        self.client = client
        self.advance_clock = advance_clock
        self.ids: dict[str, str] = {}
        self.tokens: dict[str, str] = {}  # recorded jti -> the emulator's token
        self.billing_users: dict[str, str] = {}  # business user id -> emulator billing user id
        self.last_token = ""

    # -- ids ------------------------------------------------------------------------------------

    def sub(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.ids.get(value, value)
        if isinstance(value, list):
            return [self.sub(v) for v in value]
        if isinstance(value, dict):
            return {k: self.sub(v) for k, v in value.items()}
        return value

    def learn(self, recorded: Any, got: Any) -> None:
        if isinstance(recorded, str) and isinstance(got, str):
            if (_UUID.match(recorded) or _LEASE.match(recorded)) and recorded not in self.ids:
                self.ids[recorded] = got
        elif isinstance(recorded, dict) and isinstance(got, dict):
            for k, v in recorded.items():
                if k in got:
                    self.learn(v, got[k])
        elif isinstance(recorded, list) and isinstance(got, list):
            for r, g in self._pairs(recorded, got):
                self.learn(r, g)

    def _pairs(self, recorded: list[Any], got: list[Any]) -> list[tuple[Any, Any]]:
        """Items of two lists that describe the same thing (lists may be ordered by id)."""
        if len(recorded) <= 1 or len(recorded) != len(got):
            return list(zip(recorded, got, strict=False))
        pairs, left = [], list(got)
        for item in recorded:
            best = max(left, key=lambda g: self._likeness(item, g))
            left.remove(best)
            pairs.append((item, best))
        return pairs

    def _likeness(self, recorded: Any, got: Any) -> int:
        if not (isinstance(recorded, dict) and isinstance(got, dict)):
            return 0
        score = 0
        for k, v in recorded.items():
            if isinstance(v, str):
                score += got.get(k) == self.ids.get(v, v)
            elif isinstance(v, (int, bool)):
                score += got.get(k) == v
        return score

    # -- requests -------------------------------------------------------------------------------

    def body_bytes(self, body: Any) -> bytes:
        if body is None:
            return b""
        if isinstance(body, str):
            return body.encode()
        return json.dumps(self.sub(body)).encode()

    def bearer(self, label: str, claims: dict[str, Any] | None) -> str:
        if "garbage" in label:
            return "not.a.jwt"
        if claims is None:
            # The one record whose request token is not described (its claims are those of the
            # token it asks for): the main token, as in the records around it.
            assert label == "<platform token>", label
            return self.last_token or "never.issued.token"
        token = self.tokens.get(claims["payload"]["jti"])
        if token is None:  # its issuance did not succeed here: the call will fail, and show it
            return "never.issued.token"
        if label == "<platform token>":
            self.last_token = token
        head, payload, sig = token.split(".")
        if "altered signature" in label:
            return f"{head}.{payload}.{sig[:-2]}{'AA' if not sig.endswith('AA') else 'BB'}"
        if "altered payload" in label:
            data = json.loads(base64.urlsafe_b64decode(payload + "=="))
            data["billing_account_id"] = self.ids[ACCOUNT_B]
            forged = base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")
            return f"{head}.{forged}.{sig}"
        if "alg=none" in label:
            none = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
            return f"{none}.{payload}."
        return token

    def sign(
        self, record: dict[str, Any], headers: dict[str, str], path_query: str, path: str, raw: bytes
    ) -> None:
        how = SIGNING.get(record["name"], Signing())
        auth = headers["Authorization"]
        fields = dict(part.strip().split("=", 1) for part in auth.split(" ", 1)[1].split(","))
        key_id = fields["keyId"]
        if key_id not in SECRETS:  # an unknown or fake key: any signature will do
            headers["Authorization"] = auth.replace("<sig>", "AAAA")
            return
        digest = _digest_of(raw) if how.digest is None else how.digest
        if digest:
            headers["Content-Digest"] = digest
        h = {k.lower(): v for k, v in headers.items()}
        if how.billing_user_of is not None:
            known = self.billing_users.get(how.billing_user_of, "unknown-billing-user")
            headers["X-Billing-User-Id"] = h["x-billing-user-id"] = known

        def line(name: str) -> str:
            return "" if name in how.unsigned else h.get(name, "")

        target = path if "query" in how.unsigned else path_query
        common = [
            record["request"]["method"].upper(),
            target,
            f"ts:{fields['ts']}",
            f"nonce:{fields['nonce']}",
            f"content-digest:{digest}",
            f"content-type:{h.get('content-type', '')}",
            f"x-realm-id:{h.get('x-realm-id', '')}",
        ]
        if how.legacy:
            lines = [
                *common,
                f"x-billing-account-id:{line('x-billing-account-id')}",
                f"x-principal-id:{line('x-principal-id')}",
            ]
        else:
            lines = [
                *common,
                f"x-principal-id:{line('x-principal-id')}",
                f"x-user-id:{line('x-user-id')}",
                f"x-billing-account-id:{line('x-billing-account-id')}",
                f"x-billing-user-id:{line('x-billing-user-id')}",
            ]
        lines.append(f"idempotency-key:{h.get('idempotency-key', '')}")
        secret = how.secret or SECRETS[key_id]
        sig = base64.b64encode(hmac.new(secret, "\n".join(lines).encode(), hashlib.sha256).digest()).decode()
        headers["Authorization"] = auth.replace("<sig>", sig)

    async def replay(self, record: dict[str, Any]) -> Outcome:
        name = record["name"]
        if name in CLOCK_JUMPS:
            self.advance_clock(CLOCK_JUMPS[name])
        req = record["request"]
        path = "/".join(self.sub(seg) for seg in req["path"].split("/"))
        query = {k: self.sub(v) for k, v in (req.get("query") or {}).items()}
        path_query = path + ("?" + urlencode(query) if query else "")
        headers = {k: self.sub(v) for k, v in req["headers"].items()}
        headers.update(EXTRA_HEADERS.get(name, {}))
        raw = self.body_bytes(req["body"])
        claims = record.get("token_claims")
        auth = headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            request_claims = claims if claims and claims["of"] == "request bearer token" else None
            headers["Authorization"] = "Bearer " + self.bearer(auth[len("Bearer ") :], request_claims)
        elif auth.startswith("Basic "):
            headers["Authorization"] = "Basic dXNlcjpwYXNzd29yZA=="
        elif "<sig>" in auth:
            self.sign(record, headers, path_query, path, raw)
        response = await self.client.request(req["method"], path_query, headers=headers, content=raw)
        return self.compare(record, response)

    # -- answers --------------------------------------------------------------------------------

    def compare(self, record: dict[str, Any], response: httpx.Response) -> Outcome:
        out = Outcome(record["name"])
        want = record["response"]
        got: Any = None
        if response.content:
            try:
                got = response.json()
            except ValueError:
                got = response.text
        if response.status_code != want["status"]:
            out.problems.append(f"status {response.status_code}, recorded {want['status']}: {str(got)[:200]}")
        body = want["body"]
        if isinstance(body, dict) and isinstance(got, dict) and body.get("code") != got.get("code"):
            out.problems.append(f"code {got.get('code')}, recorded {body.get('code')}")
        out.problems += shape_diff(shape(body), shape(got))
        self._compare_headers(record, response, out)
        if isinstance(body, dict) and isinstance(got, dict):
            self.learn(body, got)
            self._learn_users(got)
        claims = record.get("token_claims")
        if claims and claims["of"] == "response data.access_token" and isinstance(got, dict):
            token = (got.get("data") or {}).get("access_token")
            if isinstance(token, str):
                self.tokens[claims["payload"]["jti"]] = token
                out.problems += compare_claims(claims, token)
        return out

    def _learn_users(self, body: dict[str, Any]) -> None:
        data = body.get("data")
        if isinstance(data, dict) and "billing_user_id" in data and "business_user_id" in data:
            self.billing_users[data["business_user_id"]] = data["billing_user_id"]

    @staticmethod
    def _compare_headers(record: dict[str, Any], response: httpx.Response, out: Outcome) -> None:
        kept = {k.lower(): v for k, v in record["response"]["headers"].items()}
        got = {k.lower(): v for k, v in response.headers.items()}
        for name, value in kept.items():
            if name not in got:
                out.problems.append(f"header {name} missing")
            elif name != "content-length" and got[name] != value:
                out.problems.append(f"header {name}: {got[name]!r}, recorded {value!r}")
        for name in NEVER_SEEN:
            if name in got and name not in kept:
                out.problems.append(f"header {name} sent, never recorded")
        if any(CORS_KEPT.match(k) for k in kept):
            for name in got:
                if CORS_KEPT.match(name) and name not in kept:
                    out.problems.append(f"header {name} sent, not recorded")


def _jwt_part(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    loaded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return loaded


# Claims whose recorded value must be reproduced exactly (the rest: same keys and types).
EXACT_CLAIMS = (
    "aud",
    "tu",
    "token_use",
    "tv",
    "scope",
    "plt_scopes",
    "realm_id",
    "billing_principal_id",
    "business_user_id",
    "sub",
    "nonce",
    "plt_traits",
)


def compare_claims(recorded: dict[str, Any], token: str) -> list[str]:
    problems: list[str] = []
    header, payload = _jwt_part(token, 0), _jwt_part(token, 1)
    want_header, want = recorded["header"], recorded["payload"]
    if header != want_header:
        problems.append(f"token header {header}, recorded {want_header}")
    problems += [f"claims{d[1:]}" for d in shape_diff(shape(want), shape(payload))]
    for name in EXACT_CLAIMS:
        if name in want and payload.get(name) != want[name]:
            problems.append(f"claim {name}: {payload.get(name)!r}, recorded {want[name]!r}")
    iss = str(payload.get("iss", ""))
    if iss != want["iss"]:
        problems.append(f"claim iss: {iss!r}, recorded {want['iss']!r}")
    lifetime, recorded_lifetime = payload.get("exp", 0) - payload.get("iat", 0), want["exp"] - want["iat"]
    if lifetime != recorded_lifetime:
        problems.append(f"token lifetime {lifetime}, recorded {recorded_lifetime}")
    return problems


async def replay_all(flavor: str = "oss", **options: Any) -> list[Outcome]:
    """Every record, in order, against one fresh emulator of `flavor` with the recorded realms
    and key ids (an empty catalog: the recording creates its own)."""
    from vlunaai.testing import VlunaEmulator
    from vlunaai.testing.seed import Realm, Seed, ServiceKey

    seed = Seed(
        realms=[Realm(REALM_A, "default", payment_provider=None), Realm(REALM_B, "b", payment_provider=None)],
        service_keys=[ServiceKey(KEY_B, SECRET_B, realms=(REALM_B,))],
    )
    async with VlunaEmulator(
        flavor=flavor,
        realm_id=REALM_A,
        service_key_id=KEY_A,
        service_key_secret=SECRET_A,
        seed=seed,
        **options,
    ) as emu:
        client = emu.http_client()
        replayer = Replayer(client, emu.advance_time)
        return [await replayer.replay(record) for record in records()]


def report(outcomes: list[Outcome]) -> str:
    matched = sum(o.matched for o in outcomes)
    lines = [f"{matched} of {len(outcomes)} recorded exchanges matched"]
    for o in outcomes:
        if not o.matched:
            lines.append(f"- {o.name}: " + "; ".join(o.problems[:4]))
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(asyncio.run(replay_all())))
