"""Lookups for eligibility questions about registered records: SQL only.

Consent histories and policy versions come from ``RegistryRepository`` (the projections);
this module finds a record, a sealed dataset version, and whether the one holds the other.
Every lookup is one primary-key or unique-index probe.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from contracts.base import DatasetRef
from services.runtime.db import Connection

__all__ = ["EligibilityRepository", "RegisteredRecord", "SealedUse"]


@dataclass(frozen=True, slots=True)
class RegisteredRecord:
    record_pk: int
    source_system: str
    record_id: str
    subject_id: str
    category: str
    jurisdiction: str
    collected_at: datetime


@dataclass(frozen=True, slots=True)
class SealedUse:
    """A sealed dataset version: what its records were used for, and when."""

    dataset_version_id: int
    dataset: DatasetRef
    purpose: str
    used_at: datetime
    sealed_at: datetime


class EligibilityRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def record(self, source_system: str, record_id: str) -> RegisteredRecord | None:
        """A registered record by its key (the unique index on it)."""
        row = await self._conn.fetchrow(
            """
            SELECT record_pk, source_system, record_id, subject_id, category, jurisdiction,
                   collected_at
            FROM records WHERE source_system = $1 AND record_id = $2
            """,
            source_system,
            record_id,
        )
        return RegisteredRecord(**dict(row)) if row is not None else None

    async def sealed_version(self, dataset: DatasetRef) -> SealedUse | None:
        """A sealed dataset version by name (an open upload is not one)."""
        row = await self._conn.fetchrow(
            """
            SELECT dataset_version_id, purpose, used_at, sealed_at FROM dataset_versions
            WHERE namespace = $1 AND name = $2 AND version = $3 AND sealed_at IS NOT NULL
            """,
            dataset.namespace,
            dataset.name,
            dataset.version,
        )
        if row is None:
            return None
        return SealedUse(
            dataset_version_id=row["dataset_version_id"],
            dataset=dataset,
            purpose=row["purpose"],
            used_at=row["used_at"],
            sealed_at=row["sealed_at"],
        )

    async def holds(self, dataset_version_id: int, record_pk: int) -> bool:
        """Whether the version holds the record (the memberships primary key, index-only)."""
        return bool(
            await self._conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM memberships"
                " WHERE record_pk = $1 AND dataset_version_id = $2)",
                record_pk,
                dataset_version_id,
            )
        )
