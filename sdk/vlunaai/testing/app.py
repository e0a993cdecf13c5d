"""The Litestar application: both API surfaces, hosted checkout pages and the control API.

- `/mgt/v1/...` and `/api/v1/...` are mounted raw-ASGI handlers backed by `EmulatorCore`
  (routing, SVC-AUTH / bearer verification, idempotency, envelopes).
- `/hosted/...` serves the pages behind checkout, portal and subscription URLs, so a browser in
  dev mode can finish a checkout.
- `/__emulator__/...` (only when `controls_enabled`) exposes counters, reset, fault injection
  and a clock to expire tokens and leases. Every control call must carry `X-Emulator-Control: 1`:
  a header a cross-site form or a simple cross-origin request cannot send, so a web page open in
  the developer's browser cannot reset or fault the emulator.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any

from litestar import Litestar, MediaType, Request, Response, Router, delete, get, post
from litestar.exceptions import HTTPException, NotFoundException
from litestar.handlers import asgi
from litestar.response import Redirect
from litestar.types import Receive, Scope, Send

from .core import CoreBase, EmulatorCore, EmulatorSettings, OperationLike
from .errors import ApiError
from .faults import Fault
from .generic import EnvelopeSamples
from .handlers import HANDLERS, generic
from .seed import Seed, load_seed

CONTROL_PREFIX = "/__emulator__"
CONTROL_HEADER = "X-Emulator-Control"
CONTROL_HEADER_VALUE = "1"
SERVICE_MOUNT = "/mgt/v1"
BEARER_MOUNT = "/api/v1"


def default_operations() -> tuple[OperationLike, ...]:
    from vlunaai.generated.operations import OPERATIONS

    return OPERATIONS


def build_core(
    settings: EmulatorSettings | None = None,
    seed: Seed | None = None,
    *,
    operations: Iterable[OperationLike] | None = None,
    samples: EnvelopeSamples | None = None,
) -> CoreBase:
    """The request pipeline of the flavour `settings.flavor` names."""
    settings = settings or EmulatorSettings()
    seed = seed if seed is not None else load_seed()
    if settings.flavor == "oss":
        from .oss import OssCore

        return OssCore(settings, seed)
    return EmulatorCore(
        settings,
        seed,
        operations if operations is not None else default_operations(),
        HANDLERS,
        generic,
        samples=samples,
    )


def _envelope(data: Any, status: int = 200) -> Response[Any]:
    return Response({"ok": True, "code": "OK", "data": data}, status_code=status, media_type=MediaType.JSON)


def _error(exc: ApiError) -> Response[Any]:
    return Response(exc.envelope("emu-control"), status_code=exc.status, media_type=MediaType.JSON)


async def _require_control_header(request: Request[Any, Any, Any]) -> Response[Any] | None:
    if request.headers.get(CONTROL_HEADER) == CONTROL_HEADER_VALUE:
        return None
    return _error(
        ApiError(
            403,
            "AUTH.FORBIDDEN",
            f"emulator controls require the header '{CONTROL_HEADER}: {CONTROL_HEADER_VALUE}'",
            reason="control_header_missing",
        )
    )


def _fault_from(body: dict[str, Any]) -> Fault:
    latency = body.get("latency_seconds")
    if latency is None and body.get("latency_ms") is not None:
        latency = float(body["latency_ms"]) / 1000
    times = body.get("times", 1)
    return Fault(
        target=str(body.get("operation") or body.get("target") or "*"),
        status=int(body["status"]) if body.get("status") is not None else None,
        retry_after=float(body["retry_after"]) if body.get("retry_after") is not None else None,
        latency_seconds=float(latency or 0),
        drop_connection=bool(body.get("drop_connection", False)),
        after_processing=bool(body.get("after_processing", False)),
        times=None if times is None or times == "all" else int(times),
        code=body.get("code"),
        message=body.get("message"),
    )


def _mount(path: str, emu: CoreBase) -> Any:
    @asgi(path, is_mount=True, copy_scope=False)
    async def api(scope: Scope, receive: Receive, send: Send) -> None:
        await emu.asgi(scope, receive, send)  # type: ignore[arg-type]

    return api


def _hosted_pages(emu: EmulatorCore) -> list[Any]:
    """The pages behind hosted checkout and portal URLs (pay or cancel a checkout by hand)."""

    @get("/hosted/checkout/{checkout_id:str}", media_type=MediaType.HTML)
    async def hosted_checkout(request: Request[Any, Any, Any]) -> str:
        checkout_id = str(request.path_params["checkout_id"])
        checkout = emu.state.checkouts.get(checkout_id)
        if checkout is None:
            raise NotFoundException("unknown checkout")
        prices = {p["catalog_price_id"]: p for p in emu.seed.prices}
        rows = "".join(
            f"<li>{html.escape(str(i['quantity']))} x {html.escape(i['catalog_price_id'])}"
            f" ({prices.get(i['catalog_price_id'], {}).get('unit_amount', 0) / 100:.2f}"
            f" {html.escape(str(prices.get(i['catalog_price_id'], {}).get('currency', 'USD')))})</li>"
            for i in checkout.items
        )
        action = f"/hosted/checkout/{html.escape(checkout_id)}"
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>Vluna emulator checkout</title></head>"
            f"<body><h1>Checkout (emulated)</h1><p>Status: {html.escape(checkout.status)}</p><ul>{rows}</ul>"
            f"<form method='post' action='{action}/complete'><button>Pay (test)</button></form>"
            f"<form method='post' action='{action}/cancel'><button>Cancel</button></form></body></html>"
        )

    @post("/hosted/checkout/{checkout_id:str}/complete", status_code=303)
    async def hosted_complete(request: Request[Any, Any, Any]) -> Redirect:
        checkout_id = str(request.path_params["checkout_id"])
        checkout = emu.state.checkouts.get(checkout_id)
        if checkout is None:
            raise NotFoundException("unknown checkout")
        emu.complete_checkout(checkout_id)
        return Redirect(path=checkout.return_url, status_code=303)

    @post("/hosted/checkout/{checkout_id:str}/cancel", status_code=303)
    async def hosted_cancel(request: Request[Any, Any, Any]) -> Redirect:
        checkout_id = str(request.path_params["checkout_id"])
        checkout = emu.state.checkouts.get(checkout_id)
        if checkout is None:
            raise NotFoundException("unknown checkout")
        if checkout.status == "open":
            checkout.status = "failed"
        return Redirect(path=checkout.cancel_url or checkout.return_url, status_code=303)

    @get(["/hosted/portal/{session:str}", "/hosted/subscription/{session:str}"], media_type=MediaType.HTML)
    async def hosted_portal() -> str:
        return (
            "<!doctype html><html><head><meta charset='utf-8'><title>Vluna emulator portal</title></head>"
            "<body><h1>Billing portal (emulated)</h1><p>Nothing to manage here.</p></body></html>"
        )

    return [hosted_checkout, hosted_complete, hosted_cancel, hosted_portal]


def create_app(
    settings: EmulatorSettings | None = None,
    seed: Seed | None = None,
    *,
    core: CoreBase | None = None,
    operations: Iterable[OperationLike] | None = None,
) -> Litestar:
    """The emulator as a Litestar ASGI app; `app.state.emulator` is its core (`EmulatorCore` for
    the 0.3.2 flavour, `OssCore` for the open-source server's)."""
    emu = core or build_core(settings, seed, operations=operations)
    oss = emu.flavor == "oss"
    # The open-source server also answers outside the two API prefixes (/health, /api/billing/...).
    mounts = ("/mgt", "/api", "/health") if oss else (SERVICE_MOUNT, BEARER_MOUNT)

    @get("/healthz", media_type=MediaType.JSON)
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "code": "OK", "data": {"status": "ok", "realm_id": emu.settings.realm_id}}

    handlers: list[Any] = [*(_mount(path, emu) for path in mounts), healthz]
    if isinstance(emu, EmulatorCore):  # the open-source server has no payment provider: no checkouts
        handlers += _hosted_pages(emu)

    # --- control API ------------------------------------------------------------------------

    if emu.settings.controls_enabled:

        @get("/counters", media_type=MediaType.JSON)
        async def counters() -> Response[Any]:
            return _envelope({"calls": dict(emu.faults.calls)})

        @post("/reset", status_code=200)
        async def reset(request: Request[Any, Any, Any]) -> Response[Any]:
            what = request.query_params.get("what", "all")
            if what == "counters":
                emu.faults.reset_counters()
            elif what == "faults":
                emu.faults.clear()
            elif what == "all":
                emu.reset()
            else:
                return _error(
                    ApiError(422, "VALIDATION.INVALID_INPUT", "what must be all, counters or faults")
                )
            return _envelope({"reset": what})

        @post("/faults", status_code=201)
        async def add_fault(request: Request[Any, Any, Any]) -> Response[Any]:
            try:
                body = await request.json()
                if not isinstance(body, dict):
                    raise TypeError("body must be an object")
                fault = emu.faults.add(_fault_from(body))
            except (TypeError, ValueError, KeyError) as exc:
                return _error(ApiError(422, "VALIDATION.INVALID_INPUT", str(exc)))
            return _envelope(fault.describe(), status=201)

        @get("/faults", media_type=MediaType.JSON)
        async def list_faults() -> Response[Any]:
            return _envelope({"faults": emu.faults.list()})

        @delete("/faults", status_code=200)
        async def clear_faults() -> Response[Any]:
            emu.faults.clear()
            return _envelope({"faults": []})

        @post("/clock/advance", status_code=200)
        async def advance_clock(request: Request[Any, Any, Any]) -> Response[Any]:
            body = await request.json()
            try:
                seconds = float((body or {}).get("seconds", 0))
            except (TypeError, ValueError):
                return _error(ApiError(422, "VALIDATION.INVALID_INPUT", "seconds must be a number"))
            emu.time_offset += seconds
            return _envelope({"time_offset": emu.time_offset})

        @post("/checkouts/{checkout_id:str}/complete", status_code=200)
        async def control_complete(request: Request[Any, Any, Any]) -> Response[Any]:
            checkout_id = str(request.path_params["checkout_id"])
            try:
                emu.complete_checkout(checkout_id)
            except KeyError:
                return _error(ApiError(404, "RESOURCE.NOT_FOUND", "unknown checkout"))
            return _envelope({"checkout_id": checkout_id, "status": "completed"})

        @get("/config", media_type=MediaType.JSON)
        async def config() -> Response[Any]:
            s = emu.settings
            return _envelope(
                {
                    "realm_id": s.realm_id,
                    "service_key_id": emu.primary_key.key_id,
                    "token_ttl": {
                        "min": s.token_ttl_min,
                        "max": s.token_ttl_max,
                        "default": s.token_ttl_default,
                    },
                    "skew_seconds": s.skew_seconds,
                    "lease_ttl_seconds": s.lease_ttl_seconds,
                    "flavor": s.flavor,
                    "operations": emu.operation_count,
                }
            )

        handlers.append(
            Router(
                CONTROL_PREFIX,
                route_handlers=[
                    counters,
                    reset,
                    add_fault,
                    list_faults,
                    clear_faults,
                    advance_clock,
                    control_complete,
                    config,
                ],
                before_request=_require_control_header,
            )
        )

    def not_found_handler(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
        if oss and exc.status_code in (404, 405):
            # As the open-source server answers any path it has no route for.
            message = f"Cannot {request.method} {request.url.path}"
            body = {"ok": False, "code": "RESOURCE.NOT_FOUND", "message": message, "meta": {"status": 404}}
            return Response(body, status_code=404, media_type="application/json; charset=utf-8")
        error = ApiError(
            exc.status_code,
            "RESOURCE.NOT_FOUND" if exc.status_code in (404, 405) else "SERVER.UNEXPECTED",
            exc.detail,
        )
        return _error(error)

    app = Litestar(
        route_handlers=handlers,
        exception_handlers={HTTPException: not_found_handler},
        openapi_config=None,
        logging_config=None,
    )
    app.state.emulator = emu
    return app
