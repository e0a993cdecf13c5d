"""The API proxy: ``/vluna/api/v1/{path}`` for browsers and mobile apps (see service.py and routes.py)."""
