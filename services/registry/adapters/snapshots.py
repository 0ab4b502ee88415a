"""Snapshot storage: dataset versions, records, memberships, uploads and their staging.

SQL only. Staged rows go to one UNLOGGED table per upload (``registry_staging.upload_<hex>``)
through binary COPY. Each chunk then registers its records (``register_chunk``: the new ones
inserted, the known ones checked) and keeps their keys in the upload's key table
(``upload_<hex>_pks``, UNLOGGED too); the seal turns those keys into memberships, registers
whatever a chunk could not (``seal_rows``), and drops both tables, inside the caller's
transaction. Every method runs on the caller's connection, so a use case decides what is
one transaction.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

import asyncpg

from contracts.base import DatasetRef
from services.registry.domain.snapshots import RECORD_FIELDS, DatasetVersionHeader, RecordRow
from services.runtime.db import Connection

__all__ = [
    "STAGING_SCHEMA",
    "VERSIONS_OF_SUBJECT_SQL",
    "SnapshotRepository",
    "staging_table_for",
]

STAGING_SCHEMA = "registry_staging"
STAGING_COLUMNS = ("chunk", "line", *RECORD_FIELDS)
_STAGING_NAME = re.compile(r"^upload_[0-9a-f]{32}$")
PROBE_RATIO = 2
"""The seal probes ``records`` by index when it holds more than this many times the staged
rows; below, a hash join (one scan of ``records``) is cheaper."""
SEAL_WORK_MEM = "256MB"
"""For the staged rows the seal materializes once (about 150 MB per million)."""
SAMPLE = 64
"""Records of a chunk looked up before registering it, to choose how (``register_chunk``)."""
_ROW_SORT_BYTES = 256
"""Memory a staged row takes in a sort (measured: 100,000 rows sort in 20 MB)."""
_FIELDS = (
    "source_system, record_id, subject_id, category, jurisdiction, collected_at, content_digest"
)
_FACTS_DIFFER = """(r.subject_id, r.category, r.jurisdiction, r.collected_at, r.content_digest)
    <> (s.subject_id, s.category, s.jurisdiction, s.collected_at, s.content_digest)"""
"""A staged record ``s`` and the registered ``r`` of the same key disagree on a fact."""

_VERSION_COLUMNS = """dv.dataset_version_id, dv.namespace, dv.name, dv.version, dv.purpose,
    dv.created_at, dv.training_started_at, dv.sealed_at, dv.used_at, dv.record_count"""

VERSIONS_OF_SUBJECT_SQL = f"""
SELECT {_VERSION_COLUMNS}, r.category, count(*) AS subject_records,
       (array_agg(r.source_system ORDER BY r.source_system, r.record_id))[1:$4] AS sample_sources,
       (array_agg(r.record_id ORDER BY r.source_system, r.record_id))[1:$4] AS sample_ids
FROM records r
JOIN memberships m ON m.record_pk = r.record_pk
JOIN dataset_versions dv ON dv.dataset_version_id = m.dataset_version_id
WHERE r.subject_id = $1
  AND ($2::text IS NULL OR r.category = $2 OR starts_with(r.category, $2 || '.'))
  AND dv.sealed_at IS NOT NULL
  AND ($3::timestamptz IS NULL OR dv.sealed_at <= $3)
GROUP BY dv.dataset_version_id, r.category
ORDER BY dv.sealed_at, dv.dataset_version_id, r.category
"""
"""Sealed versions holding a subject's records (of a category or below it), per category.

An index lookup whatever the sizes: ``records_subject_category`` for the subject's records,
the ``memberships`` primary key ``(record_pk, dataset_version_id)`` for their versions, and
``dataset_versions``' primary key. ``$4`` bounds the sample of record ids per category.
"""


class _Unregistered(Exception):
    """Undoes a chunk's registration (its savepoint): the seal registers the chunk instead."""


def staging_table_for(upload_id: UUID) -> str:
    return f"upload_{upload_id.hex}"


def _staging(table: str) -> str:
    """The qualified name of a staging table; names are ours, checked before use in SQL."""
    if not _STAGING_NAME.match(table):
        raise ValueError(f"not a staging table name: {table!r}")
    return f"{STAGING_SCHEMA}.{table}"


