"""``vluna-bff``: serve, check-config, dev."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from bff.settings import CONFIG_ENV, Settings, SettingsError, load_settings, settings_warnings

if TYPE_CHECKING:
    from bff.probes import ProbeLine

DEV_CONFIG = Path("config/bff.dev.yaml")


def _load(path: str | None, **overrides: object) -> Settings:
    return load_settings(path, overrides=overrides or None)


def _setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args.config)
    warnings = settings_warnings(settings)
    print(f"configuration OK{f' with {len(warnings)} warning(s)' if warnings else ''} (secrets redacted):")
    for warning in warnings:
        print(f"warning: {warning}")
    print(yaml.safe_dump(settings.redacted_dump(), sort_keys=False), end="")
    if not args.probe:
        return 0
    lines = _probe(settings, args.probe_timeout)
    print(f"probes ({len(lines)}):")
    from bff.observability.logging import redact

    for line in lines:
        print(redact(str(line)))
    failed = [line for line in lines if not line.ok]
    print(f"{len(failed)} probe(s) failed" if failed else "every probe passed")
    return 1 if failed else 0


def _probe(settings: Settings, timeout: float) -> list[ProbeLine]:
    import asyncio

    from bff.observability.logging import register_settings_secrets
    from bff.probes import run_probes

    register_settings_secrets(settings)
    return asyncio.run(run_probes(settings, timeout))


def startup_probes(settings: Settings, strict: bool) -> bool:
    """Log every start-up probe (failures at error); False when --strict-startup should stop."""
    log = logging.getLogger("bff.startup")
    timeout = max(settings.observability.readiness.timeout_sec, 2.0)
    failed = 0
    for line in _probe(settings, timeout):
        if line.ok:
            log.info("start-up check %s: %s", line.check, line.text, extra={"check": line.check})
        else:
            failed += 1
            log.error("start-up check %s failed: %s", line.check, line.text, extra={"check": line.check})
    if failed and strict:
        log.error("%d start-up check(s) failed; not starting (--strict-startup)", failed)
        return False
    return True


def cmd_openapi(args: argparse.Namespace) -> int:
    import json

    from bff.openapi import document

    # The document depends on routes, sign-in methods and the proxy allowlist, not on secrets or
    # Redis: a build step can print it from the settings file alone.
    text = json.dumps(document(load_settings(args.config, complete=False)), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from bff import server
    from bff.observability.serving import multiprocess_metrics, start_metrics_server

    settings = _load(args.config)
    if settings.dev.enabled:
        print("dev.enabled is set: use `vluna-bff dev` for development", file=sys.stderr)
        return 2
    o = settings.observability
    options = server.ServerOptions.from_settings(
        settings, host=args.host, port=args.port, workers=args.workers, grace_sec=args.graceful_timeout
    )
    metrics_port = args.metrics_port if args.metrics_port is not None else o.metrics.port
    if metrics_port is not None and args.metrics_port is not None:
        settings = settings.model_copy(
            update={
                "observability": o.model_copy(
                    update={"metrics": o.metrics.model_copy(update={"port": metrics_port})}
                )
            }
        )
        # Workers rebuild the settings from the environment: tell them too.
        os.environ["VLUNA_BFF__OBSERVABILITY__METRICS__PORT"] = str(metrics_port)
    # Workers are separate processes: each rebuilds the settings from the same file and env.
    if args.config:
        os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    separate_metrics = metrics_port is not None and o.metrics.enabled
    with multiprocess_metrics(options.workers, o.metrics.multiprocess_dir, scraped_apart=separate_metrics):
        # Imported only now: prometheus_client must see the multi-process directory in place.
        from bff.observability.setup import configure_process

        configure_process(settings)
        for warning in settings_warnings(settings):
            logging.getLogger("bff").warning("configuration: %s", warning)
        if not args.skip_startup_checks and not startup_probes(settings, args.strict_startup):
            return 1
        if separate_metrics:
            assert metrics_port is not None
            start_metrics_server(o.metrics.host or options.host, metrics_port)
        server.serve(server.WORKER_APP, options)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    import uvicorn

    from bff.dev import DevBindError, banner, bind, create_dev_app, dev_base_url

    path = args.config or (str(DEV_CONFIG) if DEV_CONFIG.exists() else None)
    settings = _load(path, dev={"enabled": True})
    s = settings.server
    host = args.host or s.host
    port = args.port if args.port is not None else s.port
    if host not in ("127.0.0.1", "::1", "localhost"):
        # The dev sign-in lets anyone be anyone: never expose it beyond this machine.
        print(f"vluna-bff dev binds to loopback only (got {host!r})", file=sys.stderr)
        return 2
    from bff.observability.serving import exit_zero_on_sigterm
    from bff.observability.setup import configure_process

    # Bound first: a busy port is one clear line, and the URLs announced below are the real ones
    # (--port 0 picks a free port).
    try:
        sock = bind("127.0.0.1" if host == "localhost" else host, port)
    except DevBindError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    try:
        configure_process(settings)
        runtime = create_dev_app(settings, base_url=dev_base_url(host, sock.getsockname()[1]))
        print(banner(runtime, settings.cache.backend), flush=True)
        exit_zero_on_sigterm()
        config = uvicorn.Config(
            runtime.app,
            log_level=s.log_level,
            log_config=None,
            access_log=False,
            timeout_graceful_shutdown=settings.observability.shutdown_grace_sec,
        )
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vluna-bff", description="Vluna token-issuing backend-for-frontend")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", help=f"YAML settings file (default: ${CONFIG_ENV})")

    p_serve = sub.add_parser("serve", help="run the service (granian)")
    common(p_serve)
    p_serve.add_argument("--host")
    p_serve.add_argument("--port", type=int)
    p_serve.add_argument("--workers", type=int)
    p_serve.add_argument(
        "--graceful-timeout",
        type=int,
        help="seconds in-flight requests get to finish after SIGTERM (observability.shutdown_grace_sec)",
    )
    p_serve.add_argument(
        "--metrics-port", type=int, help="serve /metrics on this port only (observability.metrics.port)"
    )
    p_serve.add_argument(
        "--strict-startup",
        action="store_true",
        help="exit with status 1 when a start-up check (Redis, identity provider, Vluna) fails",
    )
    p_serve.add_argument(
        "--skip-startup-checks", action="store_true", help="start without checking Redis, keys and Vluna"
    )
    p_serve.set_defaults(fn=cmd_serve)

    p_check = sub.add_parser("check-config", help="validate the settings and print them, secrets redacted")
    common(p_check)
    p_check.add_argument(
        "--probe",
        action="store_true",
        help="also connect: Redis (PING, permissions), the identity provider (discovery, JWKS), Vluna "
        "(a signed call); exit status 1 when one fails",
    )
    p_check.add_argument("--probe-timeout", type=float, default=5.0, help="seconds per probe (default 5)")
    p_check.set_defaults(fn=cmd_check_config)

    p_openapi = sub.add_parser(
        "openapi", help="print the OpenAPI document of these settings (what openapi.path serves)"
    )
    common(p_openapi)
    p_openapi.add_argument("--output", "-o", help="write it to this file instead of stdout")
    p_openapi.set_defaults(fn=cmd_openapi)

    p_dev = sub.add_parser("dev", help="run with an embedded emulator and a development sign-in")
    common(p_dev)
    p_dev.add_argument("--host", help="loopback address to listen on (default: server.host, 127.0.0.1)")
    p_dev.add_argument(
        "--port", type=int, help="port to listen on (default: server.port, 8080; 0: any free port)"
    )
    p_dev.set_defaults(fn=cmd_dev)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.fn(args)
    except SettingsError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
