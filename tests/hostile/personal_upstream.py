"""A stand-in for Vluna's /api/v1 that personalises its answers, as the real API may: every
catalog item carries the caller's own `subscription_state` (`subscription_id`,
`has_active_subscription`), taken from the billing account and user of the platform token it was
called with. Run as a process: `python tests/hostile/personal_upstream.py`; it prints
`listening on http://127.0.0.1:<port>` once bound.

`GET /__calls` answers how many API calls it served (by path), so a test can tell a cached
answer from an upstream one. Tokens are read, not verified: the emulator that issued them is not
what is under test.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

_calls: dict[str, int] = {}
_lock = threading.Lock()


def token_claims(authorization: str | None) -> dict[str, Any] | None:
    scheme, _, token = (authorization or "").partition(" ")
    parts = token.split(".")
    if scheme.lower() != "bearer" or len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    return claims if isinstance(claims, dict) else None


def personal_items(kind: str, claims: dict[str, Any], query: dict[str, str]) -> list[dict[str, Any]]:
    account = str(claims.get("billing_account_id"))
    user = str(claims.get("billing_user_id"))
    limit = min(int(query.get("limit", "3") or 3), 10)
    return [
        {
            f"catalog_{kind}_id": f"{kind}-{i}",
            "name": f"{kind} {i}",
            "subscription_state": {
                "subscription_id": f"sub-of-{account}-{i}",
                "has_active_subscription": True,
                "eligible_for_checkout": False,
                "action": "manage_subscription",
            },
            "billing_user_seen": user,
        }
        for i in range(limit)
    ]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        if url.path == "/__calls":
            with _lock:
                self._send(200, dict(_calls))
            return
        with _lock:
            _calls[url.path] = _calls.get(url.path, 0) + 1
        claims = token_claims(self.headers.get("Authorization"))
        if claims is None:
            self._send(401, {"ok": False, "code": "AUTH.UNAUTHORIZED", "message": "missing_token"})
            return
        kinds = {"/api/v1/catalog/products": "product", "/api/v1/catalog/prices": "price"}
        kind = kinds.get(url.path)
        if kind is None:
            self._send(404, {"ok": False, "code": "RESOURCE.NOT_FOUND", "message": "not here"})
            return
        items = personal_items(kind, claims, dict(parse_qsl(url.query)))
        self._send(200, {"ok": True, "code": "OK", "data": items, "meta": {"has_more": False}})


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(f"listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        sys.exit(0)


if __name__ == "__main__":
    main()
