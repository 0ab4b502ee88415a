"""Scaffolding the benchmarks share: the stack, machine limits, CPU and memory, figures, output.

``Bench`` starts the broker, fresh databases and service processes, and stops and drops all
of it; ``kafka_limits`` / ``postgres_limits`` measure what the same broker and Postgres do
on their own; ``CpuMeter`` and ``peak_rss_mib`` read ``/proc``; ``write_result`` writes a
script's JSON to ``bench/results/``, where ``bench/run_all.py`` collects it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from services.runtime import embedded
from services.runtime.testing import ServiceProcess, migrate_service
from services.runtime.walkthrough import Stack

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "bench" / "results"
SERVICES = ("consent", "registry", "lineage", "deletion")

Row = dict[str, Any]


def log(line: str) -> None:
    """Progress to stderr, with the time: figures go to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def run_meta() -> Row:
    """What every result's ``meta`` starts with: when, on how many CPUs, which Python, and
    the machine's load before the run (``load_after`` is added at the end)."""
    return {
        "started_at": utc_stamp(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_before": load_average(),
    }


async def server_version(dsn: str) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SHOW server_version"))
    finally:
        await conn.close()


def write_result(script: str, result: Row, meta: Row) -> Path:
    """``bench/results/<script>-<meta.started_at>.json``: what ``run_all.py`` collects."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{script}-{meta['started_at'].replace(':', '')}.json"
    path.write_text(json.dumps({"meta": meta, **result}, indent=2, default=str) + "\n")
    return path


# ----------------------------------------------------------------------------- statistics


def quantile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated quantile (``q`` in 0..1); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary_ms(seconds: Sequence[float]) -> dict[str, float | None]:
    """p50/p90/p99/max of durations given in seconds, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "p50": quantile(ms, 0.50),
        "p90": quantile(ms, 0.90),
        "p99": quantile(ms, 0.99),
        "max": max(ms) if ms else None,
        "count": len(ms),
    }


def median_of(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


# ------------------------------------------------------------------------- machine limits


async def _ensure_topic(producer: AIOKafkaProducer, topic: str) -> list[int]:
    """Create ``topic`` (auto-creation on first produce) and return its partitions."""
    await producer.send_and_wait(topic, b"warm-up")
    return sorted(await producer.partitions_for(topic))


async def kafka_limits(bootstrap: str, tag: str, messages: int) -> Row:
    """Raw aiokafka rates on this broker: produce (two ways), consume, one hop, offset commit."""
    out: Row = {"messages": messages, "payload_bytes": 100}
    payload = b"x" * 100
    topic = f"bench.limits.{tag}"
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=2, enable_idempotence=False
    )
    await producer.start()
    try:
        # 1. per-message send + gather: what the outbox relay does.
        partitions = await _ensure_topic(producer, topic)
        out["partitions"] = len(partitions)
        started = time.perf_counter()
        futures = [
            await producer.send(topic, payload, key=str(i % 64).encode()) for i in range(messages)
        ]
        await asyncio.gather(*futures)
        out["produce_send_per_s"] = messages / (time.perf_counter() - started)

        # 2. the batch API: full batches handed to the broker, partitions in turn.
        batch_topic = f"{topic}.batch"
        batch_partitions = await _ensure_topic(producer, batch_topic)
        started = time.perf_counter()
        futures, sent = [], 0
        batch = producer.create_batch()
        for _ in range(messages):
            if batch.append(key=None, value=payload, timestamp=None) is None:
                partition = batch_partitions[sent % len(batch_partitions)]
                futures.append(await producer.send_batch(batch, batch_topic, partition=partition))
                sent += 1
                batch = producer.create_batch()
                batch.append(key=None, value=payload, timestamp=None)
        partition = batch_partitions[sent % len(batch_partitions)]
        futures.append(await producer.send_batch(batch, batch_topic, partition=partition))
        await asyncio.gather(*futures)
        out["produce_batch_per_s"] = messages / (time.perf_counter() - started)
    finally:
        await producer.stop()

    # 3. consume from the beginning without a group.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        started, seen = time.perf_counter(), 0
        deadline = started + 120
        while seen < messages + 1 and time.perf_counter() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            seen += sum(len(records) for records in batches.values())
        out["consume_per_s"] = seen / (time.perf_counter() - started)
    finally:
        await consumer.stop()

    out["hop"] = await kafka_hop_latency(bootstrap, f"bench.hop.{tag}", fetch_max_wait_ms=500)
    out["hop_fetch_wait_10ms"] = await kafka_hop_latency(
        bootstrap, f"bench.hop10.{tag}", fetch_max_wait_ms=10
    )
    out["commit"] = await kafka_commit_rate(bootstrap, topic, partitions[0], f"bench-{tag}")
    return out


