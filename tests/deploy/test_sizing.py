"""One sizing story: the workers per container, the memory per worker and the chart's resources
agree with each other and with the measured figures (docs/benchmarks.json, written by
`python -m bench`). A re-run of the benchmarks that outgrows the chart's memory fails here."""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

from bff.settings import CacheSettings, ServerSettings
from tests.support.processes import REPO

from .helm_support import CHART, EXAMPLES

OPERATIONS = REPO / "docs" / "operations.md"
# Bytes per in-process cache entry, as measured (docs/operations.md, "What Redis holds").
ENTRY_BYTES = 1_200


def mebibytes(quantity: str) -> float:
    m = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    assert m, quantity
    return int(m.group(1)) * (1024 if m.group(2) == "Gi" else 1)


def recommended() -> dict[str, Any]:
    """The operations guide's recommendation per worker process."""
    m = re.search(
        r"\| recommended `requests.cpu`, `requests.memory`, `limits.memory` \| "
        r"(\S+), (\S+), (\S+) per worker",
        OPERATIONS.read_text(),
    )
    assert m, "docs/operations.md lost its sizing recommendation"
    return {"requests": {"cpu": m.group(1), "memory": m.group(2)}, "limits": {"memory": m.group(3)}}


def peak_rss_per_process() -> float:
    rows = json.loads((REPO / "docs" / "benchmarks.json").read_text())["rows"]
    service = [r for r in rows if r["scenario"] in {"token", "workers", "cold", "proxy"}]
    peaks = [r["peak_rss_mb"] for r in service if "(reference)" not in r["name"]]
    assert len(peaks) >= 4, "the benchmark figures lost the service's rows"
    return float(max(peaks))


def test_one_worker_per_container_everywhere() -> None:
    assert ServerSettings().workers == 1
    documented = yaml.safe_load((REPO / "config" / "bff.yaml").read_text())
    assert documented["server"]["workers"] == 1
    for values in [CHART / "values.yaml", *sorted(EXAMPLES.glob("*.yaml"))]:
        config = yaml.safe_load(values.read_text()).get("config") or {}
        assert (config.get("server") or {}).get("workers", 1) == 1, values
    for doc in ("README.md", "bff/README.md", "docs/operations.md", "docs/frontend.md"):
        for n in re.findall(r"vluna-bff serve[^\n`]*--workers (\d+)", (REPO / doc).read_text()):
            assert n == "1", f"{doc} runs `vluna-bff serve --workers {n}`"


def test_chart_resources_are_the_recommendation_for_one_worker() -> None:
    want = recommended()
    assert yaml.safe_load((CHART / "values.yaml").read_text())["resources"] == want
    for example in sorted(EXAMPLES.glob("*.yaml")):
        resources = yaml.safe_load(example.read_text()).get("resources")
        assert resources in (None, want), f"{example.name} sizes the pod differently"


def test_recommendation_covers_the_measured_peak() -> None:
    want = recommended()
    request = mebibytes(want["requests"]["memory"])
    limit = mebibytes(want["limits"]["memory"])
    # Both in-process caches at their bounds: the fallback and the first level (cache.l1).
    c = CacheSettings()
    cache = (c.memory_max_entries + c.l1.max_entries) * ENTRY_BYTES / 2**20
    peak = peak_rss_per_process()
    assert request >= peak + cache, (
        f"request {request} MiB < peak {peak} MiB + in-process caches {cache:.0f} MiB"
    )
    assert limit >= 2 * request, "the limit leaves no room for a burst"
    stated = re.search(r"(\d+) MiB peak per process", OPERATIONS.read_text())
    assert stated and int(stated.group(1)) == round(peak), "operations.md: not the measured peak"
