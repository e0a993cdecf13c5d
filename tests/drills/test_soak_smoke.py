"""The soak scenario of the benchmark runner (bench/soak.py, `python -m bench --only soak`, 10
minutes) run for a few seconds: the same code path, two replicas, zero 5xx, issuances as the
token lifetimes imply, and its report section renders."""

from __future__ import annotations

from bench import soak
from tests.support.emulator import Emulator
from tests.support.keys import UserKeys
from tests.support.processes import Proc


def test_soak_for_a_few_seconds(emulator: Emulator, own_redis: Proc, user_keys: UserKeys) -> None:
    result = soak.run_soak(
        emulator, user_keys, seconds=5, users=20, redis_url=own_redis.url, log=lambda _: None
    )
    assert result.server_errors == 0 and not result.client_errors, result
    # Every steady user asked at least once (every 7 s, first within the 5 s): at least one
    # issuance each, and no renewal yet with 60 s tokens.
    steady = [u for u in range(20) if u % soak.SPARSE_SHARE != 0]
    assert result.misses_expected >= len(steady) and result.renewals_expected == 0
    assert result.issuances_ok(), (result.issuances_expected, result.issuances_measured)
    assert result.issuances_measured == result.issuances_expected
    assert len(result.rss_start_mb) == len(result.rss_end_mb) == 2 and min(result.rss_end_mb) > 0
    section = soak.render(result, "now")
    assert "| 5xx | 0 |" in section
    assert soak.splice("# Benchmarks\n", section).count(soak.SECTION_START) == 1
    assert soak.splice(soak.splice("# B\n", section), section).count(soak.SECTION_START) == 1


def test_expected_issuances_follow_the_lifetimes() -> None:
    # A request every 7 s for 120 s: issued at 0, renewed at 35 (first request past 30 s), 70, 105.
    assert soak.expected_issuances([7.0 * k for k in range(18)]) == (1, 3)
    # Every 67 s: each request finds the entry (50 s) expired.
    assert soak.expected_issuances([0.0, 67.0, 134.0]) == (3, 0)
    assert soak.expected_issuances([]) == (0, 0)
