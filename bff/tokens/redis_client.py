"""A pooled redis.asyncio client from settings: redis://, rediss://, Sentinel or Cluster."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from bff import netdiag
from bff.settings import RedisSettings
from bff.tokens.cluster_client import SafeRedisCluster


def redis_target(s: RedisSettings) -> str:
    """Where Redis is, for log lines and probe results: host:port, db, TLS, user; no password."""
    if s.sentinels:
        return f"Redis via Sentinel master {s.sentinel_service!r} at {', '.join(s.sentinels)}"
    address = netdiag.redis_address(s.url.get_secret_value()) if s.url else "?"
    return f"Redis Cluster {address}" if s.cluster else f"Redis {address}"


def make_redis(s: RedisSettings, **extra: Any) -> Any:
    """``extra``: more client arguments (the start-up probe passes ``retry``)."""
    common: dict[str, Any] = {
        "socket_timeout": s.socket_timeout_sec,
        "socket_connect_timeout": s.connect_timeout_sec,
        "max_connections": s.max_connections,
        "health_check_interval": 30,
        **extra,
    }
    if s.sentinels:
        assert s.sentinel_service is not None
        hosts = []
        for hp in s.sentinels:
            host, _, port = hp.rpartition(":")
            hosts.append((host, int(port)))
        sentinel_kwargs: dict[str, Any] = {"socket_timeout": s.socket_timeout_sec}
        if s.sentinel_password is not None:
            sentinel_kwargs["password"] = s.sentinel_password.get_secret_value()
        master_kwargs = dict(common)
        if s.url is not None:
            # With Sentinel the URL only contributes credentials/db for the master.
            from redis.asyncio.connection import parse_url

            parsed = parse_url(s.url.get_secret_value())
            for k in ("password", "username", "db"):
                if k in parsed:
                    master_kwargs[k] = parsed[k]
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            hosts, sentinel_kwargs=sentinel_kwargs, socket_timeout=s.socket_timeout_sec
        )
        return sentinel.master_for(s.sentinel_service, **master_kwargs)
    assert s.url is not None
    url = s.url.get_secret_value()
    if s.cluster:
        return SafeRedisCluster.from_url(
            url, socket_timeout=s.socket_timeout_sec, socket_connect_timeout=s.connect_timeout_sec, **extra
        )
    return Redis.from_url(url, **common)
