"""Test support shared by the integration, end-to-end and benchmark code.

Service processes on fresh databases, a TCP proxy that can cut Postgres away from a
service, small Kafka produce/collect helpers that read topics without a group, and a
dataset finding to start from (``dataset_finding``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from contracts.base import DatasetRef
from contracts.events import DatasetFinding, FindingReason, FindingStatus, Severity
from services.runtime import devstack, embedded
from services.runtime.auth import DevKeys, write_dev_keys
from services.runtime.consumer import BatchHandler, EventHandler
from services.runtime.db import connect_pool
from services.runtime.messages import Event
from services.runtime.migrate import upgrade
from services.runtime.settings import ServiceSettings
from services.runtime.telemetry import tracer
from services.runtime.unit_of_work import unit_of_work

__all__ = [
    "DevKeys",
    "FakePool",
    "PostgresProxy",
    "ServiceProcess",
    "StartService",
    "StartStack",
    "batch_against_one_at_a_time",
    "collect",
    "dataset_finding",
    "header",
    "migrate_service",
    "produce",
    "role_keys",
    "running_stack",
]

REPO_ROOT = Path(__file__).resolve().parents[2]


def dataset_finding(
    dataset: DatasetRef | tuple[str, str, str] = ("s3://lake", "posts", "v1"),
    **fields: Any,
) -> DatasetFinding:
    """An active improper-use finding on ``dataset`` (a ref or namespace, name, version)
    that affects one record of one subject; ``fields`` set anything else (a new id each
    call unless ``finding_id`` is given)."""
    if isinstance(dataset, DatasetRef):
        ref = dataset
    else:
        namespace, name, version = dataset
        ref = DatasetRef(namespace=namespace, name=name, version=version)
    values: dict[str, Any] = {
        "finding_id": uuid.uuid4(),
        "status": FindingStatus.ACTIVE,
        "dataset": ref,
        "severity": Severity.DESTROY_REQUIRED,
        "reason": FindingReason.IMPROPER_USE,
        "policy_id": "test",
        "policy_version": "1",
        "rule": "test rule",
        "affected_records": 1,
        "affected_subjects": 1,
        "detected_at": datetime.now(UTC),
    }
    values.update(fields)
    return DatasetFinding(**values)


def migrate_service(name: str, database_url: str) -> None:
    """Migrate in a thread of its own: Alembic runs its own event loop, callers may have one."""
    versions = REPO_ROOT / "services" / name / "migrations" / "versions"
    with ThreadPoolExecutor(1) as pool:
        pool.submit(upgrade, versions, database_url, wait_s=10).result()


T = TypeVar("T")


async def batch_against_one_at_a_time(
    make_database: Callable[[str], str],
    service: str,
    events: Sequence[Event[Any]],
    *,
    batch_handler: BatchHandler,
    handler: EventHandler,
    outcome: Callable[[asyncpg.Pool], Awaitable[T]],
    before: Callable[[asyncpg.Pool], Awaitable[None]] | None = None,
) -> tuple[T, T]:
    """The same events handled by a subscription's batch handler (one unit of work) and by
    its handler (one unit of work each), each on a fresh migrated database of ``service``
    that ``before`` prepares: what ``outcome`` reads from each, the batch's first. Both run
    inside a span of their own, as a consumer's batch does, so that any trace a handler
    stores must come from the events, not from the caller."""
    results: list[T] = []
    for batched in (True, False):
        database = make_database(f"{service}_{'batch' if batched else 'single'}")
        migrate_service(service, database)
        pool = await connect_pool(ServiceSettings(database_url=database))
        try:
            if before is not None:
                await before(pool)
            with tracer().start_as_current_span("a batch"):
                if batched:
                    async with unit_of_work(pool, f"/consenttrace/{service}") as uow:
                        await batch_handler(events, uow)
                else:
                    for event in events:
                        async with unit_of_work(pool, f"/consenttrace/{service}") as uow:
                            await handler(event, uow)
            results.append(await outcome(pool))
        finally:
            await pool.close()
    return results[0], results[1]


def role_keys(directory: Path) -> tuple[DevKeys, dict[str, str]]:
    """One fresh key per role (and lineage's service key) in ``directory``, and the
    ``extra_env`` that turns auth on with them for a :class:`ServiceProcess`."""
    keys = write_dev_keys(directory, reuse=False)
    return keys, {"AUTH_MODE": "api_keys", "API_KEYS_FILE": str(keys.keys_file)}


@dataclass
class ServiceProcess:
    """One service as a real process: ``start``, ``kill`` (SIGKILL), ``restart``, ``stop``."""

    name: str
    database_url: str
    bootstrap: str
    log_dir: Path
    idempotence: bool = False
    extra_env: Mapping[str, str] = field(default_factory=dict)
    port: int = field(default_factory=embedded.free_port)
    group_prefix: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:8]}")
    direct_database_url: str | None = None
    """For the test's own queries when the service reaches Postgres through a proxy."""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_dsn(self) -> str:
        return self.direct_database_url or self.database_url

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def env(self) -> dict[str, str]:
        return {
            "SERVICE_NAME": self.name,
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "KAFKA_ENABLE_IDEMPOTENCE": "true" if self.idempotence else "false",
            "KAFKA_GROUP_PREFIX": self.group_prefix,
            # A SIGKILLed member must be replaced fast (Tansu: a rebalance takes ~5 s).
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "KAFKA_HEARTBEAT_INTERVAL_MS": "1000",
            "RETRY_MAX_BACKOFF_S": "1.0",
            "OUTBOX_POLL_INTERVAL_S": "0.5",
            "LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"),
            # Tests call the APIs without keys unless they turn auth on (see `role_keys`).
            "AUTH_MODE": "off",
            **self.extra_env,
        }

    def consumer_group(self, topic: str) -> str:
        """This service's consumer group on ``topic``, as the service names it."""
        settings = ServiceSettings(service_name=self.name, kafka_group_prefix=self.group_prefix)
        return settings.consumer_group(topic)

    async def caught_up(self, *topics: str) -> bool:
        """Whether this service has committed the end offset of every partition of
        ``topics``. It commits an offset only after the transaction that handled the
        records has committed, so then its tables reflect everything on those topics so
        far: a probe on the tables ("the counts match") can hold on an intermediate
        state, this cannot."""
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            await consumer.topics()  # metadata of every topic
            for topic in topics:
                group = self.consumer_group(topic)
                partitions = [
                    TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()
                ]
                if not partitions:
                    return False
                ends = await consumer.end_offsets(partitions)
                committed = await _committed(self.bootstrap, group, partitions)
                if any(committed.get(tp, 0) < ends[tp] for tp in partitions):
                    return False
            return True
        finally:
            await consumer.stop()

    def start(self) -> ServiceProcess:
        self.proc = devstack.start_service(self.name, self.env(), self.port, self.log_dir)
        return self

    def wait_ready(self, timeout: float = 90.0) -> ServiceProcess:
        devstack.wait_ready(
            f"{self.url}/health/ready", timeout, proc=self.proc, log_path=self.log_path
        )
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, nothing is flushed or committed."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


