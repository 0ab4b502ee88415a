"""Snapshot registration at scale: a 1,000,000-record dataset version over HTTP, and the
subject query with 10M+ memberships present.

    python bench/snapshot_registration.py [--records N] [--chunk C] [--parallel P]
                                          [--memberships M (0: no subject query)]

Starts a Tansu broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set), two fresh databases on
the Postgres of ``DATABASE_URL`` (else 127.0.0.1:5432: the registry's and a scratch one) and
the registry service as a process, like the other benches (whose helpers it reuses). Then:

1. **COPY alone** (the yardstick): ``copy_records_to_table`` of N pre-built rows from this
   process into a table shaped like the registry's staging table (UNLOGGED, no index), and
   into a logged table shaped like ``records`` with its three indexes (what registering a
   new record writes, at best).
2. **Chunked upload**, N new records: ``POST …/uploads``, ``PUT …/chunks/{n}`` of C records
   each (P in flight, 4 by default: each chunk registers its records when it arrives, so
   with more chunks in flight than CPUs the service parses one while Postgres registers
   others), ``POST …/seal``. Upload, seal and end to end timed apart.
3. **One-shot stream**, N other new records: ``POST …/stream`` (header + records).
4. **Re-registration**: the records of 2 again, as a new version (every record exists:
   the chunks check and share them instead of inserting).
5. **10M+ memberships** are then built *directly in the registry's database* with SQL
   (``generate_series``: generated records and versions, untimed), and analyzed.
6. **Subject query**: ``GET /api/v1/dataset-versions?subject_id=S`` for 1,000 random
   subjects (sequential, one client), p50/p99; the same SQL straight on Postgres; and the
   plan (EXPLAIN ANALYZE) of one of them.

Records/s = records ÷ wall seconds of the phase, as the client saw it. The NDJSON bodies
are generated before the clock starts, and each run starts once the registry has evaluated
the versions sealed before (its evaluation worker runs in the service process) and after a
CHECKPOINT, so that no run pays for the evaluation or the WAL of the one before (the COPY
yardstick writes ~0.5 GB). CPU per phase comes from ``/proc`` (service process, its Postgres
backends), and the service's peak RSS is ``VmHWM`` from ``/proc/<pid>/status``.
Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from _common import (
    CpuMeter,
    bench_run,
    drop_and_stop,
    load_average,
    peak_rss_mib,
    postgres_server_url,
    rss_mib,
    run_meta,
    server_version,
    summary_ms,
    write_result,
)

from services.registry.adapters.snapshots import VERSIONS_OF_SUBJECT_SQL
from services.runtime import embedded
from services.runtime.testing import ServiceProcess, migrate_service

REPO_ROOT = Path(__file__).resolve().parents[1]
API = "/api/v1/dataset-versions"
CATEGORIES = ("user.content.private", "user.content.public", "user.contact", "user.behavior")
COLLECTED = datetime(2024, 8, 1, 12, tzinfo=UTC)
TARGET_PER_S = 100_000

Row = dict[str, Any]


# ----------------------------------------------------------------------------- the data


def subject_of(prefix: str, i: int, subjects: int) -> str:
    """Records spread over ``subjects`` subjects, not in subject order."""
    return f"{prefix}-s{(i * 7919) % subjects:07d}"


def record_line(prefix: str, i: int, subjects: int) -> bytes:
    digest = hashlib.sha256(f"{prefix}-{i}".encode()).hexdigest()
    return (
        f'{{"record_id":"{prefix}-{i:09d}","source_system":"bench",'
        f'"subject_id":"{subject_of(prefix, i, subjects)}","category":"{CATEGORIES[i % 4]}",'
        f'"jurisdiction":"US","collected_at":"2024-08-01T12:00:00Z",'
        f'"content_digest":"sha256:{digest}"}}\n'
    ).encode()


def ndjson_chunks(prefix: str, records: int, chunk: int, subjects: int) -> list[bytes]:
    return [
        b"".join(
            record_line(prefix, i, subjects) for i in range(start, min(start + chunk, records))
        )
        for start in range(0, records, chunk)
    ]


def header(name: str, version: str) -> Row:
    return {
        "dataset": {"namespace": "s3://bench", "name": name, "version": version},
        "purpose": "ai.training.generative",
        "created_at": datetime.now(UTC).isoformat(),
    }


# ----------------------------------------------------------------------------- stack


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

    def start(self, service_env: dict[str, str]) -> ServiceProcess:
        explicit = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        if explicit:
            self.bootstrap = explicit
        else:
            self.broker = embedded.TansuBroker(log_path=self.work_dir / "tansu.log").start()
            self.bootstrap = self.broker.bootstrap_servers
        self.databases = [f"bench_{self.tag}_{n}" for n in ("registry", "scratch")]
        embedded.create_databases_sync(self.server_url, self.databases)
        migrate_service("registry", self.url("registry"))
        idempotence = self.broker is None and embedded.env_flag(
            os.environ, "KAFKA_ENABLE_IDEMPOTENCE", True
        )
        self.service = ServiceProcess(
            "registry",
            self.url("registry"),
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


# ----------------------------------------------------------------------------- COPY alone


async def copy_alone(dsn: str, records: int, subjects: int) -> Row:
    """The same rows as the staging table receives, straight from this process."""
    rows = [
        (
            i // 100_000,
            i % 100_000 + 1,
            "bench",
            f"copy-{i:09d}",
            subject_of("copy", i, subjects),
            CATEGORIES[i % 4],
            "US",
            COLLECTED,
            "sha256:" + hashlib.sha256(f"copy-{i}".encode()).hexdigest(),
        )
        for i in range(records)
    ]
    columns = [
        "chunk",
        "line",
        "source_system",
        "record_id",
        "subject_id",
        "category",
        "jurisdiction",
        "collected_at",
        "content_digest",
    ]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            CREATE UNLOGGED TABLE copy_staging (chunk integer NOT NULL, line integer NOT NULL,
                source_system text COLLATE "C" NOT NULL, record_id text COLLATE "C" NOT NULL,
                subject_id text COLLATE "C" NOT NULL, category text COLLATE "C" NOT NULL,
                jurisdiction text NOT NULL, collected_at timestamptz NOT NULL,
                content_digest text NOT NULL);
            CREATE TABLE copy_records (record_pk bigserial PRIMARY KEY,
                source_system text COLLATE "C" NOT NULL, record_id text COLLATE "C" NOT NULL,
                subject_id text COLLATE "C" NOT NULL, category text COLLATE "C" NOT NULL,
                jurisdiction text NOT NULL, collected_at timestamptz NOT NULL,
                content_digest text NOT NULL, UNIQUE (source_system, record_id));
            CREATE INDEX ON copy_records (subject_id, category);
            CHECKPOINT;
            """
        )
        started = time.perf_counter()
        await conn.copy_records_to_table("copy_staging", records=rows, columns=columns)
        staging_s = time.perf_counter() - started
        await conn.execute("CHECKPOINT")
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "copy_records", records=[r[2:] for r in rows], columns=columns[2:]
        )
        records_s = time.perf_counter() - started
        return {
            "records": records,
            "staging_like_s": staging_s,
            "staging_like_per_s": records / staging_s,
            "records_like_s": records_s,
            "records_like_per_s": records / records_s,
        }
    finally:
        await conn.close()


