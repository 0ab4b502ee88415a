"""Reliable consumption: validate, dead-letter, deduplicate, retry, then commit the offset.

For each record, in order:

1. headers and body are checked against the topic's contract; a violation goes to
   ``<topic>.dlq`` (through the outbox) with the original bytes and error headers;
2. the handler runs inside a unit of work whose transaction also records the event id
   in the inbox (a duplicate changes nothing; unless the handler keeps its own record of
   the events it applied, ``Subscription.deduplicates``) and the outgoing events in the
   outbox;
3. a transient failure (database or broker unreachable) is retried with capped
   backoff for as long as it takes; an unexpected error a few times, then dead-lettered;
4. only after the transaction commits is the offset committed (manual acknowledgement).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka import Topic as KafkaTopic
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage
from opentelemetry.trace import Link, Span, SpanKind, get_current_span

from contracts.topics import Topic
from services.runtime import metrics
from services.runtime.backoff import backoff_delays
from services.runtime.errors import PermanentError, is_transient, unstorable
from services.runtime.messages import Event, decode_event
from services.runtime.outbox import OutboxMessage
from services.runtime.settings import ServiceSettings
from services.runtime.telemetry import extract_from_headers, tracer
from services.runtime.unit_of_work import UnitOfWork, unit_of_work

__all__ = [
    "BatchHandler",
    "EventConsumer",
    "EventHandler",
    "Subscription",
    "continue_trace",
    "start_event_span",
]

log = logging.getLogger(__name__)

MAX_LINKS = 128
"""Links of a batch's span: the SDK's default limit (``OTEL_SPAN_LINK_COUNT_LIMIT``)."""

EventHandler = Callable[[Event[Any], UnitOfWork], Awaitable[None]]
BatchHandler = Callable[[Sequence[Event[Any]], UnitOfWork], Awaitable[None]]


class Decoder(Protocol):
    def __call__(
        self,
        topic: Topic,
        *,
        value: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
        partition: int,
        offset: int,
        key: bytes | None,
        logged_at: datetime | None = None,
    ) -> Event[Any]:
        """The event the record holds (keeping its headers, bytes and ``logged_at``), or
        ``ContractViolation``."""
        ...


@dataclass(frozen=True)
class Subscription:
    """A topic, the handler for its events, and how to decode them."""

    topic: Topic
    handler: EventHandler
    decoder: Decoder = field(default=decode_event)
    description: str = ""
    batch_handler: BatchHandler | None = None
    """Handles a fetched batch's new events at once (set-based SQL instead of a round trip
    per event); must mean the same as ``handler`` on each event in order. When it fails
    with anything but a transient error, the batch is processed again one record at a
    time with ``handler``, so a bad event is still dead-lettered alone."""
    deduplicates: bool = False
    """The handlers themselves record each event's own id with the state it changes, and
    change nothing for an id recorded before (the registry's consent projection, keyed by
    ``consent_event_id``). The inbox row would record the same fact a second time, at a
    third of the database's work per event, so none is written: a redelivery reaches the
    handlers. Dead letters are still recorded in the inbox."""
    background: bool = False
    """Off the latency-critical path (a withdrawal's way to a model flag): polled less
    often (``KAFKA_BACKGROUND_FETCH_MAX_WAIT_MS``, ``KAFKA_BACKGROUND_POLL_TIMEOUT_MS``),
    so an idle topic costs little; its records may wait a few hundred ms more."""


class EventConsumer:
    """Registers subscriptions on a FastStream broker and processes their records.

    Records arrive in batches (one fetch); a batch is one transaction with a savepoint
    per record and one offset commit, which is what makes the path cheap per event.
    """

    def __init__(
        self, settings: ServiceSettings, pool: Callable[[], asyncpg.Pool], source: str
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._source = source

    def register(self, broker: KafkaBroker, subscription: Subscription) -> None:
        """``KAFKA_CONSUMERS`` subscribers of the topic, one group (see the setting), but
        no more than the topic is created with partitions: a member beyond them would only
        poll (``consent.policies.v1`` has one)."""
        members = min(self._settings.kafka_consumers, subscription.topic.partitions)
        for member in range(members):
            self._subscribe(broker, subscription, in_schema=member == 0)

    def _subscribe(
        self, broker: KafkaBroker, subscription: Subscription, *, in_schema: bool
    ) -> None:
        s = self._settings
        poll_timeout_ms, fetch_max_wait_ms = (
            (s.kafka_background_poll_timeout_ms, s.kafka_background_fetch_max_wait_ms)
            if subscription.background
            else (s.kafka_poll_timeout_ms, s.kafka_fetch_max_wait_ms)
        )

        @broker.subscriber(
            # FastStream creates a missing topic at start: with its partitions, not one.
            KafkaTopic(subscription.topic.name, num_partitions=subscription.topic.partitions),
            batch=True,
            max_records=s.kafka_max_poll_records,
            batch_timeout_ms=poll_timeout_ms,
            fetch_max_wait_ms=fetch_max_wait_ms,
            group_id=s.consumer_group(subscription.topic.name),
            ack_policy=AckPolicy.MANUAL,
            auto_offset_reset="earliest",
            session_timeout_ms=s.kafka_session_timeout_ms,
            heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
            max_poll_records=s.kafka_max_poll_records,
            parser=_tolerant_parser,
            decoder=_undecoded,
            title=f"{s.service_name}:{subscription.topic.name}",
            description=(
                f"{subscription.description} Body: contracts/schemas/"
                f"{subscription.topic.name}.schema.json".strip()
            ),
            include_in_schema=in_schema,
        )
        async def consume(message: KafkaMessage) -> None:
            raw = message.raw_message
            records: tuple[ConsumerRecord[bytes, bytes], ...] = (
                tuple(raw) if isinstance(raw, tuple | list) else (raw,)
            )
            try:
                await self.process_batch(subscription, records)
            except BaseException:
                # Never let the next batch's ack commit past this one: rewind to it.
                await message.nack()
                raise
            await message.ack()

    async def process_batch(
        self, sub: Subscription, records: Sequence[ConsumerRecord[bytes, bytes]]
    ) -> list[str]:
        """Process a fetched batch to final outcomes, one per record, in order.

        One transaction holds the whole batch, each record in its own savepoint: a
        permanent error dead-letters that record alone; a transient error retries the
        batch (nothing was committed); an unexpected error falls back to one record at a
        time, where it is retried and finally dead-lettered on its own.
        """
        started = time.perf_counter()
        delays = backoff_delays(
            self._settings.retry_initial_backoff_s, self._settings.retry_max_backoff_s
        )
        while True:
            try:
                async with unit_of_work(self._pool(), self._source) as uow:
                    if sub.batch_handler is not None:
                        outcomes = await self._as_batch(sub, sub.batch_handler, records, uow)
                    else:
                        outcomes = [await self._in_batch(sub, record, uow) for record in records]
                break
            except Exception as exc:
                if not is_transient(exc):
                    log.warning("batch of %d failed (%r): one record at a time", len(records), exc)
                    metrics.RETRIES.labels(sub.topic.name, "batch_fallback").inc(len(records))
                    return [await self.process(sub, record) for record in records]
                metrics.RETRIES.labels(sub.topic.name, "transient").inc()
                delay = next(delays)
                log.warning("transient failure (%r); batch retried in %.2fs", exc, delay)
                await asyncio.sleep(delay)
        per_record = (time.perf_counter() - started) / max(1, len(records))
        metrics.observe_many(
            metrics.HANDLER_SECONDS.labels(sub.topic.name), per_record, len(records)
        )
        for outcome, count in Counter(outcomes).items():
            metrics.CONSUMED.labels(sub.topic.name, outcome).inc(count)
        for record, outcome in zip(records, outcomes, strict=True):
            if outcome == "dead_lettered":
                log.warning("dead-lettered %s@%s/%s", record.topic, record.partition, record.offset)
        return outcomes

    async def _in_batch(
        self, sub: Subscription, record: ConsumerRecord[bytes, bytes], uow: UnitOfWork
    ) -> str:
        with _span(record):
            event: Event[Any] | None = None
            try:
                event = _decode(sub, record)
                async with uow.savepoint():
                    if not await _first_delivery(sub, event, record.topic, uow):
                        return "duplicate"
                    await sub.handler(event, uow)
                return "processed"
            except PermanentError as exc:
                return await self._dead_letter_in(uow, record, exc, event)

    async def _as_batch(
        self,
        sub: Subscription,
        handler: BatchHandler,
        records: Sequence[ConsumerRecord[bytes, bytes]],
        uow: UnitOfWork,
    ) -> list[str]:
        """Decode every record (dead-lettering what breaks the contract), keep the events
        the inbox has not seen, and hand them to the batch handler in one call.

        Its span continues the trace of a lone event; for several, it links to each
        event's trace (OpenTelemetry's convention for batch processing).
        """
        outcomes: list[str] = []
        fresh: list[Event[Any]] = []
        decoded: list[tuple[int, Event[Any]]] = []
        for i, record in enumerate(records):
            outcomes.append("duplicate")
            try:
                decoded.append((i, _decode(sub, record)))
            except PermanentError as exc:
                outcomes[i] = await self._dead_letter_in(uow, record, exc)
        ids = [e.id for _, e in decoded]
        new_ids = set(ids) if sub.deduplicates else await uow.record_inbox_many(ids, sub.topic.name)
        for i, event in decoded:
            if event.id in new_ids:
                new_ids.discard(event.id)  # the same id twice in one batch: once
                fresh.append(event)
                outcomes[i] = "processed"
        if fresh:
            kept = [records[i] for i, _ in decoded if outcomes[i] == "processed"]
            with _batch_span(sub.topic.name, kept):
                await handler(fresh, uow)
        return outcomes

    async def process(self, sub: Subscription, record: ConsumerRecord[bytes, bytes]) -> str:
        """Process one record on its own to a final outcome; returns it."""
        started = time.perf_counter()
        with _span(record):
            try:
                event = _decode(sub, record)
            except PermanentError as exc:
                outcome = await self._dead_letter(record, exc)
            else:
                outcome = await self._handle(sub, event, record)
        metrics.CONSUMED.labels(record.topic, outcome).inc()
        metrics.HANDLER_SECONDS.labels(record.topic).observe(time.perf_counter() - started)
        return outcome

    async def _handle(
        self, sub: Subscription, event: Event[Any], record: ConsumerRecord[bytes, bytes]
    ) -> str:
        delays = backoff_delays(
            self._settings.retry_initial_backoff_s, self._settings.retry_max_backoff_s
        )
        unexpected = 0
        while True:
            try:
                async with unit_of_work(self._pool(), self._source) as uow:
                    if not await _first_delivery(sub, event, record.topic, uow):
                        return "duplicate"
                    await sub.handler(event, uow)
                return "processed"
            except PermanentError as exc:
                return await self._dead_letter(record, exc, event)
            except Exception as exc:
                if (refused := unstorable(exc)) is not None:
                    return await self._dead_letter(record, refused, event)
                if is_transient(exc):
                    kind = "transient"
                else:
                    unexpected += 1
                    kind = "unexpected"
                    if unexpected >= self._settings.handler_max_attempts:
                        log.exception("giving up on %s after %d attempts", event.id, unexpected)
                        return await self._dead_letter(record, exc, event)
                metrics.RETRIES.labels(record.topic, kind).inc()
                delay = next(delays)
                log.warning(
                    "%s failure processing %s@%s/%s (%r); retry in %.2fs",
                    kind,
                    record.topic,
                    record.partition,
                    record.offset,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _dead_letter(
        self,
        record: ConsumerRecord[bytes, bytes],
        exc: BaseException,
        event: Event[Any] | None = None,
    ) -> str:
        """Dead-letter one record in a unit of work of its own, waiting out outages."""
        delays = backoff_delays(
            self._settings.retry_initial_backoff_s, self._settings.retry_max_backoff_s
        )
        while True:
            try:
                async with unit_of_work(self._pool(), self._source) as uow:
                    outcome = await self._dead_letter_in(uow, record, exc, event)
                break
            except Exception as err:
                if not is_transient(err):
                    raise
                await asyncio.sleep(next(delays))
        if outcome == "dead_lettered":
            log.warning(
                "dead-lettered %s@%s/%s: %s", record.topic, record.partition, record.offset, exc
            )
        return outcome

    async def _dead_letter_in(
        self,
        uow: UnitOfWork,
        record: ConsumerRecord[bytes, bytes],
        exc: BaseException,
        event: Event[Any] | None = None,
    ) -> str:
        """Send the original record to ``<topic>.dlq`` through the outbox, exactly once.

        The record's offset, and its event id when it has one, go into the inbox: the
        dead letter is the event's final outcome, so a redelivery changes nothing.
        """
        marker = f"dlq:{record.topic}:{record.partition}:{record.offset}"
        if not await uow.record_inbox(marker, record.topic):
            return "duplicate"
        if event is not None and not await uow.record_inbox(event.id, record.topic):
            return "duplicate"
        reason = exc.reason if isinstance(exc, PermanentError) else "handler_error"
        group = self._settings.consumer_group(record.topic)
        uow.publish_raw(dead_letter_message(record, reason, exc, group))
        metrics.DEAD_LETTERED.labels(record.topic, reason).inc()
        return "dead_lettered"


async def _first_delivery(
    sub: Subscription, event: Event[Any], topic: str, uow: UnitOfWork
) -> bool:
    """False for an event the inbox has seen; always True where the handlers keep their
    own record (``Subscription.deduplicates``)."""
    return sub.deduplicates or await uow.record_inbox(event.id, topic)


def _decode(sub: Subscription, record: ConsumerRecord[bytes, bytes]) -> Event[Any]:
    return sub.decoder(
        sub.topic,
        value=record.value,
        headers=record.headers or (),
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        logged_at=(
            datetime.fromtimestamp(record.timestamp / 1000, UTC)
            if record.timestamp is not None and record.timestamp > 0
            else None
        ),
    )


def continue_trace(event: Event[Any]) -> AbstractContextManager[Span]:
    """A span in the trace of one event of a batch, for what a batch handler does on its
    behalf: the batch's own span only links to its events' traces, and a row or message
    that one event caused (a flag, a case) should carry that event's trace."""
    return _consumer_span(
        f"{event.topic} process one",
        event.topic,
        event.partition,
        event.offset,
        event.headers,
    )


