"""Purge storage: select the records a deletion task names, remove them and their
memberships, rebuild the manifests of the versions that held them. SQL only; every method
runs in the caller's transaction.

The records selected are kept in a temporary table (``purge_<hex>``, dropped at commit) so
that a purge of many records never travels through the client.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from contracts.base import DatasetRef
from services.runtime.db import Connection

__all__ = ["ManifestChange", "PurgeStore"]

ManifestChange = tuple[str, int, int]
"""(dataset version key, record_count before, after)."""

_CATEGORY_MATCH = """(cardinality($CATS::text[]) = 0 OR EXISTS (
    SELECT 1 FROM unnest($CATS::text[]) AS c(category)
    WHERE r.category = c.category OR starts_with(r.category, c.category || '.')))"""


def _categories(param: int) -> str:
    return _CATEGORY_MATCH.replace("$CATS", f"${param}")


class PurgeStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.table = f"purge_{uuid.uuid4().hex}"

    async def _create(self) -> None:
        await self._conn.execute(
            f"CREATE TEMP TABLE {self.table} (record_pk bigint PRIMARY KEY, subject_id text"
            ' COLLATE "C" NOT NULL) ON COMMIT DROP'
        )

    async def select_subjects(self, subjects: Sequence[str], categories: Sequence[str]) -> int:
        """The subjects' records (of the categories and below, when any are given)."""
        await self._create()
        result = await self._conn.execute(
            f"""
            INSERT INTO {self.table} (record_pk, subject_id)
            SELECT r.record_pk, r.subject_id FROM records r
            WHERE r.subject_id = ANY($1::text[]) AND {_categories(2)}
            """,
            sorted(set(subjects)),
            sorted(set(categories)),
        )
        return _count(result)

    async def select_categories(
        self,
        categories: Sequence[str],
        jurisdictions: Sequence[str],
        collected_from: datetime | None,
        collected_until: datetime | None,
    ) -> int:
        """Records of the categories (and below), of the jurisdictions when given, collected
        in ``[collected_from, collected_until)`` when given. A scan of ``records``."""
        await self._create()
        result = await self._conn.execute(
            f"""
            INSERT INTO {self.table} (record_pk, subject_id)
            SELECT r.record_pk, r.subject_id FROM records r
            WHERE {_categories(1)}
              AND (cardinality($2::text[]) = 0 OR r.jurisdiction = ANY($2::text[]))
              AND ($3::timestamptz IS NULL OR r.collected_at >= $3)
              AND ($4::timestamptz IS NULL OR r.collected_at < $4)
            """,
            sorted(set(categories)),
            sorted(set(jurisdictions)),
            collected_from,
            collected_until,
        )
        return _count(result)

    async def version_ids(self, datasets: Sequence[DatasetRef]) -> list[int]:
        """The sealed versions among ``datasets``."""
        rows = await self._conn.fetch(
            """
            SELECT dv.dataset_version_id FROM dataset_versions dv
            JOIN unnest($1::text[], $2::text[], $3::text[]) AS d(namespace, name, version)
              ON (dv.namespace, dv.name, dv.version) = (d.namespace, d.name, d.version)
            WHERE dv.sealed_at IS NOT NULL
            ORDER BY dv.dataset_version_id
            """,
            [d.namespace for d in datasets],
            [d.name for d in datasets],
            [d.version for d in datasets],
        )
        return [int(r[0]) for r in rows]

    async def select_members(self, version_ids: Sequence[int]) -> int:
        """The records the versions hold."""
        await self._create()
        result = await self._conn.execute(
            f"""
            INSERT INTO {self.table} (record_pk, subject_id)
            SELECT DISTINCT r.record_pk, r.subject_id
            FROM memberships m JOIN records r ON r.record_pk = m.record_pk
            WHERE m.dataset_version_id = ANY($1::bigint[])
            """,
            list(version_ids),
        )
        return _count(result)

    async def touched(self) -> dict[int, int]:
        """Per version holding selected records: how many of them it holds."""
        rows = await self._conn.fetch(
            f"SELECT m.dataset_version_id, count(*) FROM {self.table} p"
            " JOIN memberships m ON m.record_pk = p.record_pk GROUP BY m.dataset_version_id"
        )
        return {int(r[0]): int(r[1]) for r in rows}

    async def member_counts(self, version_ids: Sequence[int]) -> dict[int, int]:
        """Per version: the memberships it has."""
        rows = await self._conn.fetch(
            "SELECT dataset_version_id, count(*) FROM memberships"
            " WHERE dataset_version_id = ANY($1::bigint[]) GROUP BY dataset_version_id",
            list(version_ids),
        )
        return {int(r[0]): int(r[1]) for r in rows}

    async def subjects(self) -> list[str]:
        rows = await self._conn.fetch(f"SELECT DISTINCT subject_id FROM {self.table}")
        return sorted(r[0] for r in rows)

    async def delete_memberships_of_selected(self) -> int:
        return _count(
            await self._conn.execute(
                f"DELETE FROM memberships m USING {self.table} p WHERE m.record_pk = p.record_pk"
            )
        )

    async def delete_memberships_of_versions(self, version_ids: Sequence[int]) -> int:
        return _count(
            await self._conn.execute(
                "DELETE FROM memberships WHERE dataset_version_id = ANY($1::bigint[])",
                list(version_ids),
            )
        )

    async def delete_selected_records(self, *, only_orphans: bool) -> int:
        """Delete the selected records (with ``only_orphans``: those no version holds now)."""
        orphans = (
            " AND NOT EXISTS (SELECT 1 FROM memberships m WHERE m.record_pk = r.record_pk)"
            if only_orphans
            else ""
        )
        return _count(
            await self._conn.execute(
                f"DELETE FROM records r USING {self.table} p"
                f" WHERE r.record_pk = p.record_pk{orphans}"
            )
        )

    async def rebuild_manifests(self, removed: dict[int, int]) -> list[ManifestChange]:
        """Each version's ``record_count`` minus the memberships it lost."""
        if not removed:
            return []
        ids = sorted(removed)
        rows = await self._conn.fetch(
            """
            UPDATE dataset_versions dv SET record_count = dv.record_count - d.removed
            FROM unnest($1::bigint[], $2::bigint[]) AS d(id, removed)
            WHERE dv.dataset_version_id = d.id
            RETURNING dv.namespace, dv.name, dv.version, dv.record_count + d.removed AS before,
                      dv.record_count AS after
            """,
            ids,
            [removed[i] for i in ids],
        )
        return sorted((_key(r), int(r["before"]), int(r["after"])) for r in rows)


def _key(row: Any) -> str:
    return DatasetRef(namespace=row["namespace"], name=row["name"], version=row["version"]).key


def _count(status: str) -> int:
    """Rows affected, from a command status (``INSERT 0 12``, ``DELETE 3``)."""
    return int(status.rsplit(" ", 1)[-1])
