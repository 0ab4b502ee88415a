"""Consent intake throughput: single requests against batches of 100 and 1,000.

    python bench/consent_intake.py [--runs K] [--single N] [--concurrency C]

Starts a Tansu broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set), two fresh databases on the
Postgres of ``DATABASE_URL`` (else 127.0.0.1:5432; the consent service's and a scratch one for
the Postgres limits) and the consent service as a process, like ``withdrawal_latency.py``
(whose helpers it reuses). Then, ``K`` times per mode, on fresh subjects:

- **single**: ``N`` ``POST /api/v1/consent-events``, ``C`` in flight (closed loop);
- **batch 100** / **batch 1000**: ``POST /api/v1/consent-events/batch`` with an
  ``Idempotency-Key``, ``--batch-concurrency`` batches in flight, about ``--batch-events``
  events per run.

A mode's figure is events recorded per second of wall time (first request sent → last
response), median over the runs; beside it, the request latency, the consent process's
CPU per event, and how long the outbox relay took to publish the run's events to Kafka
after the last response. The Postgres INSERT + COMMIT rate (one row per transaction) on
the same server is printed as the yardstick: a single request costs one commit, a batch
one commit for all its events. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from _common import (
    bench_run,
    drop_and_stop,
    load_average,
    median_of,
    postgres_limits,
    postgres_server_url,
    process_cpu_s,
    run_meta,
    summary_ms,
    write_result,
)
from _load_http import HttpError, LoadClient

from services.runtime import embedded
from services.runtime.testing import ServiceProcess, migrate_service
from services.runtime.walkthrough import WITHDRAWAL_PATH, withdrawal

REPO_ROOT = Path(__file__).resolve().parents[1]

Row = dict[str, Any]


@dataclass
class Mode:
    name: str
    batch: int  # 0: single requests
    requests: int
    concurrency: int

    @property
    def events(self) -> int:
        return self.requests * max(self.batch, 1)


@dataclass
class Bench:
    """Everything started, so that everything is stopped."""

    tag: str
    work_dir: Path
    server_url: str
    broker: embedded.TansuBroker | None = None
    bootstrap: str = ""
    databases: list[str] = field(default_factory=list)
    service: ServiceProcess | None = None

    def url(self, name: str) -> str:
        return embedded.database_url_for(self.server_url, f"bench_{self.tag}_{name}")

    def start_infrastructure(self) -> None:
        explicit = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        if explicit:
            self.bootstrap = explicit
        else:
            self.broker = embedded.TansuBroker(log_path=self.work_dir / "tansu.log").start()
            self.bootstrap = self.broker.bootstrap_servers
        self.databases = [f"bench_{self.tag}_{n}" for n in ("consent", "scratch")]
        embedded.create_databases_sync(self.server_url, self.databases)

    def start_service(self, service_env: dict[str, str]) -> ServiceProcess:
        migrate_service("consent", self.url("consent"))
        idempotence = self.broker is None and embedded.env_flag(
            os.environ, "KAFKA_ENABLE_IDEMPOTENCE", True
        )
        self.service = ServiceProcess(
            "consent",
            self.url("consent"),
            self.bootstrap,
            self.work_dir,
            idempotence=idempotence,
            group_prefix=f"bench-{self.tag}",
            extra_env=service_env,
        ).start()
        self.service.wait_ready()
        return self.service

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
        drop_and_stop(self.server_url, self.databases, self.broker)


async def run_mode(url: str, mode: Mode, tag: str, pid: int, db: asyncpg.Pool) -> Row:
    """One timed run of a mode on fresh subjects, sent with ``LoadClient`` (httpx's pool
    cost more CPU per request than the service, on the same two cores)."""
    slots = asyncio.Semaphore(mode.concurrency)
    client = LoadClient(url, mode.concurrency)
    latencies: list[float] = []
    failures: list[str] = []
    recorded = 0
    run_id = uuid.uuid4().hex[:8]

    async def one(index: int) -> None:
        nonlocal recorded
        async with slots:
            base = f"bench-{tag}-{run_id}-{index:06d}"
            body: Row
            if mode.batch:
                body = {"changes": [withdrawal(f"{base}-{i:04d}") for i in range(mode.batch)]}
                target, headers = f"{WITHDRAWAL_PATH}/batch", {"Idempotency-Key": base}
            else:
                body, target, headers = withdrawal(base), WITHDRAWAL_PATH, {}
            sent = time.perf_counter()
            try:
                await client.post_json(target, body, headers)
            except (HttpError, OSError) as exc:
                failures.append(repr(exc)[:200])
                return
            latencies.append(time.perf_counter() - sent)
            recorded += max(mode.batch, 1)

    outbox_before = await db.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
    cpu_before = process_cpu_s(pid)
    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(mode.requests)))
    wall = time.perf_counter() - started
    await client.close()
    cpu_after = process_cpu_s(pid)
    drained = await wait_relay(db, outbox_before, recorded, started + wall)
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return {
        "mode": mode.name,
        "requests": mode.requests,
        "events": recorded,
        "failed": len(failures),
        "failures_sample": failures[:3],
        "wall_s": wall,
        "events_per_s": recorded / wall,
        "requests_per_s": len(latencies) / wall,
        "request_ms": summary_ms(latencies),
        "cpu_ms_per_event": cpu / recorded * 1e3 if cpu is not None and recorded else None,
        "relay_drained_s": drained,
    }


async def wait_relay(
    db: asyncpg.Pool, after_id: int, expected: int, responded: float, within: float = 120
) -> float | None:
    """Seconds from the last response until the relay marked the run's rows published."""
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        published = await db.fetchval(
            "SELECT count(*) FROM outbox WHERE id > $1 AND published_at IS NOT NULL", after_id
        )
        if published >= expected:
            return max(0.0, time.perf_counter() - responded)
        await asyncio.sleep(0.05)
    return None


