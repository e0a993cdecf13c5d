"""What the browser tests share: the service under test and its two stand-in web origins, and
signing in the way a browser does."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.sync_api import BrowserContext

from tests.support.processes import REPO

ARTIFACTS = REPO / "artifacts"
TOKEN_TTL_SEC = 60


@dataclass
class Origin:
    """A static web server on 127.0.0.1 standing in for another site's pages."""

    port: int
    root: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def page(self, name: str, html: str) -> str:
        (self.root / name).write_text(html, encoding="utf-8")
        return f"{self.url}/{name}"


@dataclass
class Service:
    url: str
    allowed: Origin  # listed in server.cors_allow_origins
    other: Origin  # not listed


def dev_login(context: BrowserContext, service: Service, user: str, org: str = "acme") -> str:
    """Sign in the way a browser does (the cookie lands in this context); returns the JWT."""
    r = context.request.get(f"{service.url}/dev/login", params={"user": user, "org": org})
    assert r.status == 200, r.text()
    token: str = r.json()["token"]
    return token


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims
