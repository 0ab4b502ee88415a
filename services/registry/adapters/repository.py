"""Registry storage: raw SQL on asyncpg; SQL lives only in this module."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime

from contracts.events import ConsentEvent
from contracts.policy import PolicyDocument
from services.runtime.db import Connection

__all__ = ["RegistryRepository"]


class RegistryRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def save_policy(self, policy: PolicyDocument, published_at: datetime) -> bool:
        """Project one policy version; False when it was already known."""
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

    async def policies(self) -> list[tuple[PolicyDocument, datetime]]:
        rows = await self._conn.fetch("SELECT document, published_at FROM policy_versions")
        return [(PolicyDocument.model_validate(r["document"]), r["published_at"]) for r in rows]

    async def save_consent(self, event: ConsentEvent) -> bool:
        """Project one consent event; False when it was already projected."""
        inserted = await self._conn.fetchval(
            """
            INSERT INTO consent_projection (consent_event_id, subject_id, purpose,
                data_categories, state, effective_at, recorded_at, event)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING RETURNING true
            """,
            event.consent_event_id,
            event.subject_id,
            event.purpose,
            list(event.data_categories),
            event.state.value,
            event.effective_at,
            event.recorded_at,
            event.model_dump(mode="json"),
        )
        return bool(inserted)

    async def save_consents(
        self, events: Sequence[ConsentEvent], as_consumed: Sequence[bytes | None] = ()
    ) -> list[ConsentEvent]:
        """Project many consent events in one statement; returns those new to the projection,
        each once, in order.

        ``as_consumed``: each event's JSON as it came off the topic, ``events`` having been
        validated from it. It is stored as is (``histories`` validates it again on every
        read) instead of serializing each event again, which cost 3 µs of the ~60 µs the
        registry spends on a consent event. Where absent, the event is serialized."""
        if not events:
            return []
        bodies = [
            raw.decode() if raw is not None else e.model_dump_json()
            for e, raw in zip(events, as_consumed or [None] * len(events), strict=True)
        ]
        rows = await self._conn.fetch(
            """
            INSERT INTO consent_projection (consent_event_id, subject_id, purpose,
                data_categories, state, effective_at, recorded_at, event)
            SELECT e.id, e.subject_id, e.purpose, string_to_array(e.categories, ' '),
                   e.state, e.effective_at, e.recorded_at, e.body::json
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                        $6::timestamptz[], $7::timestamptz[], $8::text[])
                 AS e(id, subject_id, purpose, categories, state, effective_at, recorded_at,
                      body)
            ON CONFLICT DO NOTHING RETURNING consent_event_id
            """,
            [e.consent_event_id for e in events],
            [e.subject_id for e in events],
            [e.purpose for e in events],
            # One text per event (a category path holds no space): an array of arrays of
            # different lengths is no Postgres array, and reading them out of each event's
            # JSON took a subquery per row.
            [" ".join(e.data_categories) for e in events],
            [e.state.value for e in events],
            [e.effective_at for e in events],
            [e.recorded_at for e in events],
            bodies,
        )
        new = {row["consent_event_id"] for row in rows}
        fresh = []
        for e in events:  # an event twice in the batch (two deliveries): once
            if e.consent_event_id in new:
                new.discard(e.consent_event_id)
                fresh.append(e)
        return fresh

    async def policies_fingerprint(self) -> tuple[int, object]:
        """Changes whenever a policy version is added: the key of a cached ``PolicyBook``."""
        row = await self._conn.fetchrow("SELECT count(*), max(published_at) FROM policy_versions")
        assert row is not None
        return (int(row[0]), row[1])

    async def histories(self, subject_ids: Sequence[str]) -> dict[str, list[ConsentEvent]]:
        """Every projected consent event of each subject (index lookup), oldest first.

        Subjects without events are absent from the result.
        """
        rows = await self._conn.fetch(
            """
            SELECT subject_id, event::text AS event FROM consent_projection
            WHERE subject_id = ANY($1::text[])
            ORDER BY subject_id, effective_at, recorded_at, consent_event_id
            """,
            list(subject_ids),
        )
        result: dict[str, list[ConsentEvent]] = {}
        for row in rows:
            result.setdefault(row["subject_id"], []).append(
                ConsentEvent.model_validate_json(row["event"])
            )
        return result
