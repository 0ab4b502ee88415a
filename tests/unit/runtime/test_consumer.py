"""The consumer's decisions, wired through FastStream's in-memory broker with a fake pool:
process once, drop duplicates, dead-letter bad bytes, retry transients, give up on bugs."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from aiokafka import ConsumerRecord
from faststream.kafka import KafkaBroker, TestKafkaBroker
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from prometheus_client import REGISTRY

from contracts.events import ConsentEvent, ConsentEvidence, ConsentMechanism, ConsentState
from contracts.topics import CONSENT_EVENTS, POLICIES
from services.runtime.consumer import MAX_LINKS, EventConsumer, Subscription
from services.runtime.errors import PermanentError
from services.runtime.messages import Event, encode_event
from services.runtime.settings import ServiceSettings
from services.runtime.testing import FakePool, header
from services.runtime.unit_of_work import UnitOfWork

SETTINGS = ServiceSettings(
    service_name="unit",
    retry_initial_backoff_s=0.001,
    retry_max_backoff_s=0.002,
    handler_max_attempts=3,
)


def consent_event(subject_id: str = "s-1") -> ConsentEvent:
    return ConsentEvent(
        consent_event_id=uuid4(),
        subject_id=subject_id,
        jurisdiction="US",
        purpose="ai.training",
        data_categories=("user.content",),
        state=ConsentState.WITHDRAWN,
        mechanism=ConsentMechanism.OPT_OUT,
        policy_version="1",
        effective_at=datetime(2025, 1, 1, tzinfo=UTC),
        recorded_at=datetime(2025, 1, 1, tzinfo=UTC),
        source_system="test",
        evidence=ConsentEvidence(collection_point="test"),
    )


class Recorder:
    """A handler that records what it saw and publishes one event per call."""

    def __init__(
        self, failures: list[BaseException] | None = None, poison: str | None = None
    ) -> None:
        self.seen: list[str] = []
        self.failures = failures or []
        self.poison = poison
        self.poison_attempts = 0

    async def __call__(self, event: Event[Any], uow: UnitOfWork) -> None:
        if self.failures:
            raise self.failures.pop(0)
        if event.body.subject_id == self.poison:
            self.poison_attempts += 1
            raise KeyError("a bug this event always hits")
        self.seen.append(event.id)
        uow.publish(CONSENT_EVENTS, event.body, key="s-1")


@pytest.fixture
def pool() -> FakePool:
    return FakePool()


async def deliver(
    handler: Recorder, pool: FakePool, *messages: tuple[bytes, list[tuple[str, bytes]]]
) -> None:
    broker = KafkaBroker()
    consumer = EventConsumer(SETTINGS, lambda: pool, "/unit")  # type: ignore[arg-type, return-value]
    consumer.register(broker, Subscription(CONSENT_EVENTS, handler))
    async with TestKafkaBroker(broker) as test_broker:
        for value, headers in messages:
            await test_broker.publish(
                value, CONSENT_EVENTS.name, key=b"s-1", headers={k: v.decode() for k, v in headers}
            )


def good(subject_id: str = "s-1") -> tuple[bytes, list[tuple[str, bytes]]]:
    message = encode_event(CONSENT_EVENTS, consent_event(subject_id), key="s-1", source="/unit")
    return message.value, list(message.headers)


async def test_an_event_is_handled_once_and_its_duplicate_changes_nothing(pool: FakePool) -> None:
    handler = Recorder()
    message = good()
    await deliver(handler, pool, message, message)
    assert len(handler.seen) == 1
    assert pool.outbox_topics() == [CONSENT_EVENTS.name]


async def test_bad_bytes_are_dead_lettered_and_the_next_message_is_processed(
    pool: FakePool,
) -> None:
    handler = Recorder()
    value, headers = good()
    await deliver(handler, pool, (b"\x00not json", headers), (value, headers))
    assert pool.outbox_topics() == [CONSENT_EVENTS.dlq, CONSENT_EVENTS.name]
    dead = pool.outbox[0]
    assert dead[2] == b"\x00not json"
    assert ("dlq_reason", b"contract_violation") in zip(dead[3], dead[4], strict=True)
    assert len(handler.seen) == 1


async def test_transient_failures_are_retried_until_they_pass(pool: FakePool) -> None:
    pool.failures = [ConnectionRefusedError(), asyncpg.exceptions.CannotConnectNowError()] * 3
    handler = Recorder()
    await deliver(handler, pool, good())
    assert len(handler.seen) == 1, "six transient failures, more than handler_max_attempts"
    assert pool.outbox_topics() == [CONSENT_EVENTS.name]


async def test_an_unexpected_error_is_retried_then_dead_lettered(pool: FakePool) -> None:
    handler = Recorder(poison="poison")
    await deliver(handler, pool, good("poison"), good())
    assert handler.poison_attempts >= SETTINGS.handler_max_attempts
    assert pool.outbox_topics() == [CONSENT_EVENTS.dlq, CONSENT_EVENTS.name]
    headers = dict(zip(pool.outbox[0][3], pool.outbox[0][4], strict=True))
    assert headers["dlq_reason"] == b"handler_error"
    assert headers["dlq_exception"] == b"builtins.KeyError"
    assert len(handler.seen) == 1


async def test_a_permanent_error_is_dead_lettered_at_once(pool: FakePool) -> None:
    handler = Recorder(failures=[PermanentError("never valid")])
    await deliver(handler, pool, good())
    assert pool.outbox_topics() == [CONSENT_EVENTS.dlq]
    assert handler.seen == []


async def test_an_unexpected_error_that_passes_on_retry_is_not_dead_lettered(
    pool: FakePool,
) -> None:
    handler = Recorder(failures=[KeyError("flaky")] * (SETTINGS.handler_max_attempts - 1))
    await deliver(handler, pool, good())
    assert pool.outbox_topics() == [CONSENT_EVENTS.name]


async def test_a_batch_keeps_order_and_isolates_its_bad_records(pool: FakePool) -> None:
    handler = Recorder(failures=[PermanentError("refused")])
    records = [good("a"), (b"garbage", good()[1]), good("b"), good("c")]
    consumer = EventConsumer(SETTINGS, lambda: pool, "/unit")  # type: ignore[arg-type, return-value]
    batch = [
        ConsumerRecord(CONSENT_EVENTS.name, 0, n, 0, 0, b"s-1", value, None, 0, 0, tuple(h))
        for n, (value, h) in enumerate(records)
    ]
    pool.failures = [ConnectionResetError()]  # the first attempt at the batch dies in transit
    outcomes = await consumer.process_batch(Subscription(CONSENT_EVENTS, handler), batch)
    assert outcomes == ["dead_lettered", "dead_lettered", "processed", "processed"]
    assert (
        pool.outbox_topics() == [CONSENT_EVENTS.dlq, CONSENT_EVENTS.dlq] + [CONSENT_EVENTS.name] * 2
    )
    assert handler.seen == [header(r, "ce_id") for r in batch[2:]], "in order, each once"
    again = await consumer.process_batch(Subscription(CONSENT_EVENTS, handler), batch)
    assert again == ["duplicate"] * 4, "dead letters are final outcomes too"
    assert len(pool.outbox) == 4, "a redelivered batch changes nothing"


class BatchRecorder:
    """A batch handler: records each call's event ids; fails while ``failures`` last."""

    def __init__(self, failures: list[BaseException] | None = None) -> None:
        self.calls: list[list[str]] = []
        self.failures = failures or []

    async def __call__(self, events: Any, uow: UnitOfWork) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.calls.append([e.id for e in events])
        for event in events:
            uow.publish(CONSENT_EVENTS, event.body, key="s-1")


