"""Every benchmark scenario on this machine, in one run, into docs/benchmarks.md and .json.

    uv run python -m bench            # full: 3 runs per scenario, 5 s per measurement (~4 min)
    uv run python -m bench --quick    # 1 run, 2 s, 200 cold users (a smoke test, ~1.5 min)
    uv run python -m bench --runs 5 --seconds 8 --only token,cold
    uv run python -m bench --only stacks --out docs/stacks.md   # the server stacks compared

Every figure is the median of the runs; every scenario's reference is measured in the same run,
interleaved with it, and the ratio is the median of the per-run ratios. Every reference is an app
served on the same server stack as the service (bench/_stacks.py `service`: bff/server.py, what
`vluna-bff serve` runs). Load comes from a separate process: wrk, installed with apt-get when
missing (where allowed), else `python -m bench._loadgen`, and the report says so and what it
costs (`BENCH_NO_WRK=1` forces the latter), only to 127.0.0.1. Peak memory is VmHWM from /proc
of each server process (the largest process of its tree: the worker). Needs Redis at
127.0.0.1:6379.

Scenarios:
  token    cache-hit GET /vluna/token (RS256 JWT, mapping, HMAC key, Redis GET, AES-GCM), against a
           bare Litestar JSON endpoint and a Litestar endpoint doing one Redis GET
  workers  the same cache-hit request with `serve --workers 2` against `--workers 1`
  cold     1,000 distinct users, each asked for twice at once: issuances/s through the service,
           exactly one issuance per user (emulator counters), against an app that issues each
           user's token with the SDK directly (no cache, no lock), loaded alike
  proxy    GET /vluna/api/v1/catalog/products (public cache on and off), against a minimal aiohttp
           pass-through to the same emulator
  sdk      the SDK's per-call overhead (bench/sdk_overhead.py) against bare httpx
  proxy-script  bench/bff_proxy.py as it is, when present (its own output is quoted)
  stacks   (only when named) the token and proxy scenarios with their references on every server
           stack of bench/_stacks.py that is installed (`uv pip install httptools hypercorn` for
           all of them): the comparison that chose the service's stack
  soak     (only when named) 2 replicas, 500 users, 60 s tokens, steady load for 10 minutes
           (`--soak-seconds`, `--soak-users`): RSS start/end, 5xx, issuances expected vs measured
           (bench/soak.py). Written into its own section of the output file, which other
           scenarios keep as it is (and a soak run keeps theirs)
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench._harness import (
    CpuShare,
    LoadResult,
    children_cpu_seconds,
    ensure_wrk,
    machine_busy_seconds,
    pid_cpu_seconds,
    redis_server_pid,
    run_load,
    start_on_stack,
    tree_cpu_seconds,
)
from bench._stacks import STACKS, missing
from tests.support.emulator import EMULATOR_SECRET, start_emulator
from tests.support.keys import UserKeys
from tests.support.processes import PY, REPO, Proc, stopping
from tests.support.redis_servers import SHARED_REDIS_URL, cleanup_prefix
from tests.support.service import bff_config, start_bff, write_config

SCENARIOS = ("token", "workers", "cold", "proxy", "sdk", "proxy-script", "stacks", "soak")
DEFAULT_SCENARIOS = SCENARIOS[:-2]
SERVICE_STACK = "service"
READY = ("/healthz", {200})
PROXY_SCRIPT = REPO / "bench" / "bff_proxy.py"
PROFILE_NOTES = REPO / "bench" / "PROFILE.md"  # run as `python -m bench.bff_proxy`


def cpu_now(app: Proc, emulator: Proc) -> tuple[float, ...]:
    redis = redis_server_pid(int(SHARED_REDIS_URL.rsplit(":", 1)[1].split("/")[0]))
    return (
        tree_cpu_seconds(app),
        tree_cpu_seconds(emulator),
        children_cpu_seconds(),
        pid_cpu_seconds(redis) if redis is not None else 0.0,
        machine_busy_seconds(),
    )


def cpu_per(before: tuple[float, ...], after: tuple[float, ...], users: int) -> dict[str, float]:
    """CPU ms per issued user of the app's process tree, the emulator's, the load generator's,
    the shared Redis's (other sessions' commands included) and the rest of the machine's."""
    app, emu, load, redis, busy = (b - a for a, b in zip(before, after, strict=True))
    return {
        "app_cpu_ms": app / users * 1e3,
        "emulator_cpu_ms": emu / users * 1e3,
        "loadgen_cpu_ms": load / users * 1e3,
        "redis_cpu_ms": redis / users * 1e3,
        "rest_cpu_ms": max(0.0, busy - app - emu - load - redis) / users * 1e3,
    }


