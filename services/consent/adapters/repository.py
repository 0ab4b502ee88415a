"""Consent storage: raw SQL on asyncpg; SQL lives only in this module."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any
from uuid import UUID

from contracts.events import ConsentEvent, PolicyDocument
from services.runtime.db import Connection

__all__ = ["ConsentRepository"]


class ConsentRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def append(self, event: ConsentEvent, trace_id: str | None) -> bool:
        """Append the fact; False when an event with this id is already in the ledger."""
        inserted = await self._conn.fetchval(
            """
            INSERT INTO consent_events (
                consent_event_id, subject_id, jurisdiction, purpose, data_categories, state,
                mechanism, policy_version, effective_at, recorded_at, source_system, evidence,
                erasure_requested, trace_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
            ON CONFLICT (consent_event_id) DO NOTHING
            RETURNING true
            """,
            event.consent_event_id,
            event.subject_id,
            event.jurisdiction,
            event.purpose,
            list(event.data_categories),
            event.state.value,
            event.mechanism.value,
            event.policy_version,
            event.effective_at,
            event.recorded_at,
            event.source_system,
            event.evidence.model_dump(mode="json"),
            event.erasure_requested,
            trace_id,
        )
        return bool(inserted)

    async def get(self, consent_event_id: UUID) -> ConsentEvent | None:
        row = await self._conn.fetchrow(
            "SELECT * FROM consent_events WHERE consent_event_id = $1", consent_event_id
        )
        return _event(row) if row else None

    async def history(self, subject_id: str) -> list[ConsentEvent]:
        rows = await self._conn.fetch(
            "SELECT * FROM consent_events WHERE subject_id = $1"
            " ORDER BY effective_at, recorded_at, consent_event_id",
            subject_id,
        )
        return [_event(r) for r in rows]

    async def add_policy(self, policy: PolicyDocument, published_at: datetime) -> bool:
        inserted = await self._conn.fetchval(
            "INSERT INTO policy_versions (policy_id, version, valid_from, published_at, document)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true",
            policy.policy_id,
            policy.version,
            policy.valid_from,
            published_at,
            json.loads(policy.model_dump_json()),
        )
        return bool(inserted)

    async def policies(self) -> list[PolicyDocument]:
        rows = await self._conn.fetch(
            "SELECT document FROM policy_versions ORDER BY policy_id, valid_from, published_at"
        )
        return [PolicyDocument.model_validate(r["document"]) for r in rows]


def _event(row: Any) -> ConsentEvent:
    data = dict(row)
    data.pop("trace_id", None)
    return ConsentEvent.model_validate(data)
