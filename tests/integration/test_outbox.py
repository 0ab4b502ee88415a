"""The transactional outbox against real Postgres and a real broker."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from services.runtime.db import connect_pool
from services.runtime.outbox import (
    _CLAIM,
    _FRESH_PLAN,
    _MARK_PUBLISHED,
    OutboxMessage,
    OutboxRelay,
    enqueue,
)
from services.runtime.settings import ServiceSettings
from services.runtime.testing import collect, migrate_service
from services.runtime.unit_of_work import unit_of_work

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(make_database: Callable[[str], str]) -> AsyncIterator[asyncpg.Pool]:
    database = make_database("outbox")
    migrate_service("consent", database)  # any service: each carries the runtime tables
    pool = await connect_pool(ServiceSettings(database_url=database))
    yield pool
    await pool.close()


@pytest.fixture
async def producer(
    kafka_bootstrap: str, kafka_idempotence: bool
) -> AsyncIterator[AIOKafkaProducer]:
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=kafka_idempotence
    )
    await producer.start()
    yield producer
    await producer.stop()


async def test_nothing_is_written_when_the_transaction_rolls_back(pool: asyncpg.Pool) -> None:
    message = OutboxMessage("t", b"k", b"v")
    with pytest.raises(RuntimeError):
        async with unit_of_work(pool, "/test") as uow:
            uow.publish_raw(message)
            await uow.connection.execute("SELECT 1")
            raise RuntimeError("the state change failed")
    async with unit_of_work(pool, "/test") as uow:
        uow.publish_raw(message)
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 1


async def test_concurrent_relays_publish_everything_once_in_per_key_order(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, kafka_bootstrap: str
) -> None:
    topic = f"test.outbox.{uuid.uuid4().hex[:8]}"
    keys = [f"k{i}".encode() for i in range(6)]
    per_key = 100
    async with pool.acquire() as conn:
        for n in range(per_key):  # many small transactions, keys interleaved
            async with conn.transaction():
                await enqueue(conn, [OutboxMessage(topic, key, f"{n:04}".encode()) for key in keys])
    settings = ServiceSettings(outbox_batch_size=40, outbox_poll_interval_s=0.05)
    relays = [OutboxRelay(pool, producer, settings) for _ in range(3)]
    await asyncio.gather(*(r.start() for r in relays))
    try:
        records = await collect(
            kafka_bootstrap, topic, lambda r: True, expected=per_key * len(keys), within=60
        )
    finally:
        await asyncio.gather(*(r.stop() for r in relays))
    assert len(records) == per_key * len(keys), "each row published exactly once"
    for key in keys:
        values = [r.value for r in records if r.key == key]
        assert values == [f"{n:04}".encode() for n in range(per_key)], f"order broken for {key!r}"
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0


async def test_a_relay_held_up_by_another_relays_claim_goes_on_when_that_one_commits(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, kafka_bootstrap: str
) -> None:
    """Rows of one key (findings are keyed by dataset version: a few keys, many rows) while
    another relay holds the oldest of them: the relay may publish none of its claim yet. It
    must go on as soon as the other commits, not sleep until its poll: two replicas' relays
    otherwise took turns, one batch per poll interval each."""
    topic = f"test.outbox.{uuid.uuid4().hex[:8]}"
    rows = 400
    async with pool.acquire() as conn, conn.transaction():
        await enqueue(
            conn, [OutboxMessage(topic, b"one-key", f"{n:04}".encode()) for n in range(rows)]
        )
    relay = OutboxRelay(
        pool, producer, ServiceSettings(outbox_batch_size=50, outbox_poll_interval_s=300)
    )
    other = await pool.acquire()
    try:
        async with other.transaction():  # the other relay's claim: the oldest 50 rows
            held = await other.fetch(
                "SELECT id FROM outbox ORDER BY id LIMIT 50 FOR UPDATE SKIP LOCKED"
            )
            await relay.start()
            await asyncio.sleep(1.0)  # the relay has claimed rows 50-99 and found them held
            await other.execute(_MARK_PUBLISHED, [row["id"] for row in held])
        records = await collect(
            kafka_bootstrap, topic, lambda r: True, expected=rows - 50, within=30
        )
    finally:
        await pool.release(other)
        await relay.stop()
    assert [r.value for r in records] == [f"{n:04}".encode() for n in range(50, rows)]


async def test_the_relay_wakes_on_notify_rather_than_waiting_for_its_poll(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, kafka_bootstrap: str
) -> None:
    topic = f"test.notify.{uuid.uuid4().hex[:8]}"
    relay = OutboxRelay(pool, producer, ServiceSettings(outbox_poll_interval_s=60))
    await relay.start()
    try:
        await asyncio.sleep(1.0)  # the relay is now asleep on its 60 s poll
        started = time.monotonic()
        async with unit_of_work(pool, "/test") as uow:
            uow.publish_raw(OutboxMessage(topic, b"k", b"woken"))
        records = await collect(kafka_bootstrap, topic, lambda r: True, expected=1, settle=0)
        assert [r.value for r in records] == [b"woken"]
        assert time.monotonic() - started < 30, "published long before the 60 s poll"
    finally:
        await relay.stop()


async def test_a_claim_steps_over_rows_published_since_the_last_vacuum(
    pool: asyncpg.Pool,
) -> None:
    """Each row marked published leaves a dead entry in the pending-rows index until a
    vacuum. The claim must not visit each one's heap tuple again on every claim (a bitmap
    scan does: its cost grew with every row published since the last vacuum)."""
    message = OutboxMessage("t", b"k", b"v" * 500)
    async with pool.acquire() as conn:
        for _ in range(1000):  # commit, claim, publish: one at a time, as at a low rate
            async with conn.transaction():
                await enqueue(conn, [message])
            async with conn.transaction():
                await conn.execute(_FRESH_PLAN)
                rows = await conn.fetch(_CLAIM, 500)
                await conn.execute(_MARK_PUBLISHED, [row["id"] for row in rows])
        async with conn.transaction():
            await conn.execute(_FRESH_PLAN)
            plan = [r[0] for r in await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + _CLAIM, 500)]
    assert not any("Bitmap" in line for line in plan), "\n".join(plan)
    buffers = int(re.search(r"shared hit=(\d+)", "\n".join(plan)).group(1))  # type: ignore[union-attr]
    assert buffers < 30, f"an empty claim read {buffers} pages:\n" + "\n".join(plan)


class CountingRelay(OutboxRelay):
    """Counts its claims (each one four round trips and a fresh plan)."""

    claims = 0

    async def _publish_claim(self) -> tuple[int, int, int | None]:
        self.claims += 1
        return await super()._publish_claim()


async def test_after_a_partial_claim_the_relay_sleeps_until_the_next_notify(
    pool: asyncpg.Pool, producer: AIOKafkaProducer, kafka_bootstrap: str
) -> None:
    """A claim that got fewer rows than a batch got everything committed before it; the
    relay does not claim again to find nothing, yet a later commit still wakes it."""
    topic = f"test.partial.{uuid.uuid4().hex[:8]}"
    settings = ServiceSettings(outbox_batch_size=3, outbox_poll_interval_s=60)
    relay = CountingRelay(pool, producer, settings)
    await relay.start()
    try:
        await asyncio.sleep(1.0)  # started: one claim, nothing pending, asleep on its poll
        assert relay.claims == 1
        async with unit_of_work(pool, "/test") as uow:
            for n in range(4):  # a full claim of 3, then a partial one of 1
                uow.publish_raw(OutboxMessage(topic, b"k", f"first {n}".encode()))
        await collect(kafka_bootstrap, topic, lambda r: True, expected=4, settle=0)
        await asyncio.sleep(0.5)
        assert relay.claims == 1 + 2
        async with unit_of_work(pool, "/test") as uow:
            uow.publish_raw(OutboxMessage(topic, b"k", b"later"))
        records = await collect(kafka_bootstrap, topic, lambda r: True, expected=5, settle=0)
        assert [r.value for r in records][-1] == b"later"
        await asyncio.sleep(0.5)
        assert relay.claims == 1 + 2 + 1
    finally:
        await relay.stop()


async def test_the_backlog_gauges_say_how_much_waits_and_for_how_long(
    pool: asyncpg.Pool, producer: AIOKafkaProducer
) -> None:
    topic = f"test.backlog.{uuid.uuid4().hex[:8]}"
    relay = OutboxRelay(pool, producer, ServiceSettings(outbox_batch_size=500))
    assert await relay.measure_backlog() == (0, 0.0)
    async with pool.acquire() as conn, conn.transaction():
        await enqueue(conn, [OutboxMessage(topic, b"k", str(n).encode()) for n in range(7)])
    await pool.execute("UPDATE outbox SET created_at = now() - interval '90 seconds'")
    pending, age = await relay.measure_backlog()
    assert pending == 7
    assert 90 <= age < 150
    assert gauge("consenttrace_outbox_pending") == 7
    assert gauge("consenttrace_outbox_oldest_pending_seconds") == age
    assert await relay.relay_once() == 7
    assert await relay.measure_backlog() == (0, 0.0)
    assert gauge("consenttrace_outbox_pending") == 0


def gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


async def test_the_inbox_forgets_event_ids_past_its_retention(
    pool: asyncpg.Pool, producer: AIOKafkaProducer
) -> None:
    relay = OutboxRelay(pool, producer, ServiceSettings(inbox_retention_s=3600))
    await pool.executemany(
        "INSERT INTO inbox (event_id, topic, processed_at)"
        " VALUES ($1, 't', now() - make_interval(secs => $2))",
        [(f"old-{n}", 7200.0) for n in range(25)] + [(f"new-{n}", 60.0) for n in range(5)],
    )
    assert await relay.purge_inbox(batch=10) == 25  # three batches, the last one short
    left = await pool.fetch("SELECT event_id FROM inbox ORDER BY event_id")
    assert [r["event_id"] for r in left] == [f"new-{n}" for n in range(5)]
    keep_all = OutboxRelay(pool, producer, ServiceSettings(inbox_retention_s=0))
    await pool.execute("UPDATE inbox SET processed_at = now() - interval '400 days'")
    assert await keep_all.purge_inbox() == 0
    assert await pool.fetchval("SELECT count(*) FROM inbox") == 5
