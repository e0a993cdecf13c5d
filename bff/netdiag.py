"""Why a connection failed, in words an operator acts on, and addresses fit to print.

``cause(exc)`` walks an exception's chain (httpx, redis-py and the SDK wrap the socket error) and
names the first thing it recognises: refused, host not found, timed out, TLS. ``reason`` is a
short code from a fixed set (for metrics labels); ``text`` is for logs and probe lines. Neither
carries anything the exception did not say about the address, and URLs are printed with their
password replaced (``redacted_url``).
"""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

REASONS = ("refused", "dns", "timeout", "tls", "unreachable", "error")


@dataclass(frozen=True)
class Cause:
    reason: str  # one of REASONS
    text: str


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        yield node
        node = node.__cause__ or node.__context__


def cause(exc: BaseException) -> Cause:
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, ssl.SSLCertVerificationError):
            return Cause("tls", f"TLS certificate not accepted: {e.verify_message or e.reason}")
    for e in chain:
        if isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED:
            return Cause("refused", "connection refused (nothing listens there)")
        if isinstance(e, socket.gaierror):
            return Cause("dns", "host name not found (DNS)")
        if getattr(e, "errno", None) in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return Cause("unreachable", "no route to the host")
    tls_seen = any(isinstance(e, ssl.SSLError) for e in chain)
    for e in chain:
        if isinstance(e, ssl.SSLError) and not isinstance(e, (ssl.SSLWantReadError, ssl.SSLWantWriteError)):
            return Cause("tls", f"TLS handshake failed: {e.reason or type(e).__name__}")
    for e in chain:
        if isinstance(e, (TimeoutError, asyncio.TimeoutError)) or "Timeout" in type(e).__name__:
            if tls_seen:
                return Cause("timeout", "timed out in the TLS handshake (is that port speaking TLS?)")
            return Cause("timeout", "timed out")
    for e in chain:
        if isinstance(e, ConnectionResetError):
            return Cause("error", "connection reset by the peer")
    head = chain[0]
    text = str(head).strip() or type(head).__name__
    return Cause("error", f"{type(head).__name__}: {text}"[:300])


def redacted_url(url: str) -> str:
    """The URL with its password (if any) replaced by ``***``; the rest kept for diagnosis."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redis_address(url: str) -> str:
    """``host:port`` of a Redis URL with what else matters (db, TLS, user), never the password,
    and never the URL's own text (the whole URL is registered as a secret and would be redacted)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparsable Redis URL>"
    if parts.scheme == "unix":
        where = f"socket {parts.path}"
    else:
        host = parts.hostname or "localhost"
        where = f"{'[' + host + ']' if ':' in host else host}:{port or 6379}"
    notes = [f"db {parts.path.strip('/') or '0'}"] if parts.scheme != "unix" else []
    if parts.scheme == "rediss":
        notes.append("TLS")
    if parts.username:
        notes.append(f"user {parts.username}")
    if parts.password:
        notes.append("password set")
    return where + (f" ({', '.join(notes)})" if notes else "")
