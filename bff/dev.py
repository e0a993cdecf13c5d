"""``vluna-bff dev``: the service, a local Vluna emulator and a fake sign-in, in one process.

The dev signing key is generated at start and exists only in memory; its public half is trusted
only by an app built here. ``/dev/login?user=alice&org=acme`` mints a token for a demo user,
sets it as the session cookie and returns it for ``Authorization: Bearer`` use.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from litestar import Litestar, Request, Response, get
from litestar.datastructures import Cookie
from litestar.params import FromQuery
from litestar.types import ControllerRouterHandler

from bff.auth.jwks import StaticKeySource, VerificationKey
from bff.errors import BadRequest
from bff.observability.upstream import PropagatingTransport
from bff.proxy.upstream import AsgiUpstream
from bff.settings import DevSettings, Settings
from bff.tokens.issuer import SdkTokenIssuer

log = logging.getLogger("bff.dev")

_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


class DevSignIn:
    def __init__(self, settings: DevSettings) -> None:
        self._s = settings
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.kid = f"dev-{secrets.token_hex(4)}"
        self.key_source = StaticKeySource([VerificationKey(self.kid, self._key.public_key(), "ES256")])

    def __repr__(self) -> str:
        return f"DevSignIn(kid={self.kid!r})"

    def mint(self, user: str, org: str | None = None, *, ttl_sec: int | None = None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self._s.issuer,
            "aud": self._s.audience,
            "sub": user,
            "iat": now,
            "nbf": now,
            "exp": now + (ttl_sec or self._s.token_ttl_sec),
            "email": f"{user}@{org or 'example'}.test",
            "name": user.capitalize(),
        }
        if org:
            claims["org_id"] = org
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(self._key.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": self.kid, "alg": "ES256", "use": "sig"}]}

    def routes(self, cookie_name: str, csrf_header: str) -> list[ControllerRouterHandler]:
        signin = self

        @get("/dev/login")
        async def dev_login(
            request: Request[Any, Any, Any],
            user: FromQuery[str] = "alice",
            org: FromQuery[str | None] = None,
        ) -> Response[Any]:
            if not _NAME.match(user) or (org is not None and not _NAME.match(org)):
                raise BadRequest("user and org: 1-64 letters, digits or _.@-", code="invalid_dev_user")
            token = signin.mint(user, org)
            return Response(
                {
                    "token": token,
                    "user": user,
                    "org": org,
                    "hint": f"GET /vluna/token with 'Authorization: Bearer <token>', or with the "
                    f"{cookie_name} cookie and the header '{csrf_header}: 1'",
                },
                headers={"Cache-Control": "no-store"},
                cookies=[Cookie(key=cookie_name, value=token, httponly=True, samesite="lax", path="/")],
            )

        @get("/dev/jwks.json")
        async def dev_jwks() -> dict[str, Any]:
            return signin.jwks()

        return [dev_login, dev_jwks]


@dataclass
class DevRuntime:
    app: Litestar
    signin: DevSignIn
    emulator: Any
    realm_id: str


def create_dev_app(settings: Settings) -> DevRuntime:
    """The BFF wired to an in-process emulator (no network hop) and the dev sign-in."""
    from vlunaai.testing import VlunaEmulator
    from vlunaai.testing.handle import EMULATOR_BASE

    from bff.app import create_app
    from bff.web import demo_routes

    # Controls on: a developer can inject faults or advance the emulator clock from tests.
    emulator = VlunaEmulator(controls_enabled=True)
    realm_id = emulator.realm_id
    signin = DevSignIn(settings.dev)
    issuer = SdkTokenIssuer.create(
        base_url=emulator.service_base_url,
        realm_id=realm_id,
        key_id=emulator.service_key_id,
        secret=emulator.service_key_secret,
        session_ttl_sec=settings.tokens.session_ttl_sec,
        timeout_sec=settings.vluna.timeout_sec,
        max_retries=settings.vluna.max_retries,
        # The same request-id and traceparent propagation as the production path.
        transport=PropagatingTransport(emulator.transport()),
    )
    app = create_app(
        settings,
        issuer=issuer,
        dev_keys=signin.key_source,
        realm_id=realm_id,
        extra_routes=[
            *signin.routes(settings.auth.cookie.name, settings.auth.cookie.csrf_header),
            *demo_routes(
                emulator_transport=emulator.transport,
                emulator_base_url=EMULATOR_BASE,
                cookie_name=settings.auth.cookie.name,
                csrf_header=settings.auth.cookie.csrf_header,
                csrf_value=settings.auth.cookie.csrf_value,
            ),
        ],
        # The proxy calls the embedded emulator in-process too (production uses aiohttp).
        proxy_upstream=AsgiUpstream(emulator.app, emulator.bearer_base_url),
    )
    return DevRuntime(app=app, signin=signin, emulator=emulator, realm_id=realm_id)
