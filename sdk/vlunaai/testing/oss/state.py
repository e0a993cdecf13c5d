"""In-memory state of the open-source server flavour: one `RealmData` per realm, as the server's
database holds it after the requests so far. Views (the JSON the server answers) live with the
handlers; this module only keeps the records.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

WALLET_CASH = "wallet-cash"


def iso_ms(ts: float) -> str:
    """A timestamp as the server writes it: UTC, milliseconds, `Z`."""
    moment = datetime.fromtimestamp(ts, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def new_uuid() -> str:
    return str(uuid.uuid4())


def seed_uuid(kind: str, seed_id: str) -> str:
    """The id a seed object gets on this server, which only has UUIDs (stable per seed id)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"vluna-emulator:{kind}:{seed_id}"))


@dataclass
class BillingUser:
    billing_user_id: str
    billing_account_id: str
    principal_id: str
    user_id: str
    created_at: float
    updated_at: float
    status: str = "active"  # active | disabled
    display_name: str | None = None
    email: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Grant:
    grant_id: str
    issued_xusd: int = 0
    consumed_xusd: int = 0

    @property
    def remaining_xusd(self) -> int:
        return self.issued_xusd - self.consumed_xusd


@dataclass
class Account:
    billing_account_id: str
    realm_id: str
    principal_id: str
    created_at: float
    seat_limit: int | None = None
    seat_limit_source: str | None = None
    seat_limit_updated_at: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    users: dict[str, BillingUser] = field(default_factory=dict)  # by business user id
    billing_details: dict[str, Any] | None = None
    cash: Grant | None = None  # the "wallet-cash" grant adjustments credit
    features_used: list[str] = field(default_factory=list)

    @property
    def remaining_xusd(self) -> int:
        return self.cash.remaining_xusd if self.cash else 0


@dataclass
class Budget:
    budget_id: str
    billing_account_id: str
    created_at: float
    updated_at: float
    name: str | None = None
    limit_xusd: int | None = None
    consumed_xusd: int = 0
    status: str = "active"
    metadata: dict[str, Any] = field(default_factory=dict)
    close_reason: str | None = None


@dataclass
class Lease:
    lease_id: str
    token: str
    billing_account_id: str
    billing_user_id: str
    feature_code: str
    state: str = "open"  # open | closed | canceled


@dataclass
class Family:
    feature_family_id: str
    code: str
    name: str
    created_at: float
    updated_at: float
    description: str = ""
    entitlement_required: bool = True
    is_fallback: bool = False
    active: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Meter:
    meter_id: str
    code: str
    created_at: float
    updated_at: float
    unit: str = "unit"
    feature_id: str | None = None
    feature_code: str | None = None
    active: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Feature:
    feature_id: str
    code: str
    family_id: str
    family_code: str
    created_at: float
    updated_at: float
    meter_ids: list[str] = field(default_factory=list)
    name: str = ""
    description: str = ""
    active: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    plan_id: str
    code: str
    name: str
    created_at: float
    updated_at: float
    kind: str = "base"
    priority: int = 0
    active: bool = True
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class Entitlement:
    bpe_id: str
    plan_id: str
    feature_id: str
    feature_code: str
    effect: str
    created_at: float
    updated_at: float


@dataclass
class RealmData:
    """Everything one realm holds."""

    realm_id: str
    accounts: dict[str, Account] = field(default_factory=dict)  # by principal id
    accounts_by_id: dict[str, Account] = field(default_factory=dict)
    users_by_id: dict[str, BillingUser] = field(default_factory=dict)
    products: dict[str, dict[str, Any]] = field(default_factory=dict)
    prices: dict[str, dict[str, Any]] = field(default_factory=dict)
    subscription_groups: dict[str, str] = field(default_factory=dict)  # group key -> id
    families: dict[str, Family] = field(default_factory=dict)  # by code
    meters: dict[str, Meter] = field(default_factory=dict)  # by code
    features: dict[str, Feature] = field(default_factory=dict)  # by code
    plans: dict[str, Plan] = field(default_factory=dict)  # by code
    entitlements: dict[str, Entitlement] = field(default_factory=dict)
    assignments: dict[str, dict[str, Any]] = field(default_factory=dict)
    contracts: dict[str, dict[str, Any]] = field(default_factory=dict)
    terms: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by contract id
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    budgets: dict[str, Budget] = field(default_factory=dict)
    leases: dict[str, Lease] = field(default_factory=dict)  # by token
    events: dict[str, dict[str, Any]] = field(default_factory=dict)

    def family_by_id(self, family_id: str) -> Family | None:
        return next((f for f in self.families.values() if f.feature_family_id == family_id), None)

    def feature_by_id(self, feature_id: str) -> Feature | None:
        return next((f for f in self.features.values() if f.feature_id == feature_id), None)

    def meter_by_id(self, meter_id: str) -> Meter | None:
        return next((m for m in self.meters.values() if m.meter_id == meter_id), None)

    def plan_by_id(self, plan_id: str) -> Plan | None:
        return next((p for p in self.plans.values() if p.plan_id == plan_id), None)


@dataclass
class StoredAnswer:
    fingerprint: bytes
    status: int
    body: bytes


class OssState:
    """Realms, and the idempotency records (by realm, key and route; not by user)."""

    def __init__(self) -> None:
        self.realms: dict[str, RealmData] = {}
        self.idempotency: dict[tuple[str, str, str, str], StoredAnswer] = {}

    def realm(self, realm_id: str) -> RealmData:
        data = self.realms.get(realm_id)
        if data is None:
            data = self.realms[realm_id] = RealmData(realm_id)
        return data

    @staticmethod
    def fingerprint(body: bytes) -> bytes:
        return hashlib.sha256(body).digest()
