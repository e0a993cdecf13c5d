"""The SDK's own overhead per call: build + sign + send path + parse, against bare httpx.

Not a test: run it and read the numbers.

    uv run python bench/sdk_overhead.py [--calls 5000] [--rounds 7] [--items 10]

A minimal raw ASGI app answers a list envelope (catalog products on /api/v1, meters on
/mgt/v1) through `httpx.ASGITransport`, so no socket is involved and what differs between the
rows is only client-side work. For each row, N calls are timed after a warm-up, in several
rounds that interleave the rows; the median round (and the best one) is reported per call.

  bare get        httpx.AsyncClient.get on the same app and transport (the floor)
  bare get+json   the same plus response.json() (what any client must at least do)
  sdk service     ServiceClient.list_meters: SVC-AUTH signing, headers, retry loop, parse
  sdk bearer      BearerClient.list_catalog_products: headers, retry loop, parse

overhead = sdk - bare get, i.e. everything the SDK adds per call, JSON decoding included.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from vlunaai import (
    BearerClient,
    BearerClientOptions,
    RequestContext,
    ServiceClient,
    ServiceClientOptions,
    ServiceKeyCredentials,
    VlunaAIConfig,
)
from vlunaai.generated import billing_mgt_models, billing_models

BASE = "http://bench.local"
REALM = "realm-bench"
SECRET = base64.b64encode(b"bench-secret-0123456789abcdef0123").decode()


def catalog_envelope(items: int) -> dict[str, Any]:
    products = [
        {
            "catalog_product_id": f"prod_{i:04d}",
            "name": f"Plan {i}",
            "kind": "subscription",
            "status": "active",
            "default_currency": "USD",
            "display_priority": i,
            "presentation_config": {"badge": "popular" if i == 0 else None},
            "billing_plan_code": f"plan-{i}",
            "provider": "stripe",
        }
        for i in range(items)
    ]
    return {
        "ok": True,
        "code": "OK",
        "data": products,
        "meta": {"next_cursor": None, "has_more": False, "limit": 50},
    }


def meter_envelope(items: int) -> dict[str, Any]:
    meters = [
        {
            "meter_id": f"mtr_{i:04d}",
            "meter_code": f"tokens.{i}",
            "active": True,
            "created_at": "2026-11-24T19:20:31.123456+00:00",
            "updated_at": "2026-11-24T19:20:31.123456+00:00",
            "metadata": {},
            "rounding": "round",
            "scale": 1.0,
            "semantic_kind": "activity",
            "unit": "token",
        }
        for i in range(items)
    ]
    return {"ok": True, "code": "OK", "data": {"items": meters, "next_cursor": None}}


def make_app(items: int) -> Callable[..., Awaitable[None]]:
    catalog = json.dumps(catalog_envelope(items)).encode()
    meters = json.dumps(meter_envelope(items)).encode()

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        assert scope["type"] == "http"
        body = catalog if scope["path"].startswith("/api/") else meters
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


async def time_round(call: Callable[[], Awaitable[Any]], calls: int) -> float:
    """Seconds per call over one round of `calls` calls."""
    started = time.perf_counter()
    for _ in range(calls):
        await call()
    return (time.perf_counter() - started) / calls


async def main(calls: int, rounds: int, items: int, warmup: int, as_json: bool = False) -> None:
    app = make_app(items)
    transport = httpx.ASGITransport(app=app)

    # Check the payloads parse strictly (the fast path), so the number is not the fallback's.
    assert billing_models.CatalogProductListEnvelope.model_validate(catalog_envelope(items)).ok
    assert billing_mgt_models.MeterListEnvelope.model_validate(meter_envelope(items)).ok

    bare = httpx.AsyncClient(transport=transport)
    service = ServiceClient(
        ServiceClientOptions(
            config=VlunaAIConfig(base_url=f"{BASE}/mgt/v1", realm_id=REALM),
            service_key=ServiceKeyCredentials(key_id="pk-bench", secret=SECRET),
            transport=transport,
        )
    )
    bearer = BearerClient(
        BearerClientOptions(
            config=VlunaAIConfig(base_url=f"{BASE}/api/v1", realm_id=REALM), transport=transport
        )
    )
    ctx = RequestContext(access_token="bench-token", billing_account_id="ba_bench")

    async def bare_get() -> Any:
        return await bare.get(f"{BASE}/api/v1/catalog/products")

    async def bare_get_json() -> Any:
        return (await bare.get(f"{BASE}/api/v1/catalog/products")).json()

    async def sdk_service() -> Any:
        result = await service.list_meters()
        assert result.ok
        return result

    async def sdk_bearer() -> Any:
        result = await bearer.list_catalog_products(context=ctx)
        assert result.ok
        return result

    variants = [
        ("bare get", bare_get),
        ("bare get+json", bare_get_json),
        ("sdk service (list_meters)", sdk_service),
        ("sdk bearer (list_catalog_products)", sdk_bearer),
    ]
    samples: dict[str, list[float]] = {name: [] for name, _ in variants}
    try:
        for _, call in variants:
            for _ in range(warmup):
                await call()
        # Rounds interleave the variants, so drift in machine load hits all of them alike.
        for _ in range(rounds):
            for name, call in variants:
                samples[name].append(await time_round(call, calls))
    finally:
        await bare.aclose()
        await service.close()
        await bearer.close()
    rows = [(name, statistics.median(samples[name]), min(samples[name])) for name, _ in variants]

    if as_json:
        print(json.dumps({"median_us": {name: median * 1e6 for name, median, _ in rows}}))
        return
    floor, floor_min = rows[0][1], rows[0][2]
    print(f"{calls} calls x {rounds} interleaved rounds, {items} items/page, {warmup} warm-up calls")
    print(f"{'':36} {'median us':>9} {'overhead':>9} {'ratio':>6}   {'best us':>8} {'overhead':>9}")
    for name, median, best in rows:
        print(
            f"{name:36} {median * 1e6:9.1f} {(median - floor) * 1e6:9.1f} {median / floor:6.2f}"
            f"   {best * 1e6:8.1f} {(best - floor_min) * 1e6:9.1f}"
        )
    print("overhead = this row - bare get, per call (microseconds); target: under 100")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--items", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--json", action="store_true", help="print the median per-call times as JSON")
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds, args.items, args.warmup, args.json))
