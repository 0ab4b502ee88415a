"""Registration by Kafka: ``registry.registrations.v1`` drives the chunked-upload use cases.

``opened`` opens an upload, each ``batch`` stages a chunk, ``sealed`` seals the upload —
the same use cases as ``POST …/uploads``, ``PUT …/chunks/{n}`` and ``POST …/seal``, so the
seal stays one atomic transaction and every registration rule holds. The upload's id is
derived from the dataset key (``contracts.registration.upload_id_for``), so each message
finds its upload, and sending a message again is idempotent:

- ``opened`` again with the same header changes nothing; with another header it is
  refused (``header_conflict``). A version registered (or being uploaded) over HTTP is
  refused too (``dataset_version_exists``).
- ``batch`` ``n`` again before the seal replaces batch ``n``, as a re-sent chunk does.
  After the seal, a batch the sealed version holds (same number, same size) is a
  duplicate and changes nothing; any other is refused (``already_sealed``): a sealed
  version never changes.
- ``sealed`` seals only when batches ``0 … batches-1`` and nothing else are staged and
  they hold ``record_count`` records; otherwise it is refused (``incomplete``) naming what
  is missing, and the upload stays open for the producer to complete, then seal again.
  After the seal, a ``sealed`` that agrees with it changes nothing.
- A message for a version never opened on this topic (``not_opened``) is dead-lettered,
  not parked: per-key order means ``opened`` is always consumed before the messages its
  producer sent after it, so such a message is a producer error (or its ``opened`` was
  refused), and parking would hold records, unbounded and unseen, for a version that may
  never open. The dead letter says so at once; the producer re-sends after the fix.
- A record that conflicts with one registered (``record_conflict``), or a record twice in
  the version (``duplicate_records``), refuses the seal naming the records, their batch
  and their index in it; nothing is sealed and the upload stays open.

Every refusal is a ``PermanentError``: the message goes to the dead-letter topic with the
reason (``dlq_reason``) and the explanation (``dlq_error``), and the consumer goes on. A
transient failure (Postgres unreachable) propagates and is retried by the runtime.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from contracts.registration import (
    RegistrationBatch,
    RegistrationBody,
    RegistrationOpened,
    RegistrationSealed,
    upload_id_for,
)
from services.registry.domain.snapshots import DatasetVersionHeader, RecordRow
from services.registry.service.registration import (
    BackfillNotSupported,
    DatasetVersionExists,
    DuplicateRecords,
    EmptyRegistration,
    RecordConflict,
    RegistrationError,
    StagedRowsLost,
    UploadNotFound,
    UploadSealed,
    UploadStatus,
    open_upload_with_id,
    put_records,
    seal_upload,
    upload_status,
)
from services.runtime.errors import PermanentError
from services.runtime.messages import Event
from services.runtime.unit_of_work import UnitOfWork

__all__ = [
    "RegistrationRefused",
    "header_of",
    "incomplete",
    "on_registration",
    "registration_clock",
    "rows_of",
]

log = logging.getLogger(__name__)

SHOWN = 20
"""The most batch numbers a refusal lists."""


class RegistrationRefused(PermanentError):
    """A registration message that cannot succeed as sent: dead-lettered with ``reason``."""

    def __init__(
        self, reason: str, message: str, details: Sequence[Mapping[str, Any]] = ()
    ) -> None:
        self.reason = reason
        self.message = message
        self.details = [dict(d) for d in details]
        text = message
        if self.details:
            text += " " + json.dumps(self.details, separators=(",", ":"), default=str)
        super().__init__(text)


_REASONS: dict[type[RegistrationError], str] = {
    DatasetVersionExists: "dataset_version_exists",
    UploadNotFound: "not_opened",
    UploadSealed: "already_sealed",
    RecordConflict: "record_conflict",
    DuplicateRecords: "duplicate_records",
    StagedRowsLost: "staged_rows_lost",
    EmptyRegistration: "incomplete",
    BackfillNotSupported: "backfill_not_supported",
}


def registration_clock(event: Event[RegistrationBody], now: datetime) -> datetime:
    """The time a registration message counts as handled (a ``sealed`` one: the seal time,
    hence the time of use): its Kafka timestamp, so that replaying the topic into an empty
    registry seals every version when it was sealed the first time, not at replay time.
    Never later than ``now`` (a clock ahead of the registry's cannot seal in the future).
    Production topics append with ``message.timestamp.type=LogAppendTime``: the broker, not
    the producer, sets it (deploy/); without a timestamp, ``now``."""
    if event.logged_at is None:
        return now
    return min(event.logged_at, now)


async def on_registration(event: Event[RegistrationBody], uow: UnitOfWork) -> None:
    """One message of a registration, in the consumer's unit of work."""
    body = event.body
    now = registration_clock(event, datetime.now(UTC))
    if isinstance(body, RegistrationOpened):
        await _opened(uow, body, now)
    elif isinstance(body, RegistrationBatch):
        await _batch(uow, body, now)
    else:
        await _sealed(uow, body, now)


async def _opened(uow: UnitOfWork, body: RegistrationOpened, now: datetime) -> None:
    header = header_of(body)
    upload_id = upload_id_for(body.dataset)
    existing = await _status(uow, body)
    if existing is None:
        with _refusals(body):
            await open_upload_with_id(uow, header, upload_id, now=now)
        log.info("registration of %s opened (upload %s)", body.dataset.key, upload_id)
        return
    if header_of_status(existing) != header:
        if existing.sealed_at is None:
            state = "opened"
            remedy = (
                "abandon the open upload (DELETE /api/v1/dataset-versions/uploads/"
                f"{upload_id}) or register a new version"
            )
        else:
            state, remedy = f"sealed at {_iso(existing.sealed_at)}", "register a new version"
        raise RegistrationRefused(
            "header_conflict",
            f"{body.dataset.key} was {state} (upload {upload_id}) with another header; a"
            f" dataset version's header cannot change: {remedy}",
            [
                {
                    "registered": _header_json(header_of_status(existing)),
                    "sent": _header_json(header),
                }
            ],
        )
    log.info("registration of %s: opened again, nothing to do", body.dataset.key)


async def _batch(uow: UnitOfWork, body: RegistrationBatch, now: datetime) -> None:
    upload_id = upload_id_for(body.dataset)
    try:
        with _refusals(body):
            receipt = await put_records(uow, upload_id, body.batch, rows_of(body), now=now)
    except RegistrationRefused as exc:
        if exc.reason != "already_sealed":
            raise
        status = await _status(uow, body)
        assert status is not None
        staged = _staged(status)
        held = staged.get(body.batch)
        if held != len(body.records):
            what = (
                f"without a batch {body.batch} (it holds batches {_ranges(staged)})"
                if held is None
                else f"with a batch {body.batch} of {held} records, not this one"
            )
            raise RegistrationRefused(
                "already_sealed",
                f"{body.dataset.key} was sealed at {_iso(status.sealed_at)} {what}; this batch"
                f" of {len(body.records)} records is refused: a sealed dataset version never"
                " changes",
            ) from exc
        log.info(
            "registration of %s: batch %d after the seal, a duplicate",
            body.dataset.key,
            body.batch,
        )
        return
    log.info(
        "registration of %s: batch %d staged (%d records%s)",
        body.dataset.key,
        body.batch,
        receipt.records,
        ", replacing the earlier one" if receipt.replaced else "",
    )


async def _sealed(uow: UnitOfWork, body: RegistrationSealed, now: datetime) -> None:
    status = await _status(uow, body)
    if status is None:
        raise RegistrationRefused("not_opened", _not_opened(body))
    staged = _staged(status)
    problem = incomplete(body.batches, body.record_count, staged)
    if status.sealed_at is not None:
        if problem is None:
            log.info("registration of %s: sealed again, nothing to do", body.dataset.key)
            return
        raise RegistrationRefused(
            "already_sealed",
            f"{body.dataset.key} was sealed at {_iso(status.sealed_at)} with"
            f" {len(staged)} batch(es) and {sum(staged.values())} records, not as this"
            f" message says ({problem}); a sealed dataset version never changes",
        )
    if problem is not None:
        raise RegistrationRefused(
            "incomplete",
            f"{body.dataset.key} not sealed: {problem}. The registration stays open: send"
            " what is missing (or `sealed` with the right counts), then `sealed` again",
        )
    with _refusals(body):
        sealed = await seal_upload(uow, upload_id_for(body.dataset), now=now)
    if sealed.record_count != body.record_count:  # a chunk came over HTTP meanwhile
        raise RegistrationRefused(
            "incomplete",
            f"{body.dataset.key} not sealed: {sealed.record_count} records at the seal,"
            f" {body.record_count} announced",
        )
    await _end_seal_settings(uow)
    log.info("registration of %s sealed: %d records", body.dataset.key, sealed.record_count)


# --- pure parts ------------------------------------------------------------------------


def header_of(body: RegistrationOpened) -> DatasetVersionHeader:
    return DatasetVersionHeader(
        dataset=body.dataset,
        purpose=body.purpose,
        created_at=body.created_at,
        training_started_at=body.training_started_at,
    )


def header_of_status(status: UploadStatus) -> DatasetVersionHeader:
    return DatasetVersionHeader(
        dataset=status.dataset,
        purpose=status.purpose,
        created_at=status.created_at,
        training_started_at=status.training_started_at,
    )


def rows_of(body: RegistrationBatch) -> list[RecordRow]:
    """The batch as staged rows: chunk = the batch number, line = the index in ``records``."""
    n = body.batch
    return [
        (
            n,
            index,
            r.source_system,
            r.record_id,
            r.subject_id,
            r.category,
            r.jurisdiction,
            r.collected_at,
            r.content_digest,
        )
        for index, r in enumerate(body.records)
    ]


def incomplete(batches: int, record_count: int, staged: Mapping[int, int]) -> str | None:
    """What keeps ``staged`` (batch number → records) from being exactly batches
    ``0 … batches-1`` holding ``record_count`` records; None when nothing does."""
    problems: list[str] = []
    present = sum(1 for n in staged if n < batches)
    if present < batches:
        missing: list[int] = []
        n = 0
        while len(missing) < SHOWN + 1 and n < batches:  # at most SHOWN + len(staged) steps
            if n not in staged:
                missing.append(n)
            n += 1
        absent = batches - present
        problems.append(f"{absent} of {batches} batches missing: {_ranges(missing, absent)}")
    extra = sorted(n for n in staged if n >= batches)
    if extra:
        problems.append(
            f"batch(es) {_ranges(extra)} staged beyond the {batches} announced"
            " (abandon the upload to drop them, or announce more batches)"
        )
    records = sum(staged.values())
    if records != record_count:
        problems.append(f"{record_count} records announced, {records} staged")
    return "; ".join(problems) or None


def _ranges(numbers: Mapping[int, int] | Sequence[int], total: int | None = None) -> str:
    """``0-2, 5, 9-11``, the first ``SHOWN`` numbers, then ``…`` when more."""
    ordered = sorted(numbers)
    shown = ordered[:SHOWN]
    spans: list[str] = []
    start = prev = None
    for n in shown:
        if start is not None and prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            spans.append(f"{start}" if start == prev else f"{start}-{prev}")
        start = prev = n
    if start is not None:
        spans.append(f"{start}" if start == prev else f"{start}-{prev}")
    more = (total if total is not None else len(ordered)) > len(shown)
    return ", ".join(spans) + (", …" if more else "")


# --- helpers ---------------------------------------------------------------------------


async def _status(
    uow: UnitOfWork, body: RegistrationOpened | RegistrationBatch | RegistrationSealed
) -> UploadStatus | None:
    try:
        return await upload_status(uow, upload_id_for(body.dataset))
    except UploadNotFound:
        return None


def _staged(status: UploadStatus) -> dict[int, int]:
    return {int(c["chunk"]): int(c["records"]) for c in status.chunks}


@contextmanager
def _refusals(body: RegistrationBody) -> Iterator[None]:
    """A use case's refusal as a dead letter: reason, message, and the records it names
    (their batch and index in it, rather than the chunk and line of an HTTP upload)."""
    try:
        yield
    except RegistrationError as exc:
        reason = _REASONS.get(type(exc), "rejected")
        message = _not_opened(body) if reason == "not_opened" else exc.message
        raise RegistrationRefused(reason, message, [_batch_terms(d) for d in exc.details]) from exc


def _batch_terms(detail: Mapping[str, Any]) -> dict[str, Any]:
    renamed = {"chunk": "batch", "line": "index"}
    out = {renamed.get(k, k): v for k, v in detail.items()}
    if "occurrences" in out:
        out["occurrences"] = [{"batch": o["chunk"], "index": o["line"]} for o in out["occurrences"]]
    return out


def _not_opened(body: RegistrationBody) -> str:
    kind = "batch" if isinstance(body, RegistrationBatch) else "sealed"
    return (
        f"no registration of {body.dataset.key} was opened on this topic (upload"
        f" {upload_id_for(body.dataset)}): send `opened` before its batches and `sealed`;"
        f" this {kind} message is dead-lettered, not kept for later"
    )


def _header_json(header: DatasetVersionHeader) -> dict[str, Any]:
    return header.model_dump(mode="json")


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else "?"


async def _end_seal_settings(uow: UnitOfWork) -> None:
    """The seal tunes the planner with ``SET LOCAL``, which outlives its savepoint until the
    consumer's transaction ends: the next messages of the same fetch get the defaults back."""
    await uow.connection.execute(
        "SET LOCAL work_mem TO DEFAULT; SET LOCAL enable_hashjoin TO DEFAULT;"
        " SET LOCAL enable_mergejoin TO DEFAULT"
    )
