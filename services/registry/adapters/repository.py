"""Registry storage: raw SQL on asyncpg; SQL lives only in this module."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from contracts.base import DatasetRef
from contracts.events import ConsentEvent, DatasetFinding
from contracts.policy import PolicyDocument
from services.registry.domain.findings import UsedRecords
from services.runtime.db import Connection

__all__ = ["RegistryRepository"]


class RegistryRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def used_records_of(self, subject_id: str) -> list[UsedRecords]:
        """A subject's records per sealed dataset version and category (index lookup)."""
        rows = await self._conn.fetch(
            """
            SELECT dv.namespace, dv.name, dv.version, dv.purpose, dv.used_at,
                   r.jurisdiction, r.category, array_agg(r.record_id ORDER BY r.record_id) AS ids
            FROM records r
            JOIN memberships m USING (record_pk)
            JOIN dataset_versions dv USING (dataset_version_id)
            WHERE r.subject_id = $1 AND dv.sealed_at IS NOT NULL
            GROUP BY dv.namespace, dv.name, dv.version, dv.purpose, dv.used_at,
                     r.jurisdiction, r.category
            """,
            subject_id,
        )
        return [
            UsedRecords(
                dataset=DatasetRef(namespace=r["namespace"], name=r["name"], version=r["version"]),
                purpose=r["purpose"],
                used_at=r["used_at"],
                jurisdiction=r["jurisdiction"],
                category=r["category"],
                record_ids=tuple(r["ids"]),
            )
            for r in rows
        ]

    async def save_policy(self, policy: PolicyDocument, published_at: datetime) -> None:
        await self._conn.execute(
            "INSERT INTO policy_versions (policy_id, version, valid_from, published_at, document)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            policy.policy_id,
            policy.version,
            policy.valid_from,
            published_at,
            json.loads(policy.model_dump_json()),
        )

    async def policies(self) -> list[tuple[PolicyDocument, datetime]]:
        rows = await self._conn.fetch("SELECT document, published_at FROM policy_versions")
        return [(PolicyDocument.model_validate(r["document"]), r["published_at"]) for r in rows]

    async def save_consent(self, event: ConsentEvent) -> None:
        await self._conn.execute(
            """
            INSERT INTO consent_projection (consent_event_id, subject_id, purpose,
                data_categories, state, effective_at, recorded_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING
            """,
            event.consent_event_id,
            event.subject_id,
            event.purpose,
            list(event.data_categories),
            event.state.value,
            event.effective_at,
            event.recorded_at,
        )

    async def save_findings(
        self, findings: Sequence[DatasetFinding], trace_id: str | None
    ) -> list[DatasetFinding]:
        """Store findings; returns those that are new (a known finding id changes nothing)."""
        new = []
        for f in findings:
            inserted = await self._conn.fetchval(
                """
                INSERT INTO findings (finding_id, namespace, name, version, status, severity,
                                      reason, body, trace_id)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                ON CONFLICT (finding_id) DO NOTHING RETURNING true
                """,
                f.finding_id,
                f.dataset.namespace,
                f.dataset.name,
                f.dataset.version,
                f.status.value,
                f.severity.value,
                f.reason.value,
                json.loads(f.model_dump_json()),
                trace_id,
            )
            if inserted:
                new.append(f)
        return new

    async def findings(self, dataset: DatasetRef | None = None) -> list[dict[str, Any]]:
        rows = await self._conn.fetch(
            """
            SELECT body, trace_id FROM findings
            WHERE $1::text IS NULL OR (namespace = $1 AND name = $2 AND version = $3)
            ORDER BY recorded_at, finding_id
            """,
            dataset.namespace if dataset else None,
            dataset.name if dataset else None,
            dataset.version if dataset else None,
        )
        return [{"finding": r["body"], "trace_id": r["trace_id"]} for r in rows]
