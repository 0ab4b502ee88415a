"""Registering a dataset version over Kafka: ``registry.registrations.v1``.

A registration is a family of three messages, all keyed by the dataset version's key
(``DatasetRef.key``), so that one version's messages stay in order in one partition:

1. ``RegistrationOpened`` (``ce_type`` ``io.consenttrace.registration.opened``): the
   version's header — the same fields as the registry's ``DatasetVersionHeader``;
2. ``RegistrationBatch`` (``…registration.batch``): batch ``n`` (0, 1, …) of its records,
   at most ``MAX_BATCH_RECORDS``; sending batch ``n`` again replaces it (until the seal);
3. ``RegistrationSealed`` (``…registration.sealed``): how many batches (numbered
   ``0 … batches-1``) and records the version has; the registry seals it atomically only
   when exactly those are staged.

The CloudEvents attributes travel in ``ce_*`` headers as on every topic
(:mod:`contracts.envelope`, ``ce_schemaversion`` ``1``); the bodies below are the JSON.
``registration_messages`` turns a header and an iterable of records into the messages.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping
from itertools import chain
from typing import Annotated, Any, NamedTuple
from uuid import UUID

from pydantic import ConfigDict, Field, RootModel, StringConstraints, model_validator

from contracts.base import (
    AwareDatetime,
    CategoryPath,
    Contract,
    DatasetRef,
    Jurisdiction,
    PurposePath,
    SubjectId,
)
from contracts.envelope import Envelope, Headers

__all__ = [
    "BATCH_TYPE",
    "DEFAULT_BATCH_BYTES",
    "MAX_BATCH_NUMBER",
    "MAX_BATCH_RECORDS",
    "OPENED_TYPE",
    "PARTITIONS",
    "REGISTRATION_TYPES",
    "RETENTION_MS",
    "SEALED_TYPE",
    "TYPE_PREFIX",
    "UPLOAD_NAMESPACE",
    "ContentDigest",
    "RecordId",
    "RecordRegistration",
    "RegistrationBatch",
    "RegistrationBody",
    "RegistrationMessage",
    "RegistrationOpened",
    "RegistrationSealed",
    "TopicMessage",
    "registration_message",
    "registration_messages",
    "type_of",
    "upload_id_for",
]

TYPE_PREFIX = "io.consenttrace.registration"
OPENED_TYPE = f"{TYPE_PREFIX}.opened"
BATCH_TYPE = f"{TYPE_PREFIX}.batch"
SEALED_TYPE = f"{TYPE_PREFIX}.sealed"

PARTITIONS = 6
"""Partitions to create ``registry.registrations.v1`` with (as the other keyed topics)."""
RETENTION_MS = 30 * 24 * 3600 * 1000
"""Its ``retention.ms``, 30 days: long enough to outlast a registry outage or a producer's
fix and re-send; the registry's database, not the topic, records what was sealed."""

MAX_BATCH_RECORDS = 10_000
"""Records in one batch message, at most."""
MAX_BATCH_NUMBER = 2_147_483_647
DEFAULT_BATCH_BYTES = 900_000
"""What ``registration_messages`` puts in one batch body, at most: under Kafka's default
1 MiB message limit with room for the headers a dead letter adds to the same bytes."""

UPLOAD_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:consenttrace:registry.registrations.v1")
"""``28dd3d5d-f8a0-5e55-8d59-506065698e86``: the namespace of the upload ids the registry
derives from dataset keys (``upload_id_for``)."""

RecordId = Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[^\x00]+$")]
"""Any text but NUL (U+0000), which Postgres cannot store."""
ContentDigest = Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")]


class RecordRegistration(Contract):
    """One record: where it lives and whose it is, never its content (only a digest).

    Every form of registration validates records as this model (the NDJSON parser in
    ``services/registry/domain/snapshots.py`` with the same field types).
    """

    record_id: RecordId
    source_system: RecordId
    subject_id: SubjectId
    category: CategoryPath
    jurisdiction: Jurisdiction
    collected_at: AwareDatetime
    content_digest: ContentDigest


class _OfVersion(Contract):
    dataset: DatasetRef

    @model_validator(mode="after")
    def _storable_names(self) -> _OfVersion:
        for part in ("namespace", "name", "version"):
            if "\x00" in getattr(self.dataset, part):
                raise ValueError(f"dataset.{part} contains NUL (U+0000)")
        return self


class RegistrationOpened(_OfVersion):
    """A dataset version's registration begins: its header. Key: the version's key.

    Sending it again with the same header changes nothing; with another, it is refused.
    """

    purpose: PurposePath
    created_at: AwareDatetime
    training_started_at: AwareDatetime | None = None


class RegistrationBatch(_OfVersion):
    """Batch ``batch`` of the version's records. Key: the version's key.

    Sending batch ``n`` again before the seal replaces it, as a re-sent chunk does.
    """

    batch: Annotated[int, Field(ge=0, le=MAX_BATCH_NUMBER)]
    records: Annotated[
        tuple[RecordRegistration, ...], Field(min_length=1, max_length=MAX_BATCH_RECORDS)
    ]

    @model_validator(mode="after")
    def _unique_records(self) -> RegistrationBatch:
        seen: set[tuple[str, str]] = set()
        for index, record in enumerate(self.records):
            key = (record.source_system, record.record_id)
            if key in seen:
                raise ValueError(
                    f"records[{index}] repeats (source_system, record_id) {key!r} of this batch"
                )
            seen.add(key)
        return self


