"""In-memory state of one emulator: accounts, users, wallets, checkouts, leases, usage, budgets,
idempotency records and the SVC-AUTH nonce cache. Nothing is persisted.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

IDEMPOTENCY_TTL_SECONDS = 24 * 3600


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat().replace("+00:00", "Z")


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class BillingUser:
    billing_user_id: str
    billing_account_id: str
    user_id: str
    created_at: float
    status: str = "active"


@dataclass
class BillingAccount:
    billing_account_id: str
    realm_id: str
    principal_id: str
    created_at: float
    balance_xusd: int
    users: dict[str, BillingUser] = field(default_factory=dict)
    plan_code: str | None = None
    subscriptions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Lease:
    lease: str
    realm_id: str
    billing_account_id: str
    billing_user_id: str
    feature_code: str
    feature_family_code: str
    expires_at: float
    budget_id: str | None = None
    state: str = "open"  # open | committed | cancelled


@dataclass
class Budget:
    budget_id: str
    budget: str
    realm_id: str
    billing_account_id: str
    limit_xusd: int | None
    created_at: float
    name: str | None = None
    consumed_xusd: int = 0
    status: str = "active"
    updated_at: float = 0.0
    metadata: dict[str, Any] | None = None


@dataclass
class Checkout:
    checkout_id: str
    realm_id: str
    billing_account_id: str
    items: list[dict[str, Any]]
    kind: str
    return_url: str
    cancel_url: str | None
    created_at: float
    expires_at: float
    status: str = "open"
    completed_at: float | None = None


@dataclass
class IdempotencyRecord:
    fingerprint: bytes
    status: int
    body: bytes
    expires_at: float


class NonceCache:
    """Nonces seen inside the skew window; entries expire with the window."""

    def __init__(self) -> None:
        self._seen: set[str] = set()
        self._order: deque[tuple[float, str]] = deque()

    def check_and_add(self, nonce: str, *, now: float, ttl: float) -> bool:
        """True when the nonce is fresh (and records it); False when it was seen already."""
        order = self._order
        while order and order[0][0] <= now:
            self._seen.discard(order.popleft()[1])
        if nonce in self._seen:
            return False
        self._seen.add(nonce)
        order.append((now + ttl, nonce))
        return True

    def clear(self) -> None:
        self._seen.clear()
        self._order.clear()


class State:
    def __init__(self, *, clock: Callable[[], float] = time.time, new_account_balance_xusd: int = 0) -> None:
        self.clock = clock
        self.new_account_balance_xusd = new_account_balance_xusd
        self.reset()

    def reset(self) -> None:
        self.accounts: dict[tuple[str, str], BillingAccount] = {}
        self.accounts_by_id: dict[str, BillingAccount] = {}
        self.users_by_id: dict[str, BillingUser] = {}
        self.leases: dict[str, Lease] = {}
        self.budgets: dict[str, Budget] = {}
        self.budgets_by_ref: dict[tuple[str, str, str], Budget] = {}
        self.checkouts: dict[str, Checkout] = {}
        # (realm, account, feature, window_start) -> used quantity
        self.usage: dict[tuple[str, str, str, float], int] = {}
        # (realm, account, feature) -> request timestamps inside the rate window
        self.rate_hits: dict[tuple[str, str, str], deque[float]] = {}
        self.idempotency: dict[tuple[str, str, str], IdempotencyRecord] = {}
        self.commits: list[dict[str, Any]] = []
        self.plan_assignments: dict[str, dict[str, Any]] = {}
        self.nonces = NonceCache()

    # --- accounts ---------------------------------------------------------------------------

    def account_for_principal(self, realm_id: str, principal_id: str) -> BillingAccount:
        key = (realm_id, principal_id)
        account = self.accounts.get(key)
        if account is None:
            account = BillingAccount(
                billing_account_id=new_id(),
                realm_id=realm_id,
                principal_id=principal_id,
                created_at=self.clock(),
                balance_xusd=self.new_account_balance_xusd,
            )
            self.accounts[key] = account
            self.accounts_by_id[account.billing_account_id] = account
        return account

    def user_for(self, account: BillingAccount, user_id: str) -> BillingUser:
        user = account.users.get(user_id)
        if user is None:
            user = BillingUser(
                billing_user_id=new_id(),
                billing_account_id=account.billing_account_id,
                user_id=user_id,
                created_at=self.clock(),
            )
            account.users[user_id] = user
            self.users_by_id[user.billing_user_id] = user
        return user

    # --- idempotency ------------------------------------------------------------------------

    @staticmethod
    def fingerprint(method: str, path: str, body: bytes) -> bytes:
        digest = hashlib.sha256(method.encode() + b" " + path.encode() + b"\n")
        digest.update(body)
        return digest.digest()

    def idempotency_lookup(self, key: tuple[str, str, str]) -> IdempotencyRecord | None:
        record = self.idempotency.get(key)
        if record is not None and record.expires_at <= self.clock():
            del self.idempotency[key]
            return None
        return record

    def idempotency_store(
        self, key: tuple[str, str, str], fingerprint: bytes, status: int, body: bytes
    ) -> None:
        now = self.clock()
        if len(self.idempotency) > 50_000:
            self.idempotency = {k: r for k, r in self.idempotency.items() if r.expires_at > now}
        self.idempotency[key] = IdempotencyRecord(fingerprint, status, body, now + IDEMPOTENCY_TTL_SECONDS)
