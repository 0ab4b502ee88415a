"""Registration by Kafka (``registry.registrations.v1``) on the registry as a real process,
the session's real broker and a real Postgres: a producer's opened + batches + sealed seal
the version (queryable over HTTP); redeliveries and re-sends change nothing; a missing
batch, a bad record, a conflicting record and a version never opened are dead-lettered
with their reason while the consumer goes on, and nothing wrong is ever sealed."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaProducer, ConsumerRecord

from contracts.base import DatasetRef
from contracts.registration import (
    RecordRegistration,
    RegistrationBatch,
    RegistrationOpened,
    RegistrationSealed,
    TopicMessage,
    registration_message,
    registration_messages,
    upload_id_for,
)
from contracts.topics import REGISTRATIONS
from services.runtime.testing import ServiceProcess, collect, header, migrate_service, produce

pytestmark = pytest.mark.integration

SOURCE = "/test/producer"


@pytest.fixture(scope="module")
def service(
    make_database: Callable[[str], str],
    kafka_bootstrap: str,
    kafka_idempotence: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    """One registry for the module (each test registers versions of its own names)."""
    db = make_database("registry")
    migrate_service("registry", db)
    log_dir: Path = tmp_path_factory.mktemp("registry-kafka")
    registry = ServiceProcess(
        "registry", db, kafka_bootstrap, log_dir, idempotence=kafka_idempotence
    ).start()
    try:
        registry.wait_ready()
        yield registry
    finally:
        registry.stop()


class Registry:
    def __init__(
        self, service: ServiceProcess, client: httpx.AsyncClient, db: asyncpg.Pool, bootstrap: str
    ) -> None:
        self.service = service
        self.client = client
        self.db = db
        self.bootstrap = bootstrap

    async def send(self, messages: list[TopicMessage]) -> None:
        await produce(self.bootstrap, REGISTRATIONS.name, messages)

    async def version(self, dataset: DatasetRef) -> httpx.Response:
        return await self.client.get(
            "/api/v1/dataset-version",
            params={
                "namespace": dataset.namespace,
                "name": dataset.name,
                "version": dataset.version,
            },
        )

    async def sealed(self, dataset: DatasetRef, within: float = 30) -> dict[str, Any]:
        async def answered() -> bool:
            return (await self.version(dataset)).status_code == 200

        await wait_for(answered, within, f"{dataset.key} to be sealed")
        body: dict[str, Any] = (await self.version(dataset)).json()
        return body

    async def upload(self, dataset: DatasetRef) -> dict[str, Any]:
        response = await self.client.get(
            f"/api/v1/dataset-versions/uploads/{upload_id_for(dataset)}"
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def consumed(self, messages: list[TopicMessage], within: float = 30) -> None:
        """Wait until the registry has a final outcome for every one of these messages."""
        ids = list({header_value(m, "ce_id") for m in messages})

        async def all_seen() -> bool:
            seen = await self.db.fetchval(
                "SELECT count(*) FROM inbox WHERE event_id = ANY($1)", ids
            )
            return bool(seen == len(ids))

        await wait_for(all_seen, within, "the registry to consume the messages")

    async def dead_letters(
        self, dataset: DatasetRef, expected: int, within: float = 30
    ) -> list[ConsumerRecord[bytes, bytes]]:
        key = dataset.key.encode()
        return await collect(
            self.bootstrap,
            REGISTRATIONS.dlq,
            lambda r: r.key == key,
            expected=expected,
            within=within,
            settle=0.5,
        )

    async def members(self, dataset: DatasetRef) -> int:
        count = await self.db.fetchval(
            """
            SELECT count(*) FROM memberships m
            JOIN dataset_versions dv USING (dataset_version_id)
            WHERE dv.namespace = $1 AND dv.name = $2 AND dv.version = $3
            """,
            dataset.namespace,
            dataset.name,
            dataset.version,
        )
        return int(count)


@pytest.fixture
async def registry(service: ServiceProcess, kafka_bootstrap: str) -> AsyncIterator[Registry]:
    db = await asyncpg.create_pool(service.admin_dsn, min_size=1, max_size=2)
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            yield Registry(service, client, db, kafka_bootstrap)
    finally:
        await db.close()


async def wait_for(probe: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.1)


def header_value(message: TopicMessage, name: str) -> str:
    return next(v.decode() for n, v in message.headers if n == name)


def dataset(tag: str) -> DatasetRef:
    return DatasetRef(namespace="s3://training", name=f"kafka/{tag}", version="v1")


def opened(ds: DatasetRef) -> RegistrationOpened:
    return RegistrationOpened.model_validate(
        {"dataset": ds, "purpose": "ai.training.generative", "created_at": "2024-09-01T00:00:00Z"}
    )


def record(tag: str, i: int, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "record_id": f"{tag}-{i:06d}",
        "source_system": "inbox",
        "subject_id": f"subj-{tag}-{i % 5}",
        "category": "user.content.private",
        "jurisdiction": "US",
        "collected_at": "2024-08-01T12:00:00Z",
        "content_digest": "sha256:" + hashlib.sha256(f"{tag}-{i}".encode()).hexdigest(),
    }
    body.update(overrides)
    return body


def batch(ds: DatasetRef, n: int, records: list[dict[str, Any]]) -> TopicMessage:
    body = RegistrationBatch(
        dataset=ds, batch=n, records=tuple(RecordRegistration.model_validate(r) for r in records)
    )
    return registration_message(body, source=SOURCE)


def sealed(ds: DatasetRef, batches: int, records: int) -> TopicMessage:
    body = RegistrationSealed(dataset=ds, batches=batches, record_count=records)
    return registration_message(body, source=SOURCE)


def dlq(record: ConsumerRecord[bytes, bytes]) -> dict[str, str | None]:
    return {
        name: header(record, name)
        for name in ("dlq_reason", "dlq_error", "dlq_source_topic", "ce_type", "ce_id")
    }


async def test_opened_batches_sealed_register_the_version_once(registry: Registry) -> None:
    tag = uuid.uuid4().hex[:8]
    ds = dataset(tag)
    records = [record(tag, i) for i in range(30)]
    messages = list(registration_messages(opened(ds), records, source=SOURCE, max_batch_records=10))
    assert len(messages) == 5, "opened, 3 batches, sealed"
    await registry.send(messages)

    version = await registry.sealed(ds)
    assert version["record_count"] == 30
    assert version["upload_id"] == str(upload_id_for(ds))
    assert version["purpose"] == "ai.training.generative"
    assert await registry.members(ds) == 30
    listed = await registry.client.get(
        "/api/v1/dataset-versions", params={"subject_id": f"subj-{tag}-1"}
    )
    assert [v["dataset"]["name"] for v in listed.json()] == [ds.name]
    upload = await registry.upload(ds)
    assert [(c["chunk"], c["records"]) for c in upload["chunks"]] == [(0, 10), (1, 10), (2, 10)]

    # Redelivered (the same records: the inbox drops them) and sent again on purpose (new
    # ids: each is a no-op after the seal, batch by batch): nothing changes.
    again = list(registration_messages(opened(ds), records, source=SOURCE, max_batch_records=10))
    await registry.send(messages + again)
    await registry.consumed(messages + again)
    assert (await registry.version(ds)).json() == version, "the same seal, the same count"
    assert await registry.members(ds) == 30
    assert await registry.dead_letters(ds, expected=0, within=3) == []


async def test_sealed_with_a_missing_batch_is_dead_lettered_until_completed(
    registry: Registry,
) -> None:
    tag = uuid.uuid4().hex[:8]
    ds = dataset(tag)
    parts = [[record(tag, i) for i in range(n * 10, n * 10 + 10)] for n in range(3)]
    first = registration_message(opened(ds), source=SOURCE)
    await registry.send([first, batch(ds, 0, parts[0]), batch(ds, 2, parts[2]), sealed(ds, 3, 30)])

    [dead] = await registry.dead_letters(ds, expected=1)
    reason = dlq(dead)
    assert reason["dlq_reason"] == "incomplete"
    assert reason["ce_type"] == "io.consenttrace.registration.sealed"
    assert reason["dlq_source_topic"] == REGISTRATIONS.name
    assert "1 of 3 batches missing: 1; 30 records announced, 20 staged" in str(reason["dlq_error"])
    assert json.loads(dead.value) == {"dataset": ds.model_dump(), "batches": 3, "record_count": 30}
    assert (await registry.version(ds)).status_code == 404, "not sealed"
    upload = await registry.upload(ds)
    assert upload["state"] == "open"
    assert [c["chunk"] for c in upload["chunks"]] == [0, 2]

    # The producer sends the missing batch and seals again: sealed, all of it.
    await registry.send([batch(ds, 1, parts[1]), sealed(ds, 3, 30)])
    version = await registry.sealed(ds)
    assert version["record_count"] == 30
    assert await registry.members(ds) == 30


async def test_bad_conflicting_and_unopened_messages_are_dead_lettered(
    registry: Registry,
) -> None:
    tag = uuid.uuid4().hex[:8]
    first, second, never = dataset(f"{tag}-a"), dataset(f"{tag}-b"), dataset(f"{tag}-never")
    records = [record(tag, i) for i in range(10)]
    await registry.send(list(registration_messages(opened(first), records, source=SOURCE)))
    await registry.sealed(first)

    # A bad record (no UTC offset) in batch 1 of the second version; batch 0 holds a record
    # of the first version with another subject: a conflict.
    good = batch(second, 1, [record(tag, i) for i in range(100, 105)])
    bad_body = json.loads(good.value)
    bad_body["records"][2]["collected_at"] = "2024-08-01T12:00:00"
    bad = good._replace(value=json.dumps(bad_body).encode())
    conflicting = [record(tag, 200), record(tag, 3, subject_id="someone-else")]
    await registry.send(
        [
            registration_message(opened(second), source=SOURCE),
            batch(second, 0, conflicting),
            bad,
            good,
            sealed(second, 2, 7),
            batch(never, 0, [record(tag, 300)]),
        ]
    )

    dead = [dlq(r) for r in await registry.dead_letters(second, expected=2)]
    assert [d["dlq_reason"] for d in dead] == ["contract_violation", "record_conflict"]
    assert "records.2.collected_at" in str(dead[0]["dlq_error"])
    assert dead[0]["ce_id"] == header_value(bad, "ce_id")
    conflict = str(dead[1]["dlq_error"])
    assert dead[1]["ce_type"] == "io.consenttrace.registration.sealed"
    assert (
        '"source_system":"inbox","record_id":"' + f'{tag}-000003","batch":0,"index":1' in conflict
    )
    assert '"fields":["subject_id"]' in conflict
    assert (await registry.version(second)).status_code == 404, "nothing sealed"
    assert (await registry.upload(second))["state"] == "open"

    # The same record in two batches of one version: refused naming both occurrences.
    twice = dataset(f"{tag}-twice")
    await registry.send(
        [
            registration_message(opened(twice), source=SOURCE),
            batch(twice, 0, [record(tag, 400), record(tag, 401)]),
            batch(twice, 1, [record(tag, 401)]),
            sealed(twice, 2, 3),
        ]
    )
    [duplicate] = [dlq(r) for r in await registry.dead_letters(twice, expected=1)]
    assert duplicate["dlq_reason"] == "duplicate_records"
    assert '"occurrences":[{"batch":0,"index":1},{"batch":1,"index":0}]' in str(
        duplicate["dlq_error"]
    )
    assert (await registry.version(twice)).status_code == 404

    [unopened] = [dlq(r) for r in await registry.dead_letters(never, expected=1)]
    assert unopened["dlq_reason"] == "not_opened"
    assert "send `opened` before its batches" in str(unopened["dlq_error"])

    # The consumer went on, and the producer can fix the conflict: batch 0 again, then seal.
    await registry.send(
        [batch(second, 0, [record(tag, 200), record(tag, 201)]), sealed(second, 2, 7)]
    )
    assert (await registry.sealed(second))["record_count"] == 7
    assert (await registry.version(first)).json()["record_count"] == 10


async def test_full_size_batches_pass_and_so_do_their_dead_letters(registry: Registry) -> None:
    """Batches as the helper fills them by default (~900 kB, under Kafka's 1 MiB default):
    through the broker, into the registry, and — a bad one — onto the dead-letter topic with
    the original bytes and the dlq headers, still under the producer's 1 MiB limit."""
    tag = uuid.uuid4().hex[:8]
    ds = dataset(tag)
    messages = list(
        registration_messages(opened(ds), (record(tag, i) for i in range(7_000)), source=SOURCE)
    )
    assert len(messages) == 5 and all(len(m.value) <= 900_000 for m in messages)
    assert len(messages[1].value) > 850_000
    body = json.loads(messages[1].value)
    body["records"][-1]["content_digest"] = "sha256:short"
    spoiled = messages[1]._replace(value=json.dumps(body, separators=(",", ":")).encode())
    await registry.send([messages[0], spoiled, *messages[2:]])

    dead = await registry.dead_letters(ds, expected=2)
    assert [header(r, "dlq_reason") for r in dead] == ["contract_violation", "incomplete"]
    assert dead[0].value == spoiled.value
    assert "1 of 3 batches missing: 0" in str(header(dead[1], "dlq_error"))

    # Sent again as new messages (new ce_ids: the dead-lettered ids are final outcomes).
    resend = [
        registration_message(
            RegistrationBatch.model_validate_json(messages[1].value), source=SOURCE
        ),
        registration_message(
            RegistrationSealed.model_validate_json(messages[-1].value), source=SOURCE
        ),
    ]
    await registry.send(resend)
    assert (await registry.sealed(ds))["record_count"] == 7_000


async def test_the_seal_time_is_the_sealed_records_log_time(registry: Registry) -> None:
    """A version is sealed when its ``sealed`` record was logged, not when the registry
    happened to consume it: a replay of the topic into an empty registry seals it at the
    same time (and so judges its uses the same). The record's timestamp is set here as a
    producer (or the broker, with LogAppendTime) would have set it a year ago."""
    tag = uuid.uuid4().hex[:8]
    ds = dataset(tag)
    messages = list(
        registration_messages(opened(ds), [record(tag, i) for i in range(5)], source=SOURCE)
    )
    logged = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    producer = AIOKafkaProducer(bootstrap_servers=registry.bootstrap, acks="all")
    await producer.start()
    try:
        for key, value, headers in messages:
            await (
                await producer.send(
                    REGISTRATIONS.name,
                    value=value,
                    key=key,
                    headers=headers,
                    timestamp_ms=int(logged.timestamp() * 1000),
                )
            )
    finally:
        await producer.stop()
    version = await registry.sealed(ds)
    assert datetime.fromisoformat(version["sealed_at"]) == logged
    assert datetime.fromisoformat(version["used_at"]) == logged
