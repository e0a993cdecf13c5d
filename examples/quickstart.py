"""The published client's quickstart flows, run against the local Vluna emulator.

    uv run python -m examples.quickstart

1. Issue a platform token for a user (service key, /mgt/v1), then list the catalog with it as a
   bearer (/api/v1), as a browser or mobile app would.
2. Preflight, authorize, do the work, commit: the usage gate round trip.
Point `base_url`s at the real service and give real keys, and the same code runs unchanged.
"""

from __future__ import annotations

import asyncio

from vlunaai import GatePreflightSuccess, RequestContext
from vlunaai.testing import VlunaEmulator


async def main() -> None:
    async with VlunaEmulator() as emulator:
        service = emulator.service_client(error_mode="raise")
        bearer = emulator.bearer_client(error_mode="raise")

        issued = await service.issue_platform_token(
            body={"principal_id": "org:acme", "user_id": "alice", "scopes": ["checkout", "portal"]}
        )
        token = issued.data
        assert token is not None  # raise mode: an answer without data would have raised
        print(f"platform token for alice@org:acme: expires in {token.expires_in}s")
        print(f"  billing account {token.billing_account_id}, billing user {token.billing_user_id}")

        products = await bearer.list_catalog_products(context=RequestContext(access_token=token.access_token))
        print(f"catalog: {len(products.data.root)} products")
        for product in products.data.root:
            price = product.default_price
            amount = f"{price.unit_amount / 100:.2f} {price.currency}" if price else "no price"
            print(f"  - {product.name} ({product.catalog_product_id}): {amount}")

        who = RequestContext(principal_id="org:acme", user_id="alice")
        feature = {"feature_code": "openai.gpt-4o-mini", "feature_family_code": "llm.standard"}
        preflight = await service.gate_preflight(body=feature, context=who)
        allowed = isinstance(preflight, GatePreflightSuccess)
        print(f"preflight {feature['feature_code']}: {'allowed' if allowed else 'denied'}")

        estimate = {**feature, "estimated_quantity_minor": "1200"}
        authz = await service.gate_authorize(body=estimate, context=who)
        lease = authz.data.lease if authz.data else None
        assert lease is not None
        print(f"authorized: lease {lease[:12]}...")
        # ... the metered work happens here ...
        commit = await service.gate_commit(
            body={"lease": lease, "feature_code": "openai.gpt-4o-mini", "quantity_minor": "1187"},
            context=who,
        )
        print(f"committed: ok={commit.ok}")


if __name__ == "__main__":
    asyncio.run(main())
