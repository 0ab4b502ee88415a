"""The pre-flight eligibility filter at scale: 1,000,000 records over HTTP, ~100,000
subjects of which ~10% have consent histories.

    python bench/preflight_filter.py [--records N] [--subjects S] [--with-history F]
                                     [--runs K] [--policy FILE ...]

Starts a Tansu broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set), fresh databases on the
Postgres of ``DATABASE_URL`` (else 127.0.0.1:5432) and the registry service as a process,
the way ``snapshot_registration.py`` does (whose helpers it reuses). Then:

1. **Projections (untimed).** The policies (default ``policies/genai-training-2024.yaml``)
   and the consent events of every ``1/F``-th subject (1 or 2 events each: grants, some
   withdrawn, some for private messages only) are written to the registry's database with
   the registry's own repository, exactly as its consumers would, instead of through the
   broker (tens of thousands of events would take longer to consume than the bench runs).
2. **The body (untimed).** N NDJSON records, as a registration upload would send them,
   spread over S subjects; a subject's jurisdiction is fixed (US, US-CA, GB, DE, FR, BR).
3. **Yardsticks, in this process (no HTTP, no database):** framing and validating the N
   lines alone (``NdjsonFramer`` + ``parse_record_lines``, what any NDJSON endpoint pays);
   and deciding the parsed rows with a ``DecisionCache`` whose histories are in memory.
4. **HTTP, K runs each:** ``POST /api/v1/eligibility/filter?purpose=P`` (the eligible lines
   streamed back, read to the end) and the same with ``report=summary``. Each run is a new
   request: its caches start empty. Wall time as the client saw it, from the first byte
   sent to the last byte received; time to the first byte of the answer; service and
   Postgres CPU (``/proc``); the service's peak RSS.

Records/s = N ÷ wall seconds. Figures are the median of the K runs. Not a test: nothing
here asserts (beyond the runs agreeing with each other).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from _common import (
    CpuMeter,
    bench_run,
    load_average,
    peak_rss_mib,
    postgres_server_url,
    rss_mib,
    run_meta,
    server_version,
    write_result,
)
from snapshot_registration import Bench

from contracts.events import ConsentEvent, ConsentEvidence
from contracts.policy import PolicyDocument
from contracts.vocabulary import ConsentMechanism, ConsentState
from services.eligibility.documents import load_policy
from services.registry.adapters.repository import RegistryRepository
from services.registry.domain.ndjson import NdjsonFramer
from services.registry.domain.preflight import DecisionCache, FilterSummary, readings_in_force
from services.registry.domain.snapshots import RecordRow, parse_record_lines
from services.runtime.db import init_connection

REPO_ROOT = Path(__file__).resolve().parents[1]
FILTER = "/api/v1/eligibility/filter"
PURPOSE = "ai.training.generative"
CATEGORIES = ("user.content.public", "user.content.private", "user.contact", "user.behavior")
JURISDICTIONS = ("US",) * 12 + ("US-CA",) * 2 + ("GB",) * 2 + ("DE",) * 2 + ("FR", "BR")
GRANTED = datetime(2024, 10, 1, tzinfo=UTC)
WITHDRAWN = datetime(2025, 3, 1, tzinfo=UTC)
BODY_WRITE = 1 << 20

Row = dict[str, Any]


# ----------------------------------------------------------------------------- the data


def subject_of(tag: str, i: int, subjects: int) -> tuple[str, int]:
    """Records spread over ``subjects`` subjects, not in subject order."""
    n = (i * 7919) % subjects
    return f"pf{tag}-s{n:07d}", n


def jurisdiction_of(n: int) -> str:
    return JURISDICTIONS[(n * 31) % len(JURISDICTIONS)]


def body_lines(tag: str, records: int, subjects: int) -> list[bytes]:
    lines = []
    for i in range(records):
        subject, n = subject_of(tag, i, subjects)
        lines.append(
            (
                f'{{"record_id":"pf{tag}-{i:09d}","source_system":"bench",'
                f'"subject_id":"{subject}","category":"{CATEGORIES[(i + i // subjects) % 4]}",'
                f'"jurisdiction":"{jurisdiction_of(n)}","collected_at":"2024-08-01T12:00:00Z",'
                f'"content_digest":"sha256:{i:064x}"}}\n'
            ).encode()
        )
    return lines


def histories(tag: str, subjects: int, every: int) -> dict[str, list[ConsentEvent]]:
    """Every ``every``-th subject: a grant; a third of them withdraw later; a third grant
    private messages only."""
    result: dict[str, list[ConsentEvent]] = {}
    for n in range(0, subjects, every):
        subject = f"pf{tag}-s{n:07d}"
        kind = (n // every) % 3
        categories = ("user.content.private",) if kind == 2 else ("user",)
        events = [_event(subject, n, 0, ConsentState.GRANTED, categories, GRANTED)]
        if kind == 1:
            events.append(_event(subject, n, 1, ConsentState.WITHDRAWN, ("user",), WITHDRAWN))
        result[subject] = events
    return result


def _event(
    subject: str,
    n: int,
    k: int,
    state: ConsentState,
    categories: tuple[str, ...],
    at: datetime,
) -> ConsentEvent:
    return ConsentEvent(
        consent_event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{subject}-{k}"),
        subject_id=subject,
        jurisdiction=jurisdiction_of(n),
        purpose="ai.training",
        data_categories=categories,
        state=state,
        mechanism=ConsentMechanism.EXPLICIT_OPT_IN
        if state is ConsentState.GRANTED
        else ConsentMechanism.OPT_OUT,
        policy_version="bench",
        effective_at=at,
        recorded_at=at,
        source_system="bench",
        evidence=ConsentEvidence(collection_point="bench"),
    )


async def project(
    dsn: str,
    documents: Sequence[PolicyDocument],
    events: dict[str, list[ConsentEvent]],
) -> int:
    """Write the projections with the registry's own repository (as its consumers would)."""
    conn = await asyncpg.connect(dsn)
    try:
        await init_connection(conn)  # as the service's pool does
        repo = RegistryRepository(conn)
        async with conn.transaction():
            for document in documents:
                await repo.save_policy(document, datetime(2024, 9, 18, tzinfo=UTC))
            count = 0
            for subject_events in events.values():
                for event in subject_events:
                    await repo.save_consent(event)
                    count += 1
        await conn.execute("ANALYZE")
        return count
    finally:
        await conn.close()


