"""JWT signing keys for a service under test: an RSA key the service trusts (PEM in its
configuration) and user tokens for any number of users."""

from __future__ import annotations

import time
from typing import Any

ISSUER = "https://id.bench.test/"
AUDIENCE = "vluna-bff-bench"


class UserKeys:
    """An RSA key the service trusts (PEM in its config) and JWTs for any number of users."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def pem(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return (
            self.key.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            .decode()
        )

    def token(self, sub: str, org: str | None = None, exp_in: int = 3600, **claims: Any) -> str:
        import jwt

        now = int(time.time())
        body = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + exp_in, **claims}
        if org is not None:
            body["org_id"] = org
        return jwt.encode(body, self.key, algorithm="RS256")
