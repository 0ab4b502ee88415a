"""Registering dataset versions: one JSON document, a chunked upload, or one NDJSON stream.

Staged records become ``records`` (immutable: a record registered again with other facts
is a conflict) as soon as they are staged, before the seal: each chunk of an upload in its
own transaction, so that chunks sent in parallel register in parallel (the one-shot stream
and the JSON form in their one transaction). A record is a fact independent of any version,
so registering it early is harmless, also when the upload is abandoned: it is a member of
nothing. Every form ends in ``_seal``, inside the caller's unit of work (one transaction):
the staged records become members of the version (those of a chunk that could not register
them are registered there, and a conflict refuses the seal), the version gets its seal time
and time of use, the staged rows are dropped. Until that transaction commits, nothing of the
version is visible as sealed and no record is a member of it; if it never commits (an
error, a crash, a lost connection), nothing is.

Bodies arrive as async iterables of byte blocks, parsed as they come: a chunk of 100,000
lines is never held in memory whole, only the block being parsed and COPY's buffer.
"""

from __future__ import annotations

import asyncio
import uuid
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from contracts.base import DatasetRef
from services.registry.adapters.snapshots import SnapshotRepository, staging_table_for
from services.registry.domain.ndjson import NdjsonFramer
from services.registry.domain.snapshots import (
    DatasetVersionHeader,
    DatasetVersionRegistration,
    FieldError,
    LineError,
    RecordRow,
    parse_header_line,
    parse_record_lines,
    record_row,
)
from services.registry.service.findings import enqueue_evaluation
from services.runtime.unit_of_work import UnitOfWork

__all__ = [
    "MAX_CHUNK_RECORDS",
    "MAX_STREAM_RECORDS",
    "BackfillNotSupported",
    "ChunkReceipt",
    "ChunkTooLarge",
    "DatasetVersionExists",
    "DuplicateRecords",
    "EmptyRegistration",
    "RecordConflict",
    "RegistrationError",
    "SealedVersion",
    "StagedRowsLost",
    "UploadExpired",
    "UploadNotFound",
    "UploadSealed",
    "UploadStatus",
    "abandon_upload",
    "expire_idle_upload",
    "forget_old_expiries",
    "open_upload",
    "put_chunk",
    "register_dataset_version",
    "register_stream",
    "seal_upload",
    "upload_status",
]

MAX_CHUNK_RECORDS = 1_000_000
"""Records in one chunk; more is a 413 (send more chunks instead)."""
MAX_STREAM_RECORDS = 50_000_000
"""Records in one one-shot stream (one transaction); more is a 413 (use an upload)."""
ERROR_SAMPLE = 20
"""The most conflicting or duplicate records an error names."""


class RegistrationError(Exception):
    """Why a registration was refused, said precisely; ``details`` name the records."""

    def __init__(self, message: str, details: Sequence[dict[str, Any]] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)


class DatasetVersionExists(RegistrationError):
    """Dataset versions are immutable: a name and version are registered (or uploading) once."""


class UploadNotFound(RegistrationError):
    pass


class UploadSealed(RegistrationError):
    pass


class UploadExpired(RegistrationError):
    """The upload stayed idle longer than ``UPLOAD_IDLE_TIMEOUT_S``: its staged rows are
    gone and its name is free (``expire_idle_upload``)."""


class RecordConflict(RegistrationError):
    """Records are immutable: one registered again with different facts."""


class DuplicateRecords(RegistrationError):
    """The same (source_system, record_id) twice in one dataset version."""


class BackfillNotSupported(RegistrationError):
    """A chunked upload declaring ``backfill``."""


class EmptyRegistration(RegistrationError):
    pass


class ChunkTooLarge(RegistrationError):
    pass


class StagedRowsLost(RegistrationError):
    """Fewer staged rows than the chunks recorded: Postgres restarted and emptied the
    (unlogged) staging table. The chunks named must be sent again."""


@dataclass(frozen=True)
class SealedVersion:
    dataset: DatasetRef
    purpose: str
    created_at: datetime
    training_started_at: datetime | None
    sealed_at: datetime
    used_at: datetime
    record_count: int
    upload_id: UUID | None = None


@dataclass(frozen=True)
class ChunkReceipt:
    upload_id: UUID
    chunk: int
    records: int
    replaced: bool


