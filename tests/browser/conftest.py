"""A real `vluna-bff dev` process and Debian's Chromium (headless), driven by Playwright.

The service runs with a 60 s platform-token life (the emulator's minimum) and refreshes ahead
after 10% of it, so a renewal can be watched in seconds rather than minutes; everything else is
the dev configuration a developer gets from `./run dev`. Two more servers stand in for other web
origins: one listed in `server.cors_allow_origins`, one not.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from tests.support.ports import free_port
from tests.support.processes import REPO, stop

from .support import TOKEN_TTL_SEC, Origin, Service

CHROMIUM = os.environ.get("VLUNA_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    # Without these Chromium keeps calling home, which only times out on a closed network.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve_static(root: Path) -> tuple[http.server.ThreadingHTTPServer, threading.Thread, Origin]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread, Origin(int(server.server_address[1]), root)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    servers = []
    origins = []
    for name in ("allowed", "other"):
        server, thread, origin = _serve_static(tmp_path_factory.mktemp(f"origin-{name}"))
        servers.append((server, thread))
        origins.append(origin)
    allowed, other = origins
    port = free_port()
    env = {
        **os.environ,
        "VLUNA_BFF__TOKENS__SESSION_TTL_SEC": str(TOKEN_TTL_SEC),
        "VLUNA_BFF__TOKENS__REFRESH_AHEAD_RATIO": "0.1",
        "VLUNA_BFF__TOKENS__SAFETY_MARGIN_SEC": "5",
        "VLUNA_BFF__SERVER__CORS_ALLOW_ORIGINS": json.dumps([allowed.url]),
        "VLUNA_BFF__SERVER__LOG_LEVEL": "warning",
    }
    env.pop("VLUNA_BFF_CONFIG", None)
    log = tmp_path_factory.mktemp("bff") / "dev.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bff.cli", "dev", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vluna-bff dev exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/vluna/client.js", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vluna-bff dev did not answer within 30 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield Service(url=url, allowed=allowed, other=other)
    finally:
        stop(proc)
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


# Module scope, not session: sync Playwright keeps an asyncio loop running while it is open, and
# the async tests of other directories (pytest-asyncio) cannot start theirs inside it.
@pytest.fixture(scope="module")
def playwright_instance() -> Iterator[Playwright]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: `apt-get install -y chromium` (./run test does it)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    # Playwright gives every launch a fresh temporary profile (--user-data-dir) and removes it.
    b = playwright_instance.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(15_000)
    try:
        yield ctx
    finally:
        ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()
