"""Run the Vluna emulator: `python -m vlunaai.testing` or `vlunaai-emulator`.

Every flag has an environment variable (shown in --help). Without a service-key secret one is
generated and printed once, with the key id, as `export ...` lines ready for a shell.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence

from .app import CONTROL_HEADER, CONTROL_HEADER_VALUE, create_app
from .core import FLAVORS, EmulatorSettings
from .faults import ConnectionDropped
from .seed import SeedError, generate_secret, load_seed


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _optional_flag(value: str | None) -> bool | None:
    """An on/off environment variable; None (unset) leaves the choice to the flavour."""
    return None if value is None else _truthy(value)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vlunaai-emulator",
        description="A local emulator of the Vluna Billing and Usage Gate APIs (/mgt/v1 and /api/v1).",
    )
    p.add_argument(
        "--host", default=_env("VLUNA_EMULATOR_HOST", "127.0.0.1"), help="bind address [VLUNA_EMULATOR_HOST]"
    )
    p.add_argument(
        "--flavor",
        choices=FLAVORS,
        default=_env("VLUNA_EMULATOR_FLAVOR", "0.3.2"),
        help="the server emulated: 0.3.2 (the published vlunaai 0.3.2 API) or oss (the open-source"
        " Vluna server as recorded in spec/vluna-api/recorded) [VLUNA_EMULATOR_FLAVOR]",
    )
    p.add_argument(
        "--strict-auth",
        action=argparse.BooleanOptionalAction,
        default=_optional_flag(_env("VLUNA_EMULATOR_STRICT_AUTH")),
        help="refuse old SVC-AUTH timestamps and replayed nonces (and, in the oss flavour, platform"
        " tokens on /mgt/v1); default: on for 0.3.2, off for oss [VLUNA_EMULATOR_STRICT_AUTH=1|0]",
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(_env("VLUNA_EMULATOR_PORT", "8787") or 8787),
        help="port, 0 for any free one [VLUNA_EMULATOR_PORT]",
    )
    p.add_argument(
        "--realm-id", default=_env("VLUNA_REALM_ID", "realm_demo"), help="realm id [VLUNA_REALM_ID]"
    )
    p.add_argument(
        "--service-key-id",
        default=_env("VLUNA_SERVICE_KEY_ID", "pk-emulator"),
        help="service key id [VLUNA_SERVICE_KEY_ID]",
    )
    p.add_argument(
        "--service-key-secret",
        default=_env("VLUNA_SERVICE_KEY_SECRET"),
        help="base64 service key secret; generated and printed when absent [VLUNA_SERVICE_KEY_SECRET]",
    )
    p.add_argument(
        "--seed", default=_env("VLUNA_EMULATOR_SEED"), help="seed file, YAML or JSON [VLUNA_EMULATOR_SEED]"
    )
    p.add_argument("--token-ttl-min", type=int, default=int(_env("VLUNA_EMULATOR_TOKEN_TTL_MIN", "60") or 60))
    p.add_argument(
        "--token-ttl-max", type=int, default=int(_env("VLUNA_EMULATOR_TOKEN_TTL_MAX", "3600") or 3600)
    )
    p.add_argument(
        "--token-ttl-default", type=int, default=int(_env("VLUNA_EMULATOR_TOKEN_TTL_DEFAULT", "900") or 900)
    )
    p.add_argument(
        "--skew-seconds",
        type=float,
        default=float(_env("VLUNA_EMULATOR_SKEW_SECONDS", "300") or 300),
        help="SVC-AUTH timestamp window",
    )
    p.add_argument(
        "--lease-ttl",
        type=int,
        default=int(_env("VLUNA_EMULATOR_LEASE_TTL", "300") or 300),
        help="gate lease lifetime (s)",
    )
    p.add_argument(
        "--enable-controls",
        action="store_true",
        default=_truthy(_env("VLUNA_EMULATOR_CONTROLS")),
        help="serve /__emulator__/ (counters, reset, faults, clock) [VLUNA_EMULATOR_CONTROLS=1]",
    )
    p.add_argument(
        "--allow-principal-only",
        action="store_true",
        default=_truthy(_env("VLUNA_EMULATOR_ALLOW_PRINCIPAL_ONLY")),
        help="accept runtime calls with X-Principal-Id but no X-User-Id (as 0.1.2-era integrations send);"
        " by default they answer 401 AUTH.MISSING_RUNTIME_BINDINGS",
    )
    p.add_argument(
        "--flaky-account-creation",
        action=argparse.BooleanOptionalAction,
        default=_optional_flag(_env("VLUNA_EMULATOR_FLAKY_ACCOUNT_CREATION")),
        help="fail the call that creates a billing account once with 500, like the open-source server;"
        " default: on for oss, off for 0.3.2 [VLUNA_EMULATOR_FLAKY_ACCOUNT_CREATION=1|0]",
    )
    p.add_argument(
        "--public-url",
        default=_env("VLUNA_EMULATOR_PUBLIC_URL"),
        help="base of hosted URLs (default: the bind address)",
    )
    p.add_argument("--log-level", default=_env("VLUNA_EMULATOR_LOG_LEVEL", "warning"))
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument(
        "--keep-alive",
        type=float,
        default=float(_env("VLUNA_EMULATOR_KEEP_ALIVE", "75") or 75),
        help="idle keep-alive timeout (s); long, like load balancers, so pooled clients rarely race a close",
    )
    return p


class _DropFilter(logging.Filter):
    """Injected connection drops are intended; keep their tracebacks out of the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        seen = 0
        while exc is not None and seen < 8:
            if isinstance(exc, ConnectionDropped):
                return False
            exc = exc.__cause__ or exc.__context__
            seen += 1
        return True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import uvicorn

    generated = args.service_key_secret is None
    secret = args.service_key_secret or generate_secret()
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto
    # says TCP, and without it every answer waits ~40 ms for a delayed ACK.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        print(f"vlunaai-emulator: cannot bind {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    base = f"http://{args.host}:{port}"
    try:
        settings = EmulatorSettings(
            flavor=args.flavor,
            strict_auth=args.strict_auth,
            realm_id=args.realm_id,
            service_key_id=args.service_key_id,
            service_key_secret=secret,
            token_ttl_min=args.token_ttl_min,
            token_ttl_max=args.token_ttl_max,
            token_ttl_default=args.token_ttl_default,
            skew_seconds=args.skew_seconds,
            lease_ttl_seconds=args.lease_ttl,
            controls_enabled=args.enable_controls,
            flaky_account_creation=args.flaky_account_creation,
            require_runtime_bindings=not args.allow_principal_only,
            public_url=args.public_url or base,
        )
        seed = load_seed(args.seed)
    except (SeedError, ValueError, OSError) as exc:
        print(f"vlunaai-emulator: {exc}", file=sys.stderr)
        sock.close()
        return 2
    app = create_app(settings, seed)
    # Listening before the line below is printed: whoever reads it may connect at once, and the
    # kernel queues those connections until the server accepts them (instead of refusing them).
    sock.listen(2048)
    operations = app.state.emulator.operation_count
    controls = (
        f", controls at {base}/__emulator__ with the header {CONTROL_HEADER}: {CONTROL_HEADER_VALUE}"
        if settings.controls_enabled
        else ""
    )
    lines = [
        f"Vluna emulator listening on {base} ({settings.flavor} flavour, realm {settings.realm_id},"
        f" {operations} operations{controls})",
        f"export VLUNA_SERVICE_BASE_URL={base}/mgt/v1",
        f"export VLUNA_BEARER_BASE_URL={base}/api/v1",
        f"export VLUNA_REALM_ID={settings.realm_id}",
        f"export VLUNA_SERVICE_KEY_ID={settings.service_key_id}",
    ]
    if generated:
        # Printed once, on purpose: a generated secret is useless unless the user can copy it.
        lines.append(f"export VLUNA_SERVICE_KEY_SECRET={secret}")
    print("\n".join(lines), flush=True)
    logging.getLogger("uvicorn.error").addFilter(_DropFilter())
    config = uvicorn.Config(
        app,
        log_level=args.log_level,
        access_log=args.access_log,
        lifespan="off",
        server_header=False,
        timeout_keep_alive=int(args.keep_alive),
    )
    server = uvicorn.Server(config)
    try:
        asyncio.run(server.serve(sockets=[sock]))
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
