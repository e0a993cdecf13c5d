"""A mobile app's billing flow, with this program standing in for the app.

    uv run python -m examples.mobile_app          # self-contained: vluna-bff dev + emulator in-process
    uv run python -m examples.mobile_app --bff http://127.0.0.1:8080     # against `./run dev`
    uv run python -m examples.mobile_app --bff https://bff.example.com --session <the app's JWT>

1. The app signs its user in with the team's own backend and holds that session token (here, in
   the self-contained run or against `./run dev`, the dev sign-in mints one).
2. It asks vluna-bff for a platform token: ``GET /vluna/token`` with ``Authorization: Bearer
   <session>`` (no cookie, so no anti-forgery header is needed). The answer also says where to
   call (``api_base_url``, ``realm_id``) and for how long the token lives (``lifetime_sec``).
3. It calls Vluna's ``/api/v1`` directly with the SDK's ``BearerClient`` and that token.
4. Before each call it looks at what is left of the token (``expires_in``, counted from when the
   answer arrived, so the phone's clock does not matter); under ``renew_ahead`` of its
   ``lifetime_sec`` it asks vluna-bff again. A 401 from Vluna renews once and retries the call once.

vluna-bff renews its cached token in the background past its own refresh point and meanwhile
hands out the one it has; an app that asks at that moment gets the same token again and simply
asks a little later (``retry_after_sec``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from vlunaai import (
    AuthenticationError,
    BearerClient,
    BearerClientOptions,
    RequestContext,
    VlunaAIConfig,
    create_bearer_client,
)

T = TypeVar("T")


@dataclass
class PlatformToken:
    access_token: str
    expires_at: float  # on the app's monotonic clock
    lifetime: float  # the token's whole life (lifetime_sec)
    billing_account_id: str
    scopes: list[str]
    api_base_url: str  # Vluna's /api/v1 for this token
    realm_id: str


class PlatformTokens:
    """The app's platform token: fetched from vluna-bff, cached, renewed ahead of expiry.

    Concurrent callers share one request (an ``asyncio.Lock``)."""

    def __init__(
        self,
        bff: httpx.AsyncClient,
        session_token: Callable[[], str],
        *,
        scopes: Sequence[str] = (),
        renew_ahead: float = 0.25,
        expiry_margin_sec: float = 5.0,
        retry_after_sec: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] = print,
    ) -> None:
        if not 0 < renew_ahead < 1:
            raise ValueError("renew_ahead must be between 0 and 1")
        self._bff = bff
        self._session = session_token
        self._scopes = ",".join(scopes)
        self._renew_ahead = renew_ahead
        self._margin = expiry_margin_sec
        self._retry_after = retry_after_sec
        self._clock = clock
        self._log = log
        self._token: PlatformToken | None = None
        self._not_before = 0.0
        self._lock = asyncio.Lock()
        self.requests = 0

    @property
    def current(self) -> PlatformToken | None:
        return self._token

    def expires_in(self) -> float:
        return self._token.expires_at - self._clock() if self._token else 0.0

    def _due(self) -> bool:
        t = self._token
        return t is None or self.expires_in() < t.lifetime * self._renew_ahead

    async def get(self, *, force: bool = False) -> str:
        if not force and self._token is not None and not self._due():
            return self._token.access_token
        async with self._lock:
            t = self._token
            usable = t is not None and self.expires_in() > self._margin and not force
            if t is not None and usable and (not self._due() or self._clock() < self._not_before):
                return t.access_token  # renewed by another caller meanwhile, or asked too recently
            if t is not None and usable:
                self._log(f"token has {self.expires_in():.0f}s left: renewing ahead of expiry")
            return (await self._fetch()).access_token

    async def _fetch(self) -> PlatformToken:
        params = {"scopes": self._scopes} if self._scopes else None
        self.requests += 1
        r = await self._bff.get(
            "/vluna/token", params=params, headers={"Authorization": f"Bearer {self._session()}"}
        )
        if r.status_code != 200:
            raise RuntimeError(f"vluna-bff answered {r.status_code}: {r.text[:200]}")
        body: dict[str, Any] = r.json()
        now = self._clock()
        previous = self._token
        expires_in = float(body["expires_in"])
        token = PlatformToken(
            access_token=body["access_token"],
            expires_at=now + expires_in,
            lifetime=float(body["lifetime_sec"]),
            billing_account_id=body["billing_account_id"],
            scopes=list(body["scopes"]),
            api_base_url=body["api_base_url"],
            realm_id=body["realm_id"],
        )
        same = previous is not None and previous.access_token == token.access_token
        self._token = token
        self._not_before = now + self._retry_after if same or self._due() else 0.0
        if previous is None:
            self._log(f"platform token: {expires_in:.0f}s left, account {token.billing_account_id}")
        elif same:
            self._log("vluna-bff handed back the same token (renewing it in the background): ask later")
        else:
            self._log(f"renewed: new token, {expires_in:.0f}s left")
        return token

    async def call(self, fn: Callable[[RequestContext], Awaitable[T]]) -> T:
        """Run one SDK call with the token; a 401 renews once and retries once."""
        ctx = RequestContext(access_token=await self.get())
        try:
            return await fn(ctx)
        except AuthenticationError:
            self._log("Vluna answered 401: renewing and retrying once")
            return await fn(RequestContext(access_token=await self.get(force=True)))


Connect = Callable[[str, str], BearerClient]  # (api_base_url, realm_id) -> a BearerClient


def connect(api_base_url: str, realm_id: str) -> BearerClient:
    """The app's Vluna client, pointed where the token answer says."""
    config = VlunaAIConfig(base_url=api_base_url, realm_id=realm_id)
    return create_bearer_client(BearerClientOptions(config=config, error_mode="raise"))


