"""Consent storage: raw SQL on asyncpg; SQL lives only in this module."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from contracts.events import ConsentEvent
from contracts.policy import PolicyDocument
from services.runtime.db import Connection
from services.runtime.outbox import OutboxMessage, and_publish, message_values

__all__ = ["ConsentRepository", "StoredBatch"]

_COLUMNS = """consent_event_id, subject_id, jurisdiction, purpose, data_categories, state,
    mechanism, policy_version, effective_at, recorded_at, source_system, evidence,
    erasure_requested"""


_APPEND = f"""
INSERT INTO consent_events ({_COLUMNS}, trace_id)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
ON CONFLICT (consent_event_id) DO NOTHING
RETURNING true
"""
_APPEND_AND_PUBLISH = and_publish(_APPEND, 14)


def _append_values(event: ConsentEvent, trace_id: str | None) -> tuple[Any, ...]:
    return (
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


@dataclass(frozen=True, slots=True)
class StoredBatch:
    idempotency_key: str
    request_digest: str
    event_ids: tuple[UUID, ...]
    recorded_at: datetime


class ConsentRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    # --- the ledger (append-only) --------------------------------------------------------

    async def append(self, event: ConsentEvent, trace_id: str | None) -> bool:
        """Append the fact; False when an event with this id is already in the ledger."""
        inserted = await self._conn.fetchval(_APPEND, *_append_values(event, trace_id))
        return bool(inserted)

    async def append_and_publish(
        self, event: ConsentEvent, trace_id: str | None, message: OutboxMessage
    ) -> bool:
        """Append the fact and queue its message in one statement, outside any transaction
        block (``outbox.and_publish``); False, and nothing written, when an event with this
        id is already in the ledger."""
        inserted = await self._conn.fetchval(
            _APPEND_AND_PUBLISH, *_append_values(event, trace_id), *message_values(message)
        )
        return bool(inserted)

    async def append_many(self, events: Sequence[ConsentEvent], trace_id: str | None) -> set[UUID]:
        """Append the facts in one statement; returns the ids that were new to the ledger."""
        if not events:
            return set()
        rows = await self._conn.fetch(
            f"""
            INSERT INTO consent_events ({_COLUMNS}, trace_id)
            SELECT id, subject, jurisdiction, purpose,
                   ARRAY(SELECT jsonb_array_elements_text(categories::jsonb)), state, mechanism,
                   policy_version, effective_at, recorded_at, source_system, evidence::jsonb,
                   erasure, $14
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                        $7::text[], $8::text[], $9::timestamptz[], $10::timestamptz[],
                        $11::text[], $12::text[], $13::boolean[])
                 AS t(id, subject, jurisdiction, purpose, categories, state, mechanism,
                      policy_version, effective_at, recorded_at, source_system, evidence, erasure)
            ON CONFLICT (consent_event_id) DO NOTHING
            RETURNING consent_event_id
            """,
            [e.consent_event_id for e in events],
            [e.subject_id for e in events],
            [e.jurisdiction for e in events],
            [e.purpose for e in events],
            [json.dumps(e.data_categories) for e in events],
            [e.state.value for e in events],
            [e.mechanism.value for e in events],
            [e.policy_version for e in events],
            [e.effective_at for e in events],
            [e.recorded_at for e in events],
            [e.source_system for e in events],
            [e.evidence.model_dump_json() for e in events],
            [e.erasure_requested for e in events],
            trace_id,
        )
        return {r["consent_event_id"] for r in rows}

    async def get(self, consent_event_id: UUID) -> ConsentEvent | None:
        row = await self._conn.fetchrow(
            f"SELECT {_COLUMNS} FROM consent_events WHERE consent_event_id = $1", consent_event_id
        )
        return _event(row) if row else None

    async def get_many(self, ids: Sequence[UUID]) -> list[ConsentEvent]:
        """The events with these ids that exist, in the order of ``ids``."""
        rows = await self._conn.fetch(
            f"SELECT {_COLUMNS} FROM consent_events WHERE consent_event_id = ANY($1::uuid[])",
            list(ids),
        )
        by_id = {r["consent_event_id"]: _event(r) for r in rows}
        return [by_id[i] for i in ids if i in by_id]

    async def history(
        self, subject_id: str, *, known_at: datetime | None = None
    ) -> list[ConsentEvent]:
        """The subject's events recorded by ``known_at`` (all when None), in valid-time order."""
        rows = await self._conn.fetch(
            f"SELECT {_COLUMNS} FROM consent_events"
            " WHERE subject_id = $1 AND ($2::timestamptz IS NULL OR recorded_at <= $2)"
            " ORDER BY effective_at, recorded_at, consent_event_id",
            subject_id,
            known_at,
        )
        return [_event(r) for r in rows]

    async def count_events(self) -> int:
        return int(await self._conn.fetchval("SELECT count(*) FROM consent_events"))

    # --- idempotent batches -------------------------------------------------------------

    async def add_batch(self, batch: StoredBatch, trace_id: str | None) -> bool:
        """Claim the batch's key; False when it was already used (the caller then compares).

        A concurrent request with the same key waits here until this transaction ends.
        """
        inserted = await self._conn.fetchval(
            "INSERT INTO consent_batches"
            " (idempotency_key, request_digest, event_ids, recorded_at, trace_id)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (idempotency_key) DO NOTHING"
            " RETURNING true",
            batch.idempotency_key,
            batch.request_digest,
            list(batch.event_ids),
            batch.recorded_at,
            trace_id,
        )
        return bool(inserted)

    async def batch(self, idempotency_key: str) -> StoredBatch | None:
        row = await self._conn.fetchrow(
            "SELECT idempotency_key, request_digest, event_ids, recorded_at"
            " FROM consent_batches WHERE idempotency_key = $1",
            idempotency_key,
        )
        if row is None:
            return None
        return StoredBatch(
            row["idempotency_key"],
            row["request_digest"],
            tuple(row["event_ids"]),
            row["recorded_at"],
        )

    # --- policy versions ----------------------------------------------------------------

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
        return [policy for policy, _ in await self.policy_versions()]

    async def policy_versions(self) -> list[tuple[PolicyDocument, datetime]]:
        """Every stored policy version with the time it was published."""
        rows = await self._conn.fetch(
            "SELECT document, published_at FROM policy_versions"
            " ORDER BY policy_id, valid_from, published_at"
        )
        return [(PolicyDocument.model_validate(r["document"]), r["published_at"]) for r in rows]


def _event(row: Any) -> ConsentEvent:
    return ConsentEvent.model_validate(dict(row))
