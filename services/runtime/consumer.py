"""Reliable consumption: validate, dead-letter, deduplicate, retry, then commit the offset.

For each record, in order:

1. headers and body are checked against the topic's contract; a violation goes to
   ``<topic>.dlq`` (through the outbox) with the original bytes and error headers;
2. the handler runs inside a unit of work whose transaction also records the event id
   in the inbox (a duplicate changes nothing) and the outgoing events in the outbox;
3. a transient failure (database or broker unreachable) is retried with capped
   backoff for as long as it takes; an unexpected error a few times, then dead-lettered;
4. only after the transaction commits is the offset committed (manual acknowledgement).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage
from faststream.message import StreamMessage
from opentelemetry.trace import SpanKind

from contracts.topics import Topic
from services.runtime import metrics
from services.runtime.backoff import backoff_delays
from services.runtime.errors import PermanentError, is_transient
from services.runtime.messages import Event, decode_event
from services.runtime.outbox import OutboxMessage
from services.runtime.settings import ServiceSettings
from services.runtime.telemetry import extract_from_headers, tracer
from services.runtime.unit_of_work import UnitOfWork, unit_of_work

__all__ = ["EventConsumer", "EventHandler", "Subscription"]

log = logging.getLogger(__name__)

EventHandler = Callable[[Event[Any], UnitOfWork], Awaitable[None]]


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
    ) -> Event[Any]: ...


@dataclass(frozen=True)
class Subscription:
    """A topic, the handler for its events, and how to decode them."""

    topic: Topic
    handler: EventHandler
    decoder: Decoder = field(default=decode_event)
    description: str = ""


class EventConsumer:
    """Registers subscriptions on a FastStream broker and processes their records."""

    def __init__(
        self, settings: ServiceSettings, pool: Callable[[], asyncpg.Pool], source: str
    ) -> None:
        self._settings = settings
        self._pool = pool
        self._source = source

    def register(self, broker: KafkaBroker, subscription: Subscription) -> None:
        s = self._settings

        @broker.subscriber(
            subscription.topic.name,
            group_id=s.consumer_group(subscription.topic.name),
            ack_policy=AckPolicy.MANUAL,
            auto_offset_reset="earliest",
            session_timeout_ms=s.kafka_session_timeout_ms,
            heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
            max_poll_records=s.kafka_max_poll_records,
            decoder=_undecoded,
            title=f"{s.service_name}:{subscription.topic.name}",
            description=(
                f"{subscription.description} Body: contracts/schemas/"
                f"{subscription.topic.name}.schema.json".strip()
            ),
        )
        async def consume(message: KafkaMessage) -> None:
            record: ConsumerRecord[bytes, bytes] = message.raw_message
            try:
                await self.process(subscription, record)
            except BaseException:
                # Never let the next record's ack commit past this one: rewind to it.
                await message.nack()
                raise
            await message.ack()

    async def process(self, sub: Subscription, record: ConsumerRecord[bytes, bytes]) -> str:
        """Process one record to a final outcome; returns it (for metrics and tests)."""
        started = time.perf_counter()
        headers = list(record.headers or ())
        with tracer().start_as_current_span(
            f"{record.topic} process",
            context=extract_from_headers(headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": record.topic,
                "messaging.kafka.destination.partition": record.partition,
                "messaging.kafka.message.offset": record.offset,
            },
        ):
            try:
                event = sub.decoder(
                    sub.topic,
                    value=record.value,
                    headers=headers,
                    partition=record.partition,
                    offset=record.offset,
                    key=record.key,
                )
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
                    if not await uow.record_inbox(event.id, record.topic):
                        return "duplicate"
                    await sub.handler(event, uow)
                return "processed"
            except PermanentError as exc:
                return await self._dead_letter(record, exc)
            except Exception as exc:
                if is_transient(exc):
                    kind = "transient"
                else:
                    unexpected += 1
                    kind = "unexpected"
                    if unexpected >= self._settings.handler_max_attempts:
                        log.exception("giving up on %s after %d attempts", event.id, unexpected)
                        return await self._dead_letter(record, exc)
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

    async def _dead_letter(self, record: ConsumerRecord[bytes, bytes], exc: BaseException) -> str:
        """Send the original record to ``<topic>.dlq`` through the outbox, exactly once."""
        reason = exc.reason if isinstance(exc, PermanentError) else "handler_error"
        message = dead_letter_message(
            record, reason, exc, self._settings.consumer_group(record.topic)
        )
        marker = f"dlq:{record.topic}:{record.partition}:{record.offset}"
        delays = backoff_delays(
            self._settings.retry_initial_backoff_s, self._settings.retry_max_backoff_s
        )
        while True:
            try:
                async with unit_of_work(self._pool(), self._source) as uow:
                    if await uow.record_inbox(marker, record.topic):
                        uow.publish_raw(message)
                break
            except Exception as err:
                if not is_transient(err):
                    raise
                await asyncio.sleep(next(delays))
        log.warning(
            "dead-lettered %s@%s/%s: %s", record.topic, record.partition, record.offset, exc
        )
        metrics.DEAD_LETTERED.labels(record.topic, reason).inc()
        return "dead_lettered"


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
