"""Serve an ASGI app factory on a server stack, for side-by-side measurements:

    python -m bench._stacks STACK TARGET      # prints `listening on http://127.0.0.1:<port>`

STACK:
  service      the stack `vluna-bff serve` runs: bff.server.serve (granian, uvloop), one worker;
               every reference of `python -m bench` runs on it, like the service
  uvicorn      uvicorn with uvloop and httptools (needs `httptools`, not in the lock)
  uvicorn-h11  uvicorn with the asyncio loop and h11 (what `serve` ran before)
  hypercorn    hypercorn on uvloop (needs `hypercorn`, not in the lock)
TARGET: an app factory, `module:function`; the apps take their arguments from the environment
(bench._refservers; the service: VLUNA_BFF_CONFIG). One worker, 127.0.0.1, a free port, no
access log. `python -m bench --only stacks` measures the service and its references on each.
"""

from __future__ import annotations

import importlib
import importlib.util
import socket
import sys

from tests.support.ports import free_port

STACKS = ("service", "uvicorn", "uvicorn-h11", "hypercorn")
NEEDS = {
    "service": (),
    "uvicorn": ("uvloop", "httptools"),
    "uvicorn-h11": (),
    "hypercorn": ("hypercorn", "uvloop"),
}


def missing(stack: str) -> list[str]:
    """Modules a stack needs that are not installed."""
    return [m for m in NEEDS[stack] if importlib.util.find_spec(m) is None]


def _announce(port: int) -> None:
    print(f"listening on http://127.0.0.1:{port}", flush=True)


def serve(stack: str, target: str) -> None:
    if stack == "service":
        from bff.server import ServerOptions
        from bff.server import serve as serve_service

        port = free_port()
        _announce(port)
        serve_service(target, ServerOptions(host="127.0.0.1", port=port, log_level="warning"))
    elif stack in ("uvicorn", "uvicorn-h11"):
        import uvicorn

        fast = stack == "uvicorn"
        config = uvicorn.Config(
            target,
            factory=True,
            loop="uvloop" if fast else "asyncio",
            http="httptools" if fast else "h11",
            log_level="warning",
            access_log=False,
            server_header=False,
        )
        # IPPROTO_TCP named, so that asyncio sets TCP_NODELAY on accepted connections.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        _announce(sock.getsockname()[1])
        uvicorn.Server(config).run(sockets=[sock])
    elif stack == "hypercorn":
        import uvloop
        from hypercorn.asyncio import serve as hypercorn_serve
        from hypercorn.config import Config

        module, name = target.split(":")
        app = getattr(importlib.import_module(module), name)()
        port = free_port()
        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.loglevel = "WARNING"
        config.accesslog = None
        _announce(port)
        uvloop.run(hypercorn_serve(app, config))
    else:
        raise SystemExit(f"unknown stack {stack!r}; one of {', '.join(STACKS)}")


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