async def run_app(
    bff: httpx.AsyncClient,
    session_token: Callable[[], str],
    *,
    connect: Connect = connect,
    rounds: int = 3,
    pause_sec: float = 0.0,
    renew_ahead: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] = print,
) -> PlatformTokens:
    """What the app does: a few screens' worth of billing calls, renewing the token as it goes."""
    tokens = PlatformTokens(bff, session_token, renew_ahead=renew_ahead, clock=clock, log=log)
    await tokens.get()
    first = tokens.current
    assert first is not None
    log(f"calling Vluna at {first.api_base_url} (realm {first.realm_id})")
    async with connect(first.api_base_url, first.realm_id) as bearer:
        await _screens(tokens, bearer, rounds=rounds, pause_sec=pause_sec, log=log)
    return tokens


async def _screens(
    tokens: PlatformTokens,
    bearer: BearerClient,
    *,
    rounds: int,
    pause_sec: float,
    log: Callable[[str], None],
) -> None:
    products = await tokens.call(lambda ctx: bearer.list_catalog_products(context=ctx))
    items = products.data.root if products.data is not None else []
    log(f"catalog: {len(items)} products: {', '.join(p.name for p in items)}")
    price = next(p.default_price for p in items if p.default_price is not None)

    checkout = await tokens.call(
        lambda ctx: bearer.create_checkout(
            body={
                "items": [{"catalog_price_id": price.catalog_price_id, "quantity": 1}],
                "return_url": "https://app.example.com/billing/done",  # a universal / app link
            },
            context=ctx,
        )
    )
    assert checkout.data is not None
    log(f"checkout {checkout.data.checkout_id}: open {checkout.data.launch_url} in the system browser")

    for i in range(rounds):
        if pause_sec:
            await asyncio.sleep(pause_sec)
        balance = await tokens.call(lambda ctx: bearer.get_credit_balance(context=ctx))
        log(f"round {i + 1}: wallet balance fetched (ok={balance.ok}), token {tokens.expires_in():.0f}s left")


@contextlib.asynccontextmanager
async def self_contained(
    *, session_ttl_sec: int = 60, refresh_ahead_ratio: float = 0.05
) -> AsyncIterator[tuple[httpx.AsyncClient, Callable[[], str], Connect]]:
    """vluna-bff in dev mode (emulator embedded) in this process, reached without sockets.

    A short token life (60 s, the emulator's minimum) and an early service-side refresh let the
    run show a renewal within seconds."""
    from litestar.testing import AsyncTestClient

    from bff.dev import create_dev_app
    from bff.settings import load_settings

    settings = load_settings(
        "config/bff.dev.yaml",
        environ={},
        overrides={
            "dev": {"enabled": True},
            "tokens": {
                "session_ttl_sec": session_ttl_sec,
                "refresh_ahead_ratio": refresh_ahead_ratio,
                "safety_margin_sec": 5,
            },
        },
    )
    base_url = "http://vluna-bff.local"
    runtime = create_dev_app(settings, base_url=base_url)
    session = runtime.signin.mint("alice", "acme")  # what the team's own sign-in would return
    print("signed in as alice@acme with the app's own backend (dev sign-in)")

    dev_app: Any = runtime.app  # an ASGI app (httpx's type for one is narrower than Litestar's)

    def in_process(api_base_url: str, realm_id: str) -> BearerClient:
        # The dev server's /api/v1 (the embedded emulator), reached in-process like the rest.
        return create_bearer_client(
            BearerClientOptions(
                config=VlunaAIConfig(base_url=api_base_url, realm_id=realm_id),
                transport=httpx.ASGITransport(app=dev_app),
                error_mode="raise",
            )
        )

    async with AsyncTestClient(app=runtime.app, base_url=base_url) as bff:
        yield bff, lambda: session, in_process


async def dev_session(bff: httpx.AsyncClient, user: str = "alice", org: str = "acme") -> str:
    """Against `vluna-bff dev` only: the dev sign-in stands in for the app's own backend."""
    r = await bff.get("/dev/login", params={"user": user, "org": org})
    if r.status_code != 200:
        raise SystemExit(f"{bff.base_url}/dev/login answered {r.status_code}: pass --session <the app's JWT>")
    token: str = r.json()["token"]
    print(f"signed in as {user}@{org} with the dev sign-in of {bff.base_url}")
    return token


async def main(argv: Sequence[str] | None = None) -> PlatformTokens:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bff", help="vluna-bff base URL (default: a self-contained dev run)")
    parser.add_argument(
        "--session", help="the app's own session token (a JWT vluna-bff accepts); default: dev sign-in"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pause", type=float, default=1.5, help="seconds between rounds")
    parser.add_argument("--renew-ahead", type=float, default=0.95, help="fraction of the token's life")
    args = parser.parse_args(argv)
    pace: dict[str, Any] = {"rounds": args.rounds, "pause_sec": args.pause, "renew_ahead": args.renew_ahead}
    if args.bff:
        async with httpx.AsyncClient(base_url=args.bff, timeout=10) as bff:
            session: str = args.session or await dev_session(bff)
            return await run_app(bff, lambda: session, **pace)
    async with self_contained() as (bff, session_token, in_process):
        return await run_app(bff, session_token, connect=in_process, **pace)


if __name__ == "__main__":
    asyncio.run(main())