def cpu_note(row: Row) -> str:
    def med(key: str) -> float:
        return statistics.median(float(run[key]) for run in row.runs)

    return (
        f"CPU ms per user (/proc): the app {med('app_cpu_ms'):.2f}, the emulator "
        f"{med('emulator_cpu_ms'):.2f}, the load generator {med('loadgen_cpu_ms'):.2f}, Redis "
        f"{med('redis_cpu_ms'):.2f}, the rest of the machine {med('rest_cpu_ms'):.2f}"
    )


def workers_note(one: Row, two: Row) -> str:
    """What two workers could reach on this machine: the CPUs that the rest of the machine (the
    load generator, other processes) left them, at the CPU per request they used, against one
    worker's rate (medians of the per-run figures)."""
    cpus = os.cpu_count() or 1

    def med(row: Row, fn: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(fn(run) for run in row.runs)

    def us(run: dict[str, Any]) -> float:
        return float(run["service_cpus"]) / float(run["rps"]) * 1e6

    bound = statistics.median(
        (cpus - b["rest_cpus"]) / (us(b) / 1e6) / a["rps"] for a, b in zip(one.runs, two.runs, strict=True)
    )
    cpus1, cpus2 = med(one, lambda r: r["service_cpus"]), med(two, lambda r: r["service_cpus"])
    return (
        f"{cpus} CPUs shared with the load generator: 1 worker used {cpus1:.2f} CPUs "
        f"({med(one, us):.0f} us per request), 2 workers {cpus2:.2f} ({med(two, us):.0f} us), "
        f"the rest of the machine {med(two, lambda r: r['rest_cpus']):.2f}; "
        f"the CPUs left to 2 workers allow at most {bound:.2f}x"
    )


@dataclass
class Row:
    scenario: str
    name: str
    unit: str = "req/s"
    runs: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_mb: float = 0.0
    reference: str | None = None
    ratios: list[float] = field(default_factory=list)
    note: str = ""

    def add(self, r: LoadResult | dict[str, Any]) -> None:
        self.runs.append(asdict(r) if isinstance(r, LoadResult) else dict(r))

    def median(self, key: str) -> float:
        return statistics.median(run[key] for run in self.runs) if self.runs else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "name": self.name,
            "unit": self.unit,
            "rps": round(self.median("rps"), 1),
            "p50_ms": round(self.median("p50_ms"), 3),
            "p99_ms": round(self.median("p99_ms"), 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "reference": self.reference,
            "ratio": round(statistics.median(self.ratios), 3) if self.ratios else None,
            "ratio_runs": [round(x, 3) for x in self.ratios],
            "runs": self.runs,
            "note": self.note,
        }


class Runner:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.keys = UserKeys()
        self.rows: list[Row] = []
        self.appendix: list[tuple[str, str]] = []
        self.soak: str | None = None  # the soak section, when it ran
        self.configs: list[Path] = []  # the services' configuration files, deleted by run()
        self.load_tool = ensure_wrk(self.log)

    @staticmethod
    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def load(self, url: str, **kw: Any) -> LoadResult:
        kw.setdefault("seconds", self.args.seconds)
        kw.setdefault("connections", self.args.connections)
        kw.setdefault("warmup", self.args.warmup)
        r = run_load(url, **kw)
        if r.non_2xx:
            raise RuntimeError(f"{url}: answers other than 2xx under load: {r.statuses}")
        return r

    def row(self, scenario: str, name: str, **kw: Any) -> Row:
        row = Row(scenario, name, **kw)
        self.rows.append(row)
        return row

    def bff(self, emulator: Proc, prefix: str, workers: int = 1, **sections: Any) -> Proc:
        cfg = write_config(bff_config(emulator.url, self.keys.pem(), prefix=prefix, **sections))
        # Kept (0600, it holds secrets) until the run ends: the first worker answering does not
        # mean the others have read it, and a worker that cannot read it stops the server.
        self.configs.append(cfg)
        return start_bff(cfg, workers=workers)

    @staticmethod
    def refs(stack: str, key: str) -> Proc:
        env = {"BENCH_REDIS_URL": SHARED_REDIS_URL, "BENCH_REF_KEY": key}
        return start_on_stack(
            stack, "bench._refservers:litestar_refs", name="refs", env=env, ready=("/bench/json", {200})
        )

    @staticmethod
    def pass_through(stack: str, emulator: Proc, token: str) -> Proc:
        env = {"BENCH_UPSTREAM": emulator.url, "BENCH_TOKEN": token, "BENCH_REALM": "realm_demo"}
        return start_on_stack(
            stack,
            "bench._refservers:pass_through",
            name="aiohttp pass-through",
            env=env,
            ready=("/api/v1/catalog/products", {200}),
        )

    def interleave(self, measures: Sequence[tuple[Row, Callable[[], LoadResult | dict[str, Any]]]]) -> None:
        """Runs x measures, interleaved so that drift in machine load hits every row alike."""
        for i in range(self.args.runs):
            for row, fn in measures:
                self.log(f"  run {i + 1}/{self.args.runs}: {row.name}")
                row.add(fn())

    @staticmethod
    def ratios(row: Row, ref: Row, higher_is_better: bool = True) -> None:
        row.reference = ref.name
        pairs = zip(row.runs[-len(ref.runs) :], ref.runs, strict=True)
        row.ratios = [(a["rps"] / b["rps"]) if higher_is_better else (b["rps"] / a["rps"]) for a, b in pairs]

    # -- scenarios ------------------------------------------------------------------------------

    def token_and_workers(self, emulator: Proc, want_token: bool, want_workers: bool) -> None:
        prefix = f"bench-{uuid.uuid4().hex[:10]}:"
        ref_key = prefix + "ref"
        auth = {"Authorization": f"Bearer {self.keys.token('alice', org='acme')}"}
        ref = self.refs(SERVICE_STACK, ref_key)
        procs = [ref]
        try:
            w1 = self.bff(emulator, prefix, workers=1)
            procs.append(w1)
            w2 = self.bff(emulator, prefix, workers=2) if want_workers else None
            if w2 is not None:
                procs.append(w2)
            for p in procs[1:]:
                r = httpx.get(p.url + "/vluna/token", headers=auth, timeout=10)
                r.raise_for_status()
            measures: list[tuple[Row, Callable[[], LoadResult | dict[str, Any]]]] = []
            bare = self.row("token", "bare Litestar JSON (reference)")
            one_get = self.row("token", "Litestar + 1 Redis GET (reference)")
            token = self.row("token", "GET /vluna/token, cache hit, 1 worker")
            if want_token:
                measures += [
                    (bare, lambda: self.load(ref.url + "/bench/json")),
                    (one_get, lambda: self.load(ref.url + "/bench/redis-get")),
                ]
            measures.append((token, lambda: self.with_cpu(w1, "/vluna/token", auth)))
            two = None
            if w2 is not None:
                two = self.row("workers", "GET /vluna/token, cache hit, 2 workers")
                measures.append((two, lambda: self.with_cpu(w2, "/vluna/token", auth)))
            self.interleave(measures)
            if want_token:
                self.ratios(token, one_get)
                vs_bare = statistics.median(
                    a["rps"] / b["rps"] for a, b in zip(token.runs, bare.runs, strict=True)
                )
                token.note = f"vs bare JSON: {vs_bare:.2f}"
                bare.peak_rss_mb = one_get.peak_rss_mb = ref.peak_rss_mb()
            else:
                self.rows.remove(bare)
                self.rows.remove(one_get)
            token.peak_rss_mb = w1.peak_rss_mb()
            if two is not None and w2 is not None:
                self.ratios(two, token)
                two.peak_rss_mb = w2.peak_rss_mb()
                two.note = workers_note(token, two)
        finally:
            for p in reversed(procs):
                p.stop()
            cleanup_prefix(prefix)

    def with_cpu(self, proc: Proc, path: str, headers: dict[str, str]) -> dict[str, Any]:
        """A load on ``proc`` with the CPUs its process tree used, and those the rest of the
        machine used (the load generator, other processes), over the same interval."""
        result, share = CpuShare.during(proc, lambda: self.load(proc.url + path, headers=headers))
        return {**asdict(result), "service_cpus": share.service_cpus, "rest_cpus": share.rest_cpus}

    def cold(self, emulator: Proc) -> None:
        prefix = f"bench-{uuid.uuid4().hex[:10]}:"
        users = self.args.cold_users
        # Raw issuance throughput: the issuance budget (3,000 per replica per minute by default)
        # would cut the later runs short; it is measured here, not enforced.
        bff = self.bff(emulator, prefix, tokens={"issuance_limit": {"per_replica": 0}})
        env = {
            "BENCH_VLUNA_URL": emulator.url + "/mgt/v1",
            "BENCH_REALM": "realm_demo",
            "BENCH_KEY_ID": "pk-emulator",
            "BENCH_SECRET": EMULATOR_SECRET,
        }
        target = "bench._refservers:sdk_issuer"
        issuer = start_on_stack(SERVICE_STACK, target, name="SDK issuer", env=env, ready=("/healthz", {200}))
        # The same SDK calls over the service's own HTTP/1.1 transport: what the service adds to an
        # issuance, apart from the transport it chose (a context figure, not the goal's reference).
        env_h1 = {**env, "BENCH_SDK_TRANSPORT": "http1"}
        try:
            issuer_h1 = start_on_stack(
                SERVICE_STACK, target, name="SDK issuer (http1)", env=env_h1, ready=("/healthz", {200})
            )
        except BaseException:
            issuer.stop()
            raise
        svc = self.row(
            "cold", f"cold start: {users} distinct users x 2 concurrent requests", unit="issuances/s"
        )
        ref = self.row(
            "cold", "an app issuing with the SDK directly, no cache (reference)", unit="issuances/s"
        )
        ref_h1 = self.row(
            "cold",
            "the same app, the SDK over the service's HTTP/1.1 transport (context)",
            unit="issuances/s",
        )
        svc.reference = ref.name
        try:
            for i in range(self.args.runs):
                run_id = uuid.uuid4().hex[:6]
                names = [f"cold-{run_id}-{n}" for n in range(users)]
                reqs = []
                for name in names:
                    h = {"Authorization": f"Bearer {self.keys.token(name, org=name)}"}
                    reqs += [{"path": "/vluna/token", "headers": h}] * 2
                emulator.reset("counters")  # type: ignore[attr-defined]
                self.log(f"  run {i + 1}/{self.args.runs}: cold start, {users} users")
                before = cpu_now(bff, emulator)
                r = run_load(bff.url + "/vluna/token", requests=reqs, connections=64, seconds=120)
                svc_cpu = cpu_per(before, cpu_now(bff, emulator), users)
                issued = emulator.issuances()  # type: ignore[attr-defined]
                if r.non_2xx or r.requests != len(reqs):
                    raise RuntimeError(f"cold start: {r.statuses}")
                if issued != users:
                    raise RuntimeError(f"single flight broken: {issued} issuances for {users} users")
                run = asdict(r)
                run.update(rps=users / r.seconds, issuances=issued, requests_per_s=r.rps, **svc_cpu)
                svc.add(run)
                # 32 at once: as many issuances in flight as the service has (64 connections, each
                # user asked for twice at once).
                for app, row, tag in ((issuer, ref, "ref"), (issuer_h1, ref_h1, "h1")):
                    self.log(f"  run {i + 1}/{self.args.runs}: {row.name}")
                    names = [f"{tag}-{run_id}-{n}" for n in range(users)]
                    row.add(self.direct_issuance(emulator, app, names))
            self.ratios(svc, ref)
            same = [a["rps"] / b["rps"] for a, b in zip(svc.runs, ref_h1.runs, strict=True)]
            svc.peak_rss_mb = bff.peak_rss_mb()
            ref.peak_rss_mb = issuer.peak_rss_mb()
            svc.note = (
                f"issuances == users in every run (single flight held); {2 * users} requests per run; "
                + cpu_note(svc)
            )
            ref.note = f"one request per user, {users} per run, 32 connections; " + cpu_note(ref)
            ref_h1.peak_rss_mb = issuer_h1.peak_rss_mb()
            ref_h1.note = (
                f"the service's rate over this row's: median {statistics.median(same):.2f} "
                f"(runs {', '.join(f'{x:.2f}' for x in same)}); one request per user, 32 connections; "
                + cpu_note(ref_h1)
            )
        finally:
            issuer_h1.stop()
            issuer.stop()
            bff.stop()
            cleanup_prefix(prefix)

    @staticmethod
    def direct_issuance(emulator: Proc, issuer: Proc, users: list[str]) -> dict[str, Any]:
        """One run of an SDK-direct reference app: each user's token issued once, 32 at once."""
        emulator.reset("counters")  # type: ignore[attr-defined]
        reqs = [{"path": f"/issue?user={user}"} for user in users]
        before = cpu_now(issuer, emulator)
        r = run_load(issuer.url + "/issue", requests=reqs, connections=32, seconds=120)
        cpu = cpu_per(before, cpu_now(issuer, emulator), len(users))
        if r.non_2xx or r.requests != len(users) or emulator.issuances() != len(users):  # type: ignore[attr-defined]
            raise RuntimeError(f"{issuer.name}: {r.statuses}")
        return {**asdict(r), "rps": len(users) / r.seconds, "requests_per_s": r.rps, **cpu}

    def proxy(self, emulator: Proc) -> None:
        prefix = f"bench-{uuid.uuid4().hex[:10]}:"
        auth = {"Authorization": f"Bearer {self.keys.token('bob', org='globex')}"}
        procs: list[Proc] = []
        try:
            cached = self.bff(emulator, prefix, rate_limit={"enabled": False})
            procs.append(cached)
            uncached = self.bff(
                emulator, prefix, rate_limit={"enabled": False}, proxy={"public_cache_ttl_sec": 0}
            )
            procs.append(uncached)
            tok = httpx.get(cached.url + "/vluna/token", headers=auth, timeout=10)
            tok.raise_for_status()
            path = "/vluna/api/v1/catalog/products"
            for p in (cached, uncached):
                r = httpx.get(p.url + path, headers=auth, timeout=10)
                if r.status_code != 200:
                    raise RuntimeError(f"proxy answered {r.status_code}: {r.text[:200]}")
            passthru = self.pass_through(SERVICE_STACK, emulator, tok.json()["access_token"])
            procs.append(passthru)
            ref = self.row("proxy", "aiohttp pass-through to the emulator (reference)")
            off = self.row("proxy", "GET /vluna/api/v1/catalog/products, public cache off")
            on = self.row("proxy", "GET /vluna/api/v1/catalog/products, public cache on")
            self.interleave(
                [
                    (ref, lambda: self.load(passthru.url + "/api/v1/catalog/products")),
                    (off, lambda: self.load(uncached.url + path, headers=auth)),
                    (on, lambda: self.load(cached.url + path, headers=auth)),
                ]
            )
            self.ratios(off, ref)
            self.ratios(on, ref)
            ref.peak_rss_mb = passthru.peak_rss_mb()
            off.peak_rss_mb = uncached.peak_rss_mb()
            on.peak_rss_mb = cached.peak_rss_mb()
            off.note = "both hit the emulator on every call (it shares the 2 CPUs)"
            on.note = "catalog answered from the service's public cache (30 s)"
        finally:
            for p in reversed(procs):
                p.stop()
            cleanup_prefix(prefix)

    def sdk(self) -> None:
        calls = 1000 if self.args.quick else 3000
        rows: dict[str, Row] = {}
        for i in range(self.args.runs):
            self.log(f"  run {i + 1}/{self.args.runs}: SDK per-call overhead")
            out = subprocess.run(
                [PY, "bench/sdk_overhead.py", "--json", "--calls", str(calls), "--rounds", "3"],
                capture_output=True,
                text=True,
                cwd=REPO,
                timeout=300,
                check=True,
            )
            for name, us in json.loads(out.stdout.strip().splitlines()[-1])["median_us"].items():
                row = rows.get(name) or self.row("sdk", name, unit="calls/s")
                rows[name] = row
                row.add({"rps": 1e6 / us, "p50_ms": us / 1000, "p99_ms": float("nan"), "us_per_call": us})
        names = list(rows)
        floor = rows[names[0]]
        floor.name += " (reference)"
        for name in names[1:]:
            self.ratios(rows[name], floor)
            over = statistics.median(
                a["us_per_call"] - b["us_per_call"] for a, b in zip(rows[name].runs, floor.runs, strict=False)
            )
            rows[name].note = f"overhead {over:.0f} us per call over bare get"
        for row in rows.values():
            row.note = (
                row.note + "; " if row.note else ""
            ) + "in-process ASGI, no socket: p50 = median us per call"

    def run(self) -> None:
        only = set(self.args.only.split(",")) if self.args.only else set(DEFAULT_SCENARIOS)
        if only - set(SCENARIOS):
            raise SystemExit(f"unknown scenario(s) {sorted(only - set(SCENARIOS))}; one of {SCENARIOS}")
        emulator = start_emulator()
        try:
            self.scenarios(emulator, only)
        finally:
            for cfg in self.configs:
                cfg.unlink(missing_ok=True)
        if "sdk" in only:
            self.log("scenario: SDK per-call overhead")
            self.sdk()
        if "proxy-script" in only and PROXY_SCRIPT.exists():
            self.log("scenario: bench/bff_proxy.py (as it is)")
            self.proxy_script()

    def scenarios(self, emulator: Proc, only: set[str]) -> None:
        """The scenarios that run against the emulator (stopped afterwards)."""
        with stopping(emulator):
            if "soak" in only:
                self.log("scenario: soak")
                self.run_soak(emulator)
            if "stacks" in only:
                self.log("scenario: server stacks")
                self.stacks(emulator)
            if only & {"token", "workers"}:
                self.log("scenario: cache-hit token / workers")
                self.token_and_workers(emulator, "token" in only, "workers" in only)
            if "cold" in only:
                self.log("scenario: cold start")
                self.cold(emulator)
            if "proxy" in only:
                self.log("scenario: proxied catalog GET")
                self.proxy(emulator)

    def run_soak(self, emulator: Any) -> None:
        from bench import soak

        result = soak.run_soak(
            emulator, self.keys, seconds=self.args.soak_seconds, users=self.args.soak_users, log=self.log
        )
        when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.soak = soak.render(result, f"{when} on {os.cpu_count()} CPUs")
        self.log(
            f"soak: 5xx {result.server_errors}, issuances expected {result.issuances_expected} "
            f"measured {result.issuances_measured}, RSS {result.rss_start_mb} -> {result.rss_end_mb} MiB"
        )
        if result.server_errors or not result.issuances_ok():
            self.soak_failed = True

    soak_failed = False

    def stacks(self, emulator: Proc) -> None:
        """The service (cache-hit token, proxied catalog with the public cache off) and its
        references on every installed stack; ratios to the same endpoint on the service's stack."""
        from bff.server import WORKER_APP
        from bff.settings import CONFIG_ENV

        prefix = f"bench-{uuid.uuid4().hex[:10]}:"
        auth = {"Authorization": f"Bearer {self.keys.token('alice', org='acme')}"}
        configs = [
            write_config(bff_config(emulator.url, self.keys.pem(), prefix=prefix)),
            write_config(
                bff_config(
                    emulator.url,
                    self.keys.pem(),
                    prefix=prefix,
                    rate_limit={"enabled": False},
                    proxy={"public_cache_ttl_sec": 0},
                )
            ),
        ]
        procs: list[Proc] = []
        rows: dict[tuple[str, str], tuple[Row, Proc]] = {}
        measures: list[tuple[Row, Callable[[], LoadResult]]] = []
        stacks = [st for st in STACKS if not missing(st)]
        for st in set(STACKS) - set(stacks):
            self.log(f"stack {st}: {', '.join(missing(st))} not installed, not measured")
        try:
            for st in stacks:
                refs = self.refs(st, prefix + "ref")
                procs.append(refs)
                services = []
                for cfg in configs:
                    env = {CONFIG_ENV: str(cfg)}
                    services.append(start_on_stack(st, WORKER_APP, name="vluna-bff", env=env, ready=READY))
                    procs.append(services[-1])
                token, proxied = services
                tok = httpx.get(token.url + "/vluna/token", headers=auth, timeout=30)
                tok.raise_for_status()
                path = "/vluna/api/v1/catalog/products"
                httpx.get(proxied.url + path, headers=auth, timeout=30).raise_for_status()
                passthru = self.pass_through(st, emulator, tok.json()["access_token"])
                procs.append(passthru)
                for what, proc, url, headers in (
                    ("bare Litestar JSON", refs, refs.url + "/bench/json", {}),
                    ("Litestar + 1 Redis GET", refs, refs.url + "/bench/redis-get", {}),
                    ("GET /vluna/token, cache hit", token, token.url + "/vluna/token", auth),
                    ("aiohttp pass-through", passthru, passthru.url + "/api/v1/catalog/products", {}),
                    ("proxied catalog GET, cache off", proxied, proxied.url + path, auth),
                ):
                    row = self.row("stacks", f"{st}: {what}")
                    rows[st, what] = (row, proc)
                    measures.append((row, functools.partial(self.load, url, headers=headers)))
            self.interleave(measures)
            for (st, what), (row, proc) in rows.items():
                row.peak_rss_mb = proc.peak_rss_mb()
                if st != SERVICE_STACK:
                    self.ratios(row, rows[SERVICE_STACK, what][0])
            for st in stacks:
                within = [
                    ("GET /vluna/token, cache hit", "Litestar + 1 Redis GET"),
                    ("GET /vluna/token, cache hit", "bare Litestar JSON"),
                    ("proxied catalog GET, cache off", "aiohttp pass-through"),
                ]
                for what, ref in within:
                    row, base = rows[st, what][0], rows[st, ref][0]
                    pairs = zip(row.runs, base.runs, strict=True)
                    x = statistics.median(a["rps"] / b["rps"] for a, b in pairs)
                    row.note += f"{'; ' if row.note else ''}{x:.2f} x {ref} (same stack)"
        finally:
            for p in reversed(procs):
                p.stop()
            for cfg in configs:
                cfg.unlink()
            cleanup_prefix(prefix)

    def proxy_script(self) -> None:
        cmd = [PY, "-m", "bench.bff_proxy"]
        if self.args.quick:
            cmd += ["--seconds", "2"]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=240, check=False)
            text = out.stdout.strip() or out.stderr.strip()[-3000:]
            if out.returncode != 0:
                text = f"(exit status {out.returncode})\n{text}\n{out.stderr.strip()[-2000:]}"
        except subprocess.TimeoutExpired:
            text = "(did not finish within 240 s)"
        self.appendix.append(("bench/bff_proxy.py", text))