def _pks(table: str) -> str:
    """The qualified name of an upload's key table: ``(chunk, record_pk)`` of the records
    its registered chunks hold."""
    return f"{_staging(table)}_pks"


def _sort_mem(rows: int) -> str:
    """``work_mem`` for sorting ``rows`` staged rows in memory (16 MB … 256 MB)."""
    return f"{min(256, max(16, rows * _ROW_SORT_BYTES >> 20))}MB"


def _count(status: str) -> int:
    """Rows affected, from a command status such as ``INSERT 0 1000`` or ``COPY 1000``."""
    return int(status.rsplit(" ", 1)[1])


class SnapshotRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def connection(self) -> Connection:
        return self._conn

    # --- dataset versions and uploads -------------------------------------------------

    async def create_version(self, header: DatasetVersionHeader) -> int | None:
        """A new, unsealed dataset version; None when the name and version are taken."""
        value = await self._conn.fetchval(
            """
            INSERT INTO dataset_versions (namespace, name, version, purpose, created_at,
                                          training_started_at)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (namespace, name, version) DO NOTHING
            RETURNING dataset_version_id
            """,
            header.dataset.namespace,
            header.dataset.name,
            header.dataset.version,
            header.purpose,
            header.created_at,
            header.training_started_at,
        )
        return int(value) if value is not None else None

    async def delete_unsealed_version(self, dataset_version_id: int) -> None:
        """An abandoned upload: its version row goes (uploads and chunks cascade)."""
        await self._conn.execute(
            "DELETE FROM dataset_versions WHERE dataset_version_id = $1 AND sealed_at IS NULL",
            dataset_version_id,
        )

    async def open_upload(
        self,
        upload_id: UUID,
        dataset_version_id: int,
        table: str,
        opened_at: datetime,
        *,
        expires: bool = True,
    ) -> None:
        """``expires``: whether the upload expires when idle (not one over Kafka, see
        ``registry_0007``)."""
        await self._conn.execute(
            "INSERT INTO dataset_uploads (upload_id, dataset_version_id, staging_table,"
            " opened_at, expires) VALUES ($1, $2, $3, $4, $5)",
            upload_id,
            dataset_version_id,
            table,
            opened_at,
            expires,
        )

    async def upload(
        self, upload_id: UUID, *, lock: Literal["share", "update"] | None = None
    ) -> dict[str, Any] | None:
        """The upload and its version; ``lock`` takes its row lock (chunks share, seal updates)."""
        suffix = {None: "", "share": "FOR SHARE OF u", "update": "FOR UPDATE OF u"}[lock]
        row = await self._conn.fetchrow(
            f"""
            SELECT u.upload_id, u.staging_table, u.opened_at, u.sealed_at AS upload_sealed_at,
                   {_VERSION_COLUMNS},
                   CASE WHEN u.expires THEN greatest(u.touched_at, (
                       SELECT max(c.touched_at) FROM dataset_upload_chunks c
                       WHERE c.upload_id = u.upload_id)) END AS idle_since
            FROM dataset_uploads u
            JOIN dataset_versions dv ON dv.dataset_version_id = u.dataset_version_id
            WHERE u.upload_id = $1
            {suffix}
            """,
            upload_id,
        )
        return dict(row) if row is not None else None

    async def mark_upload_sealed(self, upload_id: UUID, sealed_at: datetime) -> None:
        await self._conn.execute(
            "UPDATE dataset_uploads SET sealed_at = $2 WHERE upload_id = $1", upload_id, sealed_at
        )

    async def lock_idle_upload(self, idle_for: timedelta) -> dict[str, Any] | None:
        """An open upload that expires and saw nothing for ``idle_for`` (by the database's
        clock, which wrote ``touched_at``: ``registry_0007``), locked; None when there is
        none. One a chunk or the seal is working on holds its row and is skipped."""
        row = await self._conn.fetchrow(
            f"""
            SELECT u.upload_id, u.staging_table, u.opened_at, {_VERSION_COLUMNS},
                   greatest(u.touched_at, c.touched_at) AS touched_at,
                   coalesce(c.chunks, 0) AS chunks, coalesce(c.records, 0) AS records
            FROM dataset_uploads u
            JOIN dataset_versions dv ON dv.dataset_version_id = u.dataset_version_id
            CROSS JOIN LATERAL (
                SELECT max(touched_at) AS touched_at, count(*) AS chunks,
                       sum(records) AS records
                FROM dataset_upload_chunks WHERE upload_id = u.upload_id
            ) c
            WHERE u.sealed_at IS NULL AND u.expires AND u.touched_at < now() - $1::interval
              AND (c.touched_at IS NULL OR c.touched_at < now() - $1::interval)
            ORDER BY u.touched_at
            LIMIT 1
            FOR UPDATE OF u SKIP LOCKED
            """,
            idle_for,
        )
        return dict(row) if row is not None else None

    async def record_expiry(self, upload: dict[str, Any]) -> None:
        await self._conn.execute(
            """
            INSERT INTO expired_uploads (upload_id, namespace, name, version, opened_at,
                                         touched_at, expired_at, chunks, records)
            VALUES ($1, $2, $3, $4, $5, $6, now(), $7, $8)
            """,
            upload["upload_id"],
            upload["namespace"],
            upload["name"],
            upload["version"],
            upload["opened_at"],
            upload["touched_at"],
            upload["chunks"],
            upload["records"],
        )

    async def forget_expiries(self, older_than: timedelta) -> int:
        """Drop the notes of uploads that expired longer ago than ``older_than``."""
        status = await self._conn.execute(
            "DELETE FROM expired_uploads WHERE expired_at < now() - $1::interval", older_than
        )
        return int(status.rsplit(" ", 1)[1])

    async def expiry(self, upload_id: UUID) -> dict[str, Any] | None:
        """What is known of an upload that expired (None: it did not)."""
        row = await self._conn.fetchrow(
            "SELECT * FROM expired_uploads WHERE upload_id = $1", upload_id
        )
        return dict(row) if row is not None else None

    async def chunks(self, upload_id: UUID) -> list[dict[str, Any]]:
        rows = await self._conn.fetch(
            "SELECT chunk, records, received_at FROM dataset_upload_chunks"
            " WHERE upload_id = $1 ORDER BY chunk",
            upload_id,
        )
        return [dict(r) for r in rows]

    async def claim_chunk(self, upload_id: UUID, chunk: int, received_at: datetime) -> bool:
        """Lock chunk ``chunk`` of the upload for this transaction; True when it replaces one.

        Concurrent sends of the same chunk number queue here, so the later one replaces the
        earlier one instead of both landing in the staging table. The chunk is unregistered
        until ``set_chunk_records`` says otherwise.
        """
        replaced = await self._conn.fetchval(
            """
            INSERT INTO dataset_upload_chunks (upload_id, chunk, records, received_at)
            VALUES ($1, $2, 0, $3)
            ON CONFLICT (upload_id, chunk)
                DO UPDATE SET received_at = EXCLUDED.received_at, registered = false,
                              touched_at = clock_timestamp()
            RETURNING xmax <> 0
            """,
            upload_id,
            chunk,
            received_at,
        )
        return bool(replaced)

    async def set_chunk_records(
        self, upload_id: UUID, chunk: int, records: int, *, registered: bool = False
    ) -> None:
        """How many records chunk ``chunk`` holds, and whether ``register_chunk`` registered
        them (else the seal does)."""
        await self._conn.execute(
            "UPDATE dataset_upload_chunks SET records = $3, registered = $4,"
            " touched_at = clock_timestamp() WHERE upload_id = $1 AND chunk = $2",
            upload_id,
            chunk,
            records,
            registered,
        )

    async def unregistered_chunks(self, upload_id: UUID) -> list[int]:
        """The chunks whose records the seal must register itself."""
        rows = await self._conn.fetch(
            "SELECT chunk FROM dataset_upload_chunks"
            " WHERE upload_id = $1 AND NOT registered ORDER BY chunk",
            upload_id,
        )
        return [r["chunk"] for r in rows]

    async def expected_records(self, upload_id: UUID) -> int:
        value = await self._conn.fetchval(
            "SELECT coalesce(sum(records), 0) FROM dataset_upload_chunks WHERE upload_id = $1",
            upload_id,
        )
        return int(value)

    # --- staging ----------------------------------------------------------------------

    async def create_staging(self, table: str, *, chunked: bool = True) -> None:
        """The staging table and its key table, UNLOGGED, never vacuumed by autovacuum (the
        seal drops them). ``chunked``: indexed by chunk, for an upload's many chunks."""
        await self._conn.execute(
            f"""
            CREATE UNLOGGED TABLE {_staging(table)} (
                chunk          integer     NOT NULL,
                line           integer     NOT NULL,
                source_system  text COLLATE "C" NOT NULL,
                record_id      text COLLATE "C" NOT NULL,
                subject_id     text COLLATE "C" NOT NULL,
                category       text COLLATE "C" NOT NULL,
                jurisdiction   text        NOT NULL,
                collected_at   timestamptz NOT NULL,
                content_digest text        NOT NULL
            ) WITH (autovacuum_enabled = off, toast.autovacuum_enabled = off);
            CREATE UNLOGGED TABLE {_pks(table)} (
                chunk     integer NOT NULL,
                record_pk bigint  NOT NULL
            ) WITH (autovacuum_enabled = off)
            """
        )
        if chunked:
            await self._conn.execute(f"CREATE INDEX {table}_chunk ON {_staging(table)} (chunk)")

    async def drop_staging(self, table: str) -> None:
        await self._conn.execute(
            f"DROP TABLE IF EXISTS {_staging(table)}; DROP TABLE IF EXISTS {_pks(table)}"
        )

    async def delete_staged_chunk(self, table: str, chunk: int) -> None:
        await self._conn.execute(f"DELETE FROM {_staging(table)} WHERE chunk = $1", chunk)
        await self._conn.execute(f"DELETE FROM {_pks(table)} WHERE chunk = $1", chunk)

    async def copy_rows(
        self, table: str, rows: AsyncIterable[RecordRow] | Sequence[RecordRow]
    ) -> int:
        """Binary COPY into the staging table, streaming: rows are encoded as they come.

        An exception raised by ``rows`` aborts the COPY (and so the caller's transaction).
        """
        _staging(table)
        status = await self._conn.copy_records_to_table(
            table, schema_name=STAGING_SCHEMA, columns=STAGING_COLUMNS, records=rows
        )
        return _count(status)

    async def staged_per_chunk(self, table: str) -> dict[int, int]:
        rows = await self._conn.fetch(
            f"SELECT chunk, count(*) AS n FROM {_staging(table)} GROUP BY chunk"
        )
        return {r["chunk"]: r["n"] for r in rows}

    # --- registering a chunk ----------------------------------------------------------

    async def register_chunk(self, table: str, chunk: int, staged: int) -> bool:
        """Register the ``staged`` records of chunk ``chunk`` and keep their keys for the
        seal; False (and nothing done) when the seal must register them instead.

        Records are facts, immutable and independent of any version, so registering them
        before the seal is harmless: none becomes a member of anything until the seal.
        New records are inserted in key order, and their keys come from ``RETURNING``: a
        chunk of new records costs no lookup. Known records are looked up by index, their
        keys taken and their facts compared. A sample of the chunk (``SAMPLE`` records)
        says which way to start:

        - none known: one plain INSERT, in a savepoint. It is a third cheaper than one with
          ``ON CONFLICT`` (measured: 0.93 s vs 1.3 s per 100,000 records), and the common
          case of new data. A key that turns out to be registered (or being registered by
          another transaction: the INSERT waits for it) undoes it, and the chunk goes the
          general way;
        - all known: look every record up; insert whatever was not found;
        - otherwise (the general way): insert with ``ON CONFLICT DO NOTHING``, then look up
          what was not inserted.

        In key order, two transactions meet on their common records in the same order, so
        they never deadlock; one waits for the other, then shares its records.

        False when a record conflicts with the one registered (or with itself, staged
        twice with other facts): the seal then refuses it, naming the records, as it always
        has; nothing of the chunk is registered.
        """
        await self._conn.execute(f"SET LOCAL work_mem = '{_sort_mem(staged)}'")
        sample = await self._conn.fetchrow(
            f"""
            SELECT count(*) AS sampled, count(r.record_pk) AS known
            FROM (SELECT source_system, record_id FROM {_staging(table)}
                  WHERE chunk = $1 AND line % $2 = 0 LIMIT $3) s
            LEFT JOIN LATERAL (
                SELECT record_pk FROM records r
                WHERE r.source_system = s.source_system AND r.record_id = s.record_id
                LIMIT 1
            ) r ON true
            """,
            chunk,
            max(1, staged // SAMPLE),
            SAMPLE,
        )
        assert sample is not None
        kept = False
        try:
            async with self._conn.transaction():
                if sample["known"] == 0:
                    try:
                        async with self._conn.transaction():
                            await self._insert_new(table, chunk, kept=False, plain=True)
                            return True
                    except asyncpg.UniqueViolationError:
                        pass
                elif sample["known"] == sample["sampled"]:
                    found, conflicting = await self._look_up_chunk(table, chunk, kept=False)
                    if conflicting:
                        raise _Unregistered
                    if found == staged:
                        return True
                    kept = True
                if await self._insert_new(table, chunk, kept=kept) == staged:
                    return True
                found, conflicting = await self._look_up_chunk(table, chunk, kept=True)
                if conflicting or found != staged:
                    raise _Unregistered
                return True
        except _Unregistered:
            return False

    async def _insert_new(self, table: str, chunk: int, *, kept: bool, plain: bool = False) -> int:
        """Insert the chunk's records in key order (``plain``: all of them, else those not
        registered yet) and keep their keys, instead of those ``kept`` before; how many
        were inserted."""
        if kept:
            await self._conn.execute(f"DELETE FROM {_pks(table)} WHERE chunk = $1", chunk)
        on_conflict = "" if plain else "ON CONFLICT (source_system, record_id) DO NOTHING"
        status = await self._conn.execute(
            f"""
            WITH new AS (
                INSERT INTO records ({_FIELDS})
                SELECT {_FIELDS} FROM {_staging(table)} WHERE chunk = $1
                ORDER BY source_system, record_id
                {on_conflict}
                RETURNING record_pk
            )
            INSERT INTO {_pks(table)} (chunk, record_pk) SELECT $1, record_pk FROM new
            """,
            chunk,
        )
        return _count(status)

    async def _look_up_chunk(self, table: str, chunk: int, *, kept: bool) -> tuple[int, int]:
        """Look up each of the chunk's records by index, one probe per staged row, and keep
        the keys of those found (instead of those ``kept`` before); ``(found, conflicting)``."""
        if kept:
            await self._conn.execute(f"DELETE FROM {_pks(table)} WHERE chunk = $1", chunk)
        row = await self._conn.fetchrow(
            f"""
            WITH staged AS MATERIALIZED (
                SELECT r.record_pk, {_FACTS_DIFFER} AS conflicting
                FROM {_staging(table)} s
                CROSS JOIN LATERAL (
                    SELECT * FROM records r
                    WHERE r.source_system = s.source_system AND r.record_id = s.record_id
                    LIMIT 1
                ) r
                WHERE s.chunk = $1
            ), kept AS (
                INSERT INTO {_pks(table)} (chunk, record_pk) SELECT $1, record_pk FROM staged
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM kept) AS found,
                   (SELECT count(*) FROM staged WHERE conflicting) AS conflicting
            """,
            chunk,
        )
        assert row is not None
        return int(row["found"]), int(row["conflicting"])

    # --- the seal ---------------------------------------------------------------------

    async def insert_registered_memberships(
        self, dataset_version_id: int, table: str
    ) -> int | None:
        """Every record of the registered chunks becomes a member of the version, in
        ``record_pk`` order: records registered together append to the ``memberships``
        primary key instead of splitting its pages (measured: 1.65 s per million, sort
        included, vs 1.75 s unsorted, and a sixth less WAL). None (undone, in a savepoint)
        when a record is staged twice."""
        await self._conn.execute(f"SET LOCAL work_mem = '{SEAL_WORK_MEM}'")
        try:
            async with self._conn.transaction():
                status = await self._conn.execute(
                    f"""
                    INSERT INTO memberships (dataset_version_id, record_pk)
                    SELECT $1::bigint, record_pk FROM {_pks(table)} ORDER BY record_pk
                    """,
                    dataset_version_id,
                )
        except asyncpg.UniqueViolationError:
            return None
        return _count(status)

    async def prepare_seal(self, table: str, staged: int) -> None:
        """Choose how the seal meets ``records`` for the chunks it registers itself.

        Beside a ``records`` table much larger than the upload, the seal probes it by index
        for each staged row, so that its cost follows the upload, not the registry: the
        planner's own choice, a hash join, scans all of ``records`` (sealing 1M records
        beside 12M took 24.6 s that way, 14.1 s by probes). Beside a smaller one, scanning
        and hashing it is the cheaper way, and the planner is left to it (with statistics
        of the staged rows). ``work_mem`` holds the staged rows the seal materializes once.
        """
        await self._conn.execute(f"SET LOCAL work_mem = '{SEAL_WORK_MEM}'")
        registered = await self._conn.fetchval(
            "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'records'::regclass"
        )
        if registered > PROBE_RATIO * staged:
            await self._conn.execute(
                "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"
            )
        else:
            await self._conn.execute(f"ANALYZE {_staging(table)}")

    async def seal_rows(
        self, dataset_version_id: int, table: str, chunks: Sequence[int]
    ) -> tuple[int, int] | None:
        """The staged rows of ``chunks`` → ``records`` (the new ones) and memberships, in
        one statement.

        One index probe per staged row finds it registered or not; new records are
        inserted (in key order, as ``register_chunk`` does) and their keys come back from
        RETURNING; registered ones are compared (records are immutable). Returns
        ``(members, conflicting)``; the caller must not commit when ``conflicting`` > 0.
        None (undone, in a savepoint) when a key collides: a record staged twice, or one a
        concurrent transaction registered meanwhile.
        """
        sql = f"""
            WITH staged AS MATERIALIZED (
                SELECT s.source_system, s.record_id, s.subject_id, s.category, s.jurisdiction,
                       s.collected_at, s.content_digest, r.record_pk,
                       {_FACTS_DIFFER} AS conflicting
                FROM {_staging(table)} s
                LEFT JOIN records r ON r.source_system = s.source_system
                                   AND r.record_id = s.record_id
                WHERE s.chunk = ANY($2::integer[])
            ), new AS (
                INSERT INTO records ({_FIELDS})
                SELECT {_FIELDS} FROM staged WHERE record_pk IS NULL
                ORDER BY source_system, record_id
                RETURNING record_pk
            ), added AS (
                INSERT INTO memberships (dataset_version_id, record_pk)
                SELECT $1::bigint, record_pk FROM new
                UNION ALL
                SELECT $1::bigint, record_pk FROM staged WHERE record_pk IS NOT NULL
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM added) AS members,
                   (SELECT count(*) FROM staged WHERE conflicting) AS conflicting
            """
        return await self._members_and_conflicts(sql, dataset_version_id, chunks)

    async def insert_new_records(self, table: str, chunks: Sequence[int]) -> int:
        """The slow path of ``seal_rows``, first step: register the staged records of
        ``chunks`` not yet registered, skipping those a concurrent transaction registered
        meanwhile (it waits for that one to commit or roll back)."""
        sql = f"""
            INSERT INTO records ({_FIELDS})
            SELECT {_FIELDS} FROM {_staging(table)} s
            WHERE s.chunk = ANY($1::integer[])
              AND NOT EXISTS (SELECT FROM records r
                              WHERE r.source_system = s.source_system
                                AND r.record_id = s.record_id)
            ORDER BY source_system, record_id
            ON CONFLICT (source_system, record_id) DO NOTHING
            """
        return _count(await self._conn.execute(sql, chunks))

    async def insert_memberships(
        self, dataset_version_id: int, table: str, chunks: Sequence[int]
    ) -> tuple[int, int] | None:
        """The slow path of ``seal_rows``, second step: every staged record of ``chunks``
        (registered by now) becomes a member of the version. Returns ``(members,
        conflicting)`` as ``seal_rows`` does; None (undone, in a savepoint) when a record is
        staged twice.
        """
        sql = f"""
            WITH staged AS MATERIALIZED (
                SELECT r.record_pk, {_FACTS_DIFFER} AS conflicting
                FROM {_staging(table)} s
                JOIN records r ON r.source_system = s.source_system
                              AND r.record_id = s.record_id
                WHERE s.chunk = ANY($2::integer[])
            ), added AS (
                INSERT INTO memberships (dataset_version_id, record_pk)
                SELECT $1, record_pk FROM staged
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM added) AS members,
                   (SELECT count(*) FROM staged WHERE conflicting) AS conflicting
            """
        return await self._members_and_conflicts(sql, dataset_version_id, chunks)

    async def _members_and_conflicts(
        self, sql: str, dataset_version_id: int, chunks: Sequence[int]
    ) -> tuple[int, int] | None:
        """Run a membership insert in a savepoint; None when a record is staged twice."""
        try:
            async with self._conn.transaction():
                row = await self._conn.fetchrow(sql, dataset_version_id, chunks)
        except asyncpg.UniqueViolationError:
            return None
        assert row is not None
        return int(row["members"]), int(row["conflicting"])

    async def conflicting_records(self, table: str, limit: int) -> list[dict[str, Any]]:
        """Staged records whose facts differ from those registered, and which facts differ."""
        rows = await self._conn.fetch(
            f"""
            SELECT s.chunk, s.line, s.source_system, s.record_id,
                   array_remove(ARRAY[
                       CASE WHEN r.subject_id <> s.subject_id THEN 'subject_id' END,
                       CASE WHEN r.category <> s.category THEN 'category' END,
                       CASE WHEN r.jurisdiction <> s.jurisdiction THEN 'jurisdiction' END,
                       CASE WHEN r.collected_at <> s.collected_at THEN 'collected_at' END,
                       CASE WHEN r.content_digest <> s.content_digest
                            THEN 'content_digest' END
                   ], NULL) AS fields
            FROM {_staging(table)} s
            JOIN records r ON r.source_system = s.source_system AND r.record_id = s.record_id
            WHERE (r.subject_id, r.category, r.jurisdiction, r.collected_at, r.content_digest)
               <> (s.subject_id, s.category, s.jurisdiction, s.collected_at, s.content_digest)
            ORDER BY s.chunk, s.line
            LIMIT $1
            """,
            limit,
        )
        return [dict(r) for r in rows]

    async def duplicate_records(self, table: str, limit: int) -> list[dict[str, Any]]:
        """Records staged more than once, with the (chunk, line) of every occurrence."""
        rows = await self._conn.fetch(
            f"""
            SELECT source_system, record_id,
                   array_agg(chunk ORDER BY chunk, line) AS chunks,
                   array_agg(line ORDER BY chunk, line) AS lines
            FROM {_staging(table)}
            GROUP BY source_system, record_id
            HAVING count(*) > 1
            ORDER BY min(chunk), min(line)
            LIMIT $1
            """,
            limit,
        )
        return [dict(r) for r in rows]

    async def mark_sealed(
        self, dataset_version_id: int, sealed_at: datetime, used_at: datetime, record_count: int
    ) -> None:
        await self._conn.execute(
            """
            UPDATE dataset_versions SET sealed_at = $2, used_at = $3, record_count = $4
            WHERE dataset_version_id = $1 AND sealed_at IS NULL
            """,
            dataset_version_id,
            sealed_at,
            used_at,
            record_count,
        )

    # --- reads ------------------------------------------------------------------------

    async def sealed_version(self, dataset: DatasetRef) -> dict[str, Any] | None:
        row = await self._conn.fetchrow(
            f"""
            SELECT {_VERSION_COLUMNS}, u.upload_id
            FROM dataset_versions dv
            LEFT JOIN dataset_uploads u ON u.dataset_version_id = dv.dataset_version_id
            WHERE dv.namespace = $1 AND dv.name = $2 AND dv.version = $3
              AND dv.sealed_at IS NOT NULL
            """,
            dataset.namespace,
            dataset.name,
            dataset.version,
        )
        return dict(row) if row is not None else None

    async def versions_of_subject(
        self, subject_id: str, category: str | None, as_of: datetime | None, sample: int
    ) -> list[dict[str, Any]]:
        rows = await self._conn.fetch(VERSIONS_OF_SUBJECT_SQL, subject_id, category, as_of, sample)
        return [dict(r) for r in rows]
