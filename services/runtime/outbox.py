"""Transactional outbox: rows written with the state change, relayed to Kafka after commit.

Rows are claimed with ``FOR UPDATE SKIP LOCKED`` so several relays (replicas) can run.
A row is only published when every older unpublished row with the same key is in the
same claim, which keeps per-key order across relays; the relay wakes on
``LISTEN/NOTIFY`` and polls as a fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
from aiokafka import AIOKafkaProducer

from services.runtime import metrics
from services.runtime.backoff import backoff_delays
from services.runtime.db import Connection
from services.runtime.settings import ServiceSettings

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

__all__ = ["NOTIFY_CHANNEL", "OutboxMessage", "OutboxRelay", "enqueue"]

log = logging.getLogger(__name__)
NOTIFY_CHANNEL = "consenttrace_outbox"


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A Kafka record waiting to be published: raw bytes, so dead letters keep theirs."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = field(default=())


async def enqueue(conn: Connection, messages: Sequence[OutboxMessage]) -> None:
    """Write messages in the caller's transaction; the NOTIFY is delivered at commit."""
    if not messages:
        return
    await conn.executemany(
        "INSERT INTO outbox (topic, key, value, header_names, header_values)"
        " VALUES ($1, $2, $3, $4, $5)",
        [
            (m.topic, m.key, m.value, [h[0] for h in m.headers], [h[1] for h in m.headers])
            for m in messages
        ],
    )
    await conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")


_CLAIM = """
WITH claimed AS (
    SELECT id, topic, key, value, header_names, header_values
    FROM outbox
    WHERE published_at IS NULL
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
SELECT c.* FROM claimed c
WHERE NOT EXISTS (
    SELECT 1 FROM outbox o
    WHERE o.published_at IS NULL
      AND o.key IS NOT DISTINCT FROM c.key AND o.topic = c.topic
      AND o.id < c.id
      AND o.id NOT IN (SELECT id FROM claimed)
)
ORDER BY c.id
"""


class OutboxRelay:
    """Publishes committed outbox rows in id order, then marks them published."""

    def __init__(
        self, pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: ServiceSettings
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._settings = settings
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._listener: PoolConnectionProxy[Any] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close_listener()

    def wake(self) -> None:
        self._wake.set()

    async def relay_once(self) -> int:
        """Publish one claimed batch; returns how many rows went out."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM, self._settings.outbox_batch_size)
            if not rows:
                return 0
            futures = [
                await self._producer.send(
                    row["topic"],
                    value=row["value"],
                    key=row["key"],
                    headers=list(zip(row["header_names"], row["header_values"], strict=True)),
                )
                for row in rows
            ]
            await asyncio.gather(*futures)
            await conn.execute(
                "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])",
                [row["id"] for row in rows],
            )
        for row in rows:
            metrics.OUTBOX_PUBLISHED.labels(row["topic"]).inc()
        return len(rows)

    async def purge_published(self) -> int:
        result: str = await self._pool.execute(
            "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)",
            self._settings.outbox_retention_s,
        )
        return int(result.split()[-1])

    async def _run(self) -> None:
        delays = backoff_delays(
            self._settings.retry_initial_backoff_s, self._settings.retry_max_backoff_s
        )
        last_purge = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._ensure_listener()
                self._wake.clear()  # before draining: a NOTIFY from now on wakes the next round
                while await self.relay_once():
                    pass
                if loop.time() - last_purge > 60:
                    await self.purge_published()
                    last_purge = loop.time()
                delays = backoff_delays(
                    self._settings.retry_initial_backoff_s, self._settings.retry_max_backoff_s
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = next(delays)
                log.warning("outbox relay failed (%r); retrying in %.2fs", exc, delay)
                await self._close_listener()
                await asyncio.sleep(delay)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._settings.outbox_poll_interval_s)

    async def _ensure_listener(self) -> None:
        """Hold one pooled connection for LISTEN: same database as the rows, by construction."""
        if self._listener is not None and not self._listener.is_closed():
            return
        await self._close_listener()
        self._listener = await self._pool.acquire(timeout=5)
        await self._listener.add_listener(NOTIFY_CHANNEL, self._on_notify)

    def _on_notify(self, *_: object) -> None:
        self._wake.set()

    async def _close_listener(self) -> None:
        if self._listener is not None:
            listener, self._listener = self._listener, None
            try:
                await listener.remove_listener(NOTIFY_CHANNEL, self._on_notify)
            except Exception:
                log.debug("listener connection already gone")
            await self._pool.release(listener)
