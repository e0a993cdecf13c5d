"""The chart's monitoring objects, checked with the real tools.

- promtool (Debian's `prometheus` package; `./run test` installs it) validates the rendered
  PrometheusRule and runs the unit tests of tests/deploy/prometheus/alerts_test.yaml: every alert
  fires where it should and stays quiet where it should not.
- Every PromQL expression of the rules and of the Grafana dashboard is parsed (promql-parser), and
  every metric it names must appear in /metrics of a real `vluna-bff serve` after a flow: the
  artifacts cannot drift from what the service exports. The one exception is `up`, which
  Prometheus itself records for every scrape.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.emulator import Emulator, start_emulator
from tests.support.keys import UserKeys
from tests.support.processes import Proc
from tests.support.redis_servers import cleanup_prefix
from tests.support.service import bff_config, start_bff, write_config

from .helm_support import CHART, EXAMPLES, NAMESPACE, RELEASE, by_kind, one, render, template

ALERT_TESTS = Path(__file__).resolve().parent / "prometheus" / "alerts_test.yaml"
DASHBOARD = CHART / "dashboards" / "vluna-bff.json"
PRODUCTION = [EXAMPLES / "production.yaml"]
# Recorded by Prometheus itself for every target, not exported by the service.
PROMETHEUS_OWN = {"up"}
# Grafana's variables, replaced by something PromQL parses.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


@pytest.fixture(scope="session")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed: `./run test` installs it (Debian package `prometheus`)")
    return found


def rule_groups(helm: str, *sets: str) -> list[dict[str, Any]]:
    docs = render(helm, PRODUCTION, *sets)
    groups: list[dict[str, Any]] = one(docs, "PrometheusRule")["spec"]["groups"]
    return groups


def alerts(groups: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def write_rules(groups: list[dict[str, Any]], directory: Path) -> Path:
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def metric_names(expr: str) -> set[str]:
    """Names of every series selector in a PromQL expression (parsed, not pattern-matched)."""
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)
        for attr in ("lhs", "rhs", "expr", "args", "vector_selector", "param"):
            child = getattr(node, attr, None)
            for c in child if isinstance(child, list) else [child]:
                if c is not None:
                    walk(c)

    walk(promql_parser.parse(expr))
    return names


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*[a-z_]+\)", var["query"]["query"])
            assert m, var["query"]
            exprs.append(m.group(1))
    return exprs


# --- the PrometheusRule ---------------------------------------------------------------------------


def promtool_check(promtool: str, rules: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` of one rules file."""
    return subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60, check=False
    )


def test_rules_pass_promtool_check(helm: str, promtool: str, tmp_path: Path) -> None:
    groups = rule_groups(helm)
    proc = promtool_check(promtool, write_rules(groups, tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alerts(groups))} rules found" in proc.stdout


def test_promtool_would_catch_a_broken_rule(helm: str, promtool: str, tmp_path: Path) -> None:
    groups = rule_groups(helm)
    groups[0]["rules"][0]["expr"] = "sum by (pod (up)"
    proc = promtool_check(promtool, write_rules(groups, tmp_path))
    assert proc.returncode != 0


