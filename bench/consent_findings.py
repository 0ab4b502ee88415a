"""Consent events → findings with 10M memberships present: how many events per second the
registry turns into findings, and its memory while it does.

    python bench/consent_findings.py [--grants N] [--withdrawals M] [--runs K]   # 50000 2000 3

Starts a Tansu broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set), one fresh database on the
Postgres of ``DATABASE_URL`` (else 127.0.0.1:5432), migrates it and starts the registry
service as a process with its own consumer-group prefix, like the other benches (whose
helpers it reuses). Then:

1. **Policy** (untimed): one policy published on ``consent.policies.v1``: purpose
   ``ai.training``, ``user.content`` (withdrawal requires ``destroy``) and the rest of
   ``user`` (``retrain``), explicit opt-in the only lawful basis. Waits until projected.
2. **10M memberships** (untimed), built with SQL ``generate_series`` directly in the
   registry's database: S subjects, R records each (categories mixed), V sealed versions that
   each hold every record, used 2025-06-01 onwards, purpose ``ai.training.generative``; no
   evaluation job. ``VACUUM ANALYZE``.
3. **Yardsticks** (same run, same broker, same Postgres, same message bytes):
   produce alone and consume alone (raw aiokafka), ``decode_event`` alone (the consumer's
   contract check, in this process), and the registry's own projection statement
   (captured from its code) into a copy of its table, 500 rows per transaction. (The
   registry writes no inbox row for a consent event: the projection, keyed by
   ``consent_event_id``, is its record of what it applied.)
4. **Phase A, grants**, K runs: N explicit opt-ins effective 2025-01-01 (before every use),
   half for subjects with memberships, encoded before the clock starts, produced as fast as
   aiokafka goes (acks=all); timed until the registry's consumer group has committed the
   last offset of each partition (the commit follows the handler's transaction).
5. **Phase B, withdrawals**, K runs: M opt-outs effective now, each for a subject granted
   in phase A: each makes ``later_withdrawal`` findings in every version. Timed until
   committed (events/s) and until the outbox has published every finding.
   **Phase C, grants now**, K runs: N opt-ins effective now (after every use), half for
   subjects with memberships (some of them withdrawn in phase B): the common case of a
   live system, which the registry projects without re-judging anything
   (``grant_changes_nothing``); timed like phase A.
6. **Where the time goes**: the registry's consumer path for one batch of 500 (decode,
   ``on_consent_events``, outbox) run in this process on the same database, in a transaction
   that is rolled back: time per SQL statement, Python CPU, and a cProfile of the same; and
   EXPLAIN (ANALYZE, BUFFERS) of ``uses_of_subjects``, ``contributions_of_subjects``,
   ``histories`` and the totals query of ``refresh`` for 500 subjects. Two batches are also
   run at once, as two consumers would: the wait in the advisory locks shows whether they can.

CPU per run comes from ``/proc`` (the service, Tansu, the Postgres backends of the registry's
database except the bench's own; parallel query workers exit too soon to be counted), the
service's peak RSS is ``VmHWM``. Each run starts after ``VACUUM ANALYZE`` of the tables the
consent path writes (autovacuum's work: a server with autovacuum off would otherwise plan
on no statistics), once the outbox has published what the run before left, and after a
CHECKPOINT. See ``bench/README.md``. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import os
import pstats
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from _common import (
    bench_run,
    load_average,
    machine_busy_s,
    median_of,
    peak_rss_mib,
    postgres_server_url,
    process_cpu_s,
    rss_mib,
    run_meta,
    write_result,
)
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from contracts.events import ConsentEvent, PolicyChange
from contracts.policy import PolicyDocument
from contracts.topics import CONSENT_EVENTS, FINDINGS, POLICIES
from services.registry.adapters.findings import FindingStore
from services.registry.adapters.repository import RegistryRepository
from services.registry.app import SPEC
from services.runtime import embedded
from services.runtime.consumer import EventConsumer, Subscription
from services.runtime.db import connect_pool
from services.runtime.messages import decode_event, encode_event
from services.runtime.settings import ServiceSettings
from services.runtime.testing import ServiceProcess, migrate_service

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_PER_S = 20_000
POLICY_ID = "bench-consent-findings"
PURPOSE = "ai.training"
VERSION_PURPOSE = "ai.training.generative"
CATEGORIES = ("user.content.private", "user.content.public", "user.contact", "user.behavior")
USED_AT = datetime(2025, 6, 1, tzinfo=UTC)
GRANTED_AT = datetime(2025, 1, 1, tzinfo=UTC)
SOURCE = "/bench/consent-findings"
BATCH = 500
"""Subjects per profiled batch: the registry's ``KAFKA_MAX_POLL_RECORDS`` default."""

Row = dict[str, Any]
Message = tuple[bytes, bytes, list[tuple[str, bytes]]]


# ----------------------------------------------------------------------------- the data


def policy_document() -> PolicyDocument:
    opt_in = [{"mechanism": "explicit_opt_in"}]
    return PolicyDocument.model_validate(
        {
            "policy_id": POLICY_ID,
            "version": "1",
            "valid_from": "2024-01-01T00:00:00Z",
            "rules": [
                {
                    "id": "content",
                    "jurisdictions": ["*"],
                    "purposes": [PURPOSE],
                    "data_categories": ["user.content"],
                    "lawful_bases": opt_in,
                    "withdrawal": {"requires": "destroy"},
                    "description": "member content: a later withdrawal destroys the models",
                },
                {
                    "id": "other",
                    "jurisdictions": ["*"],
                    "purposes": [PURPOSE],
                    "data_categories": ["user"],
                    "lawful_bases": opt_in,
                    "withdrawal": {"requires": "retrain"},
                    "description": "other member data: a later withdrawal retrains the models",
                },
            ],
        }
    )


def member(i: int) -> str:
    """A subject with memberships (the SQL build names them the same way)."""
    return f"m-s{i:07d}"


def consent_event(subject: str, granted: bool, effective_at: datetime) -> ConsentEvent:
    return ConsentEvent.model_validate(
        {
            "consent_event_id": uuid.uuid4(),
            "subject_id": subject,
            "jurisdiction": "US",
            "purpose": PURPOSE,
            "data_categories": ["user"],
            "state": "granted" if granted else "withdrawn",
            "mechanism": "explicit_opt_in" if granted else "opt_out",
            "policy_version": "1",
            "effective_at": effective_at,
            "recorded_at": datetime.now(UTC),
            "source_system": "bench",
            "evidence": {"collection_point": "settings/data-for-generative-ai", "channel": "web"},
        }
    )


def encode(events: Sequence[ConsentEvent]) -> list[Message]:
    """What the consent service's outbox would send: CloudEvents headers, key = subject."""
    out = []
    for e in events:
        m = encode_event(CONSENT_EVENTS, e, key=e.subject_id, source=SOURCE)
        assert m.key is not None
        out.append((m.key, m.value, list(m.headers)))
    return out