async def kafka_hop_latency(
    bootstrap: str, topic: str, *, fetch_max_wait_ms: int, count: int = 200, rate: float = 50
) -> Row:
    """One message produced → the same message returned by ``getone()``, at ``rate``/s.

    The services fetch with ``KAFKA_FETCH_MAX_WAIT_MS`` (50 ms). A broker that answers a
    waiting fetch as soon as data arrives makes this independent of ``fetch_max_wait_ms``;
    one that sits out the wait does not: Tansu gave 127 ms p50 at 500 and 3.2-3.7 ms at 10
    (2026-11-26), so compare the two.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=fetch_max_wait_ms,
    )
    await producer.start()
    await consumer.start()
    latencies: list[float] = []
    sent_at: dict[bytes, float] = {}
    try:
        partitions = await _ensure_topic(producer, topic)
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        await consumer.position(tps[0])  # resolve the end offset before producing

        async def receive() -> None:
            while len(latencies) < count:
                record = await consumer.getone()
                if record.value in sent_at:
                    latencies.append(time.perf_counter() - sent_at[record.value])

        receiver = asyncio.create_task(receive())
        for i in range(count):
            value = f"hop-{i}".encode()
            sent_at[value] = time.perf_counter()
            await producer.send_and_wait(topic, value)
            await asyncio.sleep(1 / rate)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receiver, 30)
    finally:
        await consumer.stop()
        await producer.stop()
    return summary_ms(latencies)


async def kafka_commit_rate(bootstrap: str, topic: str, partition: int, group: str) -> Row:
    """Sequential offset commits, one per "message": what a per-message ``ack()`` costs."""
    commits = 1000
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        started = time.perf_counter()
        for offset in range(1, commits + 1):
            await asyncio.wait_for(consumer.commit({tp: offset}), 10)
        elapsed = time.perf_counter() - started
        return {"commits": commits, "per_s": commits / elapsed, "mean_ms": elapsed / commits * 1e3}
    except Exception as exc:  # a broker may refuse commits outside a group generation
        return {"error": repr(exc)}
    finally:
        await consumer.stop()


async def postgres_limits(dsn: str, commit_rows: int = 2000, copy_rows: int = 200_000) -> Row:
    """Single-row INSERT+COMMIT (one transaction each) and COPY rates on this Postgres."""
    conn = await asyncpg.connect(dsn)
    try:
        out: Row = {
            "server_version": await conn.fetchval("SHOW server_version"),
            "synchronous_commit": await conn.fetchval("SHOW synchronous_commit"),
            "fsync": await conn.fetchval("SHOW fsync"),
        }
        # A logged table on purpose: a temp table writes no WAL, so its commit does not wait
        # for the WAL flush -- the very cost each service pays once per message.
        await conn.execute(
            "CREATE TABLE bench_commit (id bigint PRIMARY KEY, subject text NOT NULL,"
            " at timestamptz NOT NULL DEFAULT now())"
        )
        insert = "INSERT INTO bench_commit (id, subject) VALUES ($1, $2)"
        started = time.perf_counter()
        for i in range(commit_rows):
            await conn.execute(insert, i, f"subject-{i}")
        elapsed = time.perf_counter() - started
        out["insert_commit_per_s"] = commit_rows / elapsed
        out["insert_commit_mean_ms"] = elapsed / commit_rows * 1e3
        out["insert_commit_rows"] = commit_rows

        await conn.execute("CREATE TEMP TABLE bench_copy (id bigint, subject text, at timestamptz)")
        now = datetime.now(UTC)
        records = [(i, f"subject-{i}", now) for i in range(copy_rows)]
        started = time.perf_counter()
        await conn.copy_records_to_table(
            "bench_copy", records=records, columns=["id", "subject", "at"]
        )
        out["copy_rows_per_s"] = copy_rows / (time.perf_counter() - started)
        out["copy_rows"] = copy_rows
        await conn.execute("DROP TABLE bench_commit")
        return out
    finally:
        await conn.close()


# ------------------------------------------------------------------------- CPU accounting

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of one process (Linux ``/proc``), None when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine_busy_s() -> float | None:
    """CPU seconds all CPUs spent not idle since boot (``/proc/stat``), None when unknown."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / _TICK


