"""Seed data: realms, service keys, catalog, feature families, wallet defaults.

Loaded from YAML or JSON (`config/emulator-seed.yaml` in this repository; a copy ships in the
package as the default). Unknown keys are kept on catalog objects, so a seed can carry any
field the API adds.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

WINDOWS = ("minute", "hour", "day", "month")


class SeedError(ValueError):
    """The seed file is not valid; the message names the offending entry."""


@dataclass(frozen=True)
class Quota:
    limit_minor: int
    window: str


@dataclass(frozen=True)
class RateLimit:
    requests: int
    window_seconds: int


@dataclass(frozen=True)
class Feature:
    code: str
    family_code: str
    name: str
    unit_price_xusd_per_1k: int = 0
    quota: Quota | None = None
    rate_limit: RateLimit | None = None

    def cost_xusd(self, quantity_minor: int) -> int:
        if quantity_minor <= 0 or self.unit_price_xusd_per_1k <= 0:
            return 0
        return -(-quantity_minor * self.unit_price_xusd_per_1k // 1000)


@dataclass(frozen=True)
class FeatureFamily:
    code: str
    name: str
    description: str | None = None


@dataclass(frozen=True)
class ServiceKey:
    key_id: str
    secret: str = field(repr=False)
    realms: tuple[str, ...] = ("*",)
    status: str = "active"
    expires_at: datetime | None = None

    @property
    def secret_bytes(self) -> bytes:
        return base64.b64decode(self.secret)

    def allows_realm(self, realm_id: str) -> bool:
        return "*" in self.realms or realm_id in self.realms


@dataclass(frozen=True)
class Realm:
    realm_id: str
    name: str
    payment_provider: str | None = "emulator"


@dataclass
class Seed:
    realms: list[Realm] = field(default_factory=list)
    service_keys: list[ServiceKey] = field(default_factory=list)
    products: list[dict[str, Any]] = field(default_factory=list)
    prices: list[dict[str, Any]] = field(default_factory=list)
    families: list[FeatureFamily] = field(default_factory=list)
    features: list[Feature] = field(default_factory=list)
    billing_mode: str = "prepaid"
    new_account_balance_xusd: int = 0


def generate_secret() -> str:
    """A fresh base64 service-key secret (32 random bytes)."""
    return base64.b64encode(secrets.token_bytes(32)).decode()


def default_seed_text() -> str:
    return resources.files("vlunaai.testing").joinpath("default_seed.yaml").read_text("utf-8")


def load_seed(path: str | Path | None = None) -> Seed:
    """Load a seed file (YAML or JSON by extension); None loads the packaged default."""
    if path is None:
        raw = yaml.safe_load(default_seed_text())
    else:
        text = Path(path).read_text("utf-8")
        raw = json.loads(text) if str(path).endswith(".json") else yaml.safe_load(text)
    return parse_seed(raw or {})


def _require(entry: dict[str, Any], key: str, where: str) -> Any:
    if key not in entry or entry[key] in (None, ""):
        raise SeedError(f"{where}: missing {key!r}")
    return entry[key]


def _parse_time(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise SeedError(f"{where}: invalid timestamp {value!r}") from None


def parse_seed(raw: dict[str, Any]) -> Seed:
    seed = Seed()
    for i, entry in enumerate(raw.get("realms") or []):
        where = f"realms[{i}]"
        seed.realms.append(
            Realm(
                realm_id=str(_require(entry, "realm_id", where)),
                name=str(entry.get("name") or entry["realm_id"]),
                payment_provider=entry.get("payment_provider", "emulator"),
            )
        )
    for i, entry in enumerate(raw.get("service_keys") or []):
        where = f"service_keys[{i}]"
        secret = str(entry.get("secret") or generate_secret())
        try:
            base64.b64decode(secret, validate=True)
        except ValueError:
            raise SeedError(f"{where}: secret is not base64") from None
        status = str(entry.get("status", "active"))
        if status not in ("active", "disabled"):
            raise SeedError(f"{where}: status must be active or disabled")
        seed.service_keys.append(
            ServiceKey(
                key_id=str(_require(entry, "key_id", where)),
                secret=secret,
                realms=tuple(entry.get("realms") or ("*",)),
                status=status,
                expires_at=_parse_time(entry.get("expires_at"), where),
            )
        )
    wallet = raw.get("wallet") or {}
    seed.billing_mode = str(wallet.get("billing_mode", "prepaid"))
    if seed.billing_mode not in ("prepaid", "postpaid", "hybrid"):
        raise SeedError("wallet.billing_mode must be prepaid, postpaid or hybrid")
    seed.new_account_balance_xusd = int(wallet.get("new_account_balance_xusd", 0))
    catalog = raw.get("catalog") or {}
    for i, product in enumerate(catalog.get("products") or []):
        _require(product, "catalog_product_id", f"catalog.products[{i}]")
        _require(product, "name", f"catalog.products[{i}]")
        seed.products.append(dict(product))
    product_ids = {p["catalog_product_id"] for p in seed.products}
    for i, price in enumerate(catalog.get("prices") or []):
        where = f"catalog.prices[{i}]"
        _require(price, "catalog_price_id", where)
        if _require(price, "catalog_product_id", where) not in product_ids:
            raise SeedError(f"{where}: unknown catalog_product_id {price['catalog_product_id']!r}")
        seed.prices.append(dict(price))
    for i, fam in enumerate(raw.get("feature_families") or []):
        where = f"feature_families[{i}]"
        code = str(_require(fam, "code", where))
        seed.families.append(
            FeatureFamily(code=code, name=str(fam.get("name") or code), description=fam.get("description"))
        )
        for j, feat in enumerate(fam.get("features") or []):
            fwhere = f"{where}.features[{j}]"
            quota = feat.get("quota")
            rate = feat.get("rate_limit")
            if quota is not None and quota.get("window") not in WINDOWS:
                raise SeedError(f"{fwhere}: quota.window must be one of {', '.join(WINDOWS)}")
            seed.features.append(
                Feature(
                    code=str(_require(feat, "code", fwhere)),
                    family_code=code,
                    name=str(feat.get("name") or feat["code"]),
                    unit_price_xusd_per_1k=int(feat.get("unit_price_xusd_per_1k", 0)),
                    quota=Quota(int(quota["limit_minor"]), str(quota["window"])) if quota else None,
                    rate_limit=RateLimit(int(rate["requests"]), int(rate["window_seconds"]))
                    if rate
                    else None,
                )
            )
    return seed