@dataclass(frozen=True)
class UploadStatus:
    upload_id: UUID
    dataset: DatasetRef
    purpose: str
    created_at: datetime
    training_started_at: datetime | None
    opened_at: datetime
    sealed_at: datetime | None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    idle_since: datetime | None = None
    """The registry's clock at the last chunk (or the opening); None for an upload that
    never expires (over Kafka)."""

    @property
    def records(self) -> int:
        return sum(int(c["records"]) for c in self.chunks)


# --- the one-document form -------------------------------------------------------------


async def register_dataset_version(
    uow: UnitOfWork, registration: DatasetVersionRegistration, *, now: datetime
) -> SealedVersion:
    """Register and seal a dataset version given whole (``POST /dataset-versions``)."""
    repo = SnapshotRepository(uow.connection)
    header = registration.header()
    version_id = await _create_version(repo, header)
    table = staging_table_for(uuid.uuid4())
    await repo.create_staging(table, chunked=False)
    rows = [record_row(r, 0, i) for i, r in enumerate(registration.records, start=1)]
    await repo.copy_rows(table, rows)
    registered = await repo.register_chunk(table, 0, len(rows))
    return await _seal(
        repo,
        version_id,
        header,
        table,
        expected=len(rows),
        now=now,
        unregistered=() if registered else (0,),
    )


# --- chunked uploads -------------------------------------------------------------------


def _refuse_backfill_upload(header: DatasetVersionHeader) -> None:
    # An upload keeps its header in dataset_versions columns, which hold no backfill flag:
    # accepted here, the flag would be lost by the seal and the time of use silently moved.
    if header.backfill:
        raise BackfillNotSupported(
            "backfill is accepted by POST /dataset-versions and /dataset-versions/stream only,"
            " not by chunked uploads"
        )


async def open_upload(uow: UnitOfWork, header: DatasetVersionHeader, *, now: datetime) -> UUID:
    """Reserve the dataset version and a staging table; the version is not sealed yet."""
    _refuse_backfill_upload(header)
    repo = SnapshotRepository(uow.connection)
    version_id = await _create_version(repo, header)
    upload_id = uuid.uuid4()
    table = staging_table_for(upload_id)
    await repo.create_staging(table)
    await repo.open_upload(upload_id, version_id, table, now)
    return upload_id


async def put_chunk(
    uow: UnitOfWork,
    upload_id: UUID,
    chunk: int,
    body: AsyncIterable[bytes],
    *,
    now: datetime,
) -> ChunkReceipt:
    """Stage chunk ``chunk`` (NDJSON records), replacing an earlier chunk of that number,
    and register its records (``SnapshotRepository.register_chunk``).

    All or nothing: a bad line (``LineError``) or a too-long chunk undoes the whole chunk,
    and an earlier chunk of the same number stays as it was. A record that conflicts with
    the one registered does not refuse the chunk: it stays staged unregistered, and the
    seal refuses it naming the records, as for any form of registration.
    """
    repo = SnapshotRepository(uow.connection)
    upload = await _open_upload(repo, upload_id, lock="share")
    table = upload["staging_table"]
    replaced = await repo.claim_chunk(upload_id, chunk, now)
    if replaced:
        await repo.delete_staged_chunk(table, chunk)
    source = _RowSource(
        body,
        NdjsonFramer(),
        chunk,
        limit=MAX_CHUNK_RECORDS,
        too_many=f"a chunk holds at most {MAX_CHUNK_RECORDS:,} records: send more chunks",
    )
    async with _parsing_turn(upload_id):
        records = await repo.copy_rows(table, source.rows())
    source.raise_error()
    if records == 0:
        raise EmptyRegistration(f"chunk {chunk} holds no records")
    registered = await repo.register_chunk(table, chunk, records)
    await repo.set_chunk_records(upload_id, chunk, records, registered=registered)
    return ChunkReceipt(upload_id, chunk, records, replaced)


async def seal_upload(uow: UnitOfWork, upload_id: UUID, *, now: datetime) -> SealedVersion:
    """Seal an upload's staged chunks as its dataset version, atomically."""
    repo = SnapshotRepository(uow.connection)
    upload = await _open_upload(repo, upload_id, lock="update")
    expected = await repo.expected_records(upload_id)
    sealed = await _seal(
        repo,
        upload["dataset_version_id"],
        _header_of(upload),
        upload["staging_table"],
        expected=expected,
        now=now,
        upload_id=upload_id,
        unregistered=await repo.unregistered_chunks(upload_id),
    )
    await repo.mark_upload_sealed(upload_id, now)
    return sealed


