"""The command: starts uvicorn on 127.0.0.1 (here on a free port), answers, stops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from vlunaai import (
    RequestContext,
    ServiceClientOptions,
    ServiceKeyCredentials,
    VlunaAIConfig,
    create_service_client,
)
from vlunaai.testing import load_seed
from vlunaai.testing.__main__ import build_parser
from vlunaai.testing.seed import SeedError, default_seed_text, parse_seed

from tests.support.emulator import CONTROL
from tests.support.processes import REPO

from .support import Server, start_cli, stop_cli, wait_ready


@pytest.fixture
def server() -> Iterator[Server]:
    started = start_cli("--enable-controls")
    try:
        yield started
    finally:
        stop_cli(started)


async def test_cli_serves_both_surfaces_on_loopback(server: Server) -> None:
    assert server.base.startswith("http://127.0.0.1:")
    await wait_ready(server.base)
    secret = server.exports["VLUNA_SERVICE_KEY_SECRET"]
    assert server.exports["VLUNA_SERVICE_KEY_ID"] == "pk-emulator"
    svc = create_service_client(
        ServiceClientOptions(
            config=VlunaAIConfig(
                base_url=server.exports["VLUNA_SERVICE_BASE_URL"], realm_id=server.exports["VLUNA_REALM_ID"]
            ),
            service_key=ServiceKeyCredentials(key_id="pk-emulator", secret=secret),
        )
    )
    try:
        ctx = RequestContext(principal_id="org:cli", user_id="u")
        issued = await svc.issue_platform_token(body={"principal_id": "org:cli", "user_id": "u"}, context=ctx)
        assert issued.ok is True and issued.data is not None
        async with httpx.AsyncClient() as client:
            products = await client.get(
                server.exports["VLUNA_BEARER_BASE_URL"] + "/catalog/products",
                headers={"authorization": f"Bearer {issued.data.access_token}", "x-realm-id": "realm_demo"},
            )
            assert products.status_code == 200 and len(products.json()["data"]) == 3
            # A dropped connection on a real socket.
            await client.post(
                server.base + "/__emulator__/faults",
                json={"operation": "list_catalog_products", "drop_connection": True},
                headers=CONTROL,
            )
            with pytest.raises(httpx.TransportError):
                await client.get(
                    server.exports["VLUNA_BEARER_BASE_URL"] + "/catalog/products",
                    headers={
                        "authorization": f"Bearer {issued.data.access_token}",
                        "x-realm-id": "realm_demo",
                    },
                )
            counters = (await client.get(server.base + "/__emulator__/counters", headers=CONTROL)).json()[
                "data"
            ]["calls"]
            assert counters["bearer.list_catalog_products"] == 2
    finally:
        await svc.close()


async def test_cli_uses_the_given_secret_and_does_not_print_it() -> None:
    secret = "c3VwcGxpZWQtc2VjcmV0LXN1cHBsaWVkLXNlY3JldA=="
    started = start_cli(
        "--service-key-secret", secret, "--realm-id", "realm_cli", env={"VLUNA_SERVICE_KEY_ID": "pk-cli"}
    )
    try:
        assert "VLUNA_SERVICE_KEY_SECRET" not in started.exports
        assert started.exports["VLUNA_SERVICE_KEY_ID"] == "pk-cli"
        assert started.exports["VLUNA_REALM_ID"] == "realm_cli"
        await wait_ready(started.base)
        async with httpx.AsyncClient() as client:
            # Controls are off unless enabled.
            assert (
                await client.get(started.base + "/__emulator__/counters", headers=CONTROL)
            ).status_code == 404
    finally:
        stop_cli(started)
    assert started.proc.stderr is not None
    assert secret not in started.proc.stderr.read()


def test_parser_reads_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VLUNA_REALM_ID", "realm_env")
    monkeypatch.setenv("VLUNA_EMULATOR_TOKEN_TTL_MAX", "1800")
    monkeypatch.setenv("VLUNA_EMULATOR_CONTROLS", "1")
    args = build_parser().parse_args([])
    assert (args.realm_id, args.token_ttl_max, args.enable_controls, args.host) == (
        "realm_env",
        1800,
        True,
        "127.0.0.1",
    )


def test_repository_seed_is_the_packaged_default() -> None:
    assert (REPO / "config" / "emulator-seed.yaml").read_text("utf-8") == default_seed_text()
    seed = load_seed(REPO / "config" / "emulator-seed.yaml")
    assert {p["catalog_product_id"] for p in seed.products} == {"prod_starter", "prod_pro", "prod_credits"}
    assert {f.code for f in seed.families} >= {"llm.standard", "llm.premium"}


@pytest.mark.parametrize(
    "raw",
    [
        {"realms": [{"name": "x"}]},
        {"service_keys": [{"key_id": "pk", "secret": "not base64!"}]},
        {
            "catalog": {
                "products": [{"catalog_product_id": "p", "name": "P"}],
                "prices": [{"catalog_price_id": "x", "catalog_product_id": "q"}],
            }
        },
        {
            "feature_families": [
                {"code": "f", "features": [{"code": "a", "quota": {"limit_minor": 1, "window": "fortnight"}}]}
            ]
        },
    ],
)
def test_invalid_seeds_are_rejected(raw: dict[str, object]) -> None:
    with pytest.raises(SeedError):
        parse_seed(raw)


def test_json_seed(tmp_path: Path) -> None:
    path = tmp_path / "seed.json"
    path.write_text('{"realms": [{"realm_id": "r1"}], "wallet": {"new_account_balance_xusd": 7}}')
    seed = load_seed(path)
    assert seed.realms[0].realm_id == "r1" and seed.new_account_balance_xusd == 7
