"""Imports point down: the service's layers, read from the source (every import statement,
including those inside functions and under TYPE_CHECKING).

    app, cli, server, dev, routes/, web/, openapi     the top: wiring and HTTP surfaces
    observability/                                     how telemetry is exposed (middleware, probes)
    proxy/, tokens/, auth/, principals, vluna, ...     the domain
    http1/                                             the HTTP/1.1 client (proxy and vluna use it)
    telemetry/, errors, settings, stats                the bottom
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

BFF = Path(__file__).resolve().parents[2] / "bff"

TOP = ("bff.app", "bff.cli", "bff.server", "bff.dev", "bff.routes", "bff.web", "bff.openapi")
OBSERVABILITY = ("bff.observability",)
DOMAIN = (
    "bff.asgi_route",
    "bff.http1",
    "bff.tokens",
    "bff.proxy",
    "bff.auth",
    "bff.principals",
    "bff.vluna",
    "bff.hooks",
    "bff.errors",
    "bff.telemetry",
    "bff.settings",
    "bff.stats",
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(BFF.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def bff_imports(path: Path) -> set[str]:
    """Every bff module this file imports (``from bff.x import y`` counts as bff.x and bff.x.y)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("bff"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("bff"):
            assert node.module is not None
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


GRAPH = {module_name(p): bff_imports(p) for p in sorted(BFF.rglob("*.py"))}


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def all_but(*allowed: str) -> tuple[str, ...]:
    """Every bff module outside ``allowed`` (the ``bff`` package itself aside)."""
    return tuple(m for m in GRAPH if m != "bff" and not within(m, allowed))


def offenders(sources: tuple[str, ...], targets: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{mod} -> {imp}"
        for mod, imports in GRAPH.items()
        if within(mod, sources)
        for imp in imports
        if within(imp, targets) and imp in GRAPH
    )


def test_the_graph_is_read() -> None:
    # The rules below would pass on an empty graph: make sure they see the real imports.
    assert "bff.tokens.broker" in GRAPH and "bff.principals" in GRAPH["bff.tokens.broker"]
    assert within("bff.proxy.service", DOMAIN) and not within("bff.proxys", DOMAIN)


@pytest.mark.parametrize(
    ("sources", "targets", "rule"),
    [
        (DOMAIN, TOP + OBSERVABILITY, "settings and the domain never import the top or observability/"),
        (("bff.proxy",), ("bff.routes",), "proxy/ does not import routes/"),
        (("bff.tokens",), ("bff.observability",), "tokens/ does not import observability/"),
        (OBSERVABILITY, ("bff.tokens",), "observability/ does not import tokens/"),
        (OBSERVABILITY, TOP, "observability/ does not import the top"),
        (("bff.settings",), all_but("bff.settings"), "settings import no bff module"),
        (("bff.errors",), all_but("bff.errors"), "errors import no bff module"),
        (("bff.http1",), all_but("bff.http1"), "http1/ (the HTTP client) imports no other bff module"),
        (
            ("bff.telemetry",),
            all_but("bff.telemetry", "bff.settings", "bff.stats"),
            "telemetry/ imports only settings and stats",
        ),
    ],
)
def test_imports_point_down(sources: tuple[str, ...], targets: tuple[str, ...], rule: str) -> None:
    assert offenders(sources, targets) == [], rule


def test_principal_lives_in_principals() -> None:
    from bff import principals
    from bff.tokens import broker

    assert principals.Principal.__module__ == "bff.principals"
    assert "Principal" not in vars(broker) or vars(broker)["Principal"] is principals.Principal