async def abandon_upload(uow: UnitOfWork, upload_id: UUID) -> None:
    """Drop an unsealed upload: its staged rows, its chunks, its reserved version. The
    records its chunks registered stay registered (members of nothing)."""
    repo = SnapshotRepository(uow.connection)
    upload = await _open_upload(repo, upload_id, lock="update")
    await repo.drop_staging(upload["staging_table"])
    await repo.delete_unsealed_version(upload["dataset_version_id"])


async def expire_idle_upload(uow: UnitOfWork, idle_for: timedelta) -> dict[str, Any] | None:
    """Abandon one upload that received nothing for ``idle_for`` (none over Kafka, see
    ``registry_0007``), keeping a note of it for the client that comes back; returns the
    upload, or None when none is idle."""
    repo = SnapshotRepository(uow.connection)
    upload = await repo.lock_idle_upload(idle_for)
    if upload is None:
        return None
    await repo.record_expiry(upload)
    await repo.drop_staging(upload["staging_table"])
    await repo.delete_unsealed_version(upload["dataset_version_id"])
    return upload


EXPIRY_NOTE_RETENTION = timedelta(days=30)
"""How long a client coming back to an expired upload is told so (410); a plain 404 after."""


async def forget_old_expiries(uow: UnitOfWork) -> int:
    return await SnapshotRepository(uow.connection).forget_expiries(EXPIRY_NOTE_RETENTION)


async def _not_found(repo: SnapshotRepository, upload_id: UUID) -> RegistrationError:
    """No such upload, or (with the reason) one that expired."""
    expiry = await repo.expiry(upload_id)
    if expiry is None:
        return UploadNotFound(f"no upload {upload_id}")
    dataset = DatasetRef(
        namespace=expiry["namespace"], name=expiry["name"], version=expiry["version"]
    )
    return UploadExpired(
        f"upload {upload_id} expired at {expiry['expired_at'].isoformat()}: nothing arrived"
        f" after {expiry['touched_at'].isoformat()}, so its {expiry['chunks']} staged"
        f" chunk(s) ({expiry['records']} records) were dropped and {dataset.key} is free"
        " again; open a new upload"
    )


async def upload_status(uow: UnitOfWork, upload_id: UUID) -> UploadStatus:
    repo = SnapshotRepository(uow.connection)
    upload = await repo.upload(upload_id)
    if upload is None:
        raise await _not_found(repo, upload_id)
    header = _header_of(upload)
    return UploadStatus(
        upload_id=upload_id,
        dataset=header.dataset,
        purpose=header.purpose,
        created_at=header.created_at,
        training_started_at=header.training_started_at,
        opened_at=upload["opened_at"],
        sealed_at=upload["upload_sealed_at"],
        chunks=await repo.chunks(upload_id),
        idle_since=upload["idle_since"],
    )


# --- one-shot stream -------------------------------------------------------------------


async def register_stream(
    uow: UnitOfWork, body: AsyncIterable[bytes], *, now: datetime
) -> SealedVersion:
    """NDJSON whose first line is a ``DatasetVersionHeader`` and the rest records: staged
    and sealed in this one transaction."""
    repo = SnapshotRepository(uow.connection)
    blocks = aiter(body)
    framer = NdjsonFramer()
    first, lines = 1, list[bytes]()
    async for block in blocks:
        first, lines = framer.feed(block)
        if lines:
            break
    else:
        first, lines = framer.finish()
    if not lines:
        raise LineError(
            1, [FieldError(None, "the stream is empty: line 1 must be the header", "missing")]
        )
    header = parse_header_line(lines[0], first)
    version_id = await _create_version(repo, header)
    table = staging_table_for(uuid.uuid4())
    await repo.create_staging(table, chunked=False)
    source = _RowSource(
        blocks,
        framer,
        0,
        limit=MAX_STREAM_RECORDS,
        too_many=f"a stream holds at most {MAX_STREAM_RECORDS:,} records: use a chunked upload",
        pending=(first + 1, lines[1:]),
    )
    records = await repo.copy_rows(table, source.rows())
    source.raise_error()
    registered = records > 0 and await repo.register_chunk(table, 0, records)
    return await _seal(
        repo,
        version_id,
        header,
        table,
        expected=records,
        now=now,
        unregistered=() if registered else (0,),
    )


# --- shared ----------------------------------------------------------------------------