# ----------------------------------------------------------------------------- yardsticks


def parse_alone(lines: Sequence[bytes], block: int) -> tuple[float, list[list[RecordRow]]]:
    """Framing and validation of every line, as the endpoint does it, in this process."""
    body = b"".join(lines)
    started = time.perf_counter()
    framer = NdjsonFramer()
    blocks = []
    for start in range(0, len(body), BODY_WRITE):
        first, framed = framer.feed(body[start : start + BODY_WRITE])
        for at in range(0, len(framed), block):
            blocks.append(parse_record_lines(framed[at : at + block], first + at, 0))
    first, framed = framer.finish()
    if framed:
        blocks.append(parse_record_lines(framed, first, 0))
    return time.perf_counter() - started, blocks


def decide_alone(
    blocks: Sequence[Sequence[RecordRow]],
    documents: Sequence[PolicyDocument],
    events: dict[str, list[ConsentEvent]],
    at: datetime,
) -> tuple[float, FilterSummary, int]:
    """Deciding the parsed rows with the filter's cache, histories in memory."""
    versions = [(d, datetime(2024, 9, 18, tzinfo=UTC)) for d in documents]
    started = time.perf_counter()
    cache = DecisionCache(readings_in_force(versions, PURPOSE, at), PURPOSE, at)
    summary = FilterSummary()
    for rows in blocks:
        unseen = cache.unseen(row[4] for row in rows)
        cache.learn(unseen, {s: events[s] for s in unseen if s in events})
        summary.count_rows(rows, cache.decide_rows(rows))
    return time.perf_counter() - started, summary, cache.engine_runs


# ----------------------------------------------------------------------------- HTTP runs


@dataclass
class Run:
    mode: str
    wall_s: float
    first_byte_s: float
    answer_bytes: int
    records: int
    eligible: int
    cpu: dict[str, float | None]