@dataclass
class CpuMeter:
    """CPU seconds per component over a window: services, their Postgres backends, broker."""

    pids: dict[str, int]
    postgres: asyncpg.Pool
    databases: list[str]

    async def sample(self) -> dict[str, Any]:
        backends = await self.postgres.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = ANY($1::text[])", self.databases
        )
        return {
            "procs": {name: process_cpu_s(pid) for name, pid in self.pids.items()},
            "backends": {r["pid"]: process_cpu_s(r["pid"]) for r in backends},
            "bench client": time.process_time(),
            "machine": machine_busy_s(),
            "wall": time.perf_counter(),
        }

    @staticmethod
    def usage(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float | None]:
        """CPU seconds used between two samples, per component (None when unknown)."""

        def delta(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else b - a

        out = {name: delta(before["procs"][name], t) for name, t in after["procs"].items()}
        # Backends opened during the window count whole; ones closed in it are lost.
        out["postgres (our databases)"] = sum(
            t - (before["backends"].get(pid) or 0.0)
            for pid, t in after["backends"].items()
            if t is not None
        )
        out["bench client"] = after["bench client"] - before["bench client"]
        out["machine (all processes)"] = delta(before["machine"], after["machine"])
        out["wall"] = after["wall"] - before["wall"]
        return out


# ---------------------------------------------------------------------------------- stack


@dataclass
class Bench:
    """Everything started, so that everything is stopped: one broker, service sets, databases.

    A service set is the four services on databases ``bench_<tag>_<label><service>`` with the
    consumer-group prefix ``bench-<tag><label>``; ``replay.py`` starts a second, empty one.
    """

    tag: str
    work_dir: Path
    server_url: str
    broker: embedded.TansuBroker | None = None
    bootstrap: str = ""
    service_env: dict[str, str] = field(default_factory=dict)
    databases: list[str] = field(default_factory=list)
    services: list[ServiceProcess] = field(default_factory=list)

    def url(self, name: str, label: str = "") -> str:
        return embedded.database_url_for(self.server_url, f"bench_{self.tag}_{label}{name}")

    def start_infrastructure(self, extra_databases: Sequence[str] = ("scratch",)) -> None:
        explicit = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        if explicit:
            self.bootstrap = explicit
        else:
            self.broker = embedded.TansuBroker(log_path=self.work_dir / "tansu.log").start()
            self.bootstrap = self.broker.bootstrap_servers
        self.create_databases((*SERVICES, *extra_databases))

    def create_databases(self, names: Sequence[str], label: str = "") -> list[str]:
        full = [f"bench_{self.tag}_{label}{n}" for n in names]
        embedded.create_databases_sync(self.server_url, full)
        self.databases.extend(full)
        return full

    def start_services(self, label: str = "") -> Stack:
        """Migrate and start the four services of set ``label`` (databases must exist)."""
        idempotence = self.broker is None and embedded.env_flag(
            os.environ, "KAFKA_ENABLE_IDEMPOTENCE", True
        )
        started = []
        for name in SERVICES:
            migrate_service(name, self.url(name, label))
            started.append(
                ServiceProcess(
                    name,
                    self.url(name, label),
                    self.bootstrap,
                    self.work_dir / (label or "main"),
                    idempotence=idempotence,
                    group_prefix=self.group_prefix(label),
                    extra_env=self.service_env,
                )
            )
        for service in started:
            service.log_dir.mkdir(parents=True, exist_ok=True)
            self.services.append(service.start())
        for service in started:
            service.wait_ready()
        return Stack(*(s.url for s in started))

    def group_prefix(self, label: str = "") -> str:
        return f"bench-{self.tag}{label}"

    def stop_services(self, services: Sequence[ServiceProcess] | None = None) -> None:
        for service in list(self.services if services is None else services):
            with contextlib.suppress(Exception):
                service.stop()

    def stop(self) -> None:
        self.stop_services()
        drop_and_stop(self.server_url, self.databases, self.broker)


def postgres_server_url() -> str:
    explicit = os.environ.get("DATABASE_URL", "").strip()
    return embedded.database_url_for(explicit or embedded.DEFAULT_SERVER_URL, "postgres")


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the run like Ctrl-C, so that everything started is stopped."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class RunOutcome:
    """What ``bench_run`` yields: set ``failed = False`` once the results are out."""

    failed: bool = True


@contextlib.contextmanager
def bench_run(stop: Callable[[], None], work_dir: Path, *, keep_logs: bool) -> Iterator[RunOutcome]:
    """The frame of every script's ``main``: SIGTERM ends the run like Ctrl-C, an interrupt
    ends it quietly, everything started is stopped, and the logs are kept when the run
    failed or when asked."""
    outcome = RunOutcome()
    with sigterm_as_interrupt():
        try:
            yield outcome
        except KeyboardInterrupt:
            log("interrupted: stopping everything")
        finally:
            stop()
            if outcome.failed or keep_logs:
                log(f"logs kept in {work_dir}")
            else:
                shutil.rmtree(work_dir, ignore_errors=True)


def drop_and_stop(
    server_url: str, databases: Sequence[str], broker: embedded.TansuBroker | None
) -> None:
    """A bench's databases dropped (a failure said, not raised) and its broker stopped."""
    if databases:
        try:
            embedded.drop_databases_sync(server_url, list(databases), force=True)
        except Exception as exc:
            print(f"could not drop databases {list(databases)}: {exc!r}", file=sys.stderr)
    if broker is not None:
        broker.stop()


# ------------------------------------------------------------------------------ memory


def peak_rss_mib(pid: int) -> float | None:
    """Peak resident memory (``VmHWM``) of a process and its live children, MiB; None if gone.

    A service process may be a launcher with the Python process as its child: both count.
    """
    total, seen = 0, False
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1])
                seen = True
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
    return total / 1024 if seen else None


def rss_mib(pid: int) -> float | None:
    """Current resident memory (``VmRSS``) of one process, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None