PARSING_TURN_WAIT_S = 2.0
"""How long a chunk waits for the chunk parsed before it (``_parsing_turn``)."""
_parsing: weakref.WeakValueDictionary[UUID, asyncio.Lock] = weakref.WeakValueDictionary()


@asynccontextmanager
async def _parsing_turn(upload_id: UUID) -> AsyncIterator[None]:
    """Chunks of one upload sent together are parsed one after the other, in turn, rather
    than all at once: the service parses one (its CPU) while Postgres registers the ones
    parsed before (another CPU). Parsed all at once, they would all be registered at once
    too, with the service idle meanwhile (measured, 4 chunks of 100,000 in flight: 1M
    records uploaded in 9.5 s that way, 8.0 s in turn). A chunk waits for its turn at most
    ``PARSING_TURN_WAIT_S``, then parses anyway: a stalled sender holds the others up no
    longer than that.
    """
    turn = _parsing.setdefault(upload_id, asyncio.Lock())
    mine: bool
    try:
        mine = await asyncio.wait_for(turn.acquire(), PARSING_TURN_WAIT_S)
    except TimeoutError:
        mine = False
    try:
        yield
    finally:
        if mine:
            turn.release()


class _RowSource:
    """Validated rows from NDJSON blocks, for COPY to pull as the blocks arrive.

    A failure (a bad line, too many records, the client gone) ends the rows early and is
    kept in ``error``, to be raised once COPY has returned: an exception thrown into the
    middle of a COPY would leave the connection busy cancelling it.
    """

    def __init__(
        self,
        body: AsyncIterable[bytes],
        framer: NdjsonFramer,
        chunk: int,
        *,
        limit: int,
        too_many: str,
        pending: tuple[int, list[bytes]] | None = None,
    ) -> None:
        self._body = body
        self._framer = framer
        self._chunk = chunk
        self._limit = limit
        self._too_many = too_many
        self._pending = pending
        self.count = 0
        self.error: Exception | None = None

    async def rows(self) -> AsyncIterator[RecordRow]:
        try:
            if self._pending is not None:
                for row in self._parse(*self._pending):
                    yield row
            async for block in self._body:
                for row in self._parse(*self._framer.feed(block)):
                    yield row
            for row in self._parse(*self._framer.finish()):
                yield row
        except Exception as exc:
            self.error = exc

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def _parse(self, first: int, lines: list[bytes]) -> list[RecordRow]:
        if not lines:
            return []
        rows = parse_record_lines(lines, first, self._chunk)
        self.count += len(rows)
        if self.count > self._limit:
            raise ChunkTooLarge(self._too_many)
        return rows


async def _create_version(repo: SnapshotRepository, header: DatasetVersionHeader) -> int:
    version_id = await repo.create_version(header)
    if version_id is None:
        raise DatasetVersionExists(
            f"{header.dataset.key} is already registered (or being uploaded);"
            " dataset versions are immutable"
        )
    return version_id


async def _open_upload(
    repo: SnapshotRepository, upload_id: UUID, *, lock: Literal["share", "update"]
) -> dict[str, Any]:
    upload = await repo.upload(upload_id, lock=lock)
    if upload is None:
        raise await _not_found(repo, upload_id)
    if upload["upload_sealed_at"] is not None:
        raise UploadSealed(
            f"upload {upload_id} was sealed at {upload['upload_sealed_at'].isoformat()};"
            " a sealed dataset version is immutable"
        )
    return upload


def _header_of(row: dict[str, Any]) -> DatasetVersionHeader:
    return DatasetVersionHeader(
        dataset=DatasetRef(namespace=row["namespace"], name=row["name"], version=row["version"]),
        purpose=row["purpose"],
        created_at=row["created_at"],
        training_started_at=row["training_started_at"],
    )


