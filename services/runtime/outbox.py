"""Transactional outbox: rows written with the state change, relayed to Kafka after commit.

Rows are claimed with ``FOR UPDATE SKIP LOCKED`` so several relays (replicas) can run.
A row is only published when every older unpublished row with the same key is in the
same claim, which keeps per-key order across relays (a relay held up so waits for the one
holding the older row); the relay wakes on ``LISTEN/NOTIFY`` and polls as a fallback.

Every 5 s the relay sets the backlog gauges; once a minute it drops published rows past
``OUTBOX_RETENTION_S`` and consumed event ids past ``INBOX_RETENTION_S`` (the inbox's
housekeeping lives here: every service runs a relay).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg
from aiokafka import AIOKafkaProducer

from services.runtime import metrics
from services.runtime.db import Connection
from services.runtime.settings import ServiceSettings
from services.runtime.worker import BackgroundWorker, WorkerContext, WorkerSpec

__all__ = [
    "NOTIFY_CHANNEL",
    "OutboxMessage",
    "OutboxRelay",
    "and_publish",
    "enqueue",
    "message_values",
]

log = logging.getLogger(__name__)
NOTIFY_CHANNEL = "consenttrace_outbox"


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A Kafka record waiting to be published: raw bytes, so dead letters keep theirs."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = field(default=())


_ONE = f"""
WITH written AS (
    INSERT INTO outbox (topic, key, value, header_names, header_values)
    VALUES ($1, $2, $3, $4, $5)
)
SELECT pg_notify('{NOTIFY_CHANNEL}', '')
"""
"""One message and its NOTIFY in one round trip (an HTTP write's usual case)."""


def and_publish(statement: str, parameters: int) -> str:
    """``statement`` (one ``INSERT ... RETURNING``) followed, when it returns a row, by one
    outbox message and its NOTIFY, as one statement: atomic without a transaction block,
    so one round trip instead of four (``BEGIN``, the write, the outbox row, ``COMMIT``).
    The message's values (``message_values``) follow the statement's ``parameters``; the
    result is one row (``true``) when the statement wrote and the message is queued, none
    when it wrote nothing."""
    topic, key, value, names, values = (f"${parameters + i}" for i in range(1, 6))
    return f"""
WITH written AS ({statement}),
queued AS (
    INSERT INTO outbox (topic, key, value, header_names, header_values)
    SELECT {topic}, {key}, {value}, {names}, {values} WHERE EXISTS (SELECT FROM written)
    RETURNING ''::text AS payload
)
SELECT true FROM (SELECT pg_notify('{NOTIFY_CHANNEL}', payload) FROM queued) AS notified
"""


def message_values(m: OutboxMessage) -> tuple[str, bytes | None, bytes, list[str], list[bytes]]:
    """An outbox row's values, as ``_ONE`` and ``and_publish`` take them."""
    return m.topic, m.key, m.value, [h[0] for h in m.headers], [h[1] for h in m.headers]


async def enqueue(conn: Connection, messages: Sequence[OutboxMessage]) -> None:
    """Write messages in the caller's transaction; the NOTIFY is delivered at commit."""
    if not messages:
        return
    if len(messages) == 1:
        # COPY then NOTIFY is three round trips. Profiled under single consent intake
        # requests (bench/consent_intake.py), a third of the service was socket writes.
        await conn.execute(_ONE, *message_values(messages[0]))
        return
    # COPY, not one INSERT per row: a batch of findings is thousands of messages. Ids are
    # drawn from the sequence in row order, so the relay's per-key order is kept.
    await conn.copy_records_to_table(
        "outbox",
        columns=("topic", "key", "value", "header_names", "header_values"),
        records=[message_values(m) for m in messages],
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
), skipped AS MATERIALIZED (
    -- Per key, the oldest pending row older than the claim that the claim did not get
    -- (another relay holds it): the claim's rows of that key after it must wait.
    -- Materialized: inlined into the per-row lookup below, it was scanned once per
    -- claimed row (seconds per claim with a few thousand pending).
    SELECT o.topic, o.key, min(o.id) AS id
    FROM outbox o
    WHERE o.published_at IS NULL
      AND o.id < (SELECT max(id) FROM claimed)
      AND NOT EXISTS (SELECT 1 FROM claimed c WHERE c.id = o.id)
    GROUP BY o.topic, o.key
)
SELECT c.*, s.id AS held_behind
FROM claimed c
LEFT JOIN skipped s  -- one row per key at most
    ON s.topic = c.topic AND s.key IS NOT DISTINCT FROM c.key AND s.id < c.id
ORDER BY c.id
"""
"""Claims the oldest pending rows and keeps each key's order across relays: a row whose
key has an older pending row another relay holds comes back with that row's id in
``held_behind`` and is not published this time. Reads only the pending rows below the
claim's newest id (the claim itself, plus rows other relays hold), so its cost follows the
batch, not the backlog: the first form compared every claimed row with every pending row
(9.75M rows filtered per claim at a 20,000-row backlog)."""

_MARK_PUBLISHED = "UPDATE outbox SET published_at = now() WHERE id = ANY($1::bigint[])"

_WAIT_FOR_HOLDER = "SELECT 1 FROM outbox WHERE id = $1 FOR UPDATE"
"""Blocks until the relay holding this row has committed (or rolled back)."""


_FRESH_PLAN = "SET LOCAL plan_cache_mode = force_custom_plan; SET LOCAL enable_bitmapscan = off"
"""The claim is planned afresh each time, without bitmap scans (one round trip for both).

- Afresh: its prepared statement is first run while the outbox is empty; a plan Postgres
  then caches for an empty table (nested loops over the pending rows) took 20-50 s per
  claim once 2,000 rows were pending, against 0.1 s planned afresh
  (``bench/outbox_claim_plan.py``). Planning costs well under a millisecond.
- No bitmap scan: marking a row published leaves its entry in the pending-rows index until
  a vacuum, which on a table holding a day of published rows comes after millions of them.
  A bitmap scan visits every such entry's heap tuple on every claim: an empty claim took
  0.44 ms at 4,000 rows published since the last vacuum, and grows with them. An index
  scan in ``id`` order marks the dead entries it meets, so later claims step over them:
  0.005 ms."""


_BACKLOG = """
SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox WHERE published_at IS NULL LIMIT 1000000) p),
       COALESCE(extract(epoch FROM now() - (
           SELECT created_at FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT 1)), 0)