def as_records(messages: list[tuple[bytes, list[tuple[str, bytes]]]]) -> list[Any]:
    return [
        ConsumerRecord(CONSENT_EVENTS.name, 0, n, 0, 0, b"s-1", value, None, 0, 0, tuple(h))
        for n, (value, h) in enumerate(messages)
    ]


async def test_a_batch_handler_gets_the_new_events_once_in_order(pool: FakePool) -> None:
    consumer = EventConsumer(SETTINGS, lambda: pool, "/unit")  # type: ignore[arg-type, return-value]
    a, b = good("a"), good("b")
    batch = as_records([a, (b"garbage", a[1]), b, a])
    per_record, per_batch = Recorder(), BatchRecorder()
    sub = Subscription(CONSENT_EVENTS, per_record, batch_handler=per_batch)

    outcomes = await consumer.process_batch(sub, batch)

    assert outcomes == ["processed", "dead_lettered", "processed", "duplicate"]
    assert per_batch.calls == [[header(batch[0], "ce_id"), header(batch[2], "ce_id")]]
    assert per_record.seen == [], "the per-record handler is the fallback only"
    assert pool.outbox_topics() == [CONSENT_EVENTS.dlq] + [CONSENT_EVENTS.name] * 2
    assert await consumer.process_batch(sub, batch) == ["duplicate"] * 4
    assert len(per_batch.calls) == 1


