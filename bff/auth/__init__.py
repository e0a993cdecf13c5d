"""Who is calling: authenticators for the team's own identity, tried in a configured order."""

from bff.auth.identity import Authenticator, Identity

__all__ = ["Authenticator", "Identity"]
