"""The unit of work: one transaction holding the state change, its inbox entry and outbox rows."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import asyncpg
from pydantic import BaseModel

from contracts.topics import Topic
from services.runtime.db import Connection
from services.runtime.messages import encode_event
from services.runtime.outbox import OutboxMessage, enqueue
from services.runtime.telemetry import current_trace_id

__all__ = ["UnitOfWork", "unit_of_work"]


class UnitOfWork:
    """Collects events while a handler runs; ``unit_of_work`` writes them at commit."""

    def __init__(self, connection: Connection, source: str) -> None:
        self.connection = connection
        self.source = source
        self._outbox: list[OutboxMessage] = []

    def publish(
        self, topic: Topic, body: BaseModel, *, key: str, event_id: str | None = None
    ) -> None:
        """Publish ``body`` on ``topic`` if, and only if, this unit of work commits."""
        self._outbox.append(
            encode_event(topic, body, key=key, source=self.source, event_id=event_id)
        )

    def publish_raw(self, message: OutboxMessage) -> None:
        self._outbox.append(message)

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A nested transaction: on error, its rows and its outgoing events are undone."""
        mark = len(self._outbox)
        try:
            async with self.connection.transaction():
                yield
        except BaseException:
            del self._outbox[mark:]
            raise

    async def record_inbox(self, event_id: str, topic: str) -> bool:
        """Record a consumed event id; False when it was already processed (a duplicate)."""
        inserted = await self.connection.fetchval(
            "INSERT INTO inbox (event_id, topic, trace_id) VALUES ($1, $2, $3)"
            " ON CONFLICT (event_id) DO NOTHING RETURNING true",
            event_id,
            topic,
            current_trace_id(),
        )
        return bool(inserted)

    async def record_inbox_many(self, event_ids: Sequence[str], topic: str) -> set[str]:
        """Record consumed event ids at once; returns those not processed before."""
        if not event_ids:
            return set()
        rows = await self.connection.fetch(
            "INSERT INTO inbox (event_id, topic, trace_id)"
            " SELECT unnest($1::text[]), $2, $3"
            " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
            list(event_ids),
            topic,
            current_trace_id(),
        )
        return {row["event_id"] for row in rows}

    async def _flush(self) -> None:
        await enqueue(self.connection, self._outbox)
        self._outbox.clear()


@asynccontextmanager
async def unit_of_work(pool: asyncpg.Pool, source: str) -> AsyncIterator[UnitOfWork]:
    """Commit state + inbox + outbox together, or nothing at all."""
    async with pool.acquire() as conn, conn.transaction():
        uow = UnitOfWork(conn, source)
        yield uow
        await uow._flush()
