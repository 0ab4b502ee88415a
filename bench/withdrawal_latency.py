"""Consent withdrawal → model flag: end-to-end latency and throughput on the real stack.

    python bench/withdrawal_latency.py [--withdrawals N] [--rate R] [--runs K]

Starts a Tansu broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set), five fresh databases on
the Postgres of ``DATABASE_URL`` (else 127.0.0.1:5432; one per service and a scratch one for
the Postgres limits), and the four services as processes.
Then, untimed: publishes the walkthrough policy, registers one dataset version holding one
``user.content.private`` record per subject, and reports one OpenLineage run that trained one
model on it. Timed, ``K`` times with fresh subjects: ``N`` withdrawals posted to the consent
API at ``R``/s (open loop), until lineage holds a model flag for each of them.

Latency of a withdrawal = ``model_flags.recorded_at`` (lineage) - ``consent_events.recorded_at``
(consent), joined through the registry finding whose ``cause_event_ids`` names the consent
event. The outbox and inbox timestamps of each service split it into stages. Beside the
figures it prints what the same broker and Postgres do on their own, measured in the same run.
See ``bench/README.md``. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from _common import (
    REPO_ROOT,
    RESULTS_DIR,
    SERVICES,
    Bench,
    CpuMeter,
    Row,
    bench_run,
    kafka_limits,
    load_average,
    median_of,
    peak_rss_mib,
    postgres_limits,
    postgres_server_url,
    run_meta,
    summary_ms,
)
from _load_http import HttpError, LoadClient

from contracts.topics import CONSENT_EVENTS, FINDINGS, MODEL_FLAGS
from services.runtime.walkthrough import (
    WITHDRAWAL_PATH,
    Stack,
    _ol_dataset,
    policy_known_to_registry,
    poll,
    publish_policy,
    withdrawal,
)

CONSENT_TOPIC = CONSENT_EVENTS.name
FINDINGS_TOPIC = FINDINGS.name
FLAGS_TOPIC = MODEL_FLAGS.name
MAX_RECORDS_PER_VERSION = 100_000  # DatasetVersionRegistration's limit
CHUNK = 50_000
DRAIN_S_PER_WITHDRAWAL = 0.1
"""Flags must all arrive within 60 s + this per withdrawal (so: at 10/s or better)."""


# ----------------------------------------------------------------------------- statistics


# ------------------------------------------------------------------------- machine limits


# ------------------------------------------------------------------------- CPU accounting


# ---------------------------------------------------------------------------------- setup


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def subject_ids(tag: str, start: int, count: int) -> list[str]:
    return [f"bench-{tag}-{i:07d}" for i in range(start, start + count)]


async def register_subjects(
    client: httpx.AsyncClient, stack: Stack, tag: str, subjects: Sequence[str]
) -> list[dict[str, str]]:
    """One ``user.content.private`` record per subject, in as few dataset versions as allowed."""
    size = len(subjects) if len(subjects) <= MAX_RECORDS_PER_VERSION else CHUNK
    collected = datetime.now(UTC) - timedelta(days=30)
    datasets = []
    for number, first in enumerate(range(0, len(subjects), size)):
        dataset = {"namespace": "s3://training", "name": f"bench-{tag}-{number}", "version": "v1"}
        records = [
            {
                "record_id": f"msg-{subject}",
                "source_system": "inbox",
                "subject_id": subject,
                "category": "user.content.private",
                "jurisdiction": "US",
                "collected_at": collected.isoformat(),
                "content_digest": _digest(subject),
            }
            for subject in subjects[first : first + size]
        ]
        registration = {
            "dataset": dataset,
            "purpose": "ai.training.generative",
            "created_at": (collected + timedelta(days=1)).isoformat(),
            "records": records,
        }
        response = await client.post(
            f"{stack.registry}/api/v1/dataset-versions", json=registration, timeout=600
        )
        response.raise_for_status()
        datasets.append(dataset)
    return datasets


async def report_training_run(
    client: httpx.AsyncClient, stack: Stack, tag: str, datasets: Sequence[dict[str, str]]
) -> dict[str, str]:
    """One COMPLETE run that read every dataset version and produced one model."""
    model = {"namespace": "models://ml", "name": f"assistant-{tag}", "version": "1"}
    run_event = {
        "eventType": "COMPLETE",
        "eventTime": datetime.now(UTC).isoformat(),
        "producer": "https://github.com/OpenLineage/OpenLineage/tree/1.0.0/client/python",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": str(uuid.uuid4())},
        "job": {"namespace": "ml-pipelines", "name": "train-assistant"},
        "inputs": [_ol_dataset(d, "DATASET") for d in datasets],
        "outputs": [_ol_dataset(model, "MODEL")],
    }
    response = await client.post(f"{stack.lineage}/api/v1/lineage", json=run_event)
    response.raise_for_status()
    return model


# ------------------------------------------------------------------------------ timed part


@dataclass
class Intake:
    """What the load generator saw."""

    accepted: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    """How late each request left against its schedule (client or concurrency bound)."""
    first_sent: float = 0.0
    last_sent: float = 0.0
    last_done: float = 0.0


async def post_withdrawals(
    stack: Stack, subjects: Sequence[str], rate: float, concurrency: int
) -> Intake:
    """Open loop: request ``i`` is due at ``start + i / rate``, ``concurrency`` in flight.

    Sent with ``LoadClient``, not httpx: httpx's pool cost the bench 5-10 ms of CPU per
    withdrawal (see ``_load_http``), taken from the stack it measures."""
    intake = Intake()
    slots = asyncio.Semaphore(concurrency)
    client = LoadClient(stack.consent, concurrency)

    async def one(subject: str) -> None:
        sent = time.perf_counter()
        try:
            await client.post_json(WITHDRAWAL_PATH, withdrawal(subject))
        except (HttpError, OSError) as exc:
            intake.failed.append(f"{subject}: {exc!r}")
        else:
            intake.accepted.append(subject)
            intake.latencies.append(time.perf_counter() - sent)
        finally:
            intake.last_done = max(intake.last_done, time.perf_counter())
            slots.release()

    tasks = []
    start = time.perf_counter()
    for i, subject in enumerate(subjects):
        due = start + i / rate
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        await slots.acquire()
        now = time.perf_counter()
        intake.lag.append(max(0.0, now - due))
        intake.first_sent = intake.first_sent or now
        intake.last_sent = now
        tasks.append(asyncio.create_task(one(subject)))
    await asyncio.gather(*tasks)
    await client.close()
    return intake


async def wait_for_count(
    pool: asyncpg.Pool, query: str, expected: int, within: float, *args: Any
) -> tuple[int, bool]:
    """Poll ``query`` (a count) until it reaches ``expected``; (last count, reached)."""
    deadline = time.monotonic() + within
    while True:
        count = int(await pool.fetchval(query, *args))
        if count >= expected:
            return count, True
        if time.monotonic() > deadline:
            return count, False
        await asyncio.sleep(0.1)


_CE_ID = "convert_from(header_values[array_position(header_names, 'ce_id')], 'UTF8')"


async def path_timestamps(pools: dict[str, asyncpg.Pool], subjects: Sequence[str]) -> list[Row]:
    """Per withdrawal of ``subjects``: the timestamps each service recorded along the path.

    consent recorded_at (consent process clock, at intake) → consent outbox published_at
    (relay claim) → the finding's recorded_at (the registry handler's transaction start; the
    registry keeps no inbox row for a consent event, ``Subscription.deduplicates``) → registry
    outbox published_at of the finding → lineage inbox processed_at → model_flags.recorded_at.
    Postgres ``now()`` is the transaction start; all clocks are the same host's.
    """
    consent = await pools["consent"].fetch(
        f"""
        SELECT e.consent_event_id::text AS id, e.recorded_at, o.published_at
        FROM consent_events e
        LEFT JOIN outbox o ON o.topic = $2 AND {_CE_ID} = e.consent_event_id::text
        WHERE e.subject_id = ANY($1::text[])
        """,
        list(subjects),
        CONSENT_TOPIC,
    )
    ids = [r["id"] for r in consent]
    # A finding's message id names the finding and its state's number (registry
    # ``_publish``): the first message whose body is the finding is the one lineage flagged.
    registry = await pools["registry"].fetch(
        f"""
        SELECT DISTINCT ON (f.finding_id)
               f.body->'cause_event_ids'->>0 AS cause, f.finding_id::text AS finding,
               f.recorded_at AS handled_at, o.published_at, {_CE_ID} AS message
        FROM findings f
        LEFT JOIN outbox o ON o.topic = $2
             AND convert_from(o.value, 'UTF8')::jsonb->>'finding_id' = f.finding_id::text
        WHERE f.body->'cause_event_ids'->>0 = ANY($1::text[])
        ORDER BY f.finding_id, o.id
        """,
        ids,
        FINDINGS_TOPIC,
    )
    lineage = await pools["lineage"].fetch(
        """
        SELECT m.finding, min(f.recorded_at) AS recorded_at, min(i.processed_at) AS handled_at
        FROM unnest($1::text[], $2::text[]) AS m(finding, message)
        JOIN model_flags f ON f.finding_id::text = m.finding
        LEFT JOIN inbox i ON i.event_id = m.message
        GROUP BY m.finding
        """,
        [r["finding"] for r in registry],
        [r["message"] for r in registry],
    )
    by_cause = {r["cause"]: r for r in registry}
    by_finding = {r["finding"]: r for r in lineage}
    rows = []
    for c in consent:
        finding = by_cause.get(c["id"])
        flag = by_finding.get(finding["finding"]) if finding else None
        rows.append(
            {
                "intake": c["recorded_at"],
                "consent_relayed": c["published_at"],
                "registry_handled": finding["handled_at"] if finding else None,
                "registry_relayed": finding["published_at"] if finding else None,
                "lineage_handled": flag["handled_at"] if flag else None,
                "flagged": flag["recorded_at"] if flag else None,
            }
        )
    return rows


def cpu_figures(used: dict[str, float | None], withdrawals: int) -> dict[str, Row]:
    """CPU per component: seconds, ms per withdrawal, and % of one CPU over the window."""
    wall = used.pop("wall") or 1.0
    return {
        name: {
            "seconds": seconds,
            "ms_per_withdrawal": seconds / withdrawals * 1e3 if withdrawals else None,
            "percent_of_one_cpu": seconds / wall * 100,
        }
        for name, seconds in used.items()
        if seconds is not None
    }


STAGES = (
    ("consent intake → relay claim", "intake", "consent_relayed"),
    ("relay → registry handler (Kafka hop)", "consent_relayed", "registry_handled"),
    ("registry handler → relay claim", "registry_handled", "registry_relayed"),
    ("relay → lineage handler (Kafka hop)", "registry_relayed", "lineage_handled"),
)


def _between(rows: Sequence[Row], start: str, end: str) -> list[float]:
    return [
        (r[end] - r[start]).total_seconds()
        for r in rows
        if r[start] is not None and r[end] is not None
    ]


async def timed_run(
    number: int,
    client: httpx.AsyncClient,
    stack: Stack,
    pools: dict[str, asyncpg.Pool],
    subjects: Sequence[str],
    flags_before: int,
    args: argparse.Namespace,
    cpu: CpuMeter,
) -> Row:
    cpu_before = await cpu.sample()
    intake = await post_withdrawals(stack, subjects, args.rate, args.concurrency)
    expected = flags_before + len(intake.accepted)
    timeout = 60 + DRAIN_S_PER_WITHDRAWAL * len(subjects)
    flags_now, complete = await wait_for_count(
        pools["lineage"], "SELECT count(*) FROM model_flags", expected, timeout
    )
    cpu_used = CpuMeter.usage(cpu_before, await cpu.sample())
    rows = await path_timestamps(pools, intake.accepted)
    flagged = [r for r in rows if r["flagged"] is not None]
    e2e = _between(flagged, "intake", "flagged")
    throughput = None
    if flagged:
        span = max(r["flagged"] for r in flagged) - min(r["intake"] for r in rows)
        throughput = len(flagged) / span.total_seconds()
    sending = intake.last_sent - intake.first_sent
    return {
        "run": number,
        "withdrawals": len(subjects),
        "accepted": len(intake.accepted),
        "failed": len(intake.failed),
        "failures_sample": intake.failed[:5],
        "flags": len(flagged),
        "complete": complete and len(flagged) == len(intake.accepted),
        "target_rate": args.rate,
        "sent_per_s": (len(subjects) - 1) / sending if sending > 0 else None,
        "schedule_lag_ms": summary_ms(intake.lag),
        "intake_ms": summary_ms(intake.latencies),
        "latency_ms": summary_ms(e2e),
        "throughput_per_s": throughput,
        "stages_ms": {name: summary_ms(_between(flagged, a, b)) for name, a, b in STAGES},
        "flags_total_after": flags_now,
        "cpu": cpu_figures(cpu_used, len(intake.accepted)),
    }


# ---------------------------------------------------------------------------------- stack


async def measure(bench: Bench, args: argparse.Namespace, log: Callable[[str], None]) -> Row:
    log("machine limits: Kafka …")
    kafka = await kafka_limits(bench.bootstrap, bench.tag, args.kafka_messages)
    log("machine limits: Postgres …")
    postgres = await postgres_limits(bench.url("scratch"))
    log("starting the four services …")
    stack = await asyncio.to_thread(bench.start_services)

    pools = {
        name: await asyncpg.create_pool(bench.url(name), min_size=1, max_size=2)
        for name in (*SERVICES, "scratch")
    }
    pids = {s.name: s.proc.pid for s in bench.services if s.proc is not None}
    if bench.broker is not None and bench.broker.pid is not None:
        pids["tansu"] = bench.broker.pid
    cpu = CpuMeter(pids, pools["scratch"], bench.databases[: len(SERVICES)])
    # Idle connections are dropped before uvicorn's 5 s keep-alive timeout closes them: reusing
    # one the server is closing fails the request (ReadError) after a pause between runs.
    limits = httpx.Limits(
        max_connections=args.concurrency,
        max_keepalive_connections=args.concurrency,
        keepalive_expiry=2.0,
    )
    try:
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            result = await _measure_on_stack(bench, args, log, stack, pools, client, cpu)
        result["memory_peak_mib"] = {name: peak_rss_mib(pid) for name, pid in pids.items()}
    finally:
        for pool in pools.values():
            await pool.close()
    return {**result, "limits": {"kafka": kafka, "postgres": postgres}}


async def _measure_on_stack(
    bench: Bench,
    args: argparse.Namespace,
    log: Callable[[str], None],
    stack: Stack,
    pools: dict[str, asyncpg.Pool],
    client: httpx.AsyncClient,
    cpu: CpuMeter,
) -> Row:
    n, k, warmup = args.withdrawals, args.runs, args.warmup
    subjects = subject_ids(bench.tag, 0, warmup + n * k)
    log("setup: policy …")
    await publish_policy(client, stack)
    await poll(lambda: policy_known_to_registry(client, stack), 60)
    log(f"setup: {len(subjects)} subjects, one private message each …")
    started = time.perf_counter()
    datasets = await register_subjects(client, stack, bench.tag, subjects)
    registration_s = time.perf_counter() - started
    await report_training_run(client, stack, bench.tag, datasets)

    log(f"warm-up: {warmup} withdrawals (topics, consumer groups, connection pools) …")
    warm = await post_withdrawals(stack, subjects[:warmup], 20, 8)
    flags, ok = await wait_for_count(
        pools["lineage"], "SELECT count(*) FROM model_flags", len(warm.accepted), 120
    )
    if not ok:
        raise RuntimeError(f"warm-up: {flags} of {len(warm.accepted)} flags after 120 s")

    runs: list[Row] = []
    for number in range(1, k + 1):
        batch = subjects[warmup + (number - 1) * n : warmup + number * n]
        log(f"run {number}/{k}: {n} withdrawals at {args.rate:g}/s …")
        result = await timed_run(number, client, stack, pools, batch, flags, args, cpu)
        runs.append(result)
        flags = result["flags_total_after"]
        print_run(result)
        if not result["complete"]:
            log(f"run {number} incomplete ({result['flags']} flags): no further runs")
            break
        # Let deletion (off the measured path, same machine) drain before the next run.
        await wait_for_count(
            pools["deletion"],
            "SELECT count(*) FROM inbox WHERE topic = $1",
            flags,
            60 + DRAIN_S_PER_WITHDRAWAL * n,
            FLAGS_TOPIC,
        )
    return {
        "setup": {"subjects": len(subjects), "datasets": len(datasets), "seconds": registration_s},
        "runs": runs,
        "median": medians(runs),
    }


def medians(runs: Sequence[Row]) -> Row:
    """The median across runs of every per-run figure (a median of p99s, not a pooled p99)."""

    def over(*path: str) -> float | None:
        values = []
        for run in runs:
            value: Any = run
            for key in path:
                value = value[key]
            values.append(value)
        return median_of(values)

    quantiles = ("p50", "p90", "p99", "max")
    return {
        "sent_per_s": over("sent_per_s"),
        "throughput_per_s": over("throughput_per_s"),
        "latency_ms": {q: over("latency_ms", q) for q in quantiles},
        "intake_ms": {q: over("intake_ms", q) for q in quantiles},
        "stages_ms": {
            name: {q: over("stages_ms", name, q) for q in quantiles} for name, _, _ in STAGES
        },
        "cpu": {
            name: {f: over("cpu", name, f) for f in ("ms_per_withdrawal", "percent_of_one_cpu")}
            for name in runs[0]["cpu"]
            if all(name in r["cpu"] for r in runs)
        },
    }


# --------------------------------------------------------------------------------- output


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


RUN_HEADER = (
    f"{'run':>6} {'sent/s':>8} {'intake p50/p99 ms':>18} {'e2e p50':>8} {'p90':>7} {'p99':>7}"
    f" {'max':>7} {'flags/s':>8}  flags"
)


def _run_line(label: str, r: Row) -> str:
    lat, intake = r["latency_ms"], r["intake_ms"]
    flags = f"{r['flags']}/{r['withdrawals']}" if "flags" in r else ""
    return (
        f"{label:>6} {_f(r['sent_per_s'], 1):>8}"
        f" {_f(intake['p50'], 1) + ' / ' + _f(intake['p99'], 1):>18}"
        f" {_f(lat['p50']):>8} {_f(lat['p90']):>7} {_f(lat['p99']):>7} {_f(lat['max']):>7}"
        f" {_f(r['throughput_per_s'], 1):>8}  {flags}"
    )


def print_run(r: Row) -> None:
    print(RUN_HEADER)
    print(_run_line(str(r["run"]), r))
    lag = r["schedule_lag_ms"]
    if (lag["p99"] or 0) > 50:
        print(f"{'':>6} client fell behind its schedule: lag p99 {_f(lag['p99'])} ms")


def _limit(label: str, rate: float, unit: str, each_ms: float | None = None) -> str:
    each = f" ({_f(each_ms, 2)} ms each)" if each_ms is not None else ""
    return f"  {label:<44}{_f(rate):>10} {unit}{each}"


def report(result: Row, meta: Row) -> str:
    lines = [
        "",
        f"ConsentTrace withdrawal → model flag   {meta['started_at']}",
        f"N={meta['withdrawals']} withdrawals/run at {meta['rate']:g}/s target,"
        f" {len(result['runs'])} run(s), ≤{meta['concurrency']} requests in flight",
        f"broker {meta['broker']}   Postgres {result['limits']['postgres']['server_version']}"
        f" ({meta['postgres']})   {meta['cpus']} CPUs   load {meta['load_before']}",
        *(
            [f"service environment: {' '.join(f'{k}={v}' for k, v in meta['service_env'].items())}"]
            if meta["service_env"]
            else []
        ),
        "",
        RUN_HEADER,
        *(_run_line(str(r["run"]), r) for r in result["runs"]),
        _run_line("median", result["median"]),
        "",
        "where the time goes (median over runs; p50 / p99 ms)",
    ]
    for name, _, _ in STAGES:
        stage = result["median"]["stages_ms"][name]
        lines.append(f"  {name:<40} {_f(stage['p50'], 1):>8} / {_f(stage['p99'], 1)}")
    lines += ["", "CPU while a run was in flight (median; CPU ms per withdrawal, % of one CPU)"]
    for name, figures in result["median"]["cpu"].items():
        lines.append(
            f"  {name:<40} {_f(figures['ms_per_withdrawal'], 2):>8} ms"
            f" {_f(figures['percent_of_one_cpu']):>6} %"
        )
    memory = result.get("memory_peak_mib", {})
    lines += ["", "peak RSS (VmHWM, MiB): " + ", ".join(f"{k} {_f(v)}" for k, v in memory.items())]
    kafka, pg = result["limits"]["kafka"], result["limits"]["postgres"]
    commit = kafka["commit"]
    hop, hop10 = kafka["hop"], kafka["hop_fetch_wait_10ms"]
    lines += [
        "",
        "machine limits (same broker, same Postgres, this run)",
        _limit("Kafka produce, send + gather (relay-like)", kafka["produce_send_per_s"], "msg/s"),
        _limit("Kafka produce, batch API", kafka["produce_batch_per_s"], "msg/s"),
        _limit("Kafka consume, no group", kafka["consume_per_s"], "msg/s"),
        f"  {'Kafka one hop → getone, fetch wait 500 ms':<44}"
        f"{_f(hop['p50'], 1):>10} / {_f(hop['p99'], 1)} ms (p50 / p99)",
        f"  {'Kafka one hop → getone, fetch wait 10 ms':<44}"
        f"{_f(hop10['p50'], 1):>10} / {_f(hop10['p99'], 1)} ms (p50 / p99)",
        _limit("Kafka offset commit, one at a time", commit["per_s"], "/s", commit["mean_ms"])
        if "per_s" in commit
        else f"  {'Kafka offset commit, one at a time':<44}failed: {commit['error']}",
        _limit(
            "Postgres INSERT + COMMIT, 1 row per txn",
            pg["insert_commit_per_s"],
            "/s",
            pg["insert_commit_mean_ms"],
        ),
        _limit("Postgres COPY", pg["copy_rows_per_s"], "rows/s"),
        f"  (synchronous_commit={pg['synchronous_commit']}, fsync={pg['fsync']})",
    ]
    return "\n".join(lines)


def write_json(result: Row, meta: Row) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"withdrawal_latency-{meta['started_at'].replace(':', '')}.json"
    path.write_text(json.dumps({"meta": meta, **result}, indent=2, default=str) + "\n")
    return path


# ----------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Consent withdrawal → model flag latency and throughput on the real stack."
    )
    parser.add_argument("--withdrawals", "-n", type=int, default=2000, help="per run (2000)")
    parser.add_argument("--rate", "-r", type=float, default=200, help="target withdrawals/s (200)")
    parser.add_argument("--runs", "-k", type=int, default=3, help="timed runs (3)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight (64)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed withdrawals first (20)")
    parser.add_argument(
        "--kafka-messages", type=int, default=100_000, help="for the raw Kafka limits (100000)"
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the four services, e.g. OUTBOX_POLL_INTERVAL_S=1 (repeatable)",
    )
    parser.add_argument("--keep-logs", action="store_true", help="keep the service logs")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.service_env):
        parser.error("--service-env takes NAME=VALUE")
    if args.withdrawals < 1 or args.runs < 1 or args.rate <= 0 or args.concurrency < 1:
        parser.error("--withdrawals, --runs, --concurrency must be ≥ 1 and --rate > 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    tag = uuid.uuid4().hex[:8]
    work_dir = Path(tempfile.mkdtemp(prefix=f"ct-bench-{tag}-"))
    service_env = dict(item.split("=", 1) for item in args.service_env)
    bench = Bench(tag, work_dir, postgres_server_url(), service_env=service_env)
    meta: Row = {
        **run_meta(),
        "withdrawals": args.withdrawals,
        "rate": args.rate,
        "runs": args.runs,
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "postgres": bench.server_url.rsplit("@", 1)[-1],
        "service_env": service_env,
    }
    with bench_run(bench.stop, work_dir, keep_logs=args.keep_logs) as run:
        log(f"infrastructure (logs in {work_dir}) …")
        bench.start_infrastructure()
        meta["broker"] = f"Tansu {bench.bootstrap} (embedded)" if bench.broker else bench.bootstrap
        result = asyncio.run(measure(bench, args, log))
        meta["load_after"] = load_average()
        print(report(result, meta))
        print(f"\nJSON: {write_json(result, meta).relative_to(REPO_ROOT)}")
        run.failed = False
    return 1 if run.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
