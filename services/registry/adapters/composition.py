"""What went into a dataset version, and the reads of a what-if. Raw SQL on asyncpg.

- ``composition``: records per category and per jurisdiction, distinct subjects, from the
  version's memberships ⋈ records (one pass; see ``COMPOSITION_SQL``).
- ``subjects``: the version's distinct subject ids, keyset-paginated.
- The what-if reads (``WhatIfReads``): the uses a scope (a subject, a category, a
  jurisdiction) reaches, split into the subjects with a consent history (judged one by one)
  and the aggregated uses of those without (see ``domain.whatif``).

Every query here only reads; the what-if runs them in one read-only, repeatable-read
transaction so that its parts see the same state.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from contracts.base import DatasetRef
from contracts.events import Severity
from services.registry.domain.findings import SAMPLE_SIZE, SubjectUse
from services.registry.domain.whatif import REPRESENTATIVE, Scope, ScopeKind, UseGroup
from services.runtime.db import Connection

__all__ = ["COMPOSITION_SQL", "CompositionStore", "WhatIfReads"]

COMPOSITION_WORK_MEM = "64MB"
"""For these aggregations only (``SET LOCAL``, the transaction's): with the default 4 MB
the distinct counts of a 1M-record version spill to disk."""

COMPOSITION_SQL = """
    SELECT r.category, r.jurisdiction, GROUPING(r.category) AS any_category,
           GROUPING(r.jurisdiction) AS any_jurisdiction,
           count(*) AS records, count(DISTINCT r.subject_id) AS subjects
    FROM memberships m JOIN records r ON r.record_pk = m.record_pk
    WHERE m.dataset_version_id = $1
    GROUP BY GROUPING SETS ((r.category), (r.jurisdiction), ())
"""
"""One pass over the version's memberships ⋈ records (a parallel hash join), sorted once
per grouping set for the distinct subjects. Of the forms measured (this one; a first
aggregate per subject, category and jurisdiction, then the figures from it) the fastest."""

SUBJECT_WALK_SHARE = 0.05
"""A version holding at least this share of all records pages its subjects by walking
``records_subject_category`` from the cursor (each page costs about its own size);
smaller versions by joining their memberships (each page costs the version's size)."""


class CompositionStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def sealed_version(self, dataset: DatasetRef) -> dict[str, Any] | None:
        row = await self._conn.fetchrow(
            """
            SELECT dataset_version_id, purpose, sealed_at, used_at, record_count
            FROM dataset_versions
            WHERE namespace = $1 AND name = $2 AND version = $3 AND sealed_at IS NOT NULL
            """,
            dataset.namespace,
            dataset.name,
            dataset.version,
        )
        return dict(row) if row else None

    async def composition(self, version_id: int) -> dict[str, Any]:
        """Records and distinct subjects: in total, per category, per jurisdiction.
        Inside a transaction (its ``work_mem`` is set for that transaction only)."""
        await self._conn.execute(f"SET LOCAL work_mem = '{COMPOSITION_WORK_MEM}'")
        rows = await self._conn.fetch(COMPOSITION_SQL, version_id)
        result: dict[str, Any] = {"records": 0, "subjects": 0}
        categories, jurisdictions = [], []
        for row in rows:
            figures = {"records": int(row["records"]), "subjects": int(row["subjects"])}
            if not row["any_category"]:
                categories.append({"category": row["category"], **figures})
            elif not row["any_jurisdiction"]:
                jurisdictions.append({"jurisdiction": row["jurisdiction"], **figures})
            else:
                result.update(figures)
        result["categories"] = sorted(categories, key=lambda c: c["category"])
        result["jurisdictions"] = sorted(jurisdictions, key=lambda j: j["jurisdiction"])
        return result

    async def subjects(
        self, version_id: int, record_count: int, *, after: str | None, limit: int
    ) -> list[str]:
        """The version's distinct subject ids after ``after``, in byte order."""
        share = record_count / max(await self._records_estimate(), 1)
        if share >= SUBJECT_WALK_SHARE:
            query = """
                SELECT r.subject_id FROM records r
                WHERE ($2::text IS NULL OR r.subject_id > $2)
                  AND EXISTS (SELECT 1 FROM memberships m
                              WHERE m.record_pk = r.record_pk AND m.dataset_version_id = $1)
                GROUP BY r.subject_id ORDER BY r.subject_id LIMIT $3
            """
        else:
            query = """
                SELECT DISTINCT r.subject_id
                FROM memberships m JOIN records r ON r.record_pk = m.record_pk
                WHERE m.dataset_version_id = $1 AND ($2::text IS NULL OR r.subject_id > $2)
                ORDER BY r.subject_id LIMIT $3
            """
        rows = await self._conn.fetch(query, version_id, after, limit)
        return [r["subject_id"] for r in rows]

    async def versions_holding(
        self,
        categories: Sequence[str],
        jurisdictions: Sequence[str],
        collected_from: datetime | None,
        collected_until: datetime | None,
    ) -> list[dict[str, Any]]:
        """Sealed versions holding records of the categories (and below), optionally of the
        jurisdictions and collected in ``[collected_from, collected_until)``: what a
        category purge reaches. A scan of ``records`` by design (legal's rare, broad read)."""
        rows = await self._conn.fetch(
            """
            SELECT dv.namespace, dv.name, dv.version, count(*) AS records,
                   count(DISTINCT r.subject_id) AS subjects
            FROM records r
            JOIN memberships m ON m.record_pk = r.record_pk
            JOIN dataset_versions dv ON dv.dataset_version_id = m.dataset_version_id
            WHERE dv.sealed_at IS NOT NULL
              AND EXISTS (SELECT 1 FROM unnest($1::text[]) c
                          WHERE r.category = c OR starts_with(r.category, c || '.'))
              AND (cardinality($2::text[]) = 0 OR r.jurisdiction = ANY($2::text[])
                   OR split_part(r.jurisdiction, '-', 1) = ANY($2::text[]))
              AND ($3::timestamptz IS NULL OR r.collected_at >= $3)
              AND ($4::timestamptz IS NULL OR r.collected_at < $4)
            GROUP BY dv.dataset_version_id
            ORDER BY dv.namespace, dv.name, dv.version
            """,
            list(categories),
            list(jurisdictions),
            collected_from,
            collected_until,
        )
        return [
            {
                "dataset": {
                    "namespace": r["namespace"],
                    "name": r["name"],
                    "version": r["version"],
                },
                "records": int(r["records"]),
                "subjects": int(r["subjects"]),
            }
            for r in rows
        ]

    async def _records_estimate(self) -> int:
        """The planner's row count of ``records`` (cheap; exact enough to pick a plan)."""
        value = await self._conn.fetchval(
            "SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'records'::regclass"
        )
        return int(value or 0)


# --- what-if -------------------------------------------------------------------------------


def _scope_sql(scope: Scope, param: int) -> tuple[str, object]:
    """The condition on ``records r`` a scope puts, as the ``param``-th parameter."""
    if scope.kind is ScopeKind.SUBJECT:
        return f"r.subject_id = ${param}", scope.value
    if scope.kind is ScopeKind.CATEGORY:
        return f"(r.category = ${param} OR starts_with(r.category, ${param} || '.'))", scope.value
    return (
        f"(r.jurisdiction = ANY(${param}::text[])"
        f" OR split_part(r.jurisdiction, '-', 1) = ANY(${param}::text[]))",
        list(scope.jurisdictions()),
    )


def _purpose_sql(param: int) -> str:
    return (
        f"(${param}::text IS NULL OR dv.purpose = ${param}"
        f" OR starts_with(dv.purpose, ${param} || '.'))"
    )


_NO_HISTORY = "NOT EXISTS (SELECT 1 FROM consent_projection c WHERE c.subject_id = r.subject_id)"
_HISTORY = "EXISTS (SELECT 1 FROM consent_projection c WHERE c.subject_id = r.subject_id)"


class WhatIfReads:
    """The reads of one what-if, inside the caller's (read-only) transaction."""

    def __init__(self, conn: Connection, scope: Scope, purpose: str | None) -> None:
        self._conn = conn
        self._scope = scope
        self._purpose = purpose

    async def tune(self) -> None:
        """Memory for the distinct counts, for this transaction only."""
        await self._conn.execute(f"SET LOCAL work_mem = '{COMPOSITION_WORK_MEM}'")

    def _where(self, first: int = 1) -> tuple[str, list[object]]:
        scope_sql, scope_arg = _scope_sql(self._scope, first)
        return (
            f"{scope_sql} AND dv.sealed_at IS NOT NULL AND {_purpose_sql(first + 1)}",
            [scope_arg, self._purpose],
        )

    async def subjects_with_history(self, limit: int) -> tuple[list[str], int]:
        """Up to ``limit`` subjects in scope that have consent events (smallest ids
        first), and how many there are in all."""
        where, args = self._where()
        rows = await self._conn.fetch(
            f"""
            SELECT subject_id, count(*) OVER () AS total FROM (
                SELECT DISTINCT r.subject_id
                FROM records r
                JOIN memberships m ON m.record_pk = r.record_pk
                JOIN dataset_versions dv ON dv.dataset_version_id = m.dataset_version_id
                WHERE {where} AND {_HISTORY}
            ) s
            ORDER BY subject_id LIMIT ${len(args) + 1}
            """,
            *args,
            limit,
        )
        return [r["subject_id"] for r in rows], int(rows[0]["total"]) if rows else 0

    async def uses_of(self, subject_ids: Sequence[str]) -> list[SubjectUse]:
        """These subjects' uses in scope (index lookups by subject)."""
        if not subject_ids:
            return []
        where, args = self._where(2)
        rows = await self._conn.fetch(
            f"""
            SELECT dv.dataset_version_id, dv.namespace, dv.name, dv.version, dv.purpose,
                   dv.sealed_at, dv.used_at, r.subject_id, r.category, r.jurisdiction,
                   count(*) AS records,
                   (array_agg(r.record_id ORDER BY r.record_id))[1:{SAMPLE_SIZE}] AS sample
            FROM records r
            JOIN memberships m ON m.record_pk = r.record_pk
            JOIN dataset_versions dv ON dv.dataset_version_id = m.dataset_version_id
            WHERE r.subject_id = ANY($1::text[]) AND {where}
            GROUP BY dv.dataset_version_id, r.subject_id, r.category, r.jurisdiction
            """,
            list(subject_ids),
            *args,
        )
        return [_use(r, r["subject_id"], tuple(r["sample"])) for r in rows]

    async def groups_without_history(self) -> list[UseGroup]:
        """The uses in scope of subjects without consent events, per (dataset version,
        category, jurisdiction), with their records (one hash aggregate; the distinct
        subjects are counted once the groups are judged: ``subjects_without_history``)."""
        where, args = self._where()
        rows = await self._conn.fetch(
            f"""
            SELECT dv.dataset_version_id, dv.namespace, dv.name, dv.version, dv.purpose,
                   dv.sealed_at, dv.used_at, r.category, r.jurisdiction, count(*) AS records
            FROM records r
            JOIN memberships m ON m.record_pk = r.record_pk
            JOIN dataset_versions dv ON dv.dataset_version_id = m.dataset_version_id
            WHERE {where} AND {_NO_HISTORY}
            GROUP BY dv.dataset_version_id, r.category, r.jurisdiction
            """,
            *args,
        )
        groups = [UseGroup(_use(r, None, ()), subjects=0) for r in rows]
        return sorted(groups, key=_group_order)

    async def subjects_without_history(
        self, keys: Sequence[tuple[int, str, str, int]]
    ) -> tuple[dict[tuple[int, int | None], int], int]:
        """Distinct subjects without history: in the given (version, category,
        jurisdiction, kind) groups, per (version, kind) and per (version, None); and in the
        whole scope. One pass over the scope's records; every distinct by hashing (PostgreSQL
        sorts for ``count(DISTINCT …)``, about a fifth slower here)."""
        where, args = self._where(5)
        rows = await self._conn.fetch(
            f"""
            WITH kg AS (
                SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[])
                    AS kg(v, category, jurisdiction, k)
            ), s AS MATERIALIZED (
                SELECT m.dataset_version_id AS v, r.category, r.jurisdiction, r.subject_id
                FROM records r
                JOIN memberships m ON m.record_pk = r.record_pk
                JOIN dataset_versions dv ON dv.dataset_version_id = m.dataset_version_id
                WHERE {where} AND {_NO_HISTORY}
                GROUP BY 1, 2, 3, 4
            )
            SELECT NULL::bigint AS v, NULL::int AS k, true AS all_kinds, count(*) AS subjects,
                   true AS whole_scope
            FROM (SELECT DISTINCT subject_id FROM s) everybody
            UNION ALL
            SELECT v, k, false, count(*), false FROM (
                SELECT DISTINCT kg.v, kg.k, s.subject_id
                FROM kg JOIN s USING (v, category, jurisdiction)) per_kind
            GROUP BY v, k
            UNION ALL
            SELECT v, NULL, true, count(*), false FROM (
                SELECT DISTINCT kg.v, s.subject_id
                FROM kg JOIN s USING (v, category, jurisdiction)) per_version
            GROUP BY v
            """,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [k[2] for k in keys],
            [k[3] for k in keys],
            *args,
        )
        total = next(int(r["subjects"]) for r in rows if r["whole_scope"])
        counts = {
            (r["v"], None if r["all_kinds"] else r["k"]): int(r["subjects"])
            for r in rows
            if not r["whole_scope"]
        }
        return counts, total

    async def current_severities(self, version_ids: Sequence[int]) -> dict[int, list[Severity]]:
        """The severities of each version's active findings now."""
        if not version_ids:
            return {}
        rows = await self._conn.fetch(
            """
            SELECT dataset_version_id, array_agg(DISTINCT severity) AS severities
            FROM findings WHERE dataset_version_id = ANY($1::bigint[]) AND status = 'active'
            GROUP BY dataset_version_id
            """,
            list(version_ids),
        )
        return {r["dataset_version_id"]: [Severity(s) for s in r["severities"]] for r in rows}


def _group_order(group: UseGroup) -> tuple[int, str, str]:
    return (group.use.dataset_version_id, group.use.category, group.use.jurisdiction)


def _use(row: Any, subject_id: str | None, sample: tuple[str, ...]) -> SubjectUse:
    return SubjectUse(
        dataset_version_id=row["dataset_version_id"],
        dataset=DatasetRef(namespace=row["namespace"], name=row["name"], version=row["version"]),
        purpose=row["purpose"],
        sealed_at=row["sealed_at"],
        used_at=row["used_at"],
        subject_id=subject_id or REPRESENTATIVE,
        category=row["category"],
        jurisdiction=row["jurisdiction"],
        records=int(row["records"]),
        sample=sample,
    )
