"""Install pinned npm packages for the tests into a cache directory, once, and return their
``node_modules``: a real OpenID Connect provider (``oidc-provider``) for the discovery and key
rotation tests, ``openapi-typescript`` and ``typescript`` for the typed-client test.

Usage: python3 scripts/npm_packages.py oidc-provider@9.13.3 [name@version ...]   (prints the path)

The versions are exact; ``npm install`` runs with ``--ignore-scripts`` into a temporary directory
under ``$XDG_CACHE_HOME/vluna-bff/npm`` (default ``~/.cache``) that is renamed into place when
complete, so concurrent test runs never see half an install. A missing ``npm`` or a failed install
raises with npm's own words: the tests fail, they never skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
CACHE = CACHE_ROOT / "vluna-bff" / "npm"


class NpmInstallError(RuntimeError):
    pass


def install(packages: Mapping[str, str], timeout: float = 600) -> Path:
    """``{"name": "exact version"}`` -> the ``node_modules`` directory holding them."""
    for name, version in packages.items():
        if not version or not version[0].isdigit() or any(c in version for c in "^~*<> "):
            raise NpmInstallError(f"{name}: pin an exact version, not {version!r}")
    key = "+".join(f"{n.replace('/', '_')}@{v}" for n, v in sorted(packages.items()))
    target = CACHE / key
    if (target / ".complete").is_file():
        return target / "node_modules"
    npm = shutil.which("npm")
    if npm is None:
        raise NpmInstallError("npm is not installed (apt-get install nodejs npm; `./run test` does it)")
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".install-", dir=CACHE))
    try:
        manifest = {"name": "vluna-bff-test-tools", "private": True, "dependencies": dict(packages)}
        (work / "package.json").write_text(json.dumps(manifest, indent=2))
        command = [npm, "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"]
        proc = subprocess.run(  # noqa: S603 (npm from PATH, pinned package names from the tests)
            command,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            words = proc.stderr.strip()[-2000:]
            raise NpmInstallError(f"npm install {key} failed ({proc.returncode}): {words}")
        (work / ".complete").write_text("")
        try:
            work.rename(target)
        except OSError:
            if not (target / ".complete").is_file():  # not a concurrent install that finished first
                raise
    finally:
        if work.exists():
            with contextlib.suppress(OSError):
                shutil.rmtree(work)
    return target / "node_modules"


def main(argv: list[str]) -> int:
    packages = dict(arg.rsplit("@", 1) for arg in argv)
    try:
        print(install(packages))
    except (NpmInstallError, subprocess.TimeoutExpired) as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
