"""The registry's consent projection on real Postgres: the batch statement and the one-event
statement store the same rows, each event once, and give the events back unchanged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from uuid import uuid4

import asyncpg

from contracts.events import ConsentEvent, ConsentEvidence, ConsentMechanism, ConsentState
from services.registry.adapters.repository import RegistryRepository

T0 = datetime(2025, 3, 1, tzinfo=UTC)


def consent(subject: str, n: int, categories: tuple[str, ...]) -> ConsentEvent:
    return ConsentEvent(
        consent_event_id=uuid4(),
        subject_id=subject,
        jurisdiction="DE",
        purpose="ai.training.generative",
        data_categories=categories,
        state=ConsentState.WITHDRAWN if n % 2 else ConsentState.GRANTED,
        mechanism=ConsentMechanism.OPT_OUT,
        policy_version="1",
        effective_at=T0 + timedelta(days=n),
        recorded_at=T0 + timedelta(days=n, hours=1),
        source_system="test",
        evidence=ConsentEvidence(collection_point="settings", channel="web"),
    )


ROW = (
    "SELECT subject_id, purpose, data_categories, state, effective_at, recorded_at,"
    " event::text AS event FROM consent_projection WHERE consent_event_id = $1"
)


async def test_batch_and_single_projection_store_the_same_rows_once(
    registry_conn: asyncpg.Connection,
) -> None:
    conn = registry_conn
    repo = RegistryRepository(conn)
    categories = [
        ("user.content",),
        ("user.content.private", "user.content.public", "user.contact.email"),
    ]
    events = [consent(f"s{n % 3}", n, categories[n % 2]) for n in range(6)]
    seen_before = events[0]
    assert await repo.save_consent(seen_before)

    new = await repo.save_consents([*events, events[3]])  # one seen, one twice in the batch

    assert [e.consent_event_id for e in new] == [e.consent_event_id for e in events[1:]]
    assert await repo.save_consents(events) == []
    assert not await repo.save_consent(events[2])
    assert await conn.fetchval("SELECT count(*) FROM consent_projection") == len(events)
    single = await conn.fetchrow(ROW, seen_before.consent_event_id)
    for event in events:
        row = await conn.fetchrow(ROW, event.consent_event_id)
        assert row is not None and single is not None
        assert (row["subject_id"], row["purpose"], row["state"]) == (
            event.subject_id,
            event.purpose,
            event.state.value,
        )
        assert tuple(row["data_categories"]) == event.data_categories
        assert (row["effective_at"], row["recorded_at"]) == (event.effective_at, event.recorded_at)
        assert ConsentEvent.model_validate_json(row["event"]) == event
    histories = await repo.histories(["s0", "s1", "s2"])
    assert {s: [e.consent_event_id for e in h] for s, h in histories.items()} == {
        s: [e.consent_event_id for e in events if e.subject_id == s] for s in ("s0", "s1", "s2")
    }
    assert [e for h in histories.values() for e in h] == sorted(
        events, key=lambda e: (e.subject_id, e.effective_at)
    )


async def test_the_json_as_consumed_is_stored_as_is_and_reads_back_as_the_same_event(
    registry_conn: asyncpg.Connection,
) -> None:
    """A producer's JSON need not be ours: other key order, spacing, escapes, offsets and
    optional fields left out. The projection keeps its bytes, and reads them back as the
    event the consumer validated."""
    repo = RegistryRepository(registry_conn)
    theirs = [consent("s-raw", n, ("user.content",)) for n in range(2)]
    raw = [
        (
            '{ "evidence": {"collection_point": "settings \\u00e9\\ud83d\\ude00"},\n'
            f'  "subject_id": "s-raw", "consent_event_id": "{e.consent_event_id}",'
            f' "jurisdiction": "DE", "purpose": "{e.purpose}", "data_categories":'
            f' ["user.content"], "state": "{e.state.value}", "mechanism": "opt_out",'
            ' "policy_version": "1", "effective_at": "'
            + e.effective_at.astimezone(timezone(timedelta(hours=2))).isoformat()
            + f'", "recorded_at": "{e.recorded_at.isoformat()}", "source_system": "test" }}'
        ).encode()
        for e in theirs
    ]
    consumed = [ConsentEvent.model_validate_json(r) for r in raw]
    assert consumed[0].evidence.collection_point == "settings \u00e9\U0001f600"

    assert await repo.save_consents(consumed, raw) == consumed
    for event, body in zip(consumed, raw, strict=True):
        row = await registry_conn.fetchrow(ROW, event.consent_event_id)
        assert row is not None
        assert row["event"] == body.decode()
        assert row["effective_at"] == event.effective_at
    assert (await repo.histories(["s-raw"]))["s-raw"] == consumed