def promtool_test(promtool: str, rules_dir: Path) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` of the chart's alert tests against the rules written in `rules_dir`."""
    shutil.copy(ALERT_TESTS, rules_dir / "alerts_test.yaml")
    return subprocess.run(
        [promtool, "test", "rules", "alerts_test.yaml"],
        cwd=rules_dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_alert_passes_its_promtool_unit_tests(helm: str, promtool: str, tmp_path: Path) -> None:
    groups = rule_groups(helm)
    write_rules(groups, tmp_path)
    proc = promtool_test(promtool, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # Each alert has a case where it fires and one where it stays quiet.
    cases = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in cases:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == set(alerts(groups)), "alerts without a firing test (or tests of unknown alerts)"
    assert quiet == set(alerts(groups)), "alerts without a test where they must stay quiet"


def test_promtool_unit_tests_would_catch_a_wrong_threshold(helm: str, promtool: str, tmp_path: Path) -> None:
    # 10% of answers are 503 in the test; a 20% threshold must make that case fail.
    stricter = tmp_path / "threshold.yaml"
    stricter.write_text(yaml.safe_dump({"prometheusRule": {"thresholds": {"errorRatio": 0.2}}}))
    docs = render(helm, [*PRODUCTION, stricter])
    write_rules(one(docs, "PrometheusRule")["spec"]["groups"], tmp_path)
    proc = promtool_test(promtool, tmp_path)
    assert proc.returncode != 0
    assert "VlunaBffHighErrorRate" in proc.stdout + proc.stderr


def test_rule_values_disabled_labels_and_selector(helm: str) -> None:
    groups = rule_groups(
        helm,
        "prometheusRule.disabled={VlunaBffDegraded,VlunaBffTargetDown}",
        'prometheusRule.selector=service="bff"',
    )
    found = alerts(groups)
    assert "VlunaBffDegraded" not in found and "VlunaBffTargetDown" not in found
    assert "VlunaBffNotReady" in found
    for rule in found.values():
        assert rule["labels"]["team"] == "platform"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert 'service="bff"' in rule["expr"] and "shop-vluna-bff" not in rule["expr"]
    default = alerts(rule_groups(helm))
    for rule in default.values():
        assert f'job="{RELEASE}-vluna-bff",namespace="{NAMESPACE}"' in rule["expr"], rule["alert"]


def test_rules_and_dashboard_are_off_by_default(helm: str) -> None:
    docs = render(helm, [])
    assert not by_kind(docs, "PrometheusRule")
    assert [d["metadata"]["name"] for d in by_kind(docs, "ConfigMap")] == [f"{RELEASE}-vluna-bff"]


def test_a_bad_threshold_fails_the_schema(helm: str) -> None:
    proc = template(helm, [], "prometheusRule.thresholds.errorRatio=5", check=False)
    assert proc.returncode != 0 and "/prometheusRule/thresholds/errorRatio" in proc.stderr


# --- the dashboard --------------------------------------------------------------------------------


def test_dashboard_config_map_carries_the_dashboard(helm: str) -> None:
    docs = render(helm, PRODUCTION)
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Platform"}
    assert cm["metadata"]["namespace"] == NAMESPACE
    shipped = json.loads(cm["data"]["vluna-bff.json"])
    assert shipped == json.loads(DASHBOARD.read_text())
    moved = render(helm, PRODUCTION, "grafanaDashboard.namespace=monitoring")
    assert {d["metadata"]["namespace"] for d in by_kind(moved, "ConfigMap")} == {NAMESPACE, "monitoring"}


def test_dashboard_queries_parse_and_use_the_release_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "vluna-bff"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            metric_names(target["expr"])  # parses
            assert 'namespace="$namespace",job="$job"' in target["expr"], target["expr"]


# --- every metric named exists --------------------------------------------------------------------


@pytest.fixture(scope="module")
def scraped() -> Iterator[str]:
    """/metrics of a real `vluna-bff serve` after a sign-in, an issuance, proxied calls (one failing
    at Vluna) and a readiness check."""
    keys = UserKeys()
    emulator: Emulator = start_emulator()
    data = bff_config(emulator.url, keys.pem(), observability={"readiness": {"check_vluna": True}})
    cfg = write_config(data)
    bff: Proc | None = None
    try:
        bff = start_bff(cfg)
        auth = {"Authorization": f"Bearer {keys.token('metrics-user', org='metrics-org')}"}
        with httpx.Client(base_url=bff.url, timeout=30) as c:
            assert c.get("/vluna/token", headers=auth).status_code == 200
            assert c.get("/vluna/api/v1/catalog/products", headers=auth).status_code == 200
            emulator.fault("*", status=503, times=None)
            assert c.get("/vluna/api/v1/billing-state", headers=auth).status_code >= 500
            emulator.clear_faults()
            assert c.get("/vluna/token", headers={"Authorization": "Bearer a.b.c"}).status_code == 401
            assert c.get("/readyz").status_code == 200
            yield c.get("/metrics").text
    finally:
        if bff is not None:
            bff.stop()
        emulator.stop()
        cfg.unlink()
        cleanup_prefix(data["cache"]["key_prefix"])


def exported(text: str) -> set[str]:
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_every_metric_in_the_rules_and_the_dashboard_is_exported(helm: str, scraped: str) -> None:
    names = exported(scraped)
    used: dict[str, set[str]] = {}
    for rule in alerts(rule_groups(helm)).values():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, set()).add(rule["alert"])
    for expr in dashboard_queries(json.loads(DASHBOARD.read_text())):
        for name in metric_names(expr):
            used.setdefault(name, set()).add("dashboard")
    assert len(used) >= 10
    missing = {n: sorted(where) for n, where in used.items() if n not in names and n not in PROMETHEUS_OWN}
    assert not missing, f"used but not exported: {missing}"


def test_the_check_would_catch_a_metric_that_is_not_exported(scraped: str) -> None:
    assert "vluna_bff_http_requests_total" in exported(scraped)
    assert "vluna_bff_http_requests_totl" not in exported(scraped)
    assert metric_names('rate(vluna_bff_http_requests_totl{job="x"}[5m])') == {"vluna_bff_http_requests_totl"}


def test_exported_metrics_pass_promtool_lint(promtool: str, scraped: str) -> None:
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=scraped, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