class RegistrationSealed(_OfVersion):
    """Seal the version: batches ``0 … batches-1`` holding ``record_count`` records in all.
    Key: the version's key."""

    batches: Annotated[int, Field(ge=1, le=MAX_BATCH_NUMBER)]
    record_count: Annotated[int, Field(ge=1)]


RegistrationBody = RegistrationOpened | RegistrationBatch | RegistrationSealed

REGISTRATION_TYPES: Mapping[str, type[RegistrationBody]] = {
    OPENED_TYPE: RegistrationOpened,
    BATCH_TYPE: RegistrationBatch,
    SEALED_TYPE: RegistrationSealed,
}
"""``ce_type`` → the body it announces."""


class RegistrationMessage(RootModel[RegistrationBody]):
    """A message of ``registry.registrations.v1``: its ``ce_type`` header says which body
    it carries (``x-cloudevents-types``)."""

    model_config = ConfigDict(
        frozen=True,
        json_schema_extra={
            "x-cloudevents-types": {
                type_: f"#/$defs/{model.__name__}" for type_, model in REGISTRATION_TYPES.items()
            }
        },
    )


def type_of(body: RegistrationBody) -> str:
    """The ``ce_type`` of a registration body."""
    for type_, model in REGISTRATION_TYPES.items():
        if type(body) is model:
            return type_
    raise TypeError(f"not a registration message: {type(body).__name__}")


def upload_id_for(dataset: DatasetRef) -> UUID:
    """The id of the upload the registry opens for this version (``uuid5`` of its key), so
    that a re-sent ``opened`` finds it again; ``GET /api/v1/dataset-versions/uploads/{id}``
    shows it."""
    return uuid.uuid5(UPLOAD_NAMESPACE, dataset.key)


# --- for Python producers ------------------------------------------------------------


class TopicMessage(NamedTuple):
    """One Kafka record to send: ``producer.send(topic, value=…, key=…, headers=…)``."""

    key: bytes
    value: bytes
    headers: Headers


def registration_message(body: RegistrationBody, *, source: str) -> TopicMessage:
    """A body as a Kafka record: the version's key, the JSON, CloudEvents headers.

    Every call gives the message a new ``ce_id``: the registry drops a message whose id it
    has seen before (a redelivery), including one it dead-lettered, so a message sent again
    on purpose (after a fix) must be a new one.
    """
    key = body.dataset.key
    envelope = Envelope.new(type=type_of(body), source=source, subject=key)
    return TopicMessage(key.encode(), body.model_dump_json().encode(), envelope.to_headers())


def registration_messages(
    opened: RegistrationOpened,
    records: Iterable[RecordRegistration | Mapping[str, Any]],
    *,
    source: str,
    max_batch_records: int = MAX_BATCH_RECORDS,
    max_batch_bytes: int = DEFAULT_BATCH_BYTES,
) -> Iterator[TopicMessage]:
    """``opened``, the records in batches (0, 1, …), then ``sealed``, ready to send in order.

    Lazy: records are read as the batches fill, so any number can be registered in bounded
    memory. A batch closes at ``max_batch_records`` records or before its body would pass
    ``max_batch_bytes``. Raises ``ValueError`` (pydantic's ``ValidationError``) for an
    invalid record or one repeated within a batch, before that batch is yielded; and when
    there are no records at all, before anything is yielded.
    """
    if not 1 <= max_batch_records <= MAX_BATCH_RECORDS:
        raise ValueError(f"max_batch_records must be within 1 … {MAX_BATCH_RECORDS}")
    items = iter(records)
    first = next(items, None)
    if first is None:
        raise ValueError("a dataset version needs at least one record")
    dataset = opened.dataset
    empty = RegistrationBatch.model_construct(dataset=dataset, batch=MAX_BATCH_NUMBER, records=())
    overhead = len(empty.model_dump_json().encode())
    yield registration_message(opened, source=source)

    batch: list[RecordRegistration] = []
    size = overhead
    number = total = 0

    def close() -> TopicMessage:
        body = RegistrationBatch(dataset=dataset, batch=number, records=tuple(batch))
        return registration_message(body, source=source)

    for item in chain((first,), items):
        record = (
            item
            if isinstance(item, RecordRegistration)
            else RecordRegistration.model_validate(item)
        )
        length = len(record.model_dump_json().encode()) + 1  # and a comma
        if overhead + length > max_batch_bytes:
            raise ValueError(
                f"record {record.source_system}/{record.record_id} alone is over"
                f" max_batch_bytes ({max_batch_bytes})"
            )
        if len(batch) == max_batch_records or size + length > max_batch_bytes:
            yield close()
            number += 1
            batch, size = [], overhead
        batch.append(record)
        size += length
        total += 1
    yield close()
    sealed = RegistrationSealed(dataset=dataset, batches=number + 1, record_count=total)
    yield registration_message(sealed, source=source)