# ----------------------------------------------------------------------------- registration


@dataclass
class Phase:
    name: str
    records: int
    wall_s: float
    cpu: dict[str, float | None]


async def measured(
    meter: CpuMeter, name: str, records: int, work: Callable[[], Any]
) -> tuple[Phase, Any]:
    before = await meter.sample()
    started = time.perf_counter()
    result = await work()
    wall = time.perf_counter() - started
    after = await meter.sample()
    return Phase(name, records, wall, CpuMeter.usage(before, after)), result


SETTLE_TIMEOUT_S = 900


async def settle(postgres: asyncpg.Pool) -> None:
    """Wait until the registry has evaluated every sealed version: its evaluation worker
    runs in the service process after each seal (``evaluation_jobs``), and a run must not
    pay for the evaluation of the one before."""
    if not await postgres.fetchval("SELECT to_regclass('evaluation_jobs') IS NOT NULL"):
        return
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while await postgres.fetchval("SELECT count(*) FROM evaluation_jobs"):
        if time.monotonic() > deadline:
            print("evaluation jobs still pending: measuring anyway", file=sys.stderr)
            return
        await asyncio.sleep(0.2)


async def chunked_upload(
    client: httpx.AsyncClient,
    meter: CpuMeter,
    name: str,
    version: str,
    chunks: Sequence[bytes],
    records: int,
    parallel: int,
) -> list[Phase]:
    await settle(meter.postgres)
    await meter.postgres.execute("CHECKPOINT")  # no run pays for the WAL of the one before
    started = time.perf_counter()  # end to end: open, chunks, seal
    opened = await client.post(f"{API}/uploads", json=header(name, version))
    opened.raise_for_status()
    upload_id = opened.json()["upload_id"]
    slots = asyncio.Semaphore(parallel)

    async def put(n: int, body: bytes) -> None:
        async with slots:
            response = await client.put(
                f"{API}/uploads/{upload_id}/chunks/{n}",
                content=body,
                headers={"Content-Type": "application/x-ndjson"},
            )
            if response.status_code not in (200, 201):
                raise RuntimeError(f"chunk {n}: {response.status_code} {response.text[:500]}")

    async def upload() -> None:
        await asyncio.gather(*(put(n, body) for n, body in enumerate(chunks)))

    async def seal() -> Row:
        response = await client.post(f"{API}/uploads/{upload_id}/seal")
        if response.status_code != 200:
            raise RuntimeError(f"seal: {response.status_code} {response.text[:500]}")
        body: Row = response.json()
        return body

    up, _ = await measured(meter, "upload", records, upload)
    sealed_phase, sealed = await measured(meter, "seal", records, seal)
    total = time.perf_counter() - started
    if sealed["record_count"] != records:
        raise RuntimeError(f"sealed {sealed['record_count']} records, expected {records}")
    end = Phase("end to end", records, total, _add(up.cpu, sealed_phase.cpu))
    return [up, sealed_phase, end]