def start_event_span(event: Event[Any]) -> Span:
    """``continue_trace``'s span, started but not current: for a handler that stores rows
    in the event's trace and publishes its messages later, in the same span
    (``trace.use_span(span)``). The caller ends it."""
    return tracer().start_span(
        f"{event.topic} process one",
        context=extract_from_headers(event.headers),
        kind=SpanKind.CONSUMER,
        attributes=_attributes(event.topic, event.partition, event.offset),
    )


def _span(record: ConsumerRecord[bytes, bytes]) -> AbstractContextManager[Span]:
    """A consumer span continuing the producer's trace (``traceparent`` header)."""
    return _consumer_span(
        f"{record.topic} process",
        record.topic,
        record.partition,
        record.offset,
        record.headers or (),
    )


def _consumer_span(
    name: str, topic: str, partition: int, offset: int, headers: Sequence[tuple[str, bytes | None]]
) -> AbstractContextManager[Span]:
    return tracer().start_as_current_span(
        name,
        context=extract_from_headers(headers),
        kind=SpanKind.CONSUMER,
        attributes=_attributes(topic, partition, offset),
    )


def _attributes(topic: str, partition: int, offset: int) -> dict[str, str | int]:
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": topic,
        "messaging.kafka.destination.partition": partition,
        "messaging.kafka.message.offset": offset,
    }


