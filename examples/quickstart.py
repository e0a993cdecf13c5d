"""The published client's quickstart flows, run against the local Vluna emulator.

    uv run python -m examples.quickstart                 # the 0.3.2 API
    uv run python -m examples.quickstart --flavor oss    # the open-source Vluna server, as recorded

1. Issue a platform token for a user (service key, /mgt/v1), then list the catalog with it as a
   bearer (/api/v1), as a browser or mobile app would.
2. Preflight, authorize, do the work, commit: the usage gate round trip.
Point `base_url`s at the real service and give real keys, and the same code runs unchanged: it
sticks to what every Vluna server accepts (`lease_token` on commit, `expand=default_price` for
prices in the catalog, both binding headers on gate calls), and takes a server without preflight
in its stride.
"""

from __future__ import annotations

import argparse
import asyncio

from vlunaai import GatePreflightSuccess, NotFoundError, RequestContext
from vlunaai.testing import VlunaEmulator


async def main(flavor: str = "0.3.2") -> None:
    async with VlunaEmulator(flavor=flavor) as emulator:
        service = emulator.service_client(error_mode="raise")
        bearer = emulator.bearer_client(error_mode="raise")

        # A principal's first token: some servers fail that call once (500) while they create its
        # billing account; the client's retry (same Idempotency-Key) takes care of it.
        issued = await service.issue_platform_token(
            body={"principal_id": "org:acme", "user_id": "alice", "scopes": ["checkout", "portal"]}
        )
        token = issued.data
        assert token is not None  # raise mode: an answer without data would have raised
        print(f"platform token for alice@org:acme: expires in {token.expires_in}s")
        print(f"  billing account {token.billing_account_id}, billing user {token.billing_user_id}")

        products = await bearer.list_catalog_products(
            query={"expand": "default_price"}, context=RequestContext(access_token=token.access_token)
        )
        print(f"catalog: {len(products.data.root)} products")
        for product in products.data.root:
            price = product.default_price
            amount = f"{price.unit_amount / 100:.2f} {price.currency}" if price else "no price"
            print(f"  - {product.name} ({product.catalog_product_id}): {amount}")

        # Gate calls name the paying principal AND the user (401 AUTH.MISSING_RUNTIME_BINDINGS
        # otherwise).
        who = RequestContext(principal_id="org:acme", user_id="alice")
        feature = {"feature_code": "openai.gpt-4o-mini", "feature_family_code": "llm.standard"}
        try:
            preflight = await service.gate_preflight(body=feature, context=who)
            allowed = isinstance(preflight, GatePreflightSuccess)
            print(f"preflight {feature['feature_code']}: {'allowed' if allowed else 'denied'}")
        except NotFoundError:
            print("preflight: not offered by this server (authorize decides)")

        estimate = {**feature, "estimated_quantity_minor": "1200"}
        authz = await service.gate_authorize(body=estimate, context=who)
        lease = authz.data.lease_token if authz.data else None
        assert lease is not None
        print(f"authorized: lease {lease[:12]}...")
        # ... the metered work happens here ...
        commit = await service.gate_commit(
            body={"lease_token": lease, "feature_code": "openai.gpt-4o-mini", "quantity_minor": "1187"},
            context=who,
        )
        print(f"committed: ok={commit.ok}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavor", choices=("0.3.2", "oss"), default="0.3.2", help="the server emulated")
    asyncio.run(main(parser.parse_args().flavor))