NOTES = """\
## Reading it

- `token`: a repeated cache hit is answered from the token cache's first level (`cache.l1`,
  bff/tokens/l1.py: decrypted entries in the process, kept coherent with sign-outs on every
  replica), so it makes no Redis read; the ratio to "Litestar + 1 Redis GET" compares the whole
  hit (RS256 verification cached per token, principal mapping, the L1 lookup, JSON, request id,
  metrics) with the cheapest endpoint that would read Redis once. When the heartbeat through Redis
  is late (a slow or overloaded Redis), the hit reads Redis instead, and the ratio drops toward
  the one a Redis read allows.
- `workers`: two workers on two CPUs that the load generator also uses cannot double throughput.
  One worker is bound by its Python thread, not by the machine: its event loop's thread uses up
  to 1 CPU and granian's Rust thread a further 0.2-0.4, so on a quiet machine one worker already
  takes most of what wrk leaves. Two workers saturate both CPUs and spend more CPU per request
  (fewer requests per loop wake-up, more threads than CPUs), so the bound is (CPUs - what the
  load generator and other processes use) / (2-worker CPU per request), against one worker's
  rate: the note gives each run's figures, measured from /proc, and that ceiling. Granian's
  multi-threaded runtime, two runtime threads or a backpressure of 32 did not lower the 2-worker
  CPU per request (bench/PROFILE.md). A ratio far *below* 1 would be a
  stall, not CPU (before `serve` set TCP_NODELAY on the shared listening socket, every answer
  waited ~40 ms for a delayed ACK: p50 ~44 ms, ratio 0.26; tests/bff/test_cli_workers.py pins
  the fix).
- `cold`: every issuance is a signed call to the emulator (a separate process on the same CPUs);
  the reference is an app on the same server stack issuing each user's token with the SDK
  directly (httpx's own transport, as the SDK comes), with as many issuances in flight. The
  service's SDK client sends through the service's own HTTP/1.1 client (bff/http1/), so the
  ratio is the service's auth, single flight (Redis lock, pub/sub release) and encrypted cache
  write per issuance, against the transport it saves; the third row, the reference app with the
  SDK over that same transport, gives the service's overhead alone (its note: the service's rate
  over that row's). Each run checks issuances == users with the emulator's counters. The notes
  give the CPU per issued user
  (from /proc, medians of the runs) of the app's processes, the emulator's, the load generator's
  (two requests per user for the service, one for the reference), Redis's (the shared one: other
  sessions' commands land in it too) and the rest of the machine's (kernel, other processes: the
  noisy part). The app's figures are the ones to compare.
- Every reference runs on the service's own server stack (bff/server.py; bench/_stacks.py
  `service`), so a faster server lifts both sides of each ratio.
- `proxy`: with the public cache off both paths call the emulator on every request; with it on,
  the catalog is answered by the service itself.
- `sdk`: client-side only (in-process ASGI transport, no socket).
- `stacks` (when run): each endpoint on each server stack, the ratio being to the same endpoint
  on the service's stack; the notes give each stack's own service-to-reference ratios.
"""


