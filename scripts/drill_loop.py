"""Run the three-process drill (tests/drills/test_three_processes.py) N times in a row, with a CPU
hog on every core beside it (or anything else you run beside it, e.g. the rest of the suite),
and print pass/fail and the issuance count of each run.

    .venv/bin/python scripts/drill_loop.py                 # 20 runs, CPU hog on every core
    .venv/bin/python scripts/drill_loop.py --runs 5 --no-hog

Exit status 0 only when every run passed. The hog is busy-looping processes (one per core, at
normal priority) that run from the first drill to the last; they are stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DRILL = "tests/drills/test_three_processes.py"


def _spin() -> None:
    while True:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--no-hog", action="store_true", help="no CPU hog beside the drill")
    ap.add_argument(
        "--hogs", type=int, default=os.cpu_count() or 2, help="busy processes (default: one per core)"
    )
    args = ap.parse_args(argv)

    hogs: list[multiprocessing.Process] = []
    if not args.no_hog:
        for _ in range(args.hogs):
            p = multiprocessing.Process(target=_spin, daemon=True)
            p.start()
            hogs.append(p)
    print(f"drill loop: {args.runs} runs of {DRILL}, CPU hog: {len(hogs)} busy processes", flush=True)
    passed = 0
    try:
        for run in range(1, args.runs + 1):
            with tempfile.TemporaryDirectory(prefix="drill-loop-") as tmp:
                report = Path(tmp) / "report.json"
                started = time.monotonic()
                proc = subprocess.run(  # noqa: S603 (this interpreter, fixed arguments)
                    [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", DRILL],
                    cwd=REPO,
                    env={**os.environ, "DRILL_REPORT": str(report)},
                    capture_output=True,
                    text=True,
                    check=False,
                )
                took = time.monotonic() - started
                data = json.loads(report.read_text()) if report.exists() else {}
            ok = proc.returncode == 0
            passed += ok
            figures = (
                f"issuances {data['issuances']} for {data['users']} users, burst {data['elapsed_sec']} s, "
                f"statuses {data['statuses']}, client errors {data['errors'] or 0}, "
                f"redis errors per process {[int(n) for n in data['redis_errors']]}"
                if data
                else "no figures (the run failed before the burst)"
            )
            print(f"run {run:2d}: {'PASS' if ok else 'FAIL'} in {took:.0f} s: {figures}", flush=True)
            if not ok:
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
                print("    " + tail.replace("\n", "\n    "), flush=True)
    finally:
        for p in hogs:
            p.terminate()
        for p in hogs:
            p.join(5)
    print(f"drill loop: {passed}/{args.runs} passed", flush=True)
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