async def filter_run(
    client: httpx.AsyncClient, meter: CpuMeter, body: bytes, mode: str, at: datetime
) -> Run:
    async def pieces() -> AsyncIterator[bytes]:
        for start in range(0, len(body), BODY_WRITE):
            yield body[start : start + BODY_WRITE]

    params = {"purpose": PURPOSE, "at": at.isoformat()}
    if mode == "summary":
        params["report"] = "summary"
    before = await meter.sample()
    started = time.perf_counter()
    first_byte: float | None = None
    size = 0
    chunks: list[bytes] = []
    async with client.stream(
        "POST",
        FILTER,
        params=params,
        content=pieces(),
        headers={"Content-Type": "application/x-ndjson"},
    ) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"{mode}: {response.status_code} {response.text[:500]}")
        async for chunk in response.aiter_raw():
            if first_byte is None:
                first_byte = time.perf_counter() - started
            size += len(chunk)
            if mode == "summary":
                chunks.append(chunk)
        headers = response.headers
    wall = time.perf_counter() - started
    after = await meter.sample()
    records, eligible = int(headers["x-records"]), int(headers["x-eligible"])
    if mode == "summary":
        summary = json.loads(b"".join(chunks))
        if (summary["records"], summary["eligible"]) != (records, eligible):
            raise RuntimeError(f"summary {summary} disagrees with its headers")
    return Run(
        mode, wall, first_byte or wall, size, records, eligible, CpuMeter.usage(before, after)
    )


# ----------------------------------------------------------------------------- run


