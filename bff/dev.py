"""``vluna-bff dev``: the service, a local Vluna emulator and a fake sign-in, in one process.

The dev signing key is generated at start and exists only in memory; its public half is trusted
only by an app built here. ``/dev/login?user=alice&org=acme`` mints a token for a demo user,
sets it as the session cookie and returns it for ``Authorization: Bearer`` use.
"""

from __future__ import annotations

import errno
import logging
import re
import secrets
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from litestar import Litestar, Request, Response, get
from litestar.datastructures import Cookie
from litestar.params import FromQuery
from litestar.types import ControllerRouterHandler
from pydantic import SecretStr

from bff.auth.jwks import StaticKeySource, VerificationKey
from bff.errors import BadRequest
from bff.proxy.upstream import AsgiUpstream
from bff.settings import DevSettings, Settings
from bff.vluna import PropagatingTransport, create_vluna_client

if TYPE_CHECKING:
    from vlunaai.testing import VlunaEmulator

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
    emulator: VlunaEmulator
    realm_id: str
    base_url: str  # where the dev server is reached (the emulator's hosted pages live there too)


def dev_base_url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def create_dev_app(settings: Settings, *, base_url: str | None = None) -> DevRuntime:
    """The BFF wired to an in-process emulator (no network hop) and the dev sign-in.

    ``base_url`` is where the dev server answers (default: ``server.host`` and ``server.port``):
    the emulator's checkout and portal ``launch_url``s point there, and ``GET /vluna/token``
    names its ``/api/v1`` as the API base, since the dev port serves the emulator's API too."""
    from vlunaai.testing import VlunaEmulator

    from bff.app import create_app
    from bff.dev_emulator import emulator_routes
    from bff.web import demo_routes

    public = (base_url or dev_base_url(settings.server.host, settings.server.port)).rstrip("/")
    # No controls: nothing on the dev port may reset or fault the emulator (the in-process
    # handle, `runtime.emulator`, still can).
    emulator = VlunaEmulator(controls_enabled=False, public_url=public)
    realm_id = emulator.realm_id
    settings = settings.model_copy(
        update={"vluna": settings.vluna.model_copy(update={"api_base_url": f"{public}/api/v1"})}
    )
    signin = DevSignIn(settings.dev)
    # The app's one Vluna client (issuer and readiness) signs for the emulator's realm and key,
    # in process, with the same request-id and traceparent propagation as the production path.
    vluna = create_vluna_client(
        settings.vluna.model_copy(
            update={
                "base_url": emulator.service_base_url,
                "realm_id": realm_id,
                "service_key_id": emulator.service_key_id,
                "service_key_secret": SecretStr(emulator.service_key_secret),
            }
        ),
        transport=PropagatingTransport(emulator.transport()),
    )
    app = create_app(
        settings,
        vluna=vluna,
        dev_keys=signin.key_source,
        realm_id=realm_id,
        extra_routes=[
            *signin.routes(settings.auth.cookie.name, settings.auth.cookie.csrf_header),
            *demo_routes(
                cookie_name=settings.auth.cookie.name,
                csrf_header=settings.auth.cookie.csrf_header,
                csrf_value=settings.auth.cookie.csrf_value,
            ),
            *emulator_routes(emulator),
        ],
        # The proxy calls the embedded emulator in-process too (production uses bff/http1/).
        proxy_upstream=AsgiUpstream(emulator.app, emulator.bearer_base_url),
    )
    return DevRuntime(app=app, signin=signin, emulator=emulator, realm_id=realm_id, base_url=public)


def bind(host: str, port: int) -> socket.socket:
    """The dev server's listening socket, bound before anything is announced.

    Raises ``DevBindError`` with one line naming ``--port`` when the port is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted connections.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise DevBindError(
                f"vluna-bff dev: {host}:{port} is already in use; choose another port with --port "
                f"(e.g. --port {port + 1 if port else 8081}, or --port 0 for any free one)"
            ) from None
        raise DevBindError(
            f"vluna-bff dev: cannot listen on {host}:{port} ({exc.strerror}); choose another with --port"
        ) from None
    return sock


class DevBindError(Exception):
    """The dev server cannot listen where asked (the message is the one line to show)."""


def banner(runtime: DevRuntime, cache_backend: str) -> str:
    base = runtime.base_url
    emu = runtime.emulator
    return "\n".join(
        [
            f"vluna-bff dev listening on {base} (emulated Vluna realm {runtime.realm_id!r}, "
            f"cache: {cache_backend})",
            f"  demo page:  {base}/  (sign in, watch the token renew, list the catalog, check out)",
            f"  sign in:    curl -s '{base}/dev/login?user=alice&org=acme'",
            f"  token:      curl -s -H 'Authorization: Bearer <token>' {base}/vluna/token",
            f"  sign out:   curl -s -X DELETE -H 'Authorization: Bearer <token>' {base}/vluna/token",
            f"  Vluna API:  {base}/api/v1 (Bearer <access_token from /vluna/token>) and {base}/mgt/v1",
            "  the embedded emulator, for the SDK and apps that call Vluna directly:",
            f"export VLUNA_BEARER_BASE_URL={base}/api/v1",
            f"export VLUNA_SERVICE_BASE_URL={base}/mgt/v1",
            f"export VLUNA_REALM_ID={runtime.realm_id}",
            f"export VLUNA_SERVICE_KEY_ID={emu.service_key_id}",
            # The emulator's own throwaway key, made for this process: useless anywhere else.
            f"export VLUNA_SERVICE_KEY_SECRET={emu.service_key_secret}",
        ]
    )
