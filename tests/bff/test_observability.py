"""Probes, metrics, request ids, redacted JSON logs and tracing, in-process (app in the test's loop,
the real SDK against the Vluna emulator where Vluna matters)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from vlunaai.testing import VlunaEmulator

from bff.observability.logging import JsonFormatter, redact, register_secret
from bff.settings import SettingsError
from bff.telemetry import tracing
from bff.vluna_probe import PROBE_OPERATION
from tests.support.redis_servers import SHARED_REDIS_URL as REDIS_URL
from tests.support.redis_servers import dead_redis_url

from .observability_support import RecordingTransport, emulator_client, emulator_vluna, sample, series_labels
from .support import ENC_KEY_1, HMAC_KEY, FakeIssuer, Keys, client_for, make_settings

TOKEN_OP = "issue_platform_token"
PROBE_OP = PROBE_OPERATION


@pytest.fixture
async def emulator() -> AsyncIterator[VlunaEmulator]:
    async with VlunaEmulator() as emu:
        yield emu


def auth(keys: Keys, user: str = "alice", org: str = "acme") -> dict[str, str]:
    return {"Authorization": "Bearer " + keys.token(user, org_id=org)}


async def metrics_text(client: Any) -> str:
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return str(r.text)


# -- probes ---------------------------------------------------------------------------------------


async def test_healthz_needs_no_auth_and_readyz_checks_vluna_with_a_signed_call(
    keys: Keys, emulator: VlunaEmulator
) -> None:
    settings = make_settings(keys, vluna=emulator_vluna(emulator))
    async with client_for(settings, None, vluna=emulator_client(emulator)) as client:
        r = await client.get("/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        r = await client.get("/readyz")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "ready" and body["cached"] is False
        assert body["checks"] == {
            "config": "ok",
            "redis": "not_used",
            "redis_breaker": "not_used",
            "vluna": "ok",
            "auth": "ok",
        }
        assert "reasons" not in body
        assert emulator.calls(PROBE_OP) == 1
        # Cached briefly: a second probe does not reach Vluna.
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json()["cached"] is True
        assert emulator.calls(PROBE_OP) == 1


@pytest.mark.parametrize(("policy", "expected"), [("fail", 503), ("degraded", 200)])
async def test_readyz_when_vluna_is_down_follows_the_policy(
    keys: Keys, emulator: VlunaEmulator, policy: str, expected: int
) -> None:
    settings = make_settings(
        keys,
        vluna=emulator_vluna(emulator),
        observability={"readiness": {"cache_ttl_sec": 0, "vluna_down": policy}},
    )
    emulator.inject_fault(PROBE_OP, status=503, retry_after=0, times=None)
    async with client_for(settings, None, vluna=emulator_client(emulator)) as client:
        r = await client.get("/readyz")
        assert r.status_code == expected, r.text
        assert r.json()["checks"]["vluna"] == ("unreachable" if policy == "fail" else "degraded")
        emulator.clear_faults()
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json()["checks"]["vluna"] == "ok"


async def test_readyz_fails_on_a_rejected_service_key_whatever_the_policy(
    keys: Keys, emulator: VlunaEmulator
) -> None:
    import base64

    wrong = base64.b64encode(b"w" * 32).decode()
    settings = make_settings(
        keys, vluna=emulator_vluna(emulator), observability={"readiness": {"vluna_down": "degraded"}}
    )
    async with client_for(settings, None, vluna=emulator_client(emulator, secret=wrong)) as client:
        r = await client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"]["vluna"] == "rejected" and r.json()["status"] == "not_ready"
        assert (
            r.json()["reasons"]["vluna"]
            == "signed list_feature_families: HTTP 401 AUTH.INVALID_SERVICE_SIGNATURE"
        )


@pytest.mark.parametrize(("policy", "expected"), [("degraded", 200), ("fail", 503)])
async def test_readyz_when_redis_is_down_follows_the_policy(
    keys: Keys, prefix: str, policy: str, expected: int
) -> None:
    settings = make_settings(
        keys,
        cache={"backend": "redis", "key_prefix": prefix, "redis": {"url": dead_redis_url()}},
        observability={"readiness": {"check_vluna": False, "redis_down": policy}},
    )
    async with client_for(settings, FakeIssuer()) as client:
        r = await client.get("/readyz")
        assert r.status_code == expected, r.text
        assert r.json()["checks"] == {
            "config": "ok",
            "redis": "degraded" if policy == "degraded" else "down",
            # No command has failed yet: the breaker has not been asked.
            "redis_breaker": "closed",
            "vluna": "skipped",
            "auth": "ok",
        }
        # where and why, never the password
        why = r.json()["reasons"]["redis"]
        assert why.startswith("Redis 127.0.0.1:") and " (db 0): PING: " in why, why
        # Degraded or not, tokens are still served from the in-process cache.
        r = await client.get("/vluna/token", headers=auth(keys))
        assert r.status_code == 200
        # The token request found Redis down: the breaker is open, reported at once (not after
        # the readiness cache's TTL), with the same policy as the redis check.
        r = await client.get("/readyz")
        assert r.status_code == expected, r.text
        assert r.json()["checks"]["redis_breaker"] == "open" and r.json()["cached"] is False
        assert r.json()["reasons"]["redis_breaker"].startswith("Redis 127.0.0.1:")


async def test_readyz_with_redis_up(keys: Keys, prefix: str) -> None:
    settings = make_settings(
        keys,
        cache={"backend": "redis", "key_prefix": prefix, "redis": {"url": REDIS_URL}},
        observability={"readiness": {"check_vluna": False}},
    )
    async with client_for(settings, FakeIssuer()) as client:
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json()["checks"]["redis"] == "ok"


# -- metrics --------------------------------------------------------------------------------------


async def test_request_metrics_use_the_route_template_and_no_identities(keys: Keys) -> None:
    settings = make_settings(keys)
    async with client_for(settings, FakeIssuer()) as client:
        before = await metrics_text(client)
        for user in ("u-1001", "u-1002", "u-1003"):
            assert (await client.get("/vluna/token", headers=auth(keys, user))).status_code == 200
        assert (await client.get("/vluna/token")).status_code == 401
        assert (await client.get("/vluna/token/u-1001/secret-id")).status_code == 404
        after = await metrics_text(client)

    def delta(labels: dict[str, str]) -> float:
        name = "vluna_bff_http_requests_total"
        return sample(after, name, labels) - sample(before, name, labels)

    assert delta({"method": "GET", "route": "/vluna/token", "status": "200"}) == 3
    assert delta({"method": "GET", "route": "/vluna/token", "status": "401"}) == 1
    assert delta({"method": "GET", "route": "<unmatched>", "status": "404"}) == 1
    assert sample(after, "vluna_bff_http_request_duration_seconds_count", {"route": "/vluna/token"}) >= 4
    for labels in series_labels(after):
        for value in labels.values():
            assert "u-100" not in value and "acme" not in value and "secret-id" not in value
    assert "u-1001" not in after and "org:acme" not in after


async def test_token_cache_metrics(keys: Keys) -> None:
    from .support import FakeClock

    clock = FakeClock()
    issuer = FakeIssuer(ttl=600)
    settings = make_settings(keys, tokens={"refresh_ahead_ratio": 0.5})
    async with client_for(settings, issuer, clock=clock) as client:
        before = await metrics_text(client)
        issuer.gate = asyncio.Event()
        # Two concurrent misses for one user: one issuance, the other waits for it.
        first = asyncio.create_task(client.get("/vluna/token", headers=auth(keys, "cm-1")))
        second = asyncio.create_task(client.get("/vluna/token", headers=auth(keys, "cm-1")))
        while len(issuer.calls) < 1 or sample(  # noqa: ASYNC110
            await metrics_text(client), "vluna_bff_token_cache_events_total", {"event": "single_flight_wait"}
        ) <= sample(before, "vluna_bff_token_cache_events_total", {"event": "single_flight_wait"}):
            await asyncio.sleep(0.005)
        issuer.gate.set()
        assert (await first).status_code == 200 and (await second).status_code == 200
        assert len(issuer.calls) == 1
        assert (await client.get("/vluna/token", headers=auth(keys, "cm-1"))).status_code == 200  # hit
        clock.advance(400)  # past the refresh point: served, renewed in the background
        assert (await client.get("/vluna/token", headers=auth(keys, "cm-1"))).status_code == 200
        await client.app.state.services.broker.drain()
        after = await metrics_text(client)

    def delta(name: str, labels: dict[str, str]) -> float:
        return sample(after, name, labels) - sample(before, name, labels)

    ev = "vluna_bff_token_cache_events_total"
    assert delta(ev, {"event": "miss"}) == 2
    assert delta(ev, {"event": "single_flight_wait"}) == 1
    assert delta(ev, {"event": "hit"}) == 2
    assert delta(ev, {"event": "stale_served"}) == 1
    assert delta(ev, {"event": "refresh_ahead"}) == 1
    assert delta("vluna_bff_token_refreshes_total", {"outcome": "ok"}) == 1
    up = "vluna_bff_upstream_requests_total"
    assert delta(up, {"operation": TOKEN_OP, "outcome": "ok"}) == 2
    assert delta("vluna_bff_upstream_request_duration_seconds_count", {"operation": TOKEN_OP}) == 2


async def test_upstream_error_and_redis_fallback_metrics(keys: Keys, prefix: str) -> None:
    issuer = FakeIssuer()
    settings = make_settings(
        keys,
        cache={
            "backend": "redis",
            "key_prefix": prefix,
            "redis": {"url": dead_redis_url(), "probe_interval_sec": 60},
        },
    )
    async with client_for(settings, issuer) as client:
        before = await metrics_text(client)
        assert (await client.get("/vluna/token", headers=auth(keys, "re-1"))).status_code == 200
        issuer.fail = True
        assert (await client.get("/vluna/token", headers=auth(keys, "re-2"))).status_code == 503
        after = await metrics_text(client)

    def delta(name: str, labels: dict[str, str] | None = None) -> float:
        return sample(after, name, labels) - sample(before, name, labels)

    assert delta("vluna_bff_redis_errors_total") >= 1
    assert delta("vluna_bff_redis_fallbacks_total") >= 2
    assert delta("vluna_bff_upstream_requests_total", {"operation": TOKEN_OP, "outcome": "unavailable"}) == 1
    assert delta("vluna_bff_upstream_errors_total", {"operation": TOKEN_OP, "kind": "unavailable"}) == 1
    assert delta("vluna_bff_events_total", {"event": "redis_errors"}) >= 1
    assert sample(after, "vluna_bff_breaker_state", {"breaker": "redis"}) == 2


async def test_breaker_state_gauge() -> None:
    from prometheus_client import REGISTRY, generate_latest

    from bff.telemetry.metrics import PROXY_BREAKER, MeteredStats, set_breaker_state

    stats = MeteredStats()
    stats.inc("proxy.breaker.open")
    text = generate_latest(REGISTRY).decode()
    assert sample(text, "vluna_bff_breaker_state", {"breaker": PROXY_BREAKER}) == 2
    stats.inc("proxy.breaker.closed")
    text = generate_latest(REGISTRY).decode()
    assert sample(text, "vluna_bff_breaker_state", {"breaker": PROXY_BREAKER}) == 0
    assert stats.get("proxy.breaker.open") == 1
    set_breaker_state("vluna-api", "open")
    text = generate_latest(REGISTRY).decode()
    assert sample(text, "vluna_bff_breaker_state", {"breaker": "vluna-api"}) == 2
    set_breaker_state("vluna-api", "closed")
    text = generate_latest(REGISTRY).decode()
    assert sample(text, "vluna_bff_breaker_state", {"breaker": "vluna-api"}) == 0


async def test_metrics_can_move_off_the_main_port(keys: Keys) -> None:
    settings = make_settings(keys, observability={"metrics": {"port": 9464}})
    async with client_for(settings, FakeIssuer()) as client:
        assert (await client.get("/metrics")).status_code == 404
        assert (await client.get("/healthz")).status_code == 200
    with pytest.raises(SettingsError, match=r"observability\.metrics\.port"):
        make_settings(keys, observability={"metrics": {"port": 8080}}, server={"port": 8080})


# -- request ids ----------------------------------------------------------------------------------


async def test_request_id_is_kept_or_made_returned_and_sent_to_vluna(
    keys: Keys, emulator: VlunaEmulator
) -> None:
    record = RecordingTransport(emulator.transport())
    settings = make_settings(keys, vluna=emulator_vluna(emulator))
    async with client_for(settings, None, vluna=emulator_client(emulator, record=record)) as client:
        r = await client.get("/vluna/token", headers={**auth(keys, "rid-1"), "X-Request-Id": "req-abc.123"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "req-abc.123"
        issue = [h for path, h in record.seen if path.endswith("/token/issue")]
        assert issue and issue[-1]["x-request-id"] == "req-abc.123"
        assert issue[-1]["authorization"]  # still signed (the emulator accepted it: 200)

        for bad in (b"has space", b"x" * 129, b"inject\xc3\xa9", b"a\tb", b""):
            r = await client.get("/healthz", headers=[(b"X-Request-Id", bad)])
            rid = r.headers["x-request-id"]
            assert rid != bad.decode("latin-1") and len(rid) == 32 and rid.isalnum()
        r1, r2 = await client.get("/healthz"), await client.get("/healthz")
        assert r1.headers["x-request-id"] != r2.headers["x-request-id"]


# -- logs -----------------------------------------------------------------------------------------


async def test_debug_logs_of_a_full_flow_hold_no_secret_key_or_token(
    keys: Keys, emulator: VlunaEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.setLevel(logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    tokens: list[str] = []
    sign_in = keys.token("log-user", org_id="log-org")
    settings = make_settings(keys, vluna=emulator_vluna(emulator))
    try:
        async with client_for(settings, None, vluna=emulator_client(emulator)) as client:
            for scopes in ("checkout", "portal", "checkout,portal"):
                r = await client.get(
                    f"/vluna/token?scopes={scopes}",
                    headers={"Authorization": "Bearer " + sign_in, "X-Request-Id": f"flow-{len(tokens)}"},
                )
                assert r.status_code == 200
                tokens.append(r.json()["access_token"])
            assert (await client.get("/readyz")).status_code == 200
            emulator.inject_fault(TOKEN_OP, status=500, times=None)
            r = await client.get("/vluna/token", headers=auth(keys, "log-user-2", "log-org"))
            assert r.status_code == 503
            r = await client.delete("/vluna/token", headers={"Authorization": "Bearer " + sign_in})
            assert r.status_code == 204
            await client.get("/vluna/token", headers={"Authorization": "Bearer " + sign_in + "x"})
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    output = stream.getvalue()
    raw = "\n".join(f"{rec.getMessage()} {rec.__dict__}" for rec in caplog.records)
    enc_key = ENC_KEY_1.split(":", 1)[1]
    forbidden = [emulator.service_key_secret, enc_key, HMAC_KEY, sign_in, *tokens]
    for secret in forbidden:
        assert secret not in output
        assert secret not in raw
    for word in ("log-user", "log-org"):
        assert word not in output
    lines = [json.loads(line) for line in output.splitlines()]
    access = [x for x in lines if x["logger"] == "bff.access" and x["route"] == "/vluna/token"]
    assert len(access) >= 5
    first = next(x for x in access if x["request_id"] == "flow-0")
    assert first["status"] == 200 and first["method"] == "GET" and first["duration_ms"] >= 0
    assert first["principal_hash"] and first["user_hash"] and first["principal_hash"] != first["user_hash"]
    # Same user, same hashes: lines of one user can be correlated.
    assert {x["user_hash"] for x in access if x["request_id"].startswith("flow-")} == {first["user_hash"]}
    # The DEBUG-level lines of the SDK/httpx/the broker were captured too.
    assert any(x["level"] == "debug" for x in lines)


def test_redaction_catches_credentials_by_shape_and_by_value() -> None:
    register_secret("s3cr3t-value-for-redaction-test")
    text = redact(
        "a s3cr3t-value-for-redaction-test b Authorization: Bearer abc.def-ghi_jkl "
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl access_token=tok123456 "
        "redis://user:p4ssw0rd@redis:6379/0"
    )
    for leaked in ("s3cr3t-value", "abc.def-ghi_jkl", "eyJhbGciOiJIUzI1NiJ9", "tok123456", "p4ssw0rd"):
        assert leaked not in text
    assert "redis://user:" in text and "@redis:6379/0" in text


def test_redaction_skips_no_pattern_and_forgets_nothing_a_new_secret_covers() -> None:
    # redact() runs the patterns only on text holding one of their trigger words, and remembers
    # results: every shape still goes, in any case, repeated or not, and a secret registered
    # after a text was first redacted is redacted from it the next time.
    shapes = [
        "x eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl y",
        "BEARER abcdefgh12345678",
        "Basic dXNlcjpwYXNzd29yZA==",
        "SVC-AUTH-V2 abcdefgh12345678",
        "Access_Token: abcd1234",
        "'Secret'='abcd1234'",
        "PASSWD=abcd1234",
        "Api_Key:abcd1234",
        "set-COOKIE: sid=abcd1234",
        "Signature = abcd1234",
        "https://u:abcd1234@host/",
    ]
    for text in shapes * 2:
        out = redact(text)
        assert "[REDACTED]" in out and "abcd1234" not in out and "12345678" not in out, out
    plain = "0123456789abcdef-late-secret-value"
    assert redact(plain) == plain
    register_secret("late-secret-value")
    assert redact(plain) == "0123456789abcdef-[REDACTED]"


# -- tracing --------------------------------------------------------------------------------------


async def test_spans_for_request_cache_and_upstream_and_traceparent_to_vluna(
    keys: Keys, emulator: VlunaEmulator
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from bff.settings import TracingSettings

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert tracing.setup_tracing(TracingSettings(enabled=True, exporter="none"), provider=provider)
    record = RecordingTransport(emulator.transport())
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    incoming = f"00-{trace_id}-00f067aa0ba902b7-01"
    try:
        settings = make_settings(keys, vluna=emulator_vluna(emulator))
        async with client_for(settings, None, vluna=emulator_client(emulator, record=record)) as client:
            r = await client.get("/vluna/token", headers={**auth(keys, "tr-1"), "traceparent": incoming})
            assert r.status_code == 200
    finally:
        tracing.shutdown_tracing()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    server = spans["GET /vluna/token"]
    cache = spans["bff.token_cache.get"]
    upstream = spans["vluna " + TOKEN_OP]
    assert format(server.context.trace_id, "032x") == trace_id
    assert server.parent is not None and format(server.parent.span_id, "016x") == "00f067aa0ba902b7"
    assert cache.parent is not None and cache.parent.span_id == server.context.span_id
    assert cache.attributes is not None and cache.attributes["bff.cache.hit"] is False
    assert upstream.parent is not None and upstream.parent.span_id == server.context.span_id
    assert server.attributes is not None and server.attributes["http.route"] == "/vluna/token"
    sent = [h for path, h in record.seen if path.endswith("/token/issue")][-1]
    _version, sent_trace, sent_parent, _flags = sent["traceparent"].split("-")
    assert sent_trace == trace_id and sent_parent == format(upstream.context.span_id, "016x")


async def test_tracing_off_means_no_traceparent(keys: Keys, emulator: VlunaEmulator) -> None:
    assert not tracing.enabled()
    record = RecordingTransport(emulator.transport())
    settings = make_settings(keys, vluna=emulator_vluna(emulator))
    async with client_for(settings, None, vluna=emulator_client(emulator, record=record)) as client:
        assert (await client.get("/vluna/token", headers=auth(keys, "tr-2"))).status_code == 200
    assert record.seen and all("traceparent" not in h for _, h in record.seen)


def test_span_with_tracing_off_is_one_shared_no_op_that_lets_errors_through() -> None:
    assert not tracing.enabled()
    first = tracing.span("a", kind="server", attributes={"k": "v"}, parent_headers={"traceparent": "x"})
    assert first is tracing.span("b")
    with first as sp:
        sp.set_attribute("k", "v")
        sp.update_name("c")
        sp.set_status_error("d")
    with pytest.raises(KeyError), tracing.span("e"):
        raise KeyError("raised inside the span")


def test_an_event_is_one_tally_read_by_its_series_at_scrape_time() -> None:
    from prometheus_client import REGISTRY, generate_latest

    from bff.telemetry.metrics import EVENTS, TOKEN_CACHE, MeteredStats

    def lines() -> list[str]:
        text = generate_latest(REGISTRY).decode()
        wanted = (
            'vluna_bff_token_cache_events_total{event="hit"}',
            'vluna_bff_events_total{event="cache_hits"}',
        )
        return [line for line in text.splitlines() if line.startswith(wanted)]

    def counts() -> tuple[float, float, float]:
        text = generate_latest(REGISTRY).decode()
        return (
            sample(text, "vluna_bff_token_cache_events_total", {"event": "hit"}),
            sample(text, "vluna_bff_events_total", {"event": "cache_hits"}),
            sample(text, "vluna_bff_events_total", {"event": "obs.tally_probe"}),
        )

    before = counts()
    one, two = MeteredStats(), MeteredStats()  # the Prometheus series are the process's
    for stats in (one, two, one):
        stats.inc("cache_hits")
        stats.inc("obs.tally_probe", 2)
    after = counts()
    assert [a - b for a, b in zip(after, before, strict=True)] == [3, 3, 6]
    assert (one.get("cache_hits"), two.get("cache_hits"), two.get("obs.tally_probe")) == (2, 1, 2)
    # The exposition is the plain counters' (names, labels, float values), one line per series.
    assert lines() == [
        f'vluna_bff_token_cache_events_total{{event="hit"}} {after[0]!r}',
        f'vluna_bff_events_total{{event="cache_hits"}} {after[1]!r}',
    ]
    # Single-process mode: both series of the event read one count (one addition per event).
    assert TOKEN_CACHE.labels(event="hit")._value is EVENTS.labels(event="cache_hits")._value


def test_fast_children_expose_what_the_locked_ones_do() -> None:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    from bff.telemetry import metrics

    def made(prefix: str) -> tuple[CollectorRegistry, Any, Any, Any]:
        registry = CollectorRegistry()
        counter = Counter(f"{prefix}_calls", "calls", ["route"], registry=registry)
        gauge = Gauge(f"{prefix}_busy", "busy", registry=registry)
        hist = Histogram(
            f"{prefix}_seconds", "seconds", ["route"], buckets=metrics._LATENCY_BUCKETS, registry=registry
        )
        return registry, counter.labels(route="/a"), gauge, hist.labels(route="/a")

    plain_reg, plain_counter, plain_gauge, plain_hist = made("m")
    fast_reg, fast_counter_child, fast_gauge_metric, fast_hist_child = made("m")
    fast_counter = metrics.fast(fast_counter_child)
    fast_gauge = metrics.fast(fast_gauge_metric)
    fast_hist = metrics.fast_histogram(fast_hist_child)
    assert fast_counter is not fast_counter_child and fast_hist is not fast_hist_child  # made fast
    assert metrics.fast(fast_counter_child) is fast_counter  # resolved again: the same tally
    amounts = [0.0, 0.001, 0.0010001, 0.005, 0.3, 2.5, 30.0, 31.0, 1e9, -1.0, float("nan"), 0.05]
    for amount in amounts:
        for counter, gauge, hist in (
            (plain_counter, plain_gauge, plain_hist),
            (fast_counter, fast_gauge, fast_hist),
        ):
            counter.inc()
            gauge.inc()
            hist.observe(amount)
            gauge.dec()
    plain_gauge.inc(2)
    fast_gauge.inc(2)
    assert generate_latest(fast_reg) == generate_latest(plain_reg)
    assert metrics.fast_histogram(fast_hist_child).observe(0.2) is None
    assert generate_latest(fast_reg) != generate_latest(plain_reg)  # and the scrape sees it
