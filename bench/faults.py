"""Reliability under faults, the long run: more events, more kills, several seeds.

    python bench/faults.py [--seeds 1,2,3] [--subjects 60] [--versions 10] [--models 12]
                           [--changes 400] [--kills 5] [--pace 0.15]

Each seed runs the scenario of ``services/runtime/chaos.py`` on a private Tansu broker and a
private Postgres cluster: consent changes, snapshots and OpenLineage runs stream in through
the APIs while every service is SIGKILLed ``--kills`` times at random moments and restarted,
and Postgres is restarted (immediate) halfway. Then it waits until the system is quiet and
compares findings, model flags and deletion cases with the independent expectation.

Prints, per seed: kills per service, recovery times (restart → ready), the Postgres restart,
how long the system took to settle, the counts, dead letters, and the comparison; and writes
the same as JSON to ``bench/results/faults-<UTC timestamp>.json``. Asserts nothing; exits 1
when a comparison differs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from services.runtime.chaos import ScenarioConfig, run_scenario
from services.runtime.privatepg import unavailable_reason

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--subjects", type=int, default=60)
    parser.add_argument("--versions", type=int, default=10)
    parser.add_argument("--models", type=int, default=12)
    parser.add_argument("--changes", type=int, default=400)
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs per service")
    parser.add_argument("--pace", type=float, default=0.15, help="mean pause between operations")
    parser.add_argument("--no-postgres-restart", action="store_true")
    args = parser.parse_args(argv)
    if (why := unavailable_reason()) is not None:
        print(f"cannot run: {why}", file=sys.stderr)
        return 2
    results = []
    failed = False
    for seed in (int(s) for s in args.seeds.split(",")):
        config = ScenarioConfig(
            seed=seed,
            subjects=args.subjects,
            versions=args.versions,
            models=args.models,
            consent_changes=args.changes,
            kills_per_service=args.kills,
            restart_postgres=not args.no_postgres_restart,
            pace_s=args.pace,
            settle_timeout_s=300,
        )
        log_dir = Path(tempfile.mkdtemp(prefix=f"ct-faults-{seed}-"))
        report = asyncio.run(run_scenario(config, log_dir))
        print(report.summary(), flush=True)
        print(f"logs: {log_dir}\n", flush=True)
        failed |= not report.ok
        recoveries = [k.recovery_s for k in report.kills if k.recovery_s is not None]
        results.append(
            {
                "config": dataclasses.asdict(config),
                "ok": report.ok,
                "problems": report.problems,
                "counts": report.counts,
                "kills": [dataclasses.asdict(k) for k in report.kills],
                "recovery_median_s": statistics.median(recoveries) if recoveries else None,
                "recovery_max_s": max(recoveries) if recoveries else None,
                "postgres_restarts": report.postgres_restarts,
                "stream_s": report.stream_s,
                "settle_s": report.settle_s,
                "dead_letters": report.dead_letters,
                "topic_records": report.census.records,
                "redelivered_duplicates": report.census.duplicates,
                "http_retries": report.http_retries,
            }
        )
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS_DIR / f"faults-{stamp}.json"
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"written: {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
