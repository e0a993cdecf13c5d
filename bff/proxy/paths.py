"""The allowlist: from a raw request path to one configured route, or a refusal.

The raw path (``scope["raw_path"]``, before any percent-decoding) is checked against a strict
character allowlist first, so that nothing an upstream server might decode or normalise
differently (``%2e%2e``, ``%2f``, ``\\``, ``;``, ``//``, ``.`` and ``..`` segments, control or
non-ASCII characters) ever gets as far as matching. Path parameters must then match the
configured id pattern, and the upstream path is rebuilt from the route's own template: nothing
the client sent is copied into it except those checked ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bff.errors import BadRequest, BffError, NotFound, UriTooLong
from bff.settings import ProxyRoute, ProxySettings

_SAFE_PATH = re.compile(r"^[A-Za-z0-9_.\-/~]*$")
_PARAM = re.compile(r"^\{([a-z_][a-z0-9_]*)\}$")


class PathRefused(BffError):
    """The path can never be forwarded: one of the three kinds below."""


class MalformedPath(PathRefused, BadRequest):
    code = "invalid_path"


class PathNotAllowed(PathRefused, NotFound):
    """Not on the allowlist."""


class PathTooLong(PathRefused, UriTooLong):
    code = "path_too_long"


@dataclass(frozen=True)
class CompiledRoute:
    route: ProxyRoute
    segments: tuple[str | None, ...]  # None: a parameter
    names: tuple[str, ...]
    upstream: tuple[tuple[str, bool], ...]  # (literal or param name, is_param)
    query: frozenset[str]

    def upstream_path(self, params: dict[str, str]) -> str:
        return "/" + "/".join(params[v] if is_param else v for v, is_param in self.upstream)


@dataclass(frozen=True)
class Match:
    route: CompiledRoute
    params: dict[str, str]

    @property
    def upstream_path(self) -> str:
        return self.route.upstream_path(self.params)


def _compile(route: ProxyRoute) -> CompiledRoute:
    segments: list[str | None] = []
    names: list[str] = []
    for seg in route.path[1:].split("/"):
        m = _PARAM.match(seg)
        if m:
            segments.append(None)
            names.append(m.group(1))
        else:
            segments.append(seg)
    upstream: list[tuple[str, bool]] = []
    for seg in (route.upstream_path or route.path)[1:].split("/"):
        m = _PARAM.match(seg)
        upstream.append((m.group(1), True) if m else (seg, False))
    return CompiledRoute(route, tuple(segments), tuple(names), tuple(upstream), frozenset(route.query))


class Allowlist:
    def __init__(self, settings: ProxySettings) -> None:
        self._max_len = settings.max_path_length
        self._id = re.compile(settings.id_pattern)
        self._routes: dict[tuple[str, int], list[CompiledRoute]] = {}
        for route in settings.routes:
            c = _compile(route)
            bucket = self._routes.setdefault((route.method, len(c.segments)), [])
            bucket.append(c)
            # Most literal segments first: /checkouts/{id} never shadows a literal sibling.
            bucket.sort(key=lambda r: -sum(s is not None for s in r.segments))

    def match(self, method: str, sub_path: str) -> Match:
        """``sub_path`` is the raw path below the proxy prefix, e.g. ``/checkouts/ck_1``."""
        if len(sub_path) > self._max_len:
            raise PathTooLong("the request path is too long")
        if not _SAFE_PATH.match(sub_path):
            raise MalformedPath("the request path contains characters that are not allowed")
        if not sub_path.startswith("/") or "//" in sub_path:
            raise MalformedPath("empty path segments are not allowed")
        segments = sub_path[1:].split("/")
        if any(s in (".", "..") for s in segments):
            raise MalformedPath("'.' and '..' path segments are not allowed")
        for candidate in self._routes.get((method, len(segments)), ()):
            params: dict[str, str] = {}
            for want, got in zip(candidate.segments, segments, strict=True):
                if want is None:
                    if not self._id.fullmatch(got):
                        break
                    params[candidate.names[len(params)]] = got
                elif want != got:
                    break
            else:
                return Match(candidate, params)
        raise PathNotAllowed("this call is not available through the proxy")
