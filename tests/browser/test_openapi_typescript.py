"""docs/frontend.md, "Typed clients from the OpenAPI document", done as written: `vluna-bff openapi`
prints the document, openapi-typescript (npm, pinned; installed by scripts/npm_packages.py, a failed
install fails the test) turns it into types, and the TypeScript compiler (`tsc --strict`) accepts
the documented snippet and refuses code that misreads the token body."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scripts import npm_packages
from tests.support.processes import REPO

TOOLS = {"openapi-typescript": "7.13.0", "typescript": "5.9.3"}

USAGE = """
import type { components, paths } from "./vluna-bff";

type Token = components["schemas"]["TokenBody"];
type Products =
  paths["/vluna/api/v1/catalog/products"]["get"]["responses"]["200"]["content"]["application/json"];

const r = await fetch("/vluna/token", { credentials: "include", headers: { "X-Vluna-CSRF": "1" } });
const token: Token = await r.json();
const left: number = token.expires_in;
const scopes: ("checkout" | "portal")[] = token.scopes;
const products: Products = {};
console.log(left, scopes, products, token.realm_id);
"""

MISREAD = """
import type { components } from "./vluna-bff";

declare const token: components["schemas"]["TokenBody"];
const left: string = token.expires_in;
const scope: "admin" = token.scopes[0];
console.log(left, scope);
"""


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), cwd=cwd, capture_output=True, text=True, timeout=180, check=False, env=env
    )


def test_typed_client_from_the_document(tmp_path: Path) -> None:
    modules = npm_packages.install(TOOLS)
    document = tmp_path / "vluna-bff.openapi.json"
    # As the guide says: the document of the settings file alone (no secrets, no Redis).
    config = REPO / "config" / "bff.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLUNA_BFF")}
    proc = run(
        sys.executable, "-m", "bff.cli", "openapi", "-c", str(config), "-o", str(document), cwd=REPO, env=env
    )
    assert proc.returncode == 0, proc.stderr

    proc = run(
        "node",
        str(modules / "openapi-typescript" / "bin" / "cli.js"),
        str(document),
        "-o",
        "vluna-bff.d.ts",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    types = (tmp_path / "vluna-bff.d.ts").read_text()
    assert '"/vluna/token"' in types and "TokenBody" in types and '"/vluna/api/v1/checkouts"' in types

    tsc = [
        "node",
        str(modules / "typescript" / "bin" / "tsc"),
        "--noEmit",
        "--strict",
        "--target",
        "es2022",
        "--module",
        "es2022",
        "--lib",
        "es2022,dom",
        "--moduleDetection",
        "force",
    ]
    (tmp_path / "usage.ts").write_text(USAGE)
    proc = run(*tsc, "usage.ts", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    (tmp_path / "misread.ts").write_text(MISREAD)
    proc = run(*tsc, "misread.ts", cwd=tmp_path)
    assert proc.returncode != 0
    assert "misread.ts(5,7): error TS2322" in proc.stdout, proc.stdout
    assert "misread.ts(6,7): error TS2322" in proc.stdout, proc.stdout
