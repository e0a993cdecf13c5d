"""Process-level pieces of ``vluna-bff serve``: the multi-process metrics directory, the optional
separate metrics port, and a SIGTERM that ends in exit status 0 after a graceful shutdown.

Graceful shutdown itself is the server's (bff/server.py): on SIGTERM each worker stops accepting
connections, lets requests in flight finish (at most ``observability.shutdown_grace_sec``, then
the worker is killed), then runs the app's shutdown (background refreshes cancelled, Redis, HTTP
and SDK pools closed).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

# Not imported from .metrics: importing prometheus_client objects with the variable set but the
# directory not made yet would fail.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger("bff.serve")


@contextlib.contextmanager
def multiprocess_metrics(
    workers: int, configured_dir: str | None, *, scraped_apart: bool = False
) -> Iterator[str | None]:
    """Set ``PROMETHEUS_MULTIPROC_DIR`` for the workers (before they start) when there are several,
    or when another process than the worker serves the metrics (``scraped_apart``: the separate
    metrics port is served by the supervisor).

    A configured (or inherited) directory is emptied at start: samples of an earlier run must not
    be added to this one's. A directory made here is removed at exit.
    """
    path = configured_dir or os.environ.get(MULTIPROC_ENV)
    if workers <= 1 and not scraped_apart and not path:
        yield None
        return
    created = False
    if path:
        os.makedirs(path, exist_ok=True)
        for file in glob.glob(os.path.join(path, "*.db")):
            with contextlib.suppress(OSError):
                os.remove(file)
    else:
        path = tempfile.mkdtemp(prefix="vluna-bff-metrics-")
        created = True
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if created:
            shutil.rmtree(path, ignore_errors=True)
        # Restored in every case: a configured directory left in the environment would send every
        # later scrape of this process to that directory's files.
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous


def start_metrics_server(host: str, port: int) -> WSGIServer:
    """Serve the metrics (of every worker) on a port of their own, from this process."""
    from prometheus_client import start_http_server

    from bff.telemetry.metrics import scrape_registry

    server, _thread = start_http_server(port, addr=host, registry=scrape_registry())
    log.info("metrics on http://%s:%d/metrics", host, server.server_port)
    return server


def exit_zero_on_sigterm() -> None:
    """``vluna-bff dev`` (uvicorn): uvicorn re-raises the signal it handled once it has shut
    down; with this handler in place that does not kill the process, so a graceful stop exits 0."""
    signal.signal(signal.SIGTERM, lambda sig, frame: None)
