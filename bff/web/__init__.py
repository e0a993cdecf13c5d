"""What the service serves to browsers: the client library always, the demo page in dev mode."""

from bff.web.routes import client_routes, demo_routes

__all__ = ["client_routes", "demo_routes"]
