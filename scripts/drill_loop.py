"""Run the three-process drill (tests/drills/test_three_processes.py) N times in a row, with a CPU
hog on every core beside it (or anything else you run beside it, e.g. the rest of the suite),
and print pass/fail and the issuance count of each run.

    .venv/bin/python scripts/drill_loop.py                 # 20 runs, CPU hog on every core
    .venv/bin/python scripts/drill_loop.py --runs 5 --no-hog

Exit status 0 only when every run passed. The hog is busy-looping processes (one per core, at
normal priority). By default they spin while the drill's burst runs (the drill marks it with the
file `$DRILL_REPORT.burst`): the processes' start-up on a shared, loaded machine is not what is
drilled, and a hog during it only makes runs fail in set-up. `--hog-always` spins from the first
run to the last. They are stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DRILL = "tests/drills/test_three_processes.py"


def _spin(marker: str | None) -> None:
    """Busy: always (no marker), or while the marker file exists."""
    while True:
        if marker is None or os.path.exists(marker):
            end = time.monotonic() + 0.1
            while time.monotonic() < end:
                pass
        else:
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--no-hog", action="store_true", help="no CPU hog beside the drill")
    ap.add_argument(
        "--hogs", type=int, default=os.cpu_count() or 2, help="busy processes (default: one per core)"
    )
    ap.add_argument(
        "--hog-always", action="store_true", help="hog from the first run to the last, set-up included"
    )
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="drill-loop-"))
    report = work / "report.json"
    marker = str(report) + ".burst"
    hogs: list[multiprocessing.Process] = []
    if not args.no_hog:
        for _ in range(args.hogs):
            p = multiprocessing.Process(
                target=_spin, args=(None if args.hog_always else marker,), daemon=True
            )
            p.start()
            hogs.append(p)
    when = "always" if args.hog_always else "during each burst"
    print(f"drill loop: {args.runs} runs of {DRILL}, CPU hog: {len(hogs)} busy processes {when}", flush=True)
    passed = 0
    try:
        for run in range(1, args.runs + 1):
            report.unlink(missing_ok=True)
            started = time.monotonic()
            proc = subprocess.run(  # noqa: S603 (this interpreter, fixed arguments)
                # Start-up of 3 services on a loaded machine can pass pytest-timeout's 300 s.
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "-x",
                    "-p",
                    "no:cacheprovider",
                    "--timeout",
                    "900",
                    DRILL,
                ],
                cwd=REPO,
                env={**os.environ, "DRILL_REPORT": str(report)},
                capture_output=True,
                text=True,
                check=False,
            )
            took = time.monotonic() - started
            Path(marker).unlink(missing_ok=True)
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
        shutil.rmtree(work, ignore_errors=True)
    print(f"drill loop: {passed}/{args.runs} passed", flush=True)
    return 0 if passed == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
