"""A single consent change is recorded in one statement (``record_new_consent``): the
ledger row, its outbox row and the relay's NOTIFY, all or nothing, on real Postgres."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import asyncpg
import pytest

from contracts.events import ConsentEvidence, ConsentMechanism, ConsentState
from services.consent.domain.model import ConsentChange
from services.consent.service.handlers import record_new_consent
from services.runtime.db import connect_pool
from services.runtime.outbox import NOTIFY_CHANNEL
from services.runtime.settings import ServiceSettings
from services.runtime.testing import migrate_service

pytestmark = pytest.mark.integration

SOURCE = "/consenttrace/consent"
NOW = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)


def change(subject: str) -> ConsentChange:
    return ConsentChange(
        subject_id=subject,
        jurisdiction="EU-IE",
        purpose="ai.training",
        data_categories=("user.content.public",),
        state=ConsentState.WITHDRAWN,
        mechanism=ConsentMechanism.OPT_OUT,
        policy_version="it:1",
        effective_at=NOW,
        source_system="settings",
        evidence=ConsentEvidence(collection_point="settings/ai", channel="web"),
    )


@pytest.fixture
async def pool(make_database: Callable[[str], str]) -> AsyncIterator[asyncpg.Pool]:
    database = make_database("consent_single")
    migrate_service("consent", database)
    pool = await connect_pool(ServiceSettings(database_url=database))
    yield pool
    await pool.close()


async def counts(pool: asyncpg.Pool) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM consent_events), (SELECT count(*) FROM outbox)"
    )
    assert row is not None
    return row[0], row[1]


async def test_the_fact_its_message_and_the_notify_go_together(pool: asyncpg.Pool) -> None:
    notified = asyncio.Event()

    def on_notify(*_: object) -> None:
        notified.set()

    async with pool.acquire() as listener:
        await listener.add_listener(NOTIFY_CHANNEL, on_notify)
        async with pool.acquire() as conn:
            recorded = await record_new_consent(
                conn, change("s-1"), now=NOW, idempotency_key="k-1", source=SOURCE
            )
            assert not conn.is_in_transaction()  # committed: nothing left open
        await asyncio.wait_for(notified.wait(), 5)
        await listener.remove_listener(NOTIFY_CHANNEL, on_notify)
    assert recorded is not None and recorded.created
    event = recorded.event
    row = await pool.fetchrow("SELECT topic, key, value, header_names FROM outbox")
    assert row is not None
    assert (row["topic"], row["key"]) == ("consent.events.v1", b"s-1")
    assert json.loads(row["value"])["consent_event_id"] == str(event.consent_event_id)
    assert "ce_id" in row["header_names"]
    stored = await pool.fetchval(
        "SELECT state FROM consent_events WHERE consent_event_id = $1", event.consent_event_id
    )
    assert stored == "withdrawn"


async def test_a_retry_writes_nothing_and_is_left_to_the_comparing_path(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        first = await record_new_consent(
            conn, change("s-2"), now=NOW, idempotency_key="k-2", source=SOURCE
        )
        again = await record_new_consent(
            conn, change("s-2"), now=NOW, idempotency_key="k-2", source=SOURCE
        )
    assert first is not None and again is None
    assert await counts(pool) == (1, 1)


async def test_when_the_message_cannot_be_queued_the_fact_is_not_recorded(
    pool: asyncpg.Pool,
) -> None:
    await pool.execute(
        """
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
            $$ BEGIN RAISE EXCEPTION 'outbox refused'; END $$;
        CREATE TRIGGER refuse BEFORE INSERT ON outbox FOR EACH ROW EXECUTE FUNCTION refuse();
        """
    )
    async with pool.acquire() as conn:
        with pytest.raises(asyncpg.RaiseError, match="outbox refused"):
            await record_new_consent(
                conn, change("s-3"), now=NOW, idempotency_key=None, source=SOURCE
            )
    assert await counts(pool) == (0, 0)