async def measure(bench: Bench, args: argparse.Namespace, log: Callable[[str], None]) -> Row:
    log(f"broker and databases (logs in {bench.work_dir}) …")
    await asyncio.to_thread(bench.start_infrastructure)
    log("Postgres limits …")
    postgres = await postgres_limits(bench.url("scratch"))
    log("starting the consent service …")
    service = await asyncio.to_thread(bench.start_service, dict(args.service_env))
    assert service.proc is not None
    modes = [
        Mode("single", 0, args.single, args.concurrency),
        Mode("batch 100", 100, max(1, args.batch_events // 100), args.batch_concurrency),
        Mode("batch 1000", 1000, max(1, args.batch_events // 1000), args.batch_concurrency),
    ]
    db = await asyncpg.create_pool(bench.url("consent"), min_size=1, max_size=2)
    results: dict[str, list[Row]] = {m.name: [] for m in modes}
    try:
        log("warm-up …")
        await run_mode(service.url, Mode("warm-up", 0, 200, 8), bench.tag, 0, db)
        await run_mode(service.url, Mode("warm-up", 100, 4, 2), bench.tag, 0, db)
        for run in range(1, args.runs + 1):
            for mode in modes:  # interleaved, so that drift hits every mode alike
                log(f"run {run}/{args.runs}: {mode.name} ({mode.events} events) …")
                row = await run_mode(service.url, mode, bench.tag, service.proc.pid, db)
                results[mode.name].append(row)
                log(
                    f"  {row['events_per_s']:,.0f} events/s,"
                    f" p50 {row['request_ms']['p50'] or 0:,.1f} ms, {row['failed']} failed"
                )
        rows_in_ledger = await db.fetchval("SELECT count(*) FROM consent_events")
    finally:
        await db.close()
    return {
        "modes": [
            {
                "name": m.name,
                "batch": m.batch,
                "concurrency": m.concurrency,
                "events_per_run": m.events,
                "runs": results[m.name],
                "median": {
                    "events_per_s": median_of([r["events_per_s"] for r in results[m.name]]),
                    "requests_per_s": median_of([r["requests_per_s"] for r in results[m.name]]),
                    "request_p50_ms": median_of([r["request_ms"]["p50"] for r in results[m.name]]),
                    "request_p99_ms": median_of([r["request_ms"]["p99"] for r in results[m.name]]),
                    "cpu_ms_per_event": median_of([r["cpu_ms_per_event"] for r in results[m.name]]),
                    "relay_drained_s": median_of([r["relay_drained_s"] for r in results[m.name]]),
                },
            }
            for m in modes
        ],
        "rows_in_ledger": rows_in_ledger,
        "postgres": postgres,
    }


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def report(result: Row, meta: Row) -> str:
    pg = result["postgres"]
    commit_rate = pg["insert_commit_per_s"]
    lines = [
        "",
        f"ConsentTrace consent intake   {meta['started_at']}",
        f"{meta['runs']} run(s) per mode, median shown; broker {meta['broker']};"
        f" Postgres {pg['server_version']} ({meta['postgres']}); {meta['cpus']} CPUs;"
        f" load {meta['load_before']}",
        "",
        f"{'mode':<11} {'in flight':>9} {'events/run':>10} {'events/s':>9} {'runs':>22}"
        f" {'req/s':>7} {'req p50 ms':>10} {'p99 ms':>8} {'CPU ms/ev':>9} {'relay s':>7}"
        f" {'x commit':>8}",
    ]
    for mode in result["modes"]:
        med = mode["median"]
        runs = " / ".join(_f(r["events_per_s"]) for r in mode["runs"])
        lines.append(
            f"{mode['name']:<11} {mode['concurrency']:>9} {mode['events_per_run']:>10,}"
            f" {_f(med['events_per_s']):>9} {runs:>22} {_f(med['requests_per_s'], 1):>7}"
            f" {_f(med['request_p50_ms'], 1):>10} {_f(med['request_p99_ms'], 1):>8}"
            f" {_f(med['cpu_ms_per_event'], 3):>9} {_f(med['relay_drained_s'], 2):>7}"
            f" {_f((med['events_per_s'] or 0) / commit_rate, 1):>8}"
        )
    failed = sum(r["failed"] for m in result["modes"] for r in m["runs"])
    lines += [
        "",
        f"Postgres INSERT + COMMIT, 1 row per txn: {_f(commit_rate)}/s"
        f" ({_f(pg['insert_commit_mean_ms'], 2)} ms each; synchronous_commit="
        f"{pg['synchronous_commit']}, fsync={pg['fsync']});"
        f" COPY {_f(pg['copy_rows_per_s'])} rows/s",
        "x commit: events/s ÷ that rate. relay s: last response → the run's events published.",
        f"failed requests: {failed}; rows in the ledger at the end: {result['rows_in_ledger']:,}",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Consent intake: single requests vs batches.")
    parser.add_argument("--runs", "-k", type=int, default=3, help="runs per mode (3)")
    parser.add_argument("--single", "-n", type=int, default=2000, help="single requests/run")
    parser.add_argument("--concurrency", "-c", type=int, default=32, help="singles in flight")
    parser.add_argument(
        "--batch-events", type=int, default=10_000, help="events per batch run (10000)"
    )
    parser.add_argument("--batch-concurrency", type=int, default=2, help="batches in flight (2)")
    parser.add_argument(
        "--service-env", action="append", default=[], metavar="NAME=VALUE", help="repeatable"
    )
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.service_env):
        parser.error("--service-env takes NAME=VALUE")
    args.service_env = [item.split("=", 1) for item in args.service_env]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    tag = uuid.uuid4().hex[:8]
    work_dir = Path(tempfile.mkdtemp(prefix=f"ct-bench-intake-{tag}-"))
    bench = Bench(tag, work_dir, postgres_server_url())
    meta: Row = {
        **run_meta(),
        "runs": args.runs,
        "postgres": bench.server_url.rsplit("@", 1)[-1],
    }
    with bench_run(bench.stop, work_dir, keep_logs=args.keep_logs) as run:
        result = asyncio.run(measure(bench, args, log))
        meta["broker"] = f"Tansu {bench.bootstrap} (embedded)" if bench.broker else bench.bootstrap
        meta["load_after"] = load_average()
        print(report(result, meta))
        print(f"\nJSON: {write_result('consent_intake', result, meta).relative_to(REPO_ROOT)}")
        run.failed = False
    return 1 if run.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