async def test_a_failing_batch_handler_falls_back_to_one_record_at_a_time(pool: FakePool) -> None:
    consumer = EventConsumer(SETTINGS, lambda: pool, "/unit")  # type: ignore[arg-type, return-value]
    batch = as_records([good("a"), good("poison"), good("c")])
    per_record = Recorder(poison="poison")
    per_batch = BatchRecorder(failures=[KeyError("the batch hits the poison event")])
    sub = Subscription(CONSENT_EVENTS, per_record, batch_handler=per_batch)
    fallbacks = {"topic": CONSENT_EVENTS.name, "kind": "batch_fallback"}
    before = REGISTRY.get_sample_value("consenttrace_handler_retries_total", fallbacks) or 0

    outcomes = await consumer.process_batch(sub, batch)

    after = REGISTRY.get_sample_value("consenttrace_handler_retries_total", fallbacks)
    assert after == before + 3, "counted, so that an operator sees a batch path that fails"

    assert outcomes == ["processed", "dead_lettered", "processed"]
    assert per_record.seen == [header(batch[0], "ce_id"), header(batch[2], "ce_id")]
    assert per_batch.calls == [], "nothing of the failed batch call was kept"
    assert pool.outbox_topics() == [
        CONSENT_EVENTS.name,
        CONSENT_EVENTS.dlq,
        CONSENT_EVENTS.name,
    ]


async def test_a_transient_failure_retries_the_whole_batch(pool: FakePool) -> None:
    consumer = EventConsumer(SETTINGS, lambda: pool, "/unit")  # type: ignore[arg-type, return-value]
    batch = as_records([good("a"), good("b")])
    per_batch = BatchRecorder(failures=[ConnectionResetError()])
    sub = Subscription(CONSENT_EVENTS, Recorder(), batch_handler=per_batch)
    assert await consumer.process_batch(sub, batch) == ["processed", "processed"]
    assert len(per_batch.calls) == 1 and len(per_batch.calls[0]) == 2
    assert pool.outbox_topics() == [CONSENT_EVENTS.name] * 2


async def test_subscribers_acknowledge_manually_in_a_group_per_topic() -> None:
    broker = KafkaBroker()
    EventConsumer(SETTINGS, lambda: FakePool(), "/unit").register(  # type: ignore[arg-type, return-value]
        broker, Subscription(CONSENT_EVENTS, Recorder())
    )
    (subscriber,) = broker.subscribers
    assert subscriber.ack_policy.value == "manual", "offsets move only after the commit"
    assert subscriber.group_id == f"consenttrace.unit.{CONSENT_EVENTS.name}"
    assert subscriber._connection_args["auto_offset_reset"] == "earliest"
    assert subscriber._connection_args["enable_auto_commit"] is False


def test_background_subscriptions_poll_less_often_than_the_critical_path() -> None:
    broker = KafkaBroker()
    consumer = EventConsumer(SETTINGS, lambda: FakePool(), "/unit")  # type: ignore[arg-type, return-value]
    consumer.register(broker, Subscription(CONSENT_EVENTS, Recorder()))
    consumer.register(broker, Subscription(POLICIES, Recorder(), background=True))
    polls = {
        sub.topics[0].name: (sub.batch_timeout_ms, sub._connection_args["fetch_max_wait_ms"])
        for sub in broker.subscribers
    }
    assert polls == {
        CONSENT_EVENTS.name: (SETTINGS.kafka_poll_timeout_ms, SETTINGS.kafka_fetch_max_wait_ms),
        POLICIES.name: (
            SETTINGS.kafka_background_poll_timeout_ms,
            SETTINGS.kafka_background_fetch_max_wait_ms,
        ),
    }
    assert polls[POLICIES.name] > polls[CONSENT_EVENTS.name]


