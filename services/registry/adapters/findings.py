"""Findings storage: uses to judge, contributions, findings and their history. SQL only.

Concurrency (advisory locks, transaction-scoped):

- A whole-version evaluation holds its dataset version's lock exclusively
  (``lock_versions``). A consent transaction holds the lock of every version its subjects
  are in *shared* (``share_versions``) before it reads their contributions, so the two
  never interleave, while consent transactions (several consumers) run side by side.
- Among consent transactions, whoever changes a finding's contributions holds that
  finding's lock (``reconcile(lock=True)``, in key order, only for the findings it changes),
  so two transactions never recompute one finding's totals from different states; a
  batch that changes nothing takes none. A later withdrawal's finding takes none either:
  its contributions are all its one subject's, and the transaction that judges that
  subject adds them up itself (``withdrawal_totals``), never from another's rows. (A lock
  per such finding was ten per withdrawal: two batches of 500 at once filled Postgres's
  lock table, ``max_locks_per_transaction`` times connections, and failed with "out of shared
  memory".)
- A consent transaction holds the *evaluation gate* shared from before it reads anything;
  a whole-version evaluation first passes the gate exclusively (``pass_gate``), outside its
  own transaction. Every consent transaction that could have missed a newly sealed version
  (or read an older policy) has then committed, so the evaluation reads its event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import chain
from typing import Any
from uuid import UUID

from pydantic_core import to_json

from contracts.base import DatasetRef
from contracts.events import DatasetFinding, FindingReason, FindingStatus, Severity
from services.registry.domain.findings import (
    EVENT_SAMPLE_SIZE,
    SAMPLE_SIZE,
    Contribution,
    FindingCause,
    FindingTotals,
    SubjectUse,
    finding_body,
)
from services.runtime.db import Connection

__all__ = ["EVALUATION_CHANNEL", "ContributionKey", "FindingStore", "StoredContribution"]

_VERSION_LOCK = 0x52454749_00000000
"""Advisory lock keys for dataset versions: this base plus the version id."""
_GATE_LOCK = 0x52454749_FFFFFFFF
EVALUATION_CHANNEL = "registry_evaluation"
MAX_JOB_ATTEMPTS = 5

_USE_COLUMNS = """dv.dataset_version_id, dv.namespace, dv.name, dv.version, dv.purpose,
    dv.sealed_at, dv.used_at"""


_TOTALS = f"""
    SELECT t.finding_id, f.status, f.body::text AS body, tot.records, tot.subjects,
           ARRAY(SELECT DISTINCT x FROM finding_contributions c2, unnest(c2.sample) AS x
                 WHERE c2.finding_id = t.finding_id
                 ORDER BY x LIMIT {SAMPLE_SIZE}) AS sample,
           ARRAY(SELECT DISTINCT e FROM finding_contributions c3, unnest(c3.events) AS e
                 WHERE c3.finding_id = t.finding_id
                 ORDER BY e LIMIT {EVENT_SAMPLE_SIZE}) AS events
    FROM unnest($1::uuid[]) AS t(finding_id)
    LEFT JOIN findings f ON f.finding_id = t.finding_id
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(c.records), 0) AS records,
               count(DISTINCT c.subject_id) AS subjects
        FROM finding_contributions c WHERE c.finding_id = t.finding_id
    ) tot
    """
"""Each finding's stored state and its totals over its contributions (``refresh``)."""


@dataclass(frozen=True, slots=True)
class StoredContribution:
    records: int
    sample: tuple[str, ...]
    events: tuple[UUID, ...]


ContributionKey = tuple[str, int, UUID, str]


class FindingStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._causes: dict[UUID, FindingCause] = {}
        """The cause of every finding ``reconcile`` gave a contribution to: ``refresh``
        builds the body of a finding not stored yet from it."""

    # --- locks ---------------------------------------------------------------------

    async def latest_use(self) -> datetime | None:
        """The latest time of use of any sealed version (None when none is): the last
        entry of a partial index (``registry_0005``)."""
        latest: datetime | None = await self._conn.fetchval(
            "SELECT max(used_at) FROM dataset_versions WHERE sealed_at IS NOT NULL"
        )
        return latest

    async def enter_gate(self) -> None:
        await self._conn.execute("SELECT pg_advisory_xact_lock_shared($1)", _GATE_LOCK)

    async def pass_gate(self) -> None:
        """Wait for every consent transaction in flight (call outside a transaction).

        The exclusive lock is the transaction's, gone at its commit: nothing stays on the
        session of a pooled connection (the pool does not reset sessions, ``db.py``)."""
        async with self._conn.transaction():
            await self._conn.execute("SELECT pg_advisory_xact_lock($1)", _GATE_LOCK)

    async def lock_versions(self, version_ids: Iterable[int]) -> None:
        await self._conn.execute(
            "SELECT pg_advisory_xact_lock($1 + id) FROM unnest($2::bigint[]) AS id ORDER BY id",
            _VERSION_LOCK,
            sorted(set(version_ids)),
        )

    async def share_versions(self, version_ids: Iterable[int]) -> None:
        """Wait for any evaluation of these versions, and keep new ones out until commit."""
        ids = sorted(set(version_ids))
        if ids:
            await self._conn.execute(
                "SELECT pg_advisory_xact_lock_shared($1 + id)"
                " FROM unnest($2::bigint[]) AS id ORDER BY id",
                _VERSION_LOCK,
                ids,
            )

    async def _lock_findings(self, finding_ids: Iterable[UUID]) -> None:
        # Keys from the ids' first 64 bits; a collision only makes two findings wait on
        # each other. Ordered, so two transactions never wait on each other in a cycle.
        keys = sorted({int.from_bytes(f.bytes[:8], "big", signed=True) for f in finding_ids})
        if keys:
            await self._conn.execute(
                "SELECT pg_advisory_xact_lock(k) FROM unnest($1::bigint[]) AS k ORDER BY k", keys
            )

    # --- uses ----------------------------------------------------------------------

    async def uses_of_subjects(self, subject_ids: Sequence[str]) -> list[SubjectUse]:
        """The subjects' uses in every sealed version (index lookups, see registry_0002)."""
        rows = await self._conn.fetch(
            f"""
            SELECT {_USE_COLUMNS}, r.subject_id, r.category, r.jurisdiction,
                   count(*) AS records,
                   (array_agg(r.record_id ORDER BY r.record_id))[1:{SAMPLE_SIZE}] AS sample
            FROM records r
            JOIN memberships m ON m.record_pk = r.record_pk
            JOIN dataset_versions dv ON dv.dataset_version_id = m.dataset_version_id
            WHERE r.subject_id = ANY($1::text[]) AND dv.sealed_at IS NOT NULL
            GROUP BY dv.dataset_version_id, r.subject_id, r.category, r.jurisdiction
            """,
            list(subject_ids),
        )
        refs: dict[int, DatasetRef] = {}
        return [_use(row, row, refs) for row in rows]

    async def version(self, version_id: int) -> dict[str, Any] | None:
        row = await self._conn.fetchrow(
            f"SELECT {_USE_COLUMNS} FROM dataset_versions dv"
            " WHERE dv.dataset_version_id = $1 AND dv.sealed_at IS NOT NULL",
            version_id,
        )
        return dict(row) if row else None

    async def uses_of_version(
        self, version: dict[str, Any], *, slice_subjects: int
    ) -> AsyncIterator[list[SubjectUse]]:
        """Every use in one sealed version, grouped by subject, category and jurisdiction,
        in slices of about ``slice_subjects`` subjects (a subject is never split), read from
        a cursor: memory stays bounded whatever the version's size. Inside a transaction."""
        cursor = self._conn.cursor(
            f"""
            SELECT r.subject_id, r.category, r.jurisdiction, count(*) AS records,
                   (array_agg(r.record_id ORDER BY r.record_id))[1:{SAMPLE_SIZE}] AS sample
            FROM memberships m JOIN records r ON r.record_pk = m.record_pk
            WHERE m.dataset_version_id = $1
            GROUP BY r.subject_id, r.category, r.jurisdiction
            ORDER BY r.subject_id
            """,
            version["dataset_version_id"],
            prefetch=2_000,
        )
        batch: list[SubjectUse] = []
        subjects = 0
        refs: dict[int, DatasetRef] = {}
        async for row in cursor:
            if batch and row["subject_id"] != batch[-1].subject_id:
                subjects += 1
                if subjects >= slice_subjects:
                    yield batch
                    batch, subjects = [], 0
            batch.append(_use(version, row, refs))
        if batch:
            yield batch

    # --- contributions ---------------------------------------------------------------

    async def contributions_of_subjects(
        self, subject_ids: Sequence[str]
    ) -> dict[ContributionKey, StoredContribution]:
        rows = await self._conn.fetch(
            "SELECT * FROM finding_contributions WHERE subject_id = ANY($1::text[])",
            list(subject_ids),
        )
        return _stored(rows)

    async def contributions_of_version(
        self, version_id: int, subject_ids: Sequence[str]
    ) -> dict[ContributionKey, StoredContribution]:
        rows = await self._conn.fetch(
            "SELECT * FROM finding_contributions"
            " WHERE subject_id = ANY($2::text[]) AND dataset_version_id = $1",
            version_id,
            list(subject_ids),
        )
        return _stored(rows)

    async def drop_contributions_except(self, version_id: int, subject_ids: set[str]) -> set[UUID]:
        """Remove the version's contributions of subjects it no longer holds (purged
        records); returns the findings touched."""
        rows = await self._conn.fetch(
            """
            DELETE FROM finding_contributions
            WHERE dataset_version_id = $1
              AND subject_id NOT IN (SELECT unnest($2::text[]))
            RETURNING finding_id
            """,
            version_id,
            list(subject_ids),
        )
        return {r["finding_id"] for r in rows}

    async def reconcile(
        self,
        desired: Sequence[Contribution],
        stored: dict[ContributionKey, StoredContribution],
        *,
        lock: bool = False,
    ) -> set[UUID]:
        """Make the stored contributions the desired ones; returns the findings touched.

        ``lock``: first take the lock of each finding touched (a consent transaction; an
        evaluation holds its version exclusively instead)."""
        return set(await self.reconcile_by_subject(desired, stored, lock=lock))

    async def reconcile_by_subject(
        self,
        desired: Sequence[Contribution],
        stored: dict[ContributionKey, StoredContribution],
        *,
        lock: bool = False,
    ) -> dict[UUID, set[str]]:
        """``reconcile``, telling for each finding touched the subjects whose contributions
        to it changed (so a finding can carry the trace of the event that changed it)."""
        wanted = {c.key: c for c in desired}
        changed = [
            c
            for key, c in wanted.items()
            if (s := stored.get(key)) is None
            or (s.records, s.sample, s.events) != (c.records, c.sample, c.events)
        ]
        gone = [key for key in stored if key not in wanted]
        touched: dict[UUID, set[str]] = {}
        for key in chain((c.key for c in changed), gone):
            touched.setdefault(key[2], set()).add(key[0])
        if lock:
            solitary = {
                c.cause.finding_id
                for c in changed
                if c.cause.reason is FindingReason.LATER_WITHDRAWAL
            }
            await self._lock_findings(touched.keys() - solitary)
        if gone:
            await self._conn.execute(
                """
                DELETE FROM finding_contributions c
                USING unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[])
                      AS g(subject_id, dataset_version_id, finding_id, category)
                WHERE (c.subject_id, c.dataset_version_id, c.finding_id, c.category)
                    = (g.subject_id, g.dataset_version_id, g.finding_id, g.category)
                """,
                *(list(column) for column in zip(*gone, strict=True)),
            )
        for c in changed:
            self._causes.setdefault(c.cause.finding_id, c.cause)
        if changed:
            await self._conn.execute(
                """
                INSERT INTO finding_contributions AS c
                    (subject_id, dataset_version_id, finding_id, category, records, sample, events)
                SELECT s, v, f, k, n,
                       ARRAY(SELECT jsonb_array_elements_text(smp::jsonb)),
                       ARRAY(SELECT jsonb_array_elements_text(ev::jsonb))::uuid[]
                FROM unnest($1::text[], $2::bigint[], $3::uuid[], $4::text[], $5::integer[],
                            $6::text[], $7::text[]) AS u(s, v, f, k, n, smp, ev)
                ON CONFLICT (subject_id, dataset_version_id, finding_id, category) DO UPDATE
                    SET records = excluded.records, sample = excluded.sample,
                        events = excluded.events
                """,
                [c.subject_id for c in changed],
                [c.cause.dataset_version_id for c in changed],
                [c.cause.finding_id for c in changed],
                [c.category for c in changed],
                [c.records for c in changed],
                # One JSON array per row: asyncpg would read nested lists as one 2-D array.
                # pydantic-core writes them (ids as text) 5 times as fast as json.dumps.
                [to_json(c.sample).decode() for c in changed],
                [to_json(c.events).decode() for c in changed],
            )
        return touched

    async def refresh(
        self,
        finding_ids: Iterable[UUID],
        trace_id: str | None = None,
        traces: Mapping[UUID, str | None] | None = None,
        totals: Mapping[UUID, FindingTotals] | None = None,
    ) -> list[tuple[DatasetFinding, int]]:
        """Recompute the findings' totals from their contributions; store and return those
        whose published state changes, each with its history sequence number. A finding's
        stored trace is its own in ``traces``, else ``trace_id``.

        ``totals``: findings whose totals the caller knows (all their contributions are in
        its hands, see ``reevaluate_subjects``): only their stored state is read.

        A finding not stored yet is created here, its body built once, from the cause
        ``reconcile`` saw (one body per finding, not one per contribution)."""
        ids = sorted(set(finding_ids))
        if not ids:
            return []
        known = {f: totals[f] for f in ids if totals and f in totals}
        states: list[tuple[UUID, str | None, str | None, FindingTotals]] = []
        if unknown := [f for f in ids if f not in known]:
            states += [
                (
                    row["finding_id"],
                    row["status"],
                    row["body"],
                    FindingTotals(
                        int(row["records"]),
                        int(row["subjects"]),
                        tuple(row["sample"]),
                        tuple(UUID(int=e.int) for e in row["events"]),
                    ),
                )
                for row in await self._conn.fetch(_TOTALS, unknown)
            ]
        if known:
            rows = await self._conn.fetch(
                "SELECT finding_id, status, body::text AS body FROM findings"
                " WHERE finding_id = ANY($1::uuid[])",
                list(known),
            )
            stored = {row["finding_id"]: row for row in rows}
            for finding_id, finding_totals in known.items():
                row = stored.get(finding_id)
                status, body = (row["status"], row["body"]) if row else (None, None)
                states.append((finding_id, status, body, finding_totals))
        states.sort(key=lambda state: state[0])
        changed: list[tuple[DatasetFinding, int | None]] = []
        for finding_id, status, stored_body, finding_totals in states:
            if status is None:  # not stored yet
                cause = self._causes.get(finding_id)
                if finding_totals.records == 0 or cause is None:
                    continue
                changed.append((finding_body(cause, finding_totals), cause.dataset_version_id))
                continue
            assert stored_body is not None
            previous = DatasetFinding.model_validate_json(stored_body)
            if finding_totals.records == 0:
                if status != FindingStatus.ACTIVE.value:
                    continue  # never published, or already retracted
                body = previous.model_copy(update={"status": FindingStatus.RETRACTED})
            else:
                body = _with_totals(previous, finding_totals)
                if status == body.status.value and body == previous:
                    continue
            changed.append((body, None))
        if not changed:
            return []
        bodies = [b for b, _ in changed]
        rows = await self._conn.fetch(
            """
            WITH changed AS (
                SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::integer[],
                                     $5::integer[], $6::bigint[], $7::text[], $8::text[],
                                     $9::text[], $10::text[], $11::text[], $12::text[],
                                     $13::text[], $14::timestamptz[], $15::text[])
                    WITH ORDINALITY
                    AS c(finding_id, body, status, records, subjects, dataset_version_id,
                         namespace, name, version, severity, reason, policy_id,
                         policy_version, detected_at, trace_id, n)
            ), stored AS (
                INSERT INTO findings AS f (finding_id, dataset_version_id, namespace, name,
                    version, status, severity, reason, policy_id, policy_version, detected_at,
                    body, affected_records, affected_subjects, trace_id)
                SELECT finding_id, dataset_version_id, namespace, name, version, status,
                       severity, reason, policy_id, policy_version, detected_at, body::jsonb,
                       records, subjects, trace_id
                FROM changed
                ON CONFLICT (finding_id) DO UPDATE
                    SET body = excluded.body, status = excluded.status,
                        affected_records = excluded.affected_records,
                        affected_subjects = excluded.affected_subjects,
                        trace_id = excluded.trace_id, updated_at = now()
            )
            INSERT INTO finding_events (finding_id, status, body)
            SELECT finding_id, status, body::jsonb FROM changed ORDER BY n
            RETURNING finding_id, seq
            """,
            [b.finding_id for b in bodies],
            [b.model_dump_json() for b in bodies],
            [b.status.value for b in bodies],
            [b.affected_records for b in bodies],
            [b.affected_subjects for b in bodies],
            [version_id for _, version_id in changed],
            [b.dataset.namespace for b in bodies],
            [b.dataset.name for b in bodies],
            [b.dataset.version for b in bodies],
            [b.severity.value for b in bodies],
            [b.reason.value for b in bodies],
            [b.policy_id for b in bodies],
            [b.policy_version for b in bodies],
            [b.detected_at for b in bodies],
            [(traces or {}).get(b.finding_id, trace_id) for b in bodies],
        )
        seqs = {r["finding_id"]: int(r["seq"]) for r in rows}
        return [(b, seqs[b.finding_id]) for b in bodies]

    # --- jobs ------------------------------------------------------------------------

    async def enqueue_versions(self, version_ids: Sequence[int], cause: str) -> int:
        status = await self._conn.execute(
            """
            INSERT INTO evaluation_jobs (dataset_version_id, cause)
            SELECT unnest($1::bigint[]), $2
            ON CONFLICT (dataset_version_id) DO UPDATE
                SET cause = excluded.cause, enqueued_at = now(), attempts = 0, last_error = NULL
            """,
            list(version_ids),
            cause,
        )
        await self._conn.execute("SELECT pg_notify($1, '')", EVALUATION_CHANNEL)
        return int(status.rsplit(" ", 1)[1])

    async def versions_in_window(self, start: datetime, end: datetime | None) -> list[int]:
        """Sealed versions whose time of use is in ``[start, end)``."""
        rows = await self._conn.fetch(
            """
            SELECT dataset_version_id FROM dataset_versions
            WHERE sealed_at IS NOT NULL AND used_at >= $1
              AND ($2::timestamptz IS NULL OR used_at < $2)
            """,
            start,
            end,
        )
        return [r["dataset_version_id"] for r in rows]

    async def next_job(self) -> int | None:
        return await self._conn.fetchval(  # type: ignore[no-any-return]
            "SELECT dataset_version_id FROM evaluation_jobs WHERE attempts < $1"
            " ORDER BY enqueued_at, dataset_version_id LIMIT 1",
            MAX_JOB_ATTEMPTS,
        )

    async def claim_job(self, version_id: int) -> datetime | None:
        """Lock the job row (None when another worker has it or it is done)."""
        return await self._conn.fetchval(  # type: ignore[no-any-return]
            "SELECT enqueued_at FROM evaluation_jobs WHERE dataset_version_id = $1"
            " FOR UPDATE SKIP LOCKED",
            version_id,
        )

    async def finish_job(self, version_id: int, enqueued_at: datetime) -> None:
        """Done, unless it was enqueued again meanwhile (then it runs once more)."""
        await self._conn.execute(
            "DELETE FROM evaluation_jobs WHERE dataset_version_id = $1 AND enqueued_at = $2",
            version_id,
            enqueued_at,
        )
        await self._conn.execute(
            "UPDATE dataset_versions SET evaluated_at = now() WHERE dataset_version_id = $1",
            version_id,
        )

    async def fail_job(self, version_id: int, error: str) -> None:
        await self._conn.execute(
            "UPDATE evaluation_jobs SET attempts = attempts + 1, last_error = $2"
            " WHERE dataset_version_id = $1",
            version_id,
            error[:2000],
        )

    async def pending_jobs(self) -> list[dict[str, Any]]:
        rows = await self._conn.fetch(
            """
            SELECT dv.namespace, dv.name, dv.version, j.cause, j.enqueued_at, j.attempts,
                   j.last_error
            FROM evaluation_jobs j JOIN dataset_versions dv USING (dataset_version_id)
            ORDER BY j.enqueued_at
            """
        )
        return [dict(r) for r in rows]

    # --- queries ---------------------------------------------------------------------

    async def findings(
        self,
        *,
        dataset: DatasetRef | None = None,
        subject_id: str | None = None,
        severity: Severity | None = None,
        status: FindingStatus | None = None,
        as_of: datetime | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Findings, each in its latest published state (as of ``as_of`` when given)."""
        rows = await self._conn.fetch(
            """
            WITH chosen AS (
                SELECT f.finding_id, f.trace_id, f.detected_at FROM findings f
                WHERE f.status <> 'new'
                  AND ($1::text IS NULL OR (f.namespace, f.name, f.version) = ($1, $2, $3))
                  AND ($4::text IS NULL OR f.finding_id IN (
                        SELECT c.finding_id FROM finding_contributions c
                        WHERE c.subject_id = $4))
                  AND ($5::text IS NULL OR f.severity = $5)
            ), states AS (
                SELECT DISTINCT ON (e.finding_id) e.finding_id, e.status, e.body,
                       e.recorded_at, chosen.trace_id, chosen.detected_at
                FROM chosen JOIN finding_events e USING (finding_id)
                WHERE $7::timestamptz IS NULL OR e.recorded_at <= $7
                ORDER BY e.finding_id, e.seq DESC
            )
            SELECT body, trace_id, recorded_at FROM states
            WHERE $6::text IS NULL OR status = $6
            ORDER BY detected_at, finding_id
            LIMIT $8
            """,
            dataset.namespace if dataset else None,
            dataset.name if dataset else None,
            dataset.version if dataset else None,
            subject_id,
            severity.value if severity else None,
            status.value if status else None,
            as_of,
            limit,
        )
        return [
            {"finding": r["body"], "trace_id": r["trace_id"], "as_of": r["recorded_at"]}
            for r in rows
        ]


def _use(version: Any, row: Any, refs: dict[int, DatasetRef]) -> SubjectUse:
    """``refs``: each version's DatasetRef, validated once per query, not once per use."""
    version_id = version["dataset_version_id"]
    ref = refs.get(version_id)
    if ref is None:
        ref = refs[version_id] = DatasetRef(
            namespace=version["namespace"], name=version["name"], version=version["version"]
        )
    return SubjectUse(
        dataset_version_id=version_id,
        dataset=ref,
        purpose=version["purpose"],
        sealed_at=version["sealed_at"],
        used_at=version["used_at"],
        subject_id=row["subject_id"],
        category=row["category"],
        jurisdiction=row["jurisdiction"],
        records=int(row["records"]),
        sample=tuple(row["sample"]),
    )


def _stored(rows: Sequence[Any]) -> dict[ContributionKey, StoredContribution]:
    return {
        (r["subject_id"], r["dataset_version_id"], r["finding_id"], r["category"]): (
            StoredContribution(r["records"], tuple(r["sample"]), tuple(r["events"]))
        )
        for r in rows
    }


def _with_totals(previous: DatasetFinding, totals: FindingTotals) -> DatasetFinding:
    improper = previous.reason.value == "improper_use"
    update: dict[str, Any] = {
        "status": FindingStatus.ACTIVE,
        "affected_records": totals.records,
        "affected_subjects": totals.subjects,
        "sample_record_ids": totals.sample,
    }
    if improper:
        update["cause_event_ids"] = totals.events
    return previous.model_copy(update=update)
