"""The HTTP server of ``vluna-bff serve``: granian (hyper's HTTP/1.1 in Rust), the app on uvloop.

Chosen by measurement against uvicorn (uvloop + httptools, and h11) and hypercorn on the
service's own endpoints, each with its references on the same stack (docs/stacks.md,
``python -m bench --only stacks``): on 2 shared CPUs granian and uvicorn + uvloop + httptools
are within the noise of each other (a cache hit 0.94x-1.06x, a proxied GET 0.9x-1.1x, with a
lower p99 on granian), uvicorn + h11 is at 0.6x-0.9x and hypercorn at 0.5x. What decides it is
what granian has and uvicorn lacks: a header read timeout that also bounds idle connections,
and a bounded request head (httptools has no limit; h11's applies only to heads in pieces).
What the service relies on it for:

- slow clients: a request line and headers must arrive within ``server.header_read_timeout_sec``
  of the connection opening (or of the previous answer on a keep-alive connection), else the
  connection is closed. HTTP/1.1 only: with protocol auto-detection hyper does not time a
  connection's first bytes. Bodies are timed by bff/http_guard.py;
- a bounded request head: the server reads at most ``4 x server.max_header_bytes`` of it (a bare
  431 beyond); bff/http_guard.py answers anything over ``max_header_bytes`` with a JSON 431;
- TCP_NODELAY on the listening socket (set by granian; Linux passes it to accepted connections);
- ``--workers N``: N processes, each binding the port (SO_REUSEPORT), under this process;
- SIGTERM: every worker stops accepting, lets requests in flight finish, then runs the app's
  shutdown (pools closed); a worker still busy after the grace period is killed. Exit status 0.

Workers are started with ``spawn`` (a fresh interpreter: no threads or locks inherited) and
build the app from the settings file and environment (``worker_app``).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from bff.settings import Settings, SettingsError

WORKER_APP = "bff.server:worker_app"

# granian's own log lines go through the root handler (JSON and redaction, bff/observability);
# its access log stays off (ours replaces it).
_GRANIAN_LOGGING: dict[str, Any] = {
    "loggers": {
        "_granian": {"handlers": [], "propagate": True},
        "granian.access": {"handlers": [], "propagate": False, "level": "CRITICAL"},
    }
}


@dataclass(frozen=True)
class ServerOptions:
    host: str
    port: int
    workers: int = 1
    header_read_timeout_sec: float = 10.0
    max_header_bytes: int = 16384
    grace_sec: float = 20.0
    log_level: str = "info"

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        host: str | None = None,
        port: int | None = None,
        workers: int | None = None,
        grace_sec: float | None = None,
    ) -> ServerOptions:
        s = settings.server
        return cls(
            host=bind_address(host or s.host),
            port=_fixed_port(port if port is not None else s.port),
            workers=workers or s.workers,
            header_read_timeout_sec=s.header_read_timeout_sec,
            max_header_bytes=s.max_header_bytes,
            grace_sec=grace_sec if grace_sec is not None else settings.observability.shutdown_grace_sec,
            log_level=s.log_level,
        )

    @property
    def read_buffer_bytes(self) -> int:
        """The most of a request head the server reads (hyper needs at least 8 KiB)."""
        return max(8192, 4 * self.max_header_bytes)


def bind_address(host: str) -> str:
    """An IP address to bind (granian takes no names): the host itself, or what it resolves to."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise SettingsError([("server.host", f"cannot resolve {host!r}: {exc}")]) from None
    return str(infos[0][4][0])


def _fixed_port(port: int) -> int:
    if port == 0:
        # Every worker binds the port itself: port 0 would give each worker a different one.
        raise SettingsError([("server.port", "must be a fixed port (0 is not supported by serve)")])
    return port


def serve(target: str, options: ServerOptions) -> None:
    """Serve the ASGI app factory ``target`` (``module:function``) until SIGTERM or SIGINT."""
    import multiprocessing

    from granian.constants import HTTPModes, Interfaces, Loops, RuntimeModes
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server

    multiprocessing.set_start_method("spawn", force=True)
    Server(
        target,
        address=options.host,
        port=options.port,
        interface=Interfaces.ASGI,
        workers=options.workers,
        loop=Loops.uvloop,
        # One thread for hyper per worker: measured faster than the multi-threaded runtime here.
        runtime_mode=RuntimeModes.st,
        http=HTTPModes.http1,
        websockets=False,
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, round(options.header_read_timeout_sec * 1000)),
            keep_alive=True,
            max_buffer_size=options.read_buffer_bytes,
        ),
        log_level=LogLevels(options.log_level),
        log_dictconfig=_GRANIAN_LOGGING,
        workers_kill_timeout=options.grace_sec,  # type: ignore[arg-type]
        factory=True,
    ).serve()


def worker_app() -> Any:
    """What each worker process serves: the app built from ``VLUNA_BFF_CONFIG`` and the
    environment, behind X-Forwarded-For/-Proto handling when ``server.proxy_headers`` is set
    (trusted from 127.0.0.1 only, as uvicorn did)."""
    from bff.app import create_app
    from bff.observability.setup import configure_process
    from bff.settings import load_settings

    settings = load_settings()
    configure_process(settings)
    app: Any = create_app(settings)
    if settings.server.proxy_headers:
        from granian.utils.proxies import wrap_asgi_with_proxy_headers

        app = wrap_asgi_with_proxy_headers(app, "127.0.0.1")
    return app