@dataclass
class Subjects:
    """Who gets which event: members granted once each in turn, then withdrawn in turn."""

    tag: str
    members: int
    rng: random.Random
    order: list[int] = field(default_factory=list)
    next_grant: int = 0
    granted: list[str] = field(default_factory=list)
    next_withdrawal: int = 0
    reserved: list[str] = field(default_factory=list)
    outsiders: int = 0
    wrapped: bool = False

    def __post_init__(self) -> None:
        self.order = list(range(self.members))
        self.rng.shuffle(self.order)

    def grants(self, n: int) -> list[str]:
        """``n`` subjects, about half of them with memberships, in random order."""
        chosen = []
        for _ in range(n // 2):
            if self.next_grant == len(self.order):
                self.next_grant, self.wrapped = 0, True
            subject = member(self.order[self.next_grant])
            self.next_grant += 1
            chosen.append(subject)
            if not self.wrapped:
                self.granted.append(subject)
        for _ in range(n - n // 2):
            chosen.append(f"x-{self.tag}-{self.outsiders:08d}")
            self.outsiders += 1
        self.rng.shuffle(chosen)
        return chosen

    def sample(self, n: int) -> list[str]:
        """Like ``grants`` for events the registry never keeps (yardsticks, rolled back)."""
        chosen = [member(self.rng.randrange(self.members)) for _ in range(n // 2)]
        chosen += [f"y-{self.tag}-{self.rng.randrange(10**9):09d}" for _ in range(n - n // 2)]
        self.rng.shuffle(chosen)
        return chosen

    def reserve(self, n: int) -> None:
        """Keep ``n`` granted members out of the withdrawals (for the profile)."""
        self.reserved, self.granted = self.granted[-n:], self.granted[:-n]

    def withdrawals(self, n: int) -> tuple[list[str], bool]:
        """``n`` granted members, each withdrawn once while there are enough."""
        chosen, repeated = [], False
        for _ in range(n):
            if self.next_withdrawal == len(self.granted):
                self.next_withdrawal, repeated = 0, True
            chosen.append(self.granted[self.next_withdrawal])
            self.next_withdrawal += 1
        return chosen, repeated


# ----------------------------------------------------------------------------- stack


@dataclass
class Bench:
    """Everything started, so that everything is stopped."""

    tag: str
    work_dir: Path
    server_url: str
    broker: embedded.TansuBroker | None = None
    bootstrap: str = ""
    idempotence: bool = False
    databases: list[str] = field(default_factory=list)
    services: list[ServiceProcess] = field(default_factory=list)

    @property
    def group_prefix(self) -> str:
        return f"bench-{self.tag}"

    def url(self, name: str = "registry") -> str:
        return embedded.database_url_for(self.server_url, f"bench_{self.tag}_{name}")

    def start_infrastructure(self) -> None:
        explicit = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        if explicit:
            self.bootstrap = explicit
        else:
            self.broker = embedded.TansuBroker(log_path=self.work_dir / "tansu.log").start()
            self.bootstrap = self.broker.bootstrap_servers
        self.idempotence = self.broker is None and embedded.env_flag(
            os.environ, "KAFKA_ENABLE_IDEMPOTENCE", True
        )
        self.databases = [f"bench_{self.tag}_{n}" for n in ("registry", "scratch")]
        embedded.create_databases_sync(self.server_url, self.databases)
        migrate_service("registry", self.url())

    def start_services(self, service_env: dict[str, str], replicas: int) -> list[int]:
        """``replicas`` registry processes in one consumer group (as replicas of a
        Deployment share the partitions); returns their pids."""
        for n in range(replicas):
            self.services.append(
                ServiceProcess(
                    "registry",
                    self.url(),
                    self.bootstrap,
                    self.work_dir / f"replica-{n}",
                    idempotence=self.idempotence,
                    group_prefix=self.group_prefix,
                    extra_env=service_env,
                ).start()
            )
        pids = []
        for service in self.services:
            service.wait_ready()
            assert service.proc is not None
            pids.append(service.proc.pid)
        return pids

    def stop(self) -> None:
        for service in self.services:
            with contextlib.suppress(Exception):
                service.stop()
        if self.databases:
            try:
                embedded.drop_databases_sync(self.server_url, self.databases, force=True)
            except Exception as exc:
                print(f"could not drop databases {self.databases}: {exc!r}", file=sys.stderr)
        if self.broker is not None:
            self.broker.stop()


@dataclass
class Meter:
    """CPU seconds per component: named processes, and the Postgres backends of one
    database except the bench's own connections (its polling is not the service's work)."""

    pids: dict[str, Sequence[int]]
    """Per component, its processes (the registry's replicas)."""
    admin: asyncpg.Pool
    database: str
    own_backends: set[int] = field(default_factory=set)

    async def sample(self) -> Row:
        rows = await self.admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1", self.database
        )
        return {
            "procs": {name: _summed(process_cpu_s, pids) for name, pids in self.pids.items()},
            "backends": {
                r["pid"]: process_cpu_s(r["pid"]) for r in rows if r["pid"] not in self.own_backends
            },
            "machine": machine_busy_s(),
            "bench": time.process_time(),
            "wall": time.perf_counter(),
        }

    @staticmethod
    def usage(before: Row, after: Row) -> dict[str, float | None]:
        def delta(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else b - a

        out = {name: delta(before["procs"][name], t) for name, t in after["procs"].items()}
        # Backends opened in the window count whole; ones closed in it are lost.
        out["postgres"] = sum(
            t - (before["backends"].get(pid) or 0.0)
            for pid, t in after["backends"].items()
            if t is not None
        )
        out["bench client"] = after["bench"] - before["bench"]
        out["machine"] = delta(before["machine"], after["machine"])
        out["wall"] = after["wall"] - before["wall"]
        return out


def _summed(measure: Callable[[int], float | None], pids: Sequence[int]) -> float | None:
    """A per-process figure (CPU seconds, MiB) summed over the registry's replicas; None when
    any is unknown. For memory peaks the sum is an upper bound: the replicas' peaks need not
    coincide."""
    values = [measure(pid) for pid in pids]
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


async def own_pool(dsn: str, meter: Meter | None = None, size: int = 2) -> asyncpg.Pool:
    """A pool with the service's JSON codecs, its backends excluded from the meter."""
    pool = await connect_pool(
        ServiceSettings(service_name="registry", database_url=dsn, db_pool_min=size)
    )
    if meter is not None:
        for _ in range(size):
            async with pool.acquire() as conn:
                meter.own_backends.add(conn.get_server_pid())
    return pool


# ----------------------------------------------------------------------------- setup


async def publish_policy(bootstrap: str, idempotence: bool, pool: asyncpg.Pool) -> float:
    change = PolicyChange(policy=policy_document(), published_at=datetime.now(UTC))
    message = encode_event(POLICIES, change, key=POLICY_ID, source=SOURCE)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=idempotence
    )
    await producer.start()
    started = time.perf_counter()
    try:
        await producer.send_and_wait(
            message.topic, message.value, key=message.key, headers=list(message.headers)
        )
    finally:
        await producer.stop()
    deadline = started + 90
    while time.perf_counter() < deadline:
        if await pool.fetchval(
            "SELECT count(*) FROM policy_versions WHERE policy_id = $1", POLICY_ID
        ):
            return time.perf_counter() - started
        await asyncio.sleep(0.2)
    raise RuntimeError("the registry did not project the policy within 90 s")


async def build_memberships(
    pool: asyncpg.Pool, subjects: int, per_subject: int, versions: int, log: Callable[[str], None]
) -> Row:
    """S·R records (subject ``i``'s k-th record has category k mod 4), V sealed versions
    each holding every record: S·R·V memberships, straight in SQL."""
    records = subjects * per_subject
    started = time.perf_counter()
    async with pool.acquire() as conn:
        log(f"  {records:,} records of {subjects:,} subjects …")
        await conn.execute(
            f"""
            INSERT INTO records (source_system, record_id, subject_id, category, jurisdiction,
                                 collected_at, content_digest)
            SELECT 'gen', 'gen-' || lpad(g::text, 9, '0'),
                   'm-s' || lpad((g % {subjects})::text, 7, '0'),
                   (ARRAY{list(CATEGORIES)!r})[1 + (g / {subjects}) % {len(CATEGORIES)}],
                   'US', '2025-01-15T00:00:00Z', 'sha256:' || md5(g::text) || md5((-g)::text)
            FROM generate_series(0, {records - 1}) g
            """
        )
        for v in range(versions):
            log(f"  sealed version {v + 1}/{versions}: {records:,} memberships …")
            used_at = USED_AT + timedelta(days=7 * v)
            version_id = await conn.fetchval(
                """
                INSERT INTO dataset_versions (namespace, name, version, purpose, created_at,
                                              sealed_at, used_at, record_count)
                VALUES ('s3://bench', 'consent-findings', $1, $2, $3, $3, $3, $4)
                RETURNING dataset_version_id
                """,
                f"v{v + 1}",
                VERSION_PURPOSE,
                used_at,
                records,
            )
            await conn.execute(
                "INSERT INTO memberships (dataset_version_id, record_pk)"
                " SELECT $1, record_pk FROM records WHERE source_system = 'gen' ORDER BY record_pk",
                version_id,
            )
        jobs = await conn.execute("DELETE FROM evaluation_jobs")
        log("  VACUUM ANALYZE …")
        for table in ("records", "memberships", "dataset_versions", "consent_projection"):
            await conn.execute(f"VACUUM ANALYZE {table}")
        return {
            "subjects": subjects,
            "records_per_subject": per_subject,
            "versions": versions,
            "build_s": time.perf_counter() - started,
            "memberships": await conn.fetchval("SELECT count(*) FROM memberships"),
            "records": await conn.fetchval("SELECT count(*) FROM records"),
            "evaluation_jobs_deleted": int(jobs.split()[-1]),
            "sizes_mb": {
                r["relname"]: r["mb"]
                for r in await conn.fetch(
                    """
                    SELECT relname, pg_total_relation_size(oid) / 1048576 AS mb FROM pg_class
                    WHERE relname IN ('records', 'memberships', 'records_subject_category',
                                      'memberships_pkey')
                    """
                )
            },
        }


# ----------------------------------------------------------------------------- SQL of the code


class Recorder:
    """Stands in for a connection and keeps the statements a repository method sends, so
    the bench runs the registry's own SQL (never a copy that could drift)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        self.calls.append((sql, args))
        return []

    async def fetchval(self, sql: str, *args: Any) -> None:
        self.calls.append((sql, args))

    async def fetchrow(self, sql: str, *args: Any) -> None:
        self.calls.append((sql, args))

    async def execute(self, sql: str, *args: Any) -> str:
        self.calls.append((sql, args))
        return "SELECT 0"


async def statement_of(call: Callable[[Any], Awaitable[object]]) -> tuple[str, tuple[Any, ...]]:
    recorder = Recorder()
    await call(recorder)
    return recorder.calls[0]


_LABELS = (
    ("INSERT INTO inbox", "inbox: insert batch"),
    ("INSERT INTO consent_projection", "save_consents"),
    ("pg_advisory_xact_lock_shared($1)", "enter_gate"),
    ("pg_advisory_xact_lock_shared($1 + id)", "locks: share_versions"),
    ("pg_advisory_xact_lock(k)", "locks: findings"),
    ("FROM records r", "uses_of_subjects"),
    ("SELECT * FROM finding_contributions WHERE subject_id", "contributions_of_subjects"),
    ("pg_advisory_xact_lock($1 + id)", "locks: lock_versions"),
    ("FROM consent_projection", "histories"),
    ("count(*), max(published_at)", "policies_fingerprint"),
    ("FROM policy_versions", "policies"),
    ("DELETE FROM finding_contributions", "reconcile: delete"),
    ("INSERT INTO finding_contributions", "reconcile: upsert contributions"),
    ("CROSS JOIN LATERAL", "refresh: totals"),
    ("INSERT INTO findings AS f", "refresh: upsert findings + history rows"),
    ("COPY outbox", "outbox: COPY"),
    ("NOTIFY", "outbox: NOTIFY"),
)


def label_of(sql: str) -> str:
    for needle, label in _LABELS:
        if needle in sql:
            return label
    return " ".join(sql.split())[:60]


class TimedConnection:
    """A connection that times every statement by what it is (``_LABELS``)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.spent: dict[str, list[float]] = defaultdict(list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    async def _timed(self, method: str, sql: str, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await getattr(self._conn, method)(sql, *args, **kwargs)
        finally:
            self.spent[label_of(sql)].append(time.perf_counter() - started)

    async def fetch(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        return await self._timed("fetch", sql, *args, **kwargs)

    async def fetchval(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        return await self._timed("fetchval", sql, *args, **kwargs)

    async def fetchrow(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        return await self._timed("fetchrow", sql, *args, **kwargs)

    async def execute(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        return await self._timed("execute", sql, *args, **kwargs)

    async def executemany(self, sql: str, args: Any, **kwargs: Any) -> Any:
        return await self._timed("executemany", sql, args, **kwargs)

    async def copy_records_to_table(self, table: str, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self._conn.copy_records_to_table(table, **kwargs)
        finally:
            self.spent[label_of(f"COPY {table}")].append(time.perf_counter() - started)


class OneConnectionPool:
    """What ``unit_of_work`` needs of a pool: ``acquire`` yields our connection, whose
    ``transaction()`` is then a savepoint inside the bench's own (rolled back) transaction."""

    def __init__(self, conn: TimedConnection) -> None:
        self.conn = conn

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[TimedConnection]:
        yield self.conn


# ----------------------------------------------------------------------------- yardsticks


async def kafka_yardsticks(
    bootstrap: str, idempotence: bool, topic: str, messages: Sequence[Message]
) -> Row:
    """Produce alone and consume alone, with the phases' message bytes and producer; then
    the consumer's contract check (``decode_event``) on each record, in this process."""
    producer = await start_producer(bootstrap, idempotence)
    try:
        await producer.send_and_wait(topic, b"warm-up", key=b"warm-up")
        partitions = sorted(await producer.partitions_for(topic))
        produce = await produce_all(producer, topic, messages)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        started = time.perf_counter()
        deadline = started + 300
        while len(records) < len(messages) + 1 and time.perf_counter() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            for batch in batches.values():
                records.extend(batch)
        consume_s = time.perf_counter() - started
    finally:
        await consumer.stop()
    records = [r for r in records if r.key != b"warm-up"]
    started = time.perf_counter()
    for r in records:
        decode_event(
            CONSENT_EVENTS,
            value=r.value,
            headers=list(r.headers or ()),
            partition=r.partition,
            offset=r.offset,
            key=r.key,
        )
    decode_s = time.perf_counter() - started
    n = len(messages)
    return {
        "messages": n,
        "partitions": len(partitions),
        "message_bytes": statistics.mean(
            len(k) + len(v) + sum(len(a) + len(b) for a, b in h) for k, v, h in messages
        ),
        "produce_s": produce["produce_s"],
        "produce_per_s": n / produce["produce_s"],
        "consumed": len(records),
        "consume_s": consume_s,
        "consume_per_s": len(records) / consume_s,
        "decode_per_s": len(records) / decode_s if records else None,
        "decode_us": decode_s / len(records) * 1e6 if records else None,
    }


async def postgres_yardstick(dsn: str, events: Sequence[ConsentEvent]) -> Row:
    """The registry's own projection insert (SQL captured from its code), 500 rows per
    transaction, into an empty copy of its table in a schema of its own."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            CREATE SCHEMA bench_yardstick;
            CREATE TABLE bench_yardstick.consent_projection
                (LIKE public.consent_projection INCLUDING ALL);
            SET search_path = bench_yardstick, public;
            CHECKPOINT;
            """
        )
        statements = []
        for start in range(0, len(events), BATCH):
            chunk = events[start : start + BATCH]

            def project(c: Any, chunk: Sequence[ConsentEvent] = chunk) -> Awaitable[object]:
                return RegistryRepository(c).save_consents(chunk)

            statements.append(await statement_of(project))
        started = time.perf_counter()
        for project_sql, project_args in statements:
            async with conn.transaction():
                await conn.fetch(project_sql, *project_args)
        elapsed = time.perf_counter() - started
        await conn.execute("RESET search_path; DROP SCHEMA bench_yardstick CASCADE")
        return {"rows": len(events), "seconds": elapsed, "rows_per_s": len(events) / elapsed}
    finally:
        await conn.close()


# ----------------------------------------------------------------------------- the phases


async def start_producer(bootstrap: str, idempotence: bool) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        max_batch_size=256 * 1024,
        enable_idempotence=idempotence,
    )
    await producer.start()
    return producer


async def produce_all(producer: AIOKafkaProducer, topic: str, messages: Sequence[Message]) -> Row:
    """Every message, as fast as the producer takes them; the last offset per partition."""
    started = time.perf_counter()
    futures = [
        await producer.send(topic, value, key=key, headers=headers)
        for key, value, headers in messages
    ]
    metadata = await asyncio.gather(*futures)
    produce_s = time.perf_counter() - started
    ends: dict[int, int] = {}
    for m in metadata:
        ends[m.partition] = max(ends.get(m.partition, 0), m.offset + 1)
    return {"started": started, "produce_s": produce_s, "ends": ends}


async def wait_committed(
    watcher: AIOKafkaConsumer, topic: str, ends: dict[int, int], within: float
) -> float | None:
    """When the group has committed every offset up to ``ends`` (perf_counter), or None."""
    deadline = time.perf_counter() + within
    pending = dict(ends)
    while pending:
        for partition, end in list(pending.items()):
            committed = await watcher.committed(TopicPartition(topic, partition))
            if committed is not None and committed >= end:
                del pending[partition]
        if not pending:
            break
        if time.perf_counter() > deadline:
            return None
        await asyncio.sleep(0.1)
    return time.perf_counter()


async def counts(pool: asyncpg.Pool) -> Row:
    row = await pool.fetchrow(
        """
        SELECT (SELECT count(*) FROM consent_projection) AS projected,
               (SELECT count(*) FROM findings) AS findings,
               (SELECT count(*) FROM finding_contributions) AS contributions,
               (SELECT count(*) FROM finding_events) AS finding_events,
               (SELECT count(*) FROM outbox WHERE topic = $1) AS outbox_findings,
               (SELECT count(*) FROM outbox WHERE topic = $2) AS dead_letters,
               (SELECT count(*) FROM outbox WHERE published_at IS NULL) AS unpublished
        """,
        FINDINGS.name,
        CONSENT_EVENTS.dlq,
    )
    assert row is not None
    return dict(row)


WRITTEN_TABLES = (
    "consent_projection",
    "inbox",
    "findings",
    "finding_contributions",
    "finding_events",
    "outbox",
)


async def autovacuum_stand_in(pool: asyncpg.Pool) -> None:
    """``VACUUM ANALYZE`` of the tables the consent path writes, untimed, before each run:
    what autovacuum does on a server that has it on. Without statistics the planner takes
    ``finding_contributions`` for tiny and the totals query of ``refresh`` for huge (JIT
    with inlining: ~120 ms a batch here)."""
    for table in WRITTEN_TABLES:
        await pool.execute(f"VACUUM (ANALYZE) {table}")


PUBLISH_WAIT_S = 60
"""How long a run waits for the outbox to publish its findings (plus 20 ms per event)."""


async def drained(pool: asyncpg.Pool, log: Callable[[str], None]) -> None:
    """Untimed: let the relay publish what an earlier run left, so runs do not overlap."""
    if await wait_published(pool, within=300) is None:
        left = await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        log(f"  warning: {left:,} outbox rows still unpublished after 300 s; going on")


async def wait_published(pool: asyncpg.Pool, within: float) -> float | None:
    deadline = time.perf_counter() + within
    while time.perf_counter() < deadline:
        if not await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL"):
            return time.perf_counter()
        await asyncio.sleep(0.2)
    return None


@dataclass
class Context:
    bench: Bench
    pool: asyncpg.Pool
    meter: Meter
    producer: AIOKafkaProducer
    watcher: AIOKafkaConsumer
    service_pids: Sequence[int]
    log: Callable[[str], None]


async def timed_run(ctx: Context, phase: str, number: int, events: Sequence[ConsentEvent]) -> Row:
    messages = encode(events)
    n = len(messages)
    await drained(ctx.pool, ctx.log)
    await autovacuum_stand_in(ctx.pool)
    await ctx.pool.execute("CHECKPOINT")
    before = await counts(ctx.pool)
    cpu_before = await ctx.meter.sample()
    produced = await produce_all(ctx.producer, CONSENT_EVENTS.name, messages)
    done = await wait_committed(
        ctx.watcher, CONSENT_EVENTS.name, produced["ends"], within=120 + n / 50
    )
    cpu_consumed = await ctx.meter.sample()
    consumed_s = None if done is None else done - produced["started"]
    published_s = None
    cpu_published = None
    if done is not None:
        finished = await wait_published(ctx.pool, within=PUBLISH_WAIT_S + n * 0.02)
        published_s = None if finished is None else finished - produced["started"]
        cpu_published = await ctx.meter.sample()
    after = await counts(ctx.pool)
    delta = {k: after[k] - before[k] for k in after if k != "unpublished"}
    if not delta["outbox_findings"]:
        published_s = cpu_published = None  # nothing to publish
    result = {
        "phase": phase,
        "run": number,
        "events": n,
        "produce_s": produced["produce_s"],
        "produce_per_s": n / produced["produce_s"],
        "consumed_s": consumed_s,
        "events_per_s": n / consumed_s if consumed_s else None,
        "published_s": published_s,
        "published_per_s": n / published_s if published_s else None,
        "partitions": sorted(produced["ends"]),
        "created": delta,
        "cpu_s": Meter.usage(cpu_before, cpu_consumed),
        "cpu_s_to_published": Meter.usage(cpu_before, cpu_published) if cpu_published else None,
        "service_rss_mb": _summed(rss_mib, ctx.service_pids),
        "service_peak_rss_mb": _summed(peak_rss_mib, ctx.service_pids),
    }
    cpu = result["cpu_s"]
    ctx.log(
        f"  run {number}: {n:,} events, produced in {produced['produce_s']:.2f} s,"
        f" consumed in {_f(consumed_s, 2)} s = {_f(result['events_per_s'])} events/s"
        + (
            f", findings published at {published_s:.2f} s"
            if published_s and delta["outbox_findings"]
            else ""
        )
        + f"; +{delta['findings']:,} findings, +{delta['contributions']:,} contributions,"
        f" +{delta['outbox_findings']:,} outbox; CPU s: service {_f(cpu['registry service'], 1)},"
        f" Postgres {_f(cpu['postgres'], 1)}; peak RSS {_f(result['service_peak_rss_mb'])} MiB"
    )
    if delta["projected"] != n:
        ctx.log(f"  warning: {delta['projected']:,} of {n:,} events projected")
    if delta["dead_letters"]:
        ctx.log(f"  warning: {delta['dead_letters']:,} dead letters")
    return result


# ----------------------------------------------------------------------------- where the time goes


def _records(messages: Sequence[Message]) -> list[ConsumerRecord[bytes, bytes]]:
    return [
        ConsumerRecord(
            topic=CONSENT_EVENTS.name,
            partition=0,
            offset=i,
            timestamp=0,
            timestamp_type=0,
            key=key,
            value=value,
            checksum=None,
            serialized_key_size=len(key),
            serialized_value_size=len(value),
            headers=tuple(headers),
        )
        for i, (key, value, headers) in enumerate(messages)
    ]


def _short(path: str) -> str:
    for prefix in (str(REPO_ROOT) + "/", "site-packages/"):
        if prefix in path:
            return path.split(prefix, 1)[1]
    return path


async def consumer_batch(
    pool: asyncpg.Pool, subscription: Subscription, messages: Sequence[Message], profile: bool
) -> Row:
    """The registry's consumer path for one fetched batch (``EventConsumer.process_batch``:
    decode, inbox, ``on_consent_events``, outbox), here, in a transaction rolled back."""
    records = _records(messages)
    settings = ServiceSettings(service_name="registry")
    async with pool.acquire() as raw:
        backend = raw.get_server_pid()
        timed = TimedConnection(raw)
        consumer = EventConsumer(settings, lambda: OneConnectionPool(timed), SOURCE)  # type: ignore[arg-type,return-value]
        outer = raw.transaction()
        await outer.start()
        last_id = await raw.fetchval("SELECT coalesce(max(id), 0) FROM outbox")
        profiler = cProfile.Profile() if profile else None
        try:
            pg_before = process_cpu_s(backend)
            cpu_before = time.process_time()
            started = time.perf_counter()
            if profiler is not None:
                profiler.enable()
            outcomes = await consumer.process_batch(subscription, records)
            if profiler is not None:
                profiler.disable()
            wall = time.perf_counter() - started
            python_cpu = time.process_time() - cpu_before
            pg_after = process_cpu_s(backend)
            outboxed = await raw.fetchval(
                "SELECT count(*) FROM outbox WHERE id > $1 AND topic = $2",
                last_id,
                FINDINGS.name,
            )
        finally:
            await outer.rollback()
    out: Row = {
        "events": len(records),
        "outcomes": {o: outcomes.count(o) for o in set(outcomes)},
        "wall_ms": wall * 1e3,
        "python_cpu_ms": python_cpu * 1e3,
        "postgres_cpu_ms": (pg_after - pg_before) * 1e3 if pg_before and pg_after else None,
        "findings_outbox": outboxed,
        "statements": {
            label: {"calls": len(t), "ms": sum(t) * 1e3} for label, t in timed.spent.items()
        },
    }
    if profiler is not None:
        stats = pstats.Stats(profiler)
        entries = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)  # type: ignore[attr-defined]
        out["profile_top"] = [
            {
                "function": f"{_short(file)}:{line}({name})",
                "calls": calls,
                "tottime_ms": tottime * 1e3,
                "cumtime_ms": cumtime * 1e3,
            }
            for (file, line, name), (_, calls, tottime, cumtime, _) in entries[:25]
        ]
    return out


async def where_time_goes(
    dsn: str, meter: Meter, subjects: Subjects, log: Callable[[str], None]
) -> Row:
    subscription = next(s for s in SPEC.subscriptions if s.topic == CONSENT_EVENTS)
    pool = await own_pool(dsn, meter, size=3)
    out: Row = {}
    try:
        await drained(pool, log)
        await autovacuum_stand_in(pool)
        now = datetime.now(UTC)
        batches: dict[str, Callable[[int], list[Message]]] = {
            "grants": lambda part: encode(
                [consent_event(s, True, GRANTED_AT) for s in subjects.sample(BATCH)]
            ),
            "withdrawals": lambda part: encode(
                [
                    consent_event(s, False, now)
                    for s in subjects.reserved[part * BATCH : (part + 1) * BATCH]
                ]
            ),
        }
        await consumer_batch(pool, subscription, batches["grants"](0), False)  # warm caches
        for kind, make in batches.items():
            log(f"  {kind}: one batch of {BATCH}, 3 times, rolled back; then under cProfile …")
            runs = [await consumer_batch(pool, subscription, make(0), False) for _ in range(3)]
            best = sorted(runs, key=lambda r: r["wall_ms"])[1]  # the median run
            profiled = await consumer_batch(pool, subscription, make(0), True)
            log(
                f"    median batch {best['wall_ms']:.0f} ms ({BATCH / best['wall_ms'] * 1e3:,.0f}"
                f" events/s): Python CPU {best['python_cpu_ms']:.0f} ms, Postgres CPU"
                f" {_f(best['postgres_cpu_ms'])} ms"
            )
            # Two batches of other subjects at once, as two consumers (partitions, replicas)
            # would run them: do they overlap, or wait for each other?
            first, second = make(0), make(1)
            started = time.perf_counter()
            pair = await asyncio.gather(
                consumer_batch(pool, subscription, first, False),
                consumer_batch(pool, subscription, second, False),
            )
            both: Row = {
                "wall_ms": (time.perf_counter() - started) * 1e3,
                "batch_wall_ms": [b["wall_ms"] for b in pair],
                "lock_versions_ms": [
                    sum(s["ms"] for k, s in b["statements"].items() if k.startswith("locks:"))
                    for b in pair
                ],
            }
            log(
                f"    two batches at once: {both['wall_ms']:.0f} ms for both; locks"
                f" waited {', '.join(_f(ms) for ms in both['lock_versions_ms'])} ms"
            )
            out[kind] = {
                "runs": runs,
                "median": best,
                "profile_top": profiled["profile_top"],
                "profiled_wall_ms": profiled["wall_ms"],
                "two_at_once": both,
            }
        out["explain"] = await explain_queries(pool, subjects.granted[:BATCH])
    finally:
        await pool.close()
    return out


async def explain_queries(pool: asyncpg.Pool, subjects: Sequence[str]) -> Row:
    """EXPLAIN (ANALYZE, BUFFERS) of the registry's per-batch reads for ``subjects`` (the
    first withdrawn ones: each has two consent events and its contributions)."""
    subjects = sorted(subjects)
    async with pool.acquire() as conn:
        finding_ids = [
            r["finding_id"]
            for r in await conn.fetch(
                "SELECT DISTINCT finding_id FROM finding_contributions"
                " WHERE subject_id = ANY($1::text[])",
                subjects,
            )
        ]
        statements = {
            "uses_of_subjects": await statement_of(
                lambda c: FindingStore(c).uses_of_subjects(subjects)
            ),
            "contributions_of_subjects": await statement_of(
                lambda c: FindingStore(c).contributions_of_subjects(subjects)
            ),
            "histories": await statement_of(lambda c: RegistryRepository(c).histories(subjects)),
            "refresh: totals": await statement_of(lambda c: FindingStore(c).refresh(finding_ids)),
        }
        out: Row = {"subjects": len(subjects), "findings": len(finding_ids)}
        for name, (sql, args) in statements.items():
            rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *args)
            plan = [_shorten(r[0]) for r in rows]
            times = []
            for _ in range(3):
                started = time.perf_counter()
                result = await conn.fetch(sql, *args)
                times.append(time.perf_counter() - started)
            out[name] = {
                "plan": plan,
                "rows": len(result),
                "client_ms": statistics.median(times) * 1e3,
                "execution_ms": _execution_ms(plan),
            }
    return out


def _shorten(line: str) -> str:
    """A plan line without the batch's 500 literal values."""
    return re.sub(
        r"'\{([^}]{60,})\}'", lambda m: f"'{{… {m.group(1).count(',') + 1} values}}'", line
    )


def _execution_ms(plan: Sequence[str]) -> float | None:
    for line in plan:
        match = re.search(r"Execution Time: ([0-9.]+) ms", line)
        if match:
            return float(match.group(1))
    return None


# ----------------------------------------------------------------------------- run


async def measure(bench: Bench, args: argparse.Namespace, log: Callable[[str], None]) -> Row:
    rng = random.Random(args.seed)
    subjects = Subjects(bench.tag, args.subjects, rng)
    log(
        f"broker {bench.bootstrap}; starting the registry ({args.replicas} replica(s), logs in"
        f" {bench.work_dir}) …"
    )
    service_pids = await asyncio.to_thread(
        bench.start_services, dict(args.service_env), args.replicas
    )
    rss_idle = _summed(rss_mib, service_pids)

    scratch = await asyncpg.create_pool(bench.url("scratch"), min_size=1, max_size=2)
    pids: dict[str, Sequence[int]] = {"registry service": service_pids}
    if bench.broker is not None and bench.broker.pid is not None:
        pids["tansu"] = (bench.broker.pid,)
    meter = Meter(pids, scratch, bench.databases[0])
    pool = await own_pool(bench.url(), meter)
    producer = await start_producer(bench.bootstrap, bench.idempotence)
    group = f"{bench.group_prefix}.registry.{CONSENT_EVENTS.name}"
    watcher = AIOKafkaConsumer(
        bootstrap_servers=bench.bootstrap, group_id=group, enable_auto_commit=False
    )
    await watcher.start()
    ctx = Context(bench, pool, meter, producer, watcher, service_pids, log)
    try:
        log("policy …")
        policy_s = await publish_policy(bench.bootstrap, bench.idempotence, pool)
        log(f"  projected after {policy_s:.1f} s")
        memberships = args.subjects * args.records_per_subject * args.versions
        log(f"building {memberships:,} memberships with SQL (untimed) …")
        volume = await build_memberships(
            pool, args.subjects, args.records_per_subject, args.versions, log
        )
        log(
            f"  {volume['memberships']:,} memberships, {volume['records']:,} records"
            f" ({volume['build_s']:.0f} s)"
        )

        log(f"yardsticks: Kafka, {args.grants:,} messages like phase A …")
        sample = [consent_event(s, True, GRANTED_AT) for s in subjects.sample(args.grants)]
        kafka = await kafka_yardsticks(
            bench.bootstrap,
            bench.idempotence,
            f"bench.consent-findings.{bench.tag}",
            encode(sample),
        )
        log(
            f"  produce {kafka['produce_per_s']:,.0f} msg/s, consume {kafka['consume_per_s']:,.0f}"
            f" msg/s, decode_event {kafka['decode_per_s']:,.0f}/s"
            f" ({kafka['message_bytes']:.0f} bytes a message, {kafka['partitions']} partitions)"
        )
        log(f"yardstick: Postgres, the registry's projection insert, {BATCH} per txn …")
        postgres = await postgres_yardstick(bench.url(), sample)
        log(f"  {postgres['rows_per_s']:,.0f} rows/s")

        log("warm-up: 1,000 grants (untimed) …")
        await timed_run(
            ctx, "warm-up", 0, [consent_event(s, True, GRANTED_AT) for s in subjects.grants(1000)]
        )

        runs: dict[str, list[Row]] = {"grants": [], "withdrawals": [], "grants now": []}
        for number in range(1, args.runs + 1):
            log(f"phase A, grants, run {number}/{args.runs}: {args.grants:,} events …")
            events = [consent_event(s, True, GRANTED_AT) for s in subjects.grants(args.grants)]
            runs["grants"].append(await timed_run(ctx, "grants", number, events))
        subjects.reserve(2 * BATCH)
        if subjects.wrapped:
            log("  (more grants than members: some members were granted twice)")
        for number in range(1, args.runs + 1):
            log(f"phase B, withdrawals, run {number}/{args.runs}: {args.withdrawals:,} events …")
            chosen, repeated = subjects.withdrawals(args.withdrawals)
            if repeated:
                log("  (fewer granted members than withdrawals: some withdraw twice)")
            now = datetime.now(UTC)
            events = [consent_event(s, False, now) for s in chosen]
            runs["withdrawals"].append(await timed_run(ctx, "withdrawals", number, events))
        for number in range(1, args.runs + 1):
            log(f"phase C, grants now, run {number}/{args.runs}: {args.grants:,} events …")
            now = datetime.now(UTC)
            events = [consent_event(s, True, now) for s in subjects.sample(args.grants)]
            runs["grants now"].append(await timed_run(ctx, "grants now", number, events))

        log("where the time goes: the consumer path in this process …")
        profile = (
            await where_time_goes(bench.url(), meter, subjects, log)
            if not args.skip_profile
            else None
        )
        final = await counts(pool)
    finally:
        await watcher.stop()
        await producer.stop()
        await pool.close()
        await scratch.close()
    return {
        "volume": volume,
        "policy_projected_s": policy_s,
        "limits": {"kafka": kafka, "postgres": postgres},
        "runs": runs,
        "median": {phase: medians(rs) for phase, rs in runs.items()},
        "profile": profile,
        "totals": final,
        "rss_mb": {
            "idle": rss_idle,
            "peak": _summed(peak_rss_mib, service_pids),
            "at_end": _summed(rss_mib, service_pids),
        },
    }


def medians(runs: Sequence[Row]) -> Row:
    def over(key: str) -> float | None:
        return median_of([r[key] for r in runs])

    def over_all(key: str) -> float | None:
        """None unless every run has the figure (a run that never drained has none)."""
        return over(key) if all(r[key] is not None for r in runs) else None

    cpu_names = runs[0]["cpu_s"].keys() if runs else ()
    return {
        "events": over("events"),
        "produce_s": over("produce_s"),
        "produce_per_s": over("produce_per_s"),
        "consumed_s": over("consumed_s"),
        "events_per_s": over("events_per_s"),
        "published_s": over_all("published_s"),
        "published_per_s": over_all("published_per_s"),
        "created": {k: median_of([r["created"][k] for r in runs]) for k in runs[0]["created"]},
        "cpu_s": {k: median_of([r["cpu_s"][k] for r in runs]) for k in cpu_names},
        "service_peak_rss_mb": max(
            (r["service_peak_rss_mb"] for r in runs if r["service_peak_rss_mb"]), default=None
        ),
    }


# ----------------------------------------------------------------------------- output


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _ms_per_event(cpu: dict[str, float | None], name: str, events: float) -> str:
    value = cpu.get(name)
    return "-" if value is None else f"{value / events * 1e3:.3f}"


def _percent(cpu: dict[str, float | None], name: str, cpus: int) -> str:
    """CPU seconds of ``name`` over the window, as % of one CPU (of all ``cpus``)."""
    value, wall = cpu.get(name), cpu.get("wall")
    return "-" if value is None or not wall else f"{value / wall / cpus * 100:.0f}"


def _yardstick(label: str, rate: float | None, unit: str, grants: float, withdrawals: float) -> str:
    if not rate:
        return f"  {label:<56} -"
    return (
        f"  {label:<56}{_f(rate):>10} {unit:<7} grants {grants / rate:.1%},"
        f" withdrawals {withdrawals / rate:.2%}"
    )


def report(result: Row, meta: Row) -> str:
    volume = result["volume"]
    kafka, pg = result["limits"]["kafka"], result["limits"]["postgres"]
    lines = [
        "",
        f"ConsentTrace consent events → findings   {meta['started_at']}",
        f"{volume['memberships']:,} memberships ({volume['subjects']:,} subjects,"
        f" {volume['records_per_subject']} records each, {volume['versions']} sealed versions);"
        f" broker {meta['broker']}; {meta['cpus']} CPUs;"
        f" load {meta['load_before']} → {meta.get('load_after', '-')}",
        "Postgres "
        + ", ".join(f"{k} {v}" for k, v in meta["postgres_settings"].items())
        + (
            "; autovacuum stood in for by VACUUM ANALYZE before each run"
            if meta["postgres_settings"].get("autovacuum") == "off"
            else ""
        ),
        *(
            [f"service environment: {' '.join(f'{k}={v}' for k, v in meta['service_env'].items())}"]
            if meta["service_env"]
            else []
        ),
        *(
            [f"{meta['replicas']} registry replicas: CPU and RSS are their sums"]
            if meta.get("replicas", 1) > 1
            else []
        ),
        "",
        f"{'phase':<12} {'run':>6} {'events':>8} {'produce/s':>10} {'consumed s':>10}"
        f" {'events/s':>9} {'÷ target':>8} {'published s':>11} {'findings':>9}"
        f" {'contrib.':>9} {'outbox':>8} {'svc ms CPU/ev':>13} {'PG ms CPU/ev':>12}"
        f" {'Tansu':>6} {'svc %':>6} {'busy %':>6}",
    ]
    for phase, runs in result["runs"].items():
        for r in [*runs, {**result["median"][phase], "run": "median"}]:
            n = r["events"]
            lines.append(
                f"{phase:<12} {r['run']!s:>6} {_f(n):>8} {_f(r['produce_per_s']):>10}"
                f" {_f(r['consumed_s'], 2):>10} {_f(r['events_per_s']):>9}"
                f" {_f((r['events_per_s'] or 0) / TARGET_PER_S * 100, 1) + ' %':>8}"
                f" {_f(r['published_s'], 2):>11} {_f(r['created']['findings']):>9}"
                f" {_f(r['created']['contributions']):>9} {_f(r['created']['outbox_findings']):>8}"
                f" {_ms_per_event(r['cpu_s'], 'registry service', n):>13}"
                f" {_ms_per_event(r['cpu_s'], 'postgres', n):>12}"
                f" {_ms_per_event(r['cpu_s'], 'tansu', n):>6}"
                f" {_percent(r['cpu_s'], 'registry service', 1):>6}"
                f" {_percent(r['cpu_s'], 'machine', meta['cpus'] or 1):>6}"
            )
    grants = result["median"]["grants"]["events_per_s"] or 0
    withdrawals = result["median"]["withdrawals"]["events_per_s"] or 0
    rss = result["rss_mb"]
    lines += [
        "",
        f"target {TARGET_PER_S:,} events/s. registry RSS: {_f(rss['idle'])} MiB idle,"
        f" peak (VmHWM) {_f(rss['peak'])} MiB, {_f(rss['at_end'])} MiB at the end",
        "",
        "yardsticks (same broker, same Postgres, same message bytes; median run ÷ yardstick)",
        _yardstick(
            f"Kafka produce alone, {kafka['messages']:,} msgs of {kafka['message_bytes']:.0f} B",
            kafka["produce_per_s"],
            "msg/s",
            grants,
            withdrawals,
        ),
        _yardstick(
            f"Kafka consume alone (no group, {kafka['partitions']} partitions)",
            kafka["consume_per_s"],
            "msg/s",
            grants,
            withdrawals,
        ),
        _yardstick(
            "decode_event alone (contract check), one core",
            kafka["decode_per_s"],
            "/s",
            grants,
            withdrawals,
        ),
        _yardstick(
            f"Postgres projection insert, {BATCH} per txn",
            pg["rows_per_s"],
            "rows/s",
            grants,
            withdrawals,
        ),
    ]
    profile = result.get("profile")
    if profile:
        lines += [
            "",
            f"where the time goes: one consumer batch of {BATCH}, in this process (median of 3)",
        ]
        for kind in ("grants", "withdrawals"):
            m = profile[kind]["median"]
            db_ms = sum(s["ms"] for s in m["statements"].values())
            rate = BATCH / m["wall_ms"] * 1e3
            lines.append(
                f"  {kind}: {m['wall_ms']:.0f} ms wall ({rate:,.0f} events/s);"
                f" Python CPU {m['python_cpu_ms']:.0f} ms, SQL round trips {db_ms:.0f} ms"
                f" (Postgres CPU {_f(m['postgres_cpu_ms'])} ms);"
                f" {m['findings_outbox']:,} findings to the outbox"
            )
            both = profile[kind]["two_at_once"]
            lines.append(
                f"    two batches at once (two consumers): {both['wall_ms']:.0f} ms for both,"
                f" locks waited {' / '.join(_f(ms) for ms in both['lock_versions_ms'])} ms"
            )
            for label, s in sorted(m["statements"].items(), key=lambda kv: -kv[1]["ms"]):
                lines.append(f"    {label:<48} {s['calls']:>6} calls {s['ms']:>9.1f} ms")
            lines.append("    top functions by own time (cProfile, one batch):")
            for p in profile[kind]["profile_top"][:12]:
                lines.append(
                    f"      {p['tottime_ms']:>8.1f} ms own {p['cumtime_ms']:>8.1f} ms cum"
                    f" {p['calls']:>8} calls  {p['function']}"
                )
        explain = profile["explain"]
        lines += [
            "",
            f"EXPLAIN (ANALYZE, BUFFERS), {explain['subjects']} withdrawn subjects,"
            f" {explain['findings']:,} of their findings:",
        ]
        for name in (
            "uses_of_subjects",
            "contributions_of_subjects",
            "histories",
            "refresh: totals",
        ):
            e = explain[name]
            lines.append(
                f"  {name}: {e['rows']:,} rows, execution {_f(e['execution_ms'], 1)} ms,"
                f" from the client {e['client_ms']:.1f} ms"
            )
            lines += ["    " + line for line in e["plan"]]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Consent events → findings, 10M memberships.")
    parser.add_argument("--grants", "-n", type=int, default=50_000, help="per run (50000)")
    parser.add_argument("--withdrawals", "-w", type=int, default=2_000, help="per run (2000)")
    parser.add_argument("--runs", "-k", type=int, default=3, help="runs of each phase (3)")
    parser.add_argument("--subjects", type=int, default=200_000, help="with memberships (200000)")
    parser.add_argument("--records-per-subject", type=int, default=10, help="(10)")
    parser.add_argument(
        "--versions", type=int, default=5, help="sealed versions, each of all records (5)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-profile", action="store_true", help="no in-process profile")
    parser.add_argument(
        "--service-env", action="append", default=[], metavar="NAME=VALUE", help="repeatable"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="registry processes sharing the partitions (1); CPU and memory are their sums",
    )
    parser.add_argument("--keep-logs", action="store_true")
    parser.add_argument(
        "--keep-databases", action="store_true", help="for inspection: drop them yourself"
    )
    args = parser.parse_args(argv)
    if any("=" not in item for item in args.service_env):
        parser.error("--service-env takes NAME=VALUE")
    if min(args.grants, args.withdrawals, args.runs, args.subjects, args.replicas) < 1:
        parser.error("--grants, --withdrawals, --runs, --subjects, --replicas must be ≥ 1")
    if args.grants <= 4 * BATCH:
        # Half the grants go to members, and 2 * BATCH of those are kept for the profile:
        # with fewer, no granted member is left to withdraw.
        parser.error(f"--grants must be > {4 * BATCH}")
    args.service_env = [item.split("=", 1) for item in args.service_env]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    tag = uuid.uuid4().hex[:8]
    work_dir = Path(tempfile.mkdtemp(prefix=f"ct-bench-findings-{tag}-"))
    bench = Bench(tag, work_dir, postgres_server_url())
    meta: Row = {
        **run_meta(),
        "grants": args.grants,
        "withdrawals": args.withdrawals,
        "runs": args.runs,
        "postgres": bench.server_url.rsplit("@", 1)[-1],
        "service_env": dict(args.service_env),
        "replicas": args.replicas,
    }

    def stop() -> None:
        if args.keep_databases:
            log(f"databases kept: {', '.join(bench.databases)}")
            bench.databases = []
        bench.stop()

    with bench_run(stop, work_dir, keep_logs=args.keep_logs) as run:
        log("broker, database, migrations …")
        bench.start_infrastructure()
        meta["broker"] = f"Tansu {bench.bootstrap} (embedded)" if bench.broker else bench.bootstrap
        result = asyncio.run(measure(bench, args, log))
        meta["postgres_settings"] = asyncio.run(_server_settings(bench.url("scratch")))
        meta["load_after"] = load_average()
        print(report(result, meta))
        print(f"\nJSON: {write_result('consent_findings', result, meta).relative_to(REPO_ROOT)}")
        run.failed = False
    return 1 if run.failed else 0


async def _server_settings(dsn: str) -> dict[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            name: str(await conn.fetchval(f"SHOW {name}"))
            for name in ("server_version", "shared_buffers", "autovacuum", "jit", "fsync")
        }
    finally:
        await conn.close()


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