@contextmanager
def running_stack(
    names: Iterable[str],
    make_database: Callable[[str], str],
    bootstrap: str,
    log_dir: Path,
    *,
    idempotence: bool = False,
    label: str = "stack",
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[dict[str, ServiceProcess]]:
    """Several services, each on a fresh migrated database, started at once; yields them
    ready, by name, and stops them all on the way out."""
    services: dict[str, ServiceProcess] = {}
    for name in names:
        database = make_database(f"{label}_{name}")
        migrate_service(name, database)
        services[name] = ServiceProcess(
            name, database, bootstrap, log_dir, idempotence=idempotence, extra_env=extra_env or {}
        )
    if "lineage" in services and "registry" in services:  # lineage asks the registry
        lineage = services["lineage"]
        lineage.extra_env = {"REGISTRY_URL": services["registry"].url, **lineage.extra_env}
    try:
        for service in services.values():
            service.start()
        with ThreadPoolExecutor(max(1, len(services))) as pool:
            list(pool.map(lambda s: s.wait_ready(), services.values()))
        yield services
    finally:
        for service in services.values():
            service.stop()


class StartService(Protocol):
    """The ``start_service`` fixture: a service process on a fresh migrated database."""

    def __call__(
        self,
        name: str,
        *,
        via: PostgresProxy | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> ServiceProcess: ...


class StartStack(Protocol):
    """The ``start_stack`` fixture: ``running_stack`` of these services on the session's
    broker and Postgres (``label`` names their databases)."""

    def __call__(
        self, names: Iterable[str], label: str, extra_env: Mapping[str, str] | None = None
    ) -> AbstractContextManager[dict[str, ServiceProcess]]: ...


class PostgresProxy:
    """A TCP forwarder to Postgres that a test can open and cut, to make Postgres vanish."""

    def __init__(self, target_host: str = "127.0.0.1", target_port: int = 5432) -> None:
        self.port = embedded.free_port()
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        """Refuse new connections and break every open one."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(_pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


async def produce(bootstrap: str, topic: str, records: Iterable[Record]) -> None:
    """Send (key, value, headers) records in order and wait until the broker has them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value=value, key=key, headers=headers)
            for key, value, headers in records
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def collect(
    bootstrap: str,
    topic: str,
    match: Callable[[ConsumerRecord[bytes, bytes]], bool],
    *,
    expected: int,
    within: float = 30.0,
    settle: float = 1.0,
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every matching record from the start of ``topic``, read without a consumer group.

    Returns once ``expected`` matches arrived and nothing more matched for ``settle``
    seconds (so duplicates would be seen), or after ``within`` seconds with what arrived.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: list[ConsumerRecord[bytes, bytes]] = []
    try:
        deadline = time.monotonic() + within
        partitions: set[TopicPartition] = set()
        last_match = time.monotonic()
        while time.monotonic() < deadline:
            known = consumer.partitions_for_topic(topic) or set()
            if {TopicPartition(topic, p) for p in known} != partitions:
                partitions = {TopicPartition(topic, p) for p in known}
                consumer.assign(list(partitions))
                await consumer.seek_to_beginning(*partitions)
                found.clear()
            if not partitions:
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.2)
                continue
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    if match(record):
                        found.append(record)
                        last_match = time.monotonic()
            if len(found) >= expected and time.monotonic() - last_match >= settle:
                break
    finally:
        await consumer.stop()
    return found


async def _committed(
    bootstrap: str, group: str, partitions: list[TopicPartition]
) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group, partitions=partitions)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