def _batch_span(
    topic: str, records: Sequence[ConsumerRecord[bytes, bytes]]
) -> AbstractContextManager[Span]:
    if len(records) == 1:
        return _span(records[0])
    # The first events' traces only: the SDK would drop links past its limit, and reading
    # every record's headers was most of the cost of a batch's span.
    links = [
        Link(span_context)
        for record in records[:MAX_LINKS]
        if (
            span_context := get_current_span(
                extract_from_headers(record.headers or ())
            ).get_span_context()
        ).is_valid
    ]
    return tracer().start_as_current_span(
        f"{topic} process",
        kind=SpanKind.CONSUMER,
        links=links,
        attributes={
            "messaging.system": "kafka",
            "messaging.destination.name": topic,
            "messaging.batch.message_count": len(records),
        },
    )


async def _tolerant_parser(
    records: tuple[ConsumerRecord[bytes, bytes], ...] | ConsumerRecord[bytes, bytes],
    original: Callable[[Any], Awaitable[StreamMessage[Any]]],
) -> StreamMessage[Any]:
    """FastStream decodes every header as UTF-8 before any handler runs: one header that is
    not UTF-8 (or has no value) would fail the whole fetched batch, unseen by our
    dead-lettering, and the batch would be skipped. Parse copies with readable headers,
    then hand our consumer the original records, bytes untouched."""
    try:
        return await original(records)
    except (UnicodeDecodeError, AttributeError):
        batch = records if isinstance(records, tuple | list) else (records,)
        readable = tuple(
            dataclasses.replace(
                r,
                headers=[(k, (v or b"").decode("utf-8", "replace").encode()) for k, v in r.headers],
            )
            for r in batch
        )
        message = await original(readable if isinstance(records, tuple | list) else readable[0])
        message.raw_message = records
        return message


async def _undecoded(message: StreamMessage[Any]) -> bytes:
    """Hand the body over untouched: bad bytes must reach our dead-lettering, not FastStream's
    JSON decoder (which would log the error and let the record slip past the offset)."""
    return message.body


def dead_letter_message(
    record: ConsumerRecord[bytes, bytes], reason: str, exc: BaseException, group: str
) -> OutboxMessage:
    """The original key, bytes and headers, plus ``dlq_*`` headers saying what went wrong."""
    error_headers = [
        ("dlq_reason", reason),
        ("dlq_error", str(exc)[:4000]),
        ("dlq_exception", f"{type(exc).__module__}.{type(exc).__qualname__}"),
        ("dlq_source_topic", record.topic),
        ("dlq_source_partition", str(record.partition)),
        ("dlq_source_offset", str(record.offset)),
        ("dlq_consumer_group", group),
        ("dlq_failed_at", datetime.now(UTC).isoformat()),
    ]
    return OutboxMessage(
        topic=f"{record.topic}.dlq",
        key=record.key,
        value=record.value if record.value is not None else b"",
        headers=(
            *((name, value or b"") for name, value in (record.headers or ())),
            *((name, value.encode()) for name, value in error_headers),
        ),
    )