async def _seal(
    repo: SnapshotRepository,
    version_id: int,
    header: DatasetVersionHeader,
    table: str,
    *,
    expected: int,
    now: datetime,
    upload_id: UUID | None = None,
    unregistered: Sequence[int] = (),
) -> SealedVersion:
    """Staged rows → memberships (and records, for the ``unregistered`` chunks), then the
    seal; in the caller's transaction."""
    if expected == 0:
        raise EmptyRegistration(f"{header.dataset.key} has no records to seal")
    members = await repo.insert_registered_memberships(version_id, table)
    if members is None:
        await _refuse_duplicates(repo, table)
        raise RuntimeError("memberships collided, yet no record is staged twice")
    conflicting = 0
    if unregistered:
        await repo.prepare_seal(table, expected)
        outcome = await repo.seal_rows(version_id, table, unregistered)
        if outcome is None:
            await _refuse_duplicates(repo, table)
            # Not staged twice: a concurrent transaction registered some records first.
            await repo.insert_new_records(table, unregistered)
            outcome = await repo.insert_memberships(version_id, table, unregistered)
            if outcome is None:
                await _refuse_duplicates(repo, table)
                raise RuntimeError("memberships collided, yet no record is staged twice")
        members += outcome[0]
        conflicting = outcome[1]
    if conflicting:
        # A record staged twice with other facts conflicts with itself: say what it is.
        await _refuse_duplicates(repo, table)
        sample = await repo.conflicting_records(table, ERROR_SAMPLE)
        raise RecordConflict(
            f"{conflicting} record(s) are already registered with other facts; records are"
            f" immutable (register a new record id for changed content)",
            [_where(r) | {"fields": list(r["fields"])} for r in sample],
        )
    if members != expected:
        staged = await repo.staged_per_chunk(table)
        recorded = await repo.chunks(upload_id) if upload_id else []
        raise StagedRowsLost(
            f"{expected - members} staged record(s) are missing (the database restarted and"
            " emptied the staging table): send the chunks named again, then seal",
            [
                {"chunk": c["chunk"], "records": c["records"], "staged": staged.get(c["chunk"], 0)}
                for c in recorded
                if staged.get(c["chunk"], 0) != c["records"]
            ],
        )
    used_at = header.time_of_use(now)
    await repo.mark_sealed(version_id, now, used_at, members)
    await repo.drop_staging(table)
    await enqueue_evaluation(repo.connection, [version_id], "sealed")
    return SealedVersion(
        dataset=header.dataset,
        purpose=header.purpose,
        created_at=header.created_at,
        training_started_at=header.training_started_at,
        sealed_at=now,
        used_at=used_at,
        record_count=members,
        upload_id=upload_id,
    )


async def _refuse_duplicates(repo: SnapshotRepository, table: str) -> None:
    duplicates = await repo.duplicate_records(table, ERROR_SAMPLE)
    if duplicates:
        raise DuplicateRecords(
            "the same (source_system, record_id) appears more than once in this dataset version",
            [
                {
                    "source_system": d["source_system"],
                    "record_id": d["record_id"],
                    "occurrences": [
                        {"chunk": c, "line": n}
                        for c, n in zip(d["chunks"], d["lines"], strict=True)
                    ],
                }
                for d in duplicates
            ],
        )


def _where(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "source_system": row["source_system"],
        "record_id": row["record_id"],
        "chunk": row["chunk"],
        "line": row["line"],
    }


# --- registration by Kafka (registry.registrations.v1) ----------------------------------


async def open_upload_with_id(
    uow: UnitOfWork, header: DatasetVersionHeader, upload_id: UUID, *, now: datetime
) -> UUID:
    """``open_upload`` under a given id: a Kafka registration's, derived from its dataset
    key, so that the messages after ``opened`` (and a re-sent ``opened``) find it."""
    _refuse_backfill_upload(header)
    repo = SnapshotRepository(uow.connection)
    version_id = await _create_version(repo, header)
    table = staging_table_for(upload_id)
    await repo.create_staging(table)
    await repo.open_upload(upload_id, version_id, table, now, expires=False)
    return upload_id


async def put_records(
    uow: UnitOfWork, upload_id: UUID, chunk: int, rows: Sequence[RecordRow], *, now: datetime
) -> ChunkReceipt:
    """``put_chunk`` for records validated already (a Kafka batch, ``rows`` numbered with
    ``chunk``): staged as chunk ``chunk``, replacing an earlier chunk of that number."""
    if not rows:
        raise EmptyRegistration(f"chunk {chunk} holds no records")
    if len(rows) > MAX_CHUNK_RECORDS:
        raise ChunkTooLarge(f"a chunk holds at most {MAX_CHUNK_RECORDS:,} records")
    repo = SnapshotRepository(uow.connection)
    upload = await _open_upload(repo, upload_id, lock="share")
    table = upload["staging_table"]
    replaced = await repo.claim_chunk(upload_id, chunk, now)
    if replaced:
        await repo.delete_staged_chunk(table, chunk)
    records = await repo.copy_rows(table, rows)
    await repo.set_chunk_records(upload_id, chunk, records)
    return ChunkReceipt(upload_id, chunk, records, replaced)