async def one_shot_stream(
    client: httpx.AsyncClient,
    meter: CpuMeter,
    name: str,
    chunks: Sequence[bytes],
    records: int,
) -> Phase:
    async def body() -> AsyncIterator[bytes]:
        yield json.dumps(header(name, "v1")).encode() + b"\n"
        for chunk in chunks:
            for start in range(0, len(chunk), 1 << 20):  # 1 MiB writes
                yield chunk[start : start + (1 << 20)]

    async def post() -> Row:
        response = await client.post(
            f"{API}/stream", content=body(), headers={"Content-Type": "application/x-ndjson"}
        )
        if response.status_code != 201:
            raise RuntimeError(f"stream: {response.status_code} {response.text[:500]}")
        result: Row = response.json()
        return result

    await settle(meter.postgres)
    await meter.postgres.execute("CHECKPOINT")
    phase, sealed = await measured(meter, "stream (upload + seal)", records, post)
    if sealed["record_count"] != records:
        raise RuntimeError(f"sealed {sealed['record_count']} records, expected {records}")
    return phase


def _add(a: dict[str, float | None], b: dict[str, float | None]) -> dict[str, float | None]:
    return {k: (a[k] or 0.0) + (b.get(k) or 0.0) if a[k] is not None else None for k in a}


# ----------------------------------------------------------------------------- 10M memberships