async def measure(bench: Bench, args: argparse.Namespace, log: Callable[[str], None]) -> Row:
    n, subjects = args.records, args.subjects
    documents = [load_policy(Path(p)) for p in args.policy]
    at = datetime.now(UTC)
    log(f"NDJSON body: {n:,} records over {subjects:,} subjects (untimed) …")
    lines = body_lines(bench.tag, n, subjects)
    body = b"".join(lines)
    events = histories(bench.tag, subjects, args.with_history)
    body_mib = len(body) / 1048576
    log(f"  {body_mib:,.0f} MiB; {len(events):,} subjects with consent histories")

    log(f"broker, database and the registry (logs in {bench.work_dir}) …")
    service = await asyncio.to_thread(bench.start, dict(args.service_env))
    assert service.proc is not None
    pid = service.proc.pid
    rss_idle = rss_mib(pid)

    log("projections: policies and consent events (untimed) …")
    event_count = await project(bench.url("registry"), documents, events)
    log(f"  {len(documents)} policy versions, {event_count:,} consent events")

    log("yardsticks in this process …")
    parse_s, blocks = parse_alone(lines, 10_000)
    decide_s, local, engine_runs = decide_alone(blocks, documents, events, at)
    del blocks
    log(
        f"  framing + validation {n / parse_s:,.0f} records/s;"
        f" decisions {n / decide_s:,.0f} records/s ({engine_runs:,} engine runs)"
    )

    admin = await asyncpg.create_pool(bench.url("registry"), min_size=1, max_size=2)
    meter = CpuMeter({"registry service": pid}, admin, [f"bench_{bench.tag}_registry"])
    runs: dict[str, list[Run]] = {"lines": [], "summary": []}
    try:
        limits = httpx.Limits(max_connections=4)
        async with httpx.AsyncClient(base_url=service.url, timeout=600, limits=limits) as client:
            log("warm-up: 10,000 records …")
            await filter_run(client, meter, b"".join(lines[:10_000]), "lines", at)
            for k in range(args.runs):
                for mode in ("lines", "summary"):
                    run = await filter_run(client, meter, body, mode, at)
                    runs[mode].append(run)
                    log(
                        f"  run {k + 1} {mode}: {run.wall_s:.2f} s, {n / run.wall_s:,.0f}"
                        f" records/s, first byte after {run.first_byte_s:.2f} s,"
                        f" {run.eligible:,} eligible, {run.answer_bytes / 1048576:,.0f} MiB back"
                    )
    finally:
        await admin.close()
    outcomes = {(r.records, r.eligible) for rs in runs.values() for r in rs}
    if outcomes != {(n, local.eligible)}:
        raise RuntimeError(f"runs disagree: {outcomes}, in-process {(n, local.eligible)}")
    return {
        "records": n,
        "subjects": subjects,
        "subjects_with_history": len(events),
        "consent_events": event_count,
        "policies": [f"{d.policy_id} {d.version}" for d in documents],
        "purpose": PURPOSE,
        "at": at.isoformat(),
        "body_mib": body_mib,
        "eligible": local.eligible,
        "excluded_by_reason": dict(local.excluded_by_reason),
        "yardsticks": {
            "parse_s": parse_s,
            "parse_per_s": n / parse_s,
            "decide_s": decide_s,
            "decide_per_s": n / decide_s,
            "engine_runs": engine_runs,
        },
        "runs": {
            mode: [
                {
                    "wall_s": r.wall_s,
                    "records_per_s": n / r.wall_s,
                    "first_byte_s": r.first_byte_s,
                    "answer_bytes": r.answer_bytes,
                    "cpu_s": r.cpu,
                }
                for r in rs
            ]
            for mode, rs in runs.items()
        },
        "rss_mb": {"idle": rss_idle, "peak": peak_rss_mib(pid), "at_end": rss_mib(pid)},
    }


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def report(result: Row, meta: Row) -> str:
    n = result["records"]
    y = result["yardsticks"]
    lines = [
        "",
        f"ConsentTrace pre-flight eligibility filter   {meta['started_at']}",
        f"{n:,} records ({result['body_mib']:,.0f} MiB NDJSON), {result['subjects']:,} subjects,"
        f" {result['subjects_with_history']:,} with consent histories"
        f" ({result['consent_events']:,} events); policies {', '.join(result['policies'])};"
        f" purpose {result['purpose']}",
        f"broker {meta['broker']}; Postgres {meta['postgres_version']}; {meta['cpus']} CPUs;"
        f" load {meta['load_before']}",
        "",
        f"eligible {result['eligible']:,}, excluded"
        f" {', '.join(f'{k} {v:,}' for k, v in sorted(result['excluded_by_reason'].items()))}",
        "",
        f"in this process: framing + validation {_f(y['parse_per_s'])} records/s"
        f" ({y['parse_s']:.2f} s); decisions with the cache {_f(y['decide_per_s'])} records/s"
        f" ({y['decide_s']:.2f} s, {y['engine_runs']:,} engine runs)",
        "",
        f"{'HTTP, median of ' + str(len(result['runs']['lines'])):<24} {'wall s':>7}"
        f" {'records/s':>10} {'first byte s':>12} {'answer MiB':>10} {'service CPU s':>13}"
        f" {'Postgres CPU s':>14}",
    ]
    for mode, runs in result["runs"].items():
        label = "eligible lines" if mode == "lines" else "report=summary"
        cpu = [r["cpu_s"] for r in runs]
        lines.append(
            f"{label:<24} {_f(_median([r['wall_s'] for r in runs]), 2):>7}"
            f" {_f(_median([r['records_per_s'] for r in runs])):>10}"
            f" {_f(_median([r['first_byte_s'] for r in runs]), 2):>12}"
            f" {_f(_median([r['answer_bytes'] / 1048576 for r in runs])):>10}"
            f" {_f(_median([c.get('registry service') for c in cpu]), 1):>13}"
            f" {_f(_median([c.get('postgres (our databases)') for c in cpu]), 1):>14}"
        )
    for mode, runs in result["runs"].items():
        lines.append(
            f"  {mode} runs (records/s): " + ", ".join(f"{r['records_per_s']:,.0f}" for r in runs)
        )
    rss = result["rss_mb"]
    lines += [
        "",
        f"registry service RSS: {_f(rss['idle'])} MiB idle, peak (VmHWM) {_f(rss['peak'])} MiB",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="The pre-flight eligibility filter at scale.")
    parser.add_argument("--records", "-n", type=int, default=1_000_000)
    parser.add_argument("--subjects", "-s", type=int, default=100_000)
    parser.add_argument(
        "--with-history", type=int, default=10, metavar="F", help="every F-th subject has events"
    )
    parser.add_argument("--runs", "-k", type=int, default=3, help="timed runs per mode")
    parser.add_argument(
        "--policy",
        action="append",
        default=None,
        help="policy file (repeatable); default policies/genai-training-2024.yaml",
    )
    parser.add_argument(
        "--service-env", action="append", default=[], metavar="NAME=VALUE", help="repeatable"
    )
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.service_env):
        parser.error("--service-env takes NAME=VALUE")
    args.service_env = [item.split("=", 1) for item in args.service_env]
    args.policy = args.policy or [str(REPO_ROOT / "policies" / "genai-training-2024.yaml")]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    tag = uuid.uuid4().hex[:8]
    work_dir = Path(tempfile.mkdtemp(prefix=f"ct-bench-preflight-{tag}-"))
    bench = Bench(tag, work_dir, postgres_server_url())
    meta: Row = {
        **run_meta(),
    }
    with bench_run(bench.stop, work_dir, keep_logs=args.keep_logs) as run:
        result = asyncio.run(measure(bench, args, log))
        meta["broker"] = f"Tansu {bench.bootstrap} (embedded)" if bench.broker else bench.bootstrap
        meta["postgres_version"] = asyncio.run(server_version(bench.url("scratch")))
        meta["load_after"] = load_average()
        print(report(result, meta))
        print(f"\nJSON: {write_result('preflight_filter', result, meta).relative_to(REPO_ROOT)}")
        run.failed = False
    return 1 if run.failed else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