def render(
    meta: dict[str, Any],
    rows: list[dict[str, Any]],
    appendix: Sequence[tuple[str, str]] = (),
    per_run: str = "docs/benchmarks.json",
) -> str:
    def f(x: Any, spec: str) -> str:
        return "—" if x is None or x != x else format(x, spec)

    out = [
        "# Benchmarks",
        "",
        "Written by `uv run python -m bench` (see `bench/__main__.py`); do not edit by hand.",
        "",
        f"- when: {meta['when']}; machine: {meta['cpus']} CPUs, {meta['platform']}, Python {meta['python']}",
        f"- load: {meta['load_tool']}, {meta['connections']} keep-alive connections, "
        f"{meta['seconds']:g} s per measurement after {meta['warmup']:g} s warm-up, loopback only",
        f"- {meta['runs']} run(s) per scenario, interleaved with the reference; "
        "figures are medians of the runs, ratios the median of per-run ratios "
        "(this machine is shared and noisy: read ratios, not absolutes)",
        "- peak RSS: VmHWM of the server process (largest process of its tree)",
        "",
        "| scenario | what | rate | p50 ms | p99 ms | peak RSS MiB | reference | ratio | note |",
        "|---|---|---:|---:|---:|---:|---|---:|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['scenario']} | {r['name']} | {f(r['rps'], ',.0f')} {r['unit']} | "
            f"{f(r['p50_ms'], '.2f')} | {f(r['p99_ms'], '.2f')} | {f(r['peak_rss_mb'], '.0f')} | "
            f"{r['reference'] or ''} | "
            f"{f(r['ratio'], '.2f')} | {r['note']} |"
        )
    out += [
        "",
        f"Per-run figures are in `{per_run}`. Scenario descriptions: `bench/__main__.py`.",
        "",
        NOTES,
    ]
    for title, text in appendix:
        out += [f"## {title} (as it is)", "", "```", text, "```", ""]
    if PROFILE_NOTES.exists():
        # Hand-written (profiles are not re-taken by this runner): kept in its own file.
        out += [f"<!-- from {PROFILE_NOTES.relative_to(REPO)} -->", PROFILE_NOTES.read_text(encoding="utf-8")]
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 run, 2 s, 200 cold users")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--cold-users", type=int)
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    parser.add_argument("--soak-seconds", type=float, default=600.0, help="soak duration (default 600)")
    parser.add_argument("--soak-users", type=int, default=500, help="soak users (default 500)")
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.seconds = args.seconds or (2.0 if args.quick else 5.0)
    args.cold_users = args.cold_users or (200 if args.quick else 1000)
    started = time.monotonic()
    runner = Runner(args)
    runner.run()
    md = Path(args.out)
    if args.only and set(args.only.split(",")) == {"soak"}:
        # Only the soak ran: its section goes into the file, the other figures stay as they are.
        from bench import soak

        assert runner.soak is not None
        old = md.read_text() if md.exists() else "# Benchmarks\n"
        md.write_text(soak.splice(old, runner.soak))
        print(runner.soak)
        return 1 if runner.soak_failed else 0
    rows = [r.summary() for r in runner.rows]
    meta = {
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "platform": platform.platform(terse=True),
        "python": platform.python_version(),
        "load_tool": runner.load_tool,
        "connections": args.connections,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "runs": args.runs,
        "quick": args.quick,
        "wall_seconds": round(time.monotonic() - started),
    }
    md.parent.mkdir(parents=True, exist_ok=True)
    json_path = md.with_suffix(".json")
    shown = json_path.relative_to(REPO) if json_path.is_relative_to(REPO) else json_path
    text = render(meta, rows, runner.appendix, per_run=str(shown))
    from bench import soak

    kept = runner.soak or (soak.section_of(md.read_text()) if md.exists() else None)
    if kept is not None:
        text = soak.splice(text, kept)
    md.write_text(text)
    extra = {title: body for title, body in runner.appendix}
    md.with_suffix(".json").write_text(
        json.dumps({"meta": meta, "rows": rows, "appendix": extra}, indent=2) + "\n"
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