async def build_memberships(dsn: str, target: int, log: Callable[[str], None]) -> Row:
    """Generated records and sealed versions, straight in SQL, until ``target`` memberships.

    Generated subjects (``gen-s…``) hold 4 records each; each generated version holds 2M
    records, so a generated subject sits in about 4 versions.
    """
    conn = await asyncpg.connect(dsn)
    try:
        have = await conn.fetchval("SELECT count(*) FROM memberships")
        missing = max(1, target - have)
        per_version = max(1, min(2_000_000, missing))
        versions = -(-missing // per_version)
        pool = max(per_version, missing // 2)  # each generated record in ~2 versions
        started = time.perf_counter()
        log(f"  {pool:,} generated records …")
        await conn.execute(
            f"""
            INSERT INTO records (source_system, record_id, subject_id, category, jurisdiction,
                                 collected_at, content_digest)
            SELECT 'gen', 'gen-' || g, 'gen-s' || lpad((g % {pool // 4})::text, 7, '0'),
                   (ARRAY['user.content.private', 'user.content.public', 'user.contact',
                          'user.behavior'])[1 + g % 4],
                   'US', now(), 'sha256:' || md5(g::text) || md5((-g)::text)
            FROM generate_series(1, {pool}) g
            """
        )
        first_pk = await conn.fetchval(
            "SELECT min(record_pk) FROM records WHERE source_system = 'gen'"
        )
        for v in range(versions):
            size = min(per_version, missing - v * per_version)
            log(f"  generated version {v + 1}/{versions}: {size:,} memberships …")
            version_id = await conn.fetchval(
                """
                INSERT INTO dataset_versions (namespace, name, version, purpose, created_at,
                                              sealed_at, used_at, record_count)
                VALUES ('s3://bench', 'generated', $1, 'ai.training', now(), now(), now(), $2)
                RETURNING dataset_version_id
                """,
                f"g{v}",
                size,
            )
            offset = (v * per_version) % pool
            await conn.execute(
                """
                INSERT INTO memberships (dataset_version_id, record_pk)
                SELECT $1, $2 + ((g + $3) % $4) FROM generate_series(0, $5 - 1) g
                """,
                version_id,
                first_pk,
                offset,
                pool,
                size,
            )
        log("  VACUUM ANALYZE …")
        await conn.execute("VACUUM ANALYZE records")
        await conn.execute("VACUUM ANALYZE memberships")
        await conn.execute("VACUUM ANALYZE dataset_versions")
        return {
            "generated_records": pool,
            "generated_versions": versions,
            "build_s": time.perf_counter() - started,
            "memberships": await conn.fetchval("SELECT count(*) FROM memberships"),
            "records": await conn.fetchval("SELECT count(*) FROM records"),
            "dataset_versions": await conn.fetchval(
                "SELECT count(*) FROM dataset_versions WHERE sealed_at IS NOT NULL"
            ),
            "sizes_mb": {
                r["relname"]: r["mb"]
                for r in await conn.fetch(
                    """
                    SELECT relname, pg_total_relation_size(oid) / 1048576 AS mb FROM pg_class
                    WHERE relname IN ('records', 'memberships', 'records_subject_category',
                                      'memberships_pkey', 'memberships_dataset_version')
                    """
                )
            },
        }
    finally:
        await conn.close()


async def subject_queries(client: httpx.AsyncClient, dsn: str, subjects: Sequence[str]) -> Row:
    http: list[float] = []
    versions_found: list[int] = []
    for subject in subjects:
        started = time.perf_counter()
        response = await client.get(API, params={"subject_id": subject})
        http.append(time.perf_counter() - started)
        response.raise_for_status()
        versions_found.append(len(response.json()))
    conn = await asyncpg.connect(dsn)
    try:
        statement = await conn.prepare(VERSIONS_OF_SUBJECT_SQL)
        sql: list[float] = []
        for subject in subjects:
            started = time.perf_counter()
            await statement.fetch(subject, None, None, 20)
            sql.append(time.perf_counter() - started)
        plans = {}
        for label, category in (("subject", None), ("subject + category", "user.content")):
            rows = await conn.fetch(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + VERSIONS_OF_SUBJECT_SQL,
                subjects[0],
                category,
                None,
                20,
            )
            plans[label] = [r[0] for r in rows]
    finally:
        await conn.close()
    return {
        "subjects": len(subjects),
        "http_ms": summary_ms(http),
        "sql_ms": summary_ms(sql),
        "versions_per_subject": {
            "mean": sum(versions_found) / len(versions_found),
            "max": max(versions_found),
        },
        "plan_subject": subjects[0],
        "plans": plans,
    }


# ----------------------------------------------------------------------------- run


async def measure(bench: Bench, args: argparse.Namespace, log: Callable[[str], None]) -> Row:
    n, chunk = args.records, args.chunk
    subjects = max(1, n // 5)
    log(f"NDJSON bodies: 2 snapshots of {n:,} records in chunks of {chunk:,} (untimed) …")
    upload_chunks = ndjson_chunks(f"up{bench.tag}", n, chunk, subjects)
    stream_chunks = ndjson_chunks(f"st{bench.tag}", n, chunk, subjects)
    body_mb = sum(map(len, upload_chunks)) / 1048576
    log(f"  {body_mb:,.0f} MiB per snapshot ({body_mb * 1048576 / n:.0f} bytes per record)")

    log(f"broker and databases (logs in {bench.work_dir}) …")
    service = await asyncio.to_thread(bench.start, dict(args.service_env))
    assert service.proc is not None
    pid = service.proc.pid
    rss_idle = rss_mib(pid)

    log(f"COPY alone: {n:,} rows …")
    copy = await copy_alone(bench.url("scratch"), n, subjects)
    log(
        f"  staging-like {copy['staging_like_per_s']:,.0f} rows/s,"
        f" records-like (logged, 3 indexes) {copy['records_like_per_s']:,.0f} rows/s"
    )

    admin = await asyncpg.create_pool(bench.url("registry"), min_size=1, max_size=2)
    meter = CpuMeter({"registry service": pid}, admin, [f"bench_{bench.tag}_registry"])
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    runs: dict[str, list[Phase]] = {}
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=600, limits=limits) as client:
            log("warm-up: a 10,000-record upload …")
            warm = ndjson_chunks(f"wu{bench.tag}", 10_000, 5_000, 2_000)
            await chunked_upload(client, meter, "warm-up", "v1", warm, 10_000, 2)

            log(
                f"chunked upload of {n:,} new records, {len(upload_chunks)} chunks,"
                f" {args.parallel} in flight …"
            )
            runs["chunked upload, new records"] = await chunked_upload(
                client, meter, "chunked", "v1", upload_chunks, n, args.parallel
            )
            _log_phases(log, runs["chunked upload, new records"])
            log(f"one-shot stream of {n:,} new records …")
            runs["stream, new records"] = [
                await one_shot_stream(client, meter, "streamed", stream_chunks, n)
            ]
            _log_phases(log, runs["stream, new records"])
            if not args.skip_reregister:
                log(f"re-registration: the {n:,} records of the upload as version v2 …")
                runs["chunked upload, records already registered"] = await chunked_upload(
                    client, meter, "chunked", "v2", upload_chunks, n, args.parallel
                )
                _log_phases(log, runs["chunked upload, records already registered"])
            peak_after_registration = peak_rss_mib(pid)
            volume, queries = (
                await volume_and_queries(client, bench, args, n, subjects, log)
                if args.memberships
                else (None, None)
            )
    finally:
        await admin.close()
    return {
        "records": n,
        "chunk": chunk,
        "parallel": args.parallel,
        "body_mib": body_mb,
        "copy": copy,
        "runs": {
            name: [
                {
                    "phase": p.name,
                    "records": p.records,
                    "wall_s": p.wall_s,
                    "records_per_s": p.records / p.wall_s,
                    "cpu_s": p.cpu,
                }
                for p in phases
            ]
            for name, phases in runs.items()
        },
        "rss_mb": {
            "idle": rss_idle,
            "peak_after_registration": peak_after_registration,
            "peak_at_end": peak_rss_mib(pid),
            "at_end": rss_mib(pid),
        },
        "volume": volume,
        "queries": queries,
    }


async def volume_and_queries(
    client: httpx.AsyncClient,
    bench: Bench,
    args: argparse.Namespace,
    n: int,
    subjects: int,
    log: Callable[[str], None],
) -> tuple[Row, Row]:
    log(f"building {args.memberships:,} memberships with SQL (untimed) …")
    volume = await build_memberships(bench.url("registry"), args.memberships, log)
    log(
        f"  {volume['memberships']:,} memberships, {volume['records']:,} records,"
        f" {volume['dataset_versions']} sealed versions ({volume['build_s']:.0f} s)"
    )
    rng = random.Random(7)
    picks = [
        subject_of(f"up{bench.tag}", rng.randrange(n), subjects)
        if rng.random() < 0.5
        else f"gen-s{rng.randrange(volume['generated_records'] // 4):07d}"
        for _ in range(args.queries)
    ]
    log(f"subject query, {len(picks):,} subjects …")
    queries = await subject_queries(client, bench.url("registry"), picks)
    log(
        f"  HTTP p50 {queries['http_ms']['p50']:.2f} ms,"
        f" p99 {queries['http_ms']['p99']:.2f} ms;"
        f" SQL p50 {queries['sql_ms']['p50']:.3f} ms"
    )
    return volume, queries


def _log_phases(log: Callable[[str], None], phases: Sequence[Phase]) -> None:
    for p in phases:
        log(f"  {p.name}: {p.wall_s:.2f} s, {p.records / p.wall_s:,.0f} records/s")


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def report(result: Row, meta: Row) -> str:
    copy = result["copy"]
    yardstick = copy["staging_like_per_s"]
    lines = [
        "",
        f"ConsentTrace snapshot registration   {meta['started_at']}",
        f"{result['records']:,} records per snapshot ({result['body_mib']:,.0f} MiB NDJSON),"
        f" chunks of {result['chunk']:,}, {result['parallel']} in flight; broker {meta['broker']};"
        f" Postgres {meta['postgres_version']}; {meta['cpus']} CPUs; load {meta['load_before']}",
        "",
        f"COPY alone ({copy['records']:,} rows from this process):"
        f" {_f(yardstick)} rows/s into a staging-like table (UNLOGGED, no index);"
        f" {_f(copy['records_like_per_s'])} rows/s into a records-like table (logged, 3 indexes)",
        "",
        f"{'run':<44} {'phase':<24} {'wall s':>7} {'records/s':>10} {'÷ COPY':>7}"
        f" {'service CPU s':>13} {'Postgres CPU s':>14}",
    ]
    for name, phases in result["runs"].items():
        for p in phases:
            cpu = p["cpu_s"]
            lines.append(
                f"{name:<44} {p['phase']:<24} {p['wall_s']:>7.2f} {_f(p['records_per_s']):>10}"
                f" {p['records_per_s'] / yardstick:>7.0%}"
                f" {_f(cpu.get('registry service'), 1):>13}"
                f" {_f(cpu.get('postgres (our databases)'), 1):>14}"
            )
            name = ""
    rss = result["rss_mb"]
    volume = result["volume"]
    q = result["queries"]
    lines += [
        "",
        f"target: {TARGET_PER_S:,} records/s end to end.",
        f"registry service RSS: {_f(rss['idle'])} MiB idle; peak (VmHWM)"
        f" {_f(rss['peak_after_registration'])} MiB after the registrations,"
        f" {_f(rss['peak_at_end'])} MiB at the end",
    ]
    if volume is None or q is None:
        return "\n".join(lines)
    lines += [
        "",
        f"subject query with {volume['memberships']:,} memberships, {volume['records']:,} records,"
        f" {volume['dataset_versions']} sealed versions (memberships built with SQL"
        f" generate_series directly in the registry's database,"
        f" {volume['build_s']:.0f} s, untimed):",
        f"  GET {API}?subject_id=S, {q['subjects']:,} random subjects, sequential:"
        f" p50 {_f(q['http_ms']['p50'], 2)} ms, p99 {_f(q['http_ms']['p99'], 2)} ms,"
        f" max {_f(q['http_ms']['max'], 2)} ms"
        f" ({q['versions_per_subject']['mean']:.1f} versions per subject on average)",
        f"  the SQL alone (prepared, asyncpg): p50 {_f(q['sql_ms']['p50'], 3)} ms,"
        f" p99 {_f(q['sql_ms']['p99'], 3)} ms",
        f"  sizes (MiB): {', '.join(f'{k} {v:,}' for k, v in sorted(volume['sizes_mb'].items()))}",
        "",
        f"plan for subject {q['plan_subject']} (EXPLAIN ANALYZE, BUFFERS):",
        *("  " + line for line in q["plans"]["subject"]),
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Snapshot registration at scale.")
    parser.add_argument("--records", "-n", type=int, default=1_000_000, help="per snapshot")
    parser.add_argument("--chunk", "-c", type=int, default=100_000, help="records per chunk")
    parser.add_argument("--parallel", "-p", type=int, default=4, help="chunks in flight")
    parser.add_argument(
        "--memberships",
        type=int,
        default=10_000_000,
        help="memberships present for the query (0: no subject query)",
    )
    parser.add_argument("--queries", type=int, default=1000, help="subject queries")
    parser.add_argument("--skip-reregister", action="store_true")
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
    work_dir = Path(tempfile.mkdtemp(prefix=f"ct-bench-snapshots-{tag}-"))
    bench = Bench(tag, work_dir, postgres_server_url())
    meta: Row = {
        **run_meta(),
        "postgres": bench.server_url.rsplit("@", 1)[-1],
    }
    with bench_run(bench.stop, work_dir, keep_logs=args.keep_logs) as run:
        result = asyncio.run(measure(bench, args, log))
        meta["broker"] = f"Tansu {bench.bootstrap} (embedded)" if bench.broker else bench.bootstrap
        meta["postgres_version"] = asyncio.run(server_version(bench.url("scratch")))
        meta["load_after"] = load_average()
        print(report(result, meta))
        print(
            f"\nJSON: {write_result('snapshot_registration', result, meta).relative_to(REPO_ROOT)}"
        )
        run.failed = False
    return 1 if run.failed else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
