"""Registration by Kafka (``registry.registrations.v1``), the parts without a database: the
contract and its schema, the producer helper, the decoder, and the handler's decisions
(wired through FastStream's in-memory broker, with the registration use cases replaced by
an in-memory stand-in). ``tests/integration/test_registry_kafka_registration.py`` runs the
same flows on the real broker and Postgres."""

from __future__ import annotations

import hashlib
import itertools
import json
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker, TestKafkaBroker
from jsonschema import Draft202012Validator, FormatChecker
from pydantic import ValidationError

from contracts.base import DatasetRef
from contracts.envelope import Envelope
from contracts.generate import SCHEMA_DIR
from contracts.registration import (
    BATCH_TYPE,
    DEFAULT_BATCH_BYTES,
    MAX_BATCH_RECORDS,
    OPENED_TYPE,
    REGISTRATION_TYPES,
    SEALED_TYPE,
    UPLOAD_NAMESPACE,
    RecordRegistration,
    RegistrationBatch,
    RegistrationBody,
    RegistrationMessage,
    RegistrationOpened,
    RegistrationSealed,
    TopicMessage,
    registration_message,
    registration_messages,
    type_of,
    upload_id_for,
)
from contracts.topics import ALL_TOPICS, INTAKE_TOPICS, REGISTRATIONS, TOPICS
from services.registry.domain import snapshots as domain
from services.registry.domain.snapshots import RECORD_FIELDS, DatasetVersionHeader, RecordRow
from services.registry.entrypoints.kafka import decode_registration
from services.registry.service import registration_events
from services.registry.service.registration import (
    ChunkReceipt,
    DatasetVersionExists,
    RecordConflict,
    SealedVersion,
    UploadNotFound,
    UploadSealed,
    UploadStatus,
)
from services.registry.service.registration_events import (
    incomplete,
    on_registration,
    rows_of,
)
from services.runtime.consumer import EventConsumer, Subscription
from services.runtime.errors import ContractViolation
from services.runtime.settings import ServiceSettings
from services.runtime.testing import FakePool
from services.runtime.unit_of_work import UnitOfWork

T0 = datetime(2024, 9, 1, tzinfo=UTC)
DATASET = DatasetRef(namespace="s3://training", name="chat/messages", version="v7")
OPENED = RegistrationOpened(
    dataset=DATASET,
    purpose="ai.training.generative",
    created_at=T0,
    training_started_at=T0 + timedelta(days=2),
)


def record(i: int, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "record_id": f"msg-{i:06d}",
        "source_system": "inbox",
        "subject_id": f"member-{i % 7}",
        "category": "user.content.private",
        "jurisdiction": "US",
        "collected_at": "2024-08-01T12:00:00Z",
        "content_digest": "sha256:" + hashlib.sha256(str(i).encode()).hexdigest(),
    }
    body.update(overrides)
    return body


def batch(n: int, ids: range, dataset: DatasetRef = DATASET) -> RegistrationBatch:
    return RegistrationBatch(
        dataset=dataset,
        batch=n,
        records=tuple(RecordRegistration.model_validate(record(i)) for i in ids),
    )


def headers_of(message: TopicMessage) -> dict[str, str]:
    return {name: value.decode() for name, value in message.headers}


# --- the contract ----------------------------------------------------------------------


