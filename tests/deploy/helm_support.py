"""Rendering the Helm chart (helm 4 from scripts/get_helm.py) for the deploy tests: the chart, its
example values files, and helpers to pick objects out of the rendered manifests."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from tests.support.processes import REPO

CHART = REPO / "helm" / "vluna-bff"
EXAMPLES = CHART / "examples"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the validator ships.
K8S_VERSIONS = ("1.27", kubernetes_validate.utils.latest_version())
NAMESPACE = "bff"
RELEASE = "shop"

# values file -> description; None is the chart's own values.yaml
VALUE_SETS = {
    "defaults": [],
    "minimal": [EXAMPLES / "minimal.yaml"],
    "production": [EXAMPLES / "production.yaml"],
}
# The secrets of examples/minimal.yaml (the encryption keys are random-looking: weak ones are refused).
SENTINELS = (
    "SENTINEL-",
    "TQSBMBs5HdG3MhJ/F/c+6+bX7ja2orZUwX+DpnUVbak=",
    "2BpMj8etV2TPkwvfYM5IPRbNnr4jQWpXmxQEvRYav8E=",
)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys; Kubernetes tooling rejects them. So do we."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        assert key not in seen, f"duplicate key {key!r} at line {key_node.start_mark.line + 1}"
        seen.add(key)
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def template(
    helm: str, values: list[Path], *sets: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for f in values:
        cmd += ["-f", str(f)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def render(helm: str, values: list[Path], *sets: str) -> list[dict[str, Any]]:
    out = template(helm, values, *sets).stdout
    docs = [d for d in yaml.load_all(out, Loader=_UniqueKeyLoader) if d]
    assert docs
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def settings_config_map(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The ConfigMap holding bff.yaml (the dashboard has a ConfigMap of its own)."""
    (found,) = [d for d in by_kind(docs, "ConfigMap") if "bff.yaml" in d.get("data", {})]
    return found


def app_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment")["spec"]["template"]["spec"]
    return spec