def header(record: ConsumerRecord[bytes, bytes], name: str) -> str | None:
    for key, value in record.headers or ():
        if key == name:
            return value.decode() if value is not None else None
    return None


class FakeConnection:
    """Just enough of an asyncpg connection for the runtime's inbox and outbox statements.

    Transactions snapshot the state and restore it on error, so rollback semantics hold.
    """

    def __init__(self, pool: FakePool) -> None:
        self._pool = pool

    def transaction(self) -> _FakeTransaction:
        return _FakeTransaction(self._pool)

    async def fetchval(self, query: str, *args: object) -> object:
        if "INSERT INTO inbox" in query:
            event_id = str(args[0])
            if event_id in self._pool.inbox:
                return None
            self._pool.inbox.add(event_id)
            return True
        raise NotImplementedError(query)

    async def fetch(self, query: str, *args: object) -> list[dict[str, object]]:
        if "INSERT INTO inbox" in query:
            ids = [str(i) for i in args[0]]  # type: ignore[attr-defined]
            new = [i for i in dict.fromkeys(ids) if i not in self._pool.inbox]
            self._pool.inbox.update(new)
            return [{"event_id": i} for i in new]
        raise NotImplementedError(query)

    async def executemany(self, query: str, rows: Iterable[tuple[object, ...]]) -> None:
        if "INSERT INTO outbox" not in query:
            raise NotImplementedError(query)
        self._pool.outbox.extend(rows)

    async def copy_records_to_table(
        self, table: str, *, records: Iterable[tuple[object, ...]], columns: Sequence[str]
    ) -> str:
        if table != "outbox":
            raise NotImplementedError(table)
        self._pool.outbox.extend(records)
        return "COPY"

    async def execute(self, query: str, *args: object) -> str:
        if query.startswith("NOTIFY"):
            return "NOTIFY"
        if "INSERT INTO outbox" in query:  # one message, with its pg_notify
            self._pool.outbox.append(args)
            return "SELECT 1"
        raise NotImplementedError(query)


class _FakeTransaction:
    def __init__(self, pool: FakePool) -> None:
        self._pool = pool

    async def __aenter__(self) -> None:
        self._snapshot = (set(self._pool.inbox), list(self._pool.outbox))
        if self._pool.failures:
            raise self._pool.failures.pop(0)

    async def __aexit__(self, exc_type: object, *_: object) -> None:
        if exc_type is not None:
            self._pool.inbox, self._pool.outbox = self._snapshot


class FakePool:
    """An in-memory stand-in for the pool: inbox ids, outbox rows, and injectable failures."""

    def __init__(self) -> None:
        self.inbox: set[str] = set()
        self.outbox: list[tuple[object, ...]] = []
        self.failures: list[BaseException] = []
        """Raised, in order, by the next transactions to begin (e.g. ConnectionRefusedError)."""

    def acquire(self) -> _FakeAcquire:
        return _FakeAcquire(FakeConnection(self))

    def outbox_topics(self) -> list[str]:
        return [str(row[0]) for row in self.outbox]


class _FakeAcquire:
    def __init__(self, conn: FakeConnection) -> None:
        self._conn = conn

    async def __aenter__(self) -> FakeConnection:
        return self._conn

    async def __aexit__(self, *_: object) -> None:
        return None
