"""Eligibility use cases: the pre-flight filter over NDJSON records, and one record explained.

The filter reads its body as it arrives, cuts it into lines and works in blocks of
``BLOCK_LINES``: each block is validated (a bad line raises ``LineError`` naming it, a
line too long ``LineTooLong``), the histories of the block's subjects not seen before are
fetched in one query, and each record is decided through a ``DecisionCache``. The lines of
eligible records are handed to ``on_eligible`` exactly as they came, one block at a time,
in input order. Only reads: no transaction is held, a pooled connection is taken per
query, so a slow client ties up no connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable
from dataclasses import dataclass
from datetime import datetime

from contracts.base import DatasetRef
from services.eligibility import Use
from services.registry.adapters.eligibility import (
    EligibilityRepository,
    RegisteredRecord,
    SealedUse,
)
from services.registry.adapters.repository import RegistryRepository
from services.registry.domain.ndjson import NdjsonFramer
from services.registry.domain.preflight import (
    DecisionCache,
    FilterSummary,
    PolicyReading,
    UseExplanation,
    explain_use,
    readings_in_force,
)
from services.registry.domain.snapshots import parse_record_lines
from services.runtime.db import Connection, Pool

__all__ = [
    "BLOCK_LINES",
    "EligibilityQueryError",
    "FilterReport",
    "MissingPurpose",
    "NotFound",
    "RecordEligibility",
    "explain_record",
    "filter_records",
]

BLOCK_LINES = 10_000
"""Lines decided together: one history query per block, for the subjects new in it."""


@dataclass(frozen=True, slots=True)
class FilterReport:
    purpose: str
    at: datetime
    readings: tuple[PolicyReading, ...]
    summary: FilterSummary
    engine_runs: int


async def filter_records(
    pool: Pool,
    body: AsyncIterable[bytes],
    *,
    purpose: str,
    at: datetime,
    on_eligible: Callable[[bytes], object] | None = None,
    block_lines: int = BLOCK_LINES,
) -> FilterReport:
    """Decide every record of an NDJSON body for ``purpose`` at ``at``.

    ``on_eligible`` receives, per block, the eligible records' lines as sent, each ended
    by ``\\n`` (blank lines are skipped). Raises ``LineError`` / ``LineTooLong`` for the
    first bad line; what was handed out before it is then to be thrown away.
    """
    async with pool.acquire() as conn:
        versions = await RegistryRepository(conn).policies()
    readings = readings_in_force(versions, purpose, at)
    cache = DecisionCache(readings, purpose, at)
    summary = FilterSummary()
    framer = NdjsonFramer()
    pending: list[bytes] = []
    first = 1

    async def decide(first_line: int, lines: list[bytes]) -> None:
        rows = parse_record_lines(lines, first_line, 0)
        if not rows:
            return
        unseen = cache.unseen([row[4] for row in rows])
        if unseen:
            async with pool.acquire() as conn:
                histories = await RegistryRepository(conn).histories(unseen)
            cache.learn(unseen, histories)
        verdicts = cache.decide_rows(rows)
        summary.count_rows(rows, verdicts)
        if on_eligible is not None:
            eligible = [
                lines[row[1] - first_line]
                for row, verdict in zip(rows, verdicts, strict=True)
                if verdict.eligible
            ]
            if eligible:
                eligible.append(b"")
                on_eligible(b"\n".join(eligible))

    async for block in body:
        start, lines = framer.feed(block)
        if not lines:
            continue
        if not pending:
            first = start
        pending.extend(lines)
        if len(pending) >= block_lines:
            await decide(first, pending)
            pending = []
    start, lines = framer.finish()
    if lines and not pending:
        first = start
    pending.extend(lines)
    if pending:
        await decide(first, pending)
    return FilterReport(purpose, at, tuple(readings), summary, cache.engine_runs)


# --- one record explained ---------------------------------------------------------------


class EligibilityQueryError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(EligibilityQueryError):
    """No such record, no such sealed dataset version, or the version does not hold it."""


class MissingPurpose(EligibilityQueryError):
    """Without a dataset version, the purpose must be given."""


@dataclass(frozen=True, slots=True)
class RecordEligibility:
    record: RegisteredRecord
    dataset: SealedUse | None
    explanation: UseExplanation


async def explain_record(
    conn: Connection,
    source_system: str,
    record_id: str,
    *,
    purpose: str | None,
    at: datetime | None,
    known_at: datetime | None,
    dataset: DatasetRef | None,
    now: datetime,
) -> RecordEligibility:
    """Why a registered record may (not) be used for ``purpose`` at ``at``, as known at
    ``known_at``. With ``dataset`` (a sealed version holding the record), the purpose and
    time default to the version's purpose and time of use; otherwise the purpose is
    required and the time defaults to ``now``."""
    lookups = EligibilityRepository(conn)
    record = await lookups.record(source_system, record_id)
    if record is None:
        raise NotFound(f"no registered record {record_id!r} of source system {source_system!r}")
    sealed: SealedUse | None = None
    if dataset is not None:
        sealed = await lookups.sealed_version(dataset)
        if sealed is None:
            raise NotFound(f"no sealed dataset version {dataset.key}")
        if not await lookups.holds(sealed.dataset_version_id, record.record_pk):
            raise NotFound(
                f"dataset version {dataset.key} does not hold record {record_id!r}"
                f" of source system {source_system!r}"
            )
        purpose = purpose or sealed.purpose
        at = at or sealed.used_at
    if purpose is None:
        raise MissingPurpose(
            "give the purpose of the use (purpose=…), or name a sealed dataset version"
            " holding the record (namespace, name, version) to take its purpose and time"
        )
    repo = RegistryRepository(conn)
    histories = await repo.histories([record.subject_id])
    versions = await repo.policies()
    use = Use(
        subject_id=record.subject_id,
        jurisdiction=record.jurisdiction,
        purpose=purpose,
        category=record.category,
        used_at=at or now,
    )
    explanation = explain_use(
        histories.get(record.subject_id, ()), versions, use, known_at=known_at
    )
    return RecordEligibility(record=record, dataset=sealed, explanation=explanation)