def _shape(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema without its prose (titles of models and descriptions)."""
    return {k: v for k, v in schema.items() if k not in ("description", "title")}


def test_opened_carries_exactly_the_upload_header() -> None:
    ours, theirs = RegistrationOpened.model_json_schema(), DatasetVersionHeader.model_json_schema()
    # ...but `backfill`, which uploads (this topic's included) refuse: only the one-document
    # form and the stream take it.
    assert "backfill" not in theirs["required"]
    theirs["properties"].pop("backfill")
    assert ours["properties"] == theirs["properties"]
    assert ours["required"] == theirs["required"]
    assert DatasetVersionHeader.model_validate_json(OPENED.model_dump_json()).dataset == DATASET


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"subject_id": "has space"},
        {"record_id": "nul\x00inside"},
        {"record_id": ""},
        {"collected_at": "2024-08-01T12:00:00"},
        {"content_digest": "md5:abc"},
        {"jurisdiction": "usa"},
        {"category": "User.Content"},
        {"surprise": 1},
    ],
)
def test_a_record_is_accepted_or_refused_as_the_registry_does(overrides: dict[str, Any]) -> None:
    body = record(1, **overrides)
    try:
        RecordRegistration.model_validate(body)
    except ValidationError:
        accepted = False
    else:
        accepted = True
    assert accepted == (overrides == {})
    line = json.dumps(body, ensure_ascii=False).encode()
    try:
        domain.parse_record_lines([line], 1, 0)
    except domain.LineError:
        assert not accepted, "the NDJSON parser refuses what the contract accepts"
    else:
        assert accepted, "the NDJSON parser accepts what the contract refuses"


def test_a_batch_holds_one_to_ten_thousand_distinct_records() -> None:
    assert len(batch(0, range(MAX_BATCH_RECORDS)).records) == MAX_BATCH_RECORDS
    with pytest.raises(ValidationError, match="at most 10000"):
        batch(0, range(MAX_BATCH_RECORDS + 1))
    with pytest.raises(ValidationError, match="at least 1"):
        RegistrationBatch(dataset=DATASET, batch=0, records=())
    with pytest.raises(ValidationError, match=r"records\[2\] repeats"):
        RegistrationBatch.model_validate(
            {"dataset": DATASET, "batch": 0, "records": [record(1), record(2), record(1)]}
        )
    with pytest.raises(ValidationError):
        batch(-1, range(1))
    with pytest.raises(ValidationError):
        RegistrationSealed(dataset=DATASET, batches=0, record_count=1)
    with pytest.raises(ValidationError):
        RegistrationSealed(dataset=DATASET, batches=1, record_count=0)


@pytest.mark.parametrize("model", [RegistrationOpened, RegistrationBatch, RegistrationSealed])
def test_dataset_names_must_be_storable(model: type[RegistrationBody]) -> None:
    bodies: dict[type[RegistrationBody], dict[str, Any]] = {
        RegistrationOpened: OPENED.model_dump(),
        RegistrationBatch: batch(0, range(1)).model_dump(),
        RegistrationSealed: {"dataset": DATASET.model_dump(), "batches": 1, "record_count": 1},
    }
    body = bodies[model]
    model.model_validate(body)
    body["dataset"] = {**body["dataset"], "name": "nul\x00"}
    with pytest.raises(ValidationError, match="NUL"):
        model.model_validate(body)


def test_each_kind_has_its_own_cloudevents_type_under_the_topic_prefix() -> None:
    assert REGISTRATIONS.name == "registry.registrations.v1"
    assert set(REGISTRATION_TYPES) == {OPENED_TYPE, BATCH_TYPE, SEALED_TYPE}
    bodies: list[RegistrationBody] = [OPENED, batch(0, range(1)), sealed(1, 1)]
    for type_, body in zip(REGISTRATION_TYPES, bodies, strict=True):
        assert type_.startswith(REGISTRATIONS.event_type + ".")
        assert type_of(body) == type_ and REGISTRATION_TYPES[type_] is type(body)
    assert {t.event_type for t in TOPICS}.isdisjoint(REGISTRATION_TYPES)


def test_the_intake_topic_is_apart_from_the_topics_between_services() -> None:
    assert INTAKE_TOPICS == (REGISTRATIONS,)
    assert REGISTRATIONS not in TOPICS
    assert {REGISTRATIONS.name, REGISTRATIONS.dlq} <= set(ALL_TOPICS), "docker compose creates it"
    assert REGISTRATIONS.dlq == "registry.registrations.v1.dlq"


def test_upload_ids_are_uuid5_of_the_dataset_key() -> None:
    assert str(UPLOAD_NAMESPACE) == "28dd3d5d-f8a0-5e55-8d59-506065698e86"  # in the README
    upload_id = upload_id_for(DATASET)
    assert upload_id == uuid.uuid5(UPLOAD_NAMESPACE, "dataset:s3://training:chat/messages#v7")
    assert upload_id.version == 5
    assert upload_id_for(DATASET.model_copy(update={"version": "v8"})) != upload_id


def _validator() -> Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / "registry.registrations.v1.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def test_the_committed_schema_accepts_each_kind_and_names_its_type() -> None:
    validator = _validator()
    schema: dict[str, Any] = json.loads(
        (SCHEMA_DIR / "registry.registrations.v1.schema.json").read_text()
    )
    sealed = RegistrationSealed(dataset=DATASET, batches=3, record_count=30)
    for body in (OPENED, batch(0, range(10)), sealed):
        wire = json.loads(body.model_dump_json())
        assert list(validator.iter_errors(wire)) == []
        target = schema["x-cloudevents-types"][type_of(body)]
        assert target == f"#/$defs/{type(body).__name__}"
        one_kind = {**schema["$defs"][type(body).__name__], "$defs": schema["$defs"]}
        assert Draft202012Validator(one_kind).is_valid(wire)
        assert RegistrationMessage.model_validate_json(body.model_dump_json()).root == body


@pytest.mark.parametrize(
    "defect",
    [
        {"surprise": 1},
        {"batch": -1},
        {"records": []},
        {"records": [record(1, subject_id="has space")]},
        {"dataset": {"namespace": "x", "name": "y"}},
    ],
)
def test_the_committed_schema_refuses_what_the_models_refuse(defect: dict[str, Any]) -> None:
    wire = json.loads(batch(0, range(3)).model_dump_json()) | defect
    assert not _validator().is_valid(wire)
    with pytest.raises(ValidationError):
        RegistrationMessage.model_validate(wire)


# --- the producer helper --------------------------------------------------------------


def test_messages_are_opened_batches_sealed_under_the_dataset_key() -> None:
    messages = list(
        registration_messages(
            OPENED, (record(i) for i in range(25)), source="/t", max_batch_records=10
        )
    )
    types = [headers_of(m)["ce_type"] for m in messages]
    assert types == [OPENED_TYPE, BATCH_TYPE, BATCH_TYPE, BATCH_TYPE, SEALED_TYPE]
    assert {m.key for m in messages} == {DATASET.key.encode()}
    assert {headers_of(m)["ce_subject"] for m in messages} == {DATASET.key}
    assert {headers_of(m)["ce_source"] for m in messages} == {"/t"}
    assert len({headers_of(m)["ce_id"] for m in messages}) == 5, "a new id per message"
    assert RegistrationOpened.model_validate_json(messages[0].value) == OPENED
    batches = [RegistrationBatch.model_validate_json(m.value) for m in messages[1:4]]
    assert [(b.batch, len(b.records)) for b in batches] == [(0, 10), (1, 10), (2, 5)]
    assert [r.record_id for b in batches for r in b.records] == [f"msg-{i:06d}" for i in range(25)]
    sealed = RegistrationSealed.model_validate_json(messages[-1].value)
    assert (sealed.batches, sealed.record_count) == (3, 25)
    envelope = Envelope.from_headers(messages[0].headers)
    assert envelope.schemaversion == "1"


def test_batches_close_before_their_bytes_pass_the_limit() -> None:
    # About 275 bytes a record: 10,000 would be 2.7 MB, over Kafka's default 1 MiB.
    messages = list(registration_messages(OPENED, map(record, range(12_000)), source="/t"))
    batches = [RegistrationBatch.model_validate_json(m.value) for m in messages[1:-1]]
    assert all(len(m.value) <= DEFAULT_BATCH_BYTES for m in messages)
    assert len(batches) == 4 and sum(len(b.records) for b in batches) == 12_000
    assert all(len(m.value) > 0.99 * DEFAULT_BATCH_BYTES for m in messages[1:-2]), "filled"
    small = list(
        registration_messages(OPENED, map(record, range(30)), source="/t", max_batch_bytes=3000)
    )
    assert all(len(m.value) <= 3000 for m in small)
    assert len(small) > 3


def test_the_helper_is_lazy_and_refuses_early() -> None:
    def endless() -> Iterator[dict[str, Any]]:
        i = 0
        while True:
            yield record(i)
            i += 1

    stream = registration_messages(OPENED, endless(), source="/t", max_batch_records=3)
    assert headers_of(next(stream))["ce_type"] == OPENED_TYPE
    assert len(RegistrationBatch.model_validate_json(next(stream).value).records) == 3

    with pytest.raises(ValueError, match="at least one record"):
        next(registration_messages(OPENED, [], source="/t"))
    twice = registration_messages(OPENED, [record(1), record(1)], source="/t")
    next(twice)  # opened
    with pytest.raises(ValidationError, match="repeats"):
        next(twice)
    with pytest.raises(ValidationError):
        list(registration_messages(OPENED, [record(1, jurisdiction="usa")], source="/t"))
    with pytest.raises(ValueError, match="max_batch_records"):
        next(registration_messages(OPENED, [record(1)], source="/t", max_batch_records=10_001))


# --- the decoder ------------------------------------------------------------------------


def decode(message: TopicMessage, *, key: bytes | None = None, **header: bytes) -> Any:
    headers = [(n, header.get(n.removeprefix("ce_"), v)) for n, v in message.headers]
    return decode_registration(
        REGISTRATIONS,
        value=message.value,
        headers=headers,
        partition=0,
        offset=7,
        key=message.key if key is None else key,
    )


def test_the_decoder_picks_the_body_by_ce_type() -> None:
    sealed = RegistrationSealed(dataset=DATASET, batches=1, record_count=2)
    for body in (OPENED, batch(0, range(2)), sealed):
        event = decode(registration_message(body, source="/t"))
        assert event.body == body and type(event.body) is type(body)
        assert (event.topic, event.offset, event.key) == (
            REGISTRATIONS.name,
            7,
            DATASET.key.encode(),
        )


def test_the_decoder_refuses_what_breaks_the_contract() -> None:
    good = registration_message(batch(0, range(3)), source="/t")
    with pytest.raises(ContractViolation, match="is not one of"):
        decode(good, type=b"io.consenttrace.registration.closed")
    with pytest.raises(ContractViolation, match=r"Extra inputs|Field required"):
        decode(good, type=OPENED_TYPE.encode())  # a batch's body announced as opened
    with pytest.raises(ContractViolation, match="schemaversion"):
        decode(good, schemaversion=b"2")
    with pytest.raises(ContractViolation, match="not the dataset version's key"):
        decode(good, key=b"dataset:elsewhere#v1")
    bad = json.loads(good.value)
    bad["records"][1]["subject_id"] = "has space"
    with pytest.raises(ContractViolation, match=r"records\.1\.subject_id"):
        decode(good._replace(value=json.dumps(bad).encode()))
    with pytest.raises(ContractViolation, match="missing CloudEvents headers"):
        decode_registration(
            REGISTRATIONS, value=good.value, headers=[], partition=0, offset=0, key=good.key
        )


# --- the handler's pure parts -----------------------------------------------------------


def test_incomplete_names_missing_extra_and_miscounted() -> None:
    assert incomplete(3, 30, {0: 10, 1: 10, 2: 10}) is None
    assert incomplete(3, 30, {0: 10, 2: 20}) == "1 of 3 batches missing: 1"
    assert incomplete(3, 25, {0: 10, 1: 10, 2: 10}) == "25 records announced, 30 staged"
    problem = incomplete(2_147_483_647, 5, {0: 5})
    assert problem is not None
    assert problem.startswith("2147483646 of 2147483647 batches missing: 1-20, …")
    assert incomplete(50, 10, {n: 1 for n in range(0, 50, 5)}) == (
        "40 of 50 batches missing: 1-4, 6-9, 11-14, 16-19, 21-24, …"
    )


def test_incomplete_with_extra_batches() -> None:
    problem = incomplete(2, 20, {0: 10, 1: 10, 2: 10})
    assert problem == (
        "batch(es) 2 staged beyond the 2 announced (abandon the upload to drop them, or"
        " announce more batches); 20 records announced, 30 staged"
    )


def test_rows_are_staged_as_the_http_path_stages_them() -> None:
    body = batch(4, range(3))
    rows = rows_of(body)
    expected = [
        domain.record_row(domain.RecordRegistration.model_validate(record(i)), 4, i)
        for i in range(3)
    ]
    assert rows == expected
    assert RECORD_FIELDS[0] == "source_system" and rows[0][2] == "inbox"


# --- the handler, through the in-memory broker ------------------------------------------


@dataclass
class Upload:
    header: DatasetVersionHeader
    chunks: dict[int, list[RecordRow]] = field(default_factory=dict)
    opened_at: datetime = T0
    sealed_at: datetime | None = None


@dataclass
class FakeRegistry:
    """The registration use cases over dicts, with the rules the handler relies on."""

    uploads: dict[UUID, Upload] = field(default_factory=dict)
    registered: dict[tuple[str, str], RecordRow] = field(default_factory=dict)
    taken: set[str] = field(default_factory=set)
    """Dataset keys registered by other means (HTTP)."""

    def status(self, upload_id: UUID) -> UploadStatus:
        upload = self.uploads.get(upload_id)
        if upload is None:
            raise UploadNotFound(f"no upload {upload_id}")
        return UploadStatus(
            upload_id=upload_id,
            dataset=upload.header.dataset,
            purpose=upload.header.purpose,
            created_at=upload.header.created_at,
            training_started_at=upload.header.training_started_at,
            opened_at=upload.opened_at,
            sealed_at=upload.sealed_at,
            chunks=[
                {"chunk": n, "records": len(rows)} for n, rows in sorted(upload.chunks.items())
            ],
        )

    def open(self, header: DatasetVersionHeader, upload_id: UUID) -> UUID:
        if header.dataset.key in self.taken or upload_id in self.uploads:
            raise DatasetVersionExists(f"{header.dataset.key} is already registered")
        self.uploads[upload_id] = Upload(header)
        return upload_id

    def open_upload(self, upload_id: UUID) -> Upload:
        upload = self.uploads.get(upload_id)
        if upload is None:
            raise UploadNotFound(f"no upload {upload_id}")
        if upload.sealed_at is not None:
            raise UploadSealed(f"upload {upload_id} was sealed")
        return upload

    def put(self, upload_id: UUID, chunk: int, rows: Sequence[RecordRow]) -> ChunkReceipt:
        upload = self.open_upload(upload_id)
        replaced = chunk in upload.chunks
        upload.chunks[chunk] = list(rows)
        return ChunkReceipt(upload_id, chunk, len(rows), replaced)

    def seal(self, upload_id: UUID, now: datetime) -> SealedVersion:
        upload = self.open_upload(upload_id)
        rows = [row for n in sorted(upload.chunks) for row in upload.chunks[n]]
        conflicts = [
            {
                "source_system": r[2],
                "record_id": r[3],
                "chunk": r[0],
                "line": r[1],
                "fields": ["subject_id"],
            }
            for r in rows
            if (r[2], r[3]) in self.registered and self.registered[(r[2], r[3])][4] != r[4]
        ]
        if conflicts:
            raise RecordConflict(f"{len(conflicts)} record(s) are already registered", conflicts)
        for r in rows:
            self.registered.setdefault((r[2], r[3]), r)
        upload.sealed_at = now
        h = upload.header
        return SealedVersion(
            h.dataset,
            h.purpose,
            h.created_at,
            h.training_started_at,
            now,
            now,
            len(rows),
            upload_id,
        )


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> FakeRegistry:
    fake = FakeRegistry()

    async def upload_status(uow: UnitOfWork, upload_id: UUID) -> UploadStatus:
        return fake.status(upload_id)

    async def open_upload_with_id(
        uow: UnitOfWork, header: DatasetVersionHeader, upload_id: UUID, *, now: datetime
    ) -> UUID:
        return fake.open(header, upload_id)

    async def put_records(
        uow: UnitOfWork, upload_id: UUID, chunk: int, rows: Sequence[RecordRow], *, now: datetime
    ) -> ChunkReceipt:
        return fake.put(upload_id, chunk, rows)

    async def seal_upload(uow: UnitOfWork, upload_id: UUID, *, now: datetime) -> SealedVersion:
        return fake.seal(upload_id, now)

    async def end_seal_settings(uow: UnitOfWork) -> None:
        return None

    for name, stand_in in [
        ("upload_status", upload_status),
        ("open_upload_with_id", open_upload_with_id),
        ("put_records", put_records),
        ("seal_upload", seal_upload),
        ("_end_seal_settings", end_seal_settings),
    ]:
        monkeypatch.setattr(registration_events, name, stand_in)
    return fake


SETTINGS = ServiceSettings(
    service_name="unit", retry_initial_backoff_s=0.001, retry_max_backoff_s=0.002
)


async def deliver(pool: FakePool, *messages: TopicMessage) -> None:
    broker = KafkaBroker()
    consumer = EventConsumer(SETTINGS, lambda: pool, "/unit")  # type: ignore[arg-type, return-value]
    consumer.register(
        broker, Subscription(REGISTRATIONS, on_registration, decoder=decode_registration)
    )
    async with TestKafkaBroker(broker) as test_broker:
        for m in messages:
            await test_broker.publish(
                m.value,
                REGISTRATIONS.name,
                key=m.key,
                headers={n: v.decode() for n, v in m.headers},
            )


OFFSETS = itertools.count()


async def consume(pool: FakePool, *messages: TopicMessage) -> list[str]:
    """The messages as one fetched batch, straight into the consumer, at distinct offsets.

    (The in-memory broker gives every message offset 0, and the consumer dead-letters a
    partition and offset once: a second dead letter in one test needs real offsets.)
    """
    consumer = EventConsumer(SETTINGS, lambda: pool, "/unit")  # type: ignore[arg-type, return-value]
    records = [
        ConsumerRecord(
            REGISTRATIONS.name, 0, next(OFFSETS), 0, 0, m.key, m.value, None, 0, 0, tuple(m.headers)
        )
        for m in messages
    ]
    sub = Subscription(REGISTRATIONS, on_registration, decoder=decode_registration)
    return await consumer.process_batch(sub, records)


def send(body: RegistrationBody) -> TopicMessage:
    return registration_message(body, source="/unit")


def dead_letters(pool: FakePool) -> list[dict[str, str]]:
    """The dead letters written, as their header maps (``dlq_*`` and the original ones)."""
    return [
        {str(n): bytes(v).decode() for n, v in zip(row[3], row[4], strict=True)}  # type: ignore[call-overload]
        for row in pool.outbox
        if row[0] == REGISTRATIONS.dlq
    ]


def sealed(batches: int, records: int, dataset: DatasetRef = DATASET) -> RegistrationSealed:
    return RegistrationSealed(dataset=dataset, batches=batches, record_count=records)


async def test_opened_three_batches_sealed_seal_the_version(registry: FakeRegistry) -> None:
    pool = FakePool()
    messages = list(
        registration_messages(OPENED, map(record, range(30)), source="/p", max_batch_records=10)
    )
    await deliver(pool, *messages)
    assert dead_letters(pool) == []
    upload = registry.uploads[upload_id_for(DATASET)]
    assert upload.sealed_at is not None
    assert {n: len(rows) for n, rows in upload.chunks.items()} == {0: 10, 1: 10, 2: 10}
    assert len(registry.registered) == 30


async def test_redelivered_and_resent_messages_change_nothing(registry: FakeRegistry) -> None:
    pool = FakePool()
    messages = list(
        registration_messages(OPENED, map(record, range(30)), source="/p", max_batch_records=10)
    )
    await deliver(pool, *messages, *messages)  # the same records again: the inbox drops them
    upload = registry.uploads[upload_id_for(DATASET)]
    sealed_at = upload.sealed_at
    # Sent again on purpose (new ids): opened, a batch, sealed — after the seal, no-ops.
    again = [send(OPENED), send(batch(1, range(10, 20))), send(sealed(3, 30))]
    await deliver(pool, *again)
    assert dead_letters(pool) == []
    assert upload.sealed_at == sealed_at and len(registry.registered) == 30
    assert len(pool.inbox) == 8, "5 messages once, the 3 re-sent ones as new events"


async def test_a_batch_sent_again_before_the_seal_replaces_itself(registry: FakeRegistry) -> None:
    pool = FakePool()
    await deliver(
        pool,
        send(OPENED),
        send(batch(0, range(10))),
        send(batch(1, range(10, 20))),
        send(batch(1, range(100, 105))),
        send(sealed(2, 15)),
    )
    assert dead_letters(pool) == []
    assert {r[3] for r in registry.registered.values()} == {
        f"msg-{i:06d}" for i in [*range(10), *range(100, 105)]
    }


async def test_sealed_with_a_missing_batch_is_dead_lettered_and_the_upload_stays_open(
    registry: FakeRegistry,
) -> None:
    pool = FakePool()
    await deliver(
        pool,
        send(OPENED),
        send(batch(0, range(10))),
        send(batch(2, range(20, 30))),
        send(sealed(3, 30)),
    )
    [dead] = dead_letters(pool)
    assert dead["dlq_reason"] == "incomplete"
    assert "1 of 3 batches missing: 1; 30 records announced, 20 staged" in dead["dlq_error"]
    assert dead["ce_type"] == SEALED_TYPE
    upload = registry.uploads[upload_id_for(DATASET)]
    assert upload.sealed_at is None
    # The producer completes it and seals again: sealed.
    await deliver(pool, send(batch(1, range(10, 20))), send(sealed(3, 30)))
    assert upload.sealed_at is not None and len(dead_letters(pool)) == 1


async def test_a_bad_record_is_dead_lettered_and_the_consumer_goes_on(
    registry: FakeRegistry,
) -> None:
    pool = FakePool()
    bad = json.loads(send(batch(1, range(10, 20))).value)
    bad["records"][3]["collected_at"] = "2024-08-01T12:00:00"  # no offset
    message = send(batch(1, range(10, 20)))._replace(value=json.dumps(bad).encode())
    await deliver(pool, send(OPENED), send(batch(0, range(10))), message, send(sealed(1, 10)))
    [dead] = dead_letters(pool)
    assert dead["dlq_reason"] == "contract_violation"
    assert "records.3.collected_at" in dead["dlq_error"]
    assert registry.uploads[upload_id_for(DATASET)].sealed_at is not None, "went on"


async def test_a_conflicting_record_refuses_the_seal_naming_it(registry: FakeRegistry) -> None:
    registry.registered[("inbox", "msg-000012")] = (
        0,
        0,
        "inbox",
        "msg-000012",
        "someone-else",
        "",
        "",
        T0,
        "",
    )
    pool = FakePool()
    await deliver(
        pool,
        send(OPENED),
        send(batch(0, range(10))),
        send(batch(1, range(10, 20))),
        send(sealed(2, 20)),
    )
    [dead] = dead_letters(pool)
    assert dead["dlq_reason"] == "record_conflict"
    assert (
        '"record_id":"msg-000012","batch":1,"index":2,"fields":["subject_id"]' in dead["dlq_error"]
    )
    assert registry.uploads[upload_id_for(DATASET)].sealed_at is None


async def test_messages_of_a_version_never_opened_are_dead_lettered(registry: FakeRegistry) -> None:
    pool = FakePool()
    outcomes = await consume(pool, send(batch(0, range(10))), send(sealed(1, 10)))
    assert outcomes == ["dead_lettered", "dead_lettered"]
    reasons = [(d["dlq_reason"], d["ce_type"]) for d in dead_letters(pool)]
    assert reasons == [("not_opened", BATCH_TYPE), ("not_opened", SEALED_TYPE)]
    assert "send `opened` before its batches" in dead_letters(pool)[0]["dlq_error"]
    assert registry.uploads == {}


async def test_refusals_after_the_seal_and_of_another_header(registry: FakeRegistry) -> None:
    pool = FakePool()
    other = DatasetRef(namespace="s3://training", name="over-http", version="v1")
    registry.taken.add(other.key)
    await consume(
        pool,
        send(OPENED),
        send(batch(0, range(10))),
        send(sealed(1, 10)),
        send(OPENED.model_copy(update={"purpose": "ai.training"})),
        send(batch(1, range(10, 20))),
        send(batch(0, range(10, 15))),
        send(sealed(2, 20)),
        send(OPENED.model_copy(update={"dataset": other})),
    )
    got = [(d["dlq_reason"], d["dlq_error"]) for d in dead_letters(pool)]
    assert [reason for reason, _ in got] == [
        "header_conflict",
        "already_sealed",
        "already_sealed",
        "already_sealed",
        "dataset_version_exists",
    ]
    assert "register a new version" in got[0][1]
    assert "without a batch 1 (it holds batches 0); this batch of 10 records" in got[1][1]
    assert "with a batch 0 of 10 records, not this one; this batch of 5" in got[2][1]
    assert "1 batch(es) and 10 records, not as this message says" in got[3][1]
    assert len(registry.registered) == 10