def test_kafka_consumers_members_per_topic_no_more_than_its_partitions() -> None:
    """``KAFKA_CONSUMERS=4``: four members for a six-partition topic, one for the policies
    (one partition: a second member would only poll)."""
    broker = KafkaBroker()
    consumer = EventConsumer(
        SETTINGS.model_copy(update={"kafka_consumers": 4}), lambda: FakePool(), "/unit"
    )
    for topic in (CONSENT_EVENTS, POLICIES):
        consumer.register(broker, Subscription(topic, Recorder()))
    groups = Counter(sub.topics[0].name for sub in broker.subscribers)
    assert groups == {CONSENT_EVENTS.name: 4, POLICIES.name: 1}
    # A topic missing at start is created by FastStream: with its partitions.
    declared = {t.name: t.num_partitions for s in broker.subscribers for t in s.topics_to_create}
    assert declared == {CONSENT_EVENTS.name: 6, POLICIES.name: 1}
    assert POLICIES.partitions == 1 < CONSENT_EVENTS.partitions


@pytest.mark.parametrize("size", [3, 200])
async def test_a_batch_span_links_to_its_events_traces_up_to_the_limit(
    pool: FakePool, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    sdk_tracer = TracerProvider().get_tracer(__name__)
    monkeypatch.setattr("services.runtime.consumer.tracer", lambda: sdk_tracer)
    producers: list[int] = []
    messages = []
    for n in range(size):
        with sdk_tracer.start_as_current_span("produce") as span:
            messages.append(good(f"s{n}"))
        producers.append(span.get_span_context().span_id)
    seen: list[list[int]] = []

    async def handler(events: Any, uow: UnitOfWork) -> None:
        current = trace.get_current_span()
        assert isinstance(current, ReadableSpan)
        seen.append([link.context.span_id for link in current.links])

    consumer = EventConsumer(SETTINGS, lambda: pool, "/unit")  # type: ignore[arg-type, return-value]
    sub = Subscription(CONSENT_EVENTS, Recorder(), batch_handler=handler)
    assert await consumer.process_batch(sub, as_records(messages)) == ["processed"] * size
    assert seen == [producers[:MAX_LINKS]], "the first events' traces, in order"


async def test_a_deduplicating_subscription_writes_no_inbox_and_hands_redeliveries_on(
    pool: FakePool,
) -> None:
    """Its handlers keep their own record of the events they applied: a redelivery must
    reach them, a dead letter is still recorded once."""
    consumer = EventConsumer(SETTINGS, lambda: pool, "/unit")  # type: ignore[arg-type, return-value]
    a, b = good("a"), good("b")
    per_record, per_batch = Recorder(), BatchRecorder()
    sub = Subscription(CONSENT_EVENTS, per_record, batch_handler=per_batch, deduplicates=True)
    batch = as_records([a, (b"garbage", a[1]), b, a])

    assert await consumer.process_batch(sub, batch) == [
        "processed",
        "dead_lettered",
        "processed",
        "duplicate",  # the same delivery twice in one batch: handed on once
    ]
    assert await consumer.process_batch(sub, batch) == [
        "processed",
        "duplicate",
        "processed",
        "duplicate",
    ]
    first, second = (header(batch[0], "ce_id"), header(batch[2], "ce_id"))
    assert per_batch.calls == [[first, second], [first, second]]
    assert pool.inbox == {f"dlq:{CONSENT_EVENTS.name}:0:1"}, "only the dead letter's marker"

    one = Subscription(CONSENT_EVENTS, per_record, deduplicates=True)
    assert await consumer.process(one, batch[0]) == "processed"
    assert per_record.seen == [first]