"""
"""Pending rows (capped: past a million the count itself would load the server) and the
oldest one's age, both from the ``outbox_pending`` index."""

BACKLOG_INTERVAL_S = 5.0


class OutboxRelay:
    """Publishes committed outbox rows in id order, then marks them published.

    A background worker (``services.runtime.worker``): drains the outbox, then sleeps
    until a ``NOTIFY`` from a committing unit of work or the poll interval.
    """

    def __init__(
        self, pool: asyncpg.Pool, producer: AIOKafkaProducer, settings: ServiceSettings
    ) -> None:
        self._pool = pool
        self._producer = producer
        self._settings = settings
        self._last_purge = 0.0
        self._last_backlog = 0.0
        self._worker = BackgroundWorker(
            WorkerSpec("outbox-relay", self._step, NOTIFY_CHANNEL),
            WorkerContext(pool, "outbox", settings),
            settings,
        )

    async def start(self) -> None:
        await self._worker.start()

    async def stop(self) -> None:
        await self._worker.stop()

    async def _step(self, _: WorkerContext) -> bool:
        now = time.monotonic()
        if now - self._last_backlog > BACKLOG_INTERVAL_S:
            # First, so the gauges move on while publishing keeps failing (broker gone).
            self._last_backlog = now
            await self.measure_backlog()
        _published, more = await self._relay()
        if more:
            return True
        # After a partial claim that held nothing back, what had committed before it is
        # published (or another relay's to publish), and whatever committed since has sent
        # a NOTIFY, which wakes the next round. Claiming again at once would find nothing,
        # for four round trips and a claim planned afresh, after every batch.
        now = time.monotonic()
        if now - self._last_purge > 60:
            await self.purge_published()
            await self.purge_inbox()
            self._last_purge = now
        return False

    async def relay_once(self) -> int:
        """Publish one claimed batch; returns how many rows went out.

        When another relay holds an older row of every key claimed (few keys, several
        replicas: findings are keyed by dataset version), wait for that relay to commit and
        claim again. Returning empty-handed would put this relay to sleep until its poll,
        and the other relay's next claim would then be held up by it in turn: two relays
        took turns, one batch per poll interval (``bench/consent_findings.py
        --replicas 2``: 10,000 findings published in 20 s instead of 2 s)."""
        published, _ = await self._relay()
        return published

    async def _relay(self) -> tuple[int, bool]:
        """``relay_once``: (rows published, whether more may be pending: the claim was
        full, or rows of it were held back behind another relay's)."""
        while True:
            claimed, published, holder = await self._publish_claim()
            if not published and holder is not None:
                if await self._waited_for(holder):
                    continue
                return 0, False  # that relay is stuck (broker down?): the usual sleep
            return published, claimed >= self._settings.outbox_batch_size or holder is not None

    async def _publish_claim(self) -> tuple[int, int, int | None]:
        """Publish what one claim may publish: (rows claimed, rows published, the oldest
        row another relay holds that kept claimed rows back, else None)."""
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(_FRESH_PLAN)
            claimed = await conn.fetch(_CLAIM, self._settings.outbox_batch_size)
            rows = [row for row in claimed if row["held_behind"] is None]
            held = [row["held_behind"] for row in claimed if row["held_behind"] is not None]
            holder = min(held, default=None)
            if not rows:
                return len(claimed), 0, holder
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
            await conn.execute(_MARK_PUBLISHED, [row["id"] for row in rows])
        for row in rows:
            metrics.OUTBOX_PUBLISHED.labels(row["topic"]).inc()
        return len(claimed), len(rows), holder

    async def _waited_for(self, row_id: int) -> bool:
        """Wait (at most a poll interval) until the relay holding ``row_id`` is done."""
        timeout_ms = max(1, int(self._settings.outbox_poll_interval_s * 1000))
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = {timeout_ms}")
                await conn.execute(_WAIT_FOR_HOLDER, row_id)
        except asyncpg.LockNotAvailableError:
            return False  # that relay is stuck (broker down?): back to the usual sleep
        return True

    async def measure_backlog(self) -> tuple[int, float]:
        """Set the backlog gauges: pending rows and the oldest one's age in seconds."""
        row = await self._pool.fetchrow(_BACKLOG)
        assert row is not None
        pending, age = int(row[0]), float(row[1])
        metrics.OUTBOX_PENDING.set(pending)
        metrics.OUTBOX_OLDEST_PENDING_SECONDS.set(age)
        return pending, age

    async def purge_inbox(self, batch: int = 10_000, rounds: int = 10) -> int:
        """Forget consumed event ids past ``INBOX_RETENTION_S``, a batch at a time (at most
        ``rounds`` batches now; the rest on the next purge)."""
        if not self._settings.inbox_retention_s:
            return 0
        purged = 0
        for _ in range(rounds):
            result: str = await self._pool.execute(
                "DELETE FROM inbox WHERE event_id IN (SELECT event_id FROM inbox"
                " WHERE processed_at < now() - make_interval(secs => $1) LIMIT $2)",
                self._settings.inbox_retention_s,
                batch,
            )
            done = int(result.split()[-1])
            purged += done
            if done < batch:
                break
        return purged

    async def purge_published(self) -> int:
        result: str = await self._pool.execute(
            "DELETE FROM outbox WHERE published_at < now() - make_interval(secs => $1)",
            self._settings.outbox_retention_s,
        )
        return int(result.split()[-1])
