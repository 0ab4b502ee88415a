"""Turning contract bodies into outbox messages and consumed records back into events."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from contracts.envelope import SCHEMA_VERSION, Envelope, EnvelopeError
from contracts.topics import Topic
from services.runtime.errors import ContractViolation
from services.runtime.outbox import OutboxMessage
from services.runtime.telemetry import inject_into_headers

__all__ = ["Event", "decode_event", "encode_event"]

T = TypeVar("T", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class Event(Generic[T]):
    """A consumed event: its CloudEvents attributes, its body and where it came from."""

    envelope: Envelope
    body: T
    topic: str
    partition: int
    offset: int
    key: bytes | None
    logged_at: datetime | None = None
    """The record's Kafka timestamp: when the broker appended it (a topic with
    ``message.timestamp.type=LogAppendTime``) or when its producer created it (the
    default). The same on every replay, unlike the consumer's clock."""
    headers: tuple[tuple[str, bytes | None], ...] = ()
    """The record's headers, its trace context among them (``consumer.continue_trace``)."""
    value: bytes | None = None
    """The record's body as consumed: the JSON ``body`` was validated from. A handler may
    store it as is instead of serializing ``body`` again (the registry's projection)."""

    @property
    def id(self) -> str:
        return self.envelope.id


def encode_event(
    topic: Topic, body: BaseModel, *, key: str, source: str, event_id: str | None = None
) -> OutboxMessage:
    """Wrap a body in a CloudEvents binary-mode record carrying the current trace context."""
    if not isinstance(body, topic.model):
        raise TypeError(f"{topic.name} carries {topic.model.__name__}, not {type(body).__name__}")
    envelope = Envelope.new(type=topic.event_type, source=source, subject=key, id=event_id)
    return OutboxMessage(
        topic=topic.name,
        key=key.encode(),
        value=body.model_dump_json(by_alias=True, exclude_none=False).encode(),
        headers=(*envelope.to_headers(), *inject_into_headers()),
    )


def decode_event(
    topic: Topic,
    *,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]],
    partition: int,
    offset: int,
    key: bytes | None,
    logged_at: datetime | None = None,
) -> Event[BaseModel]:
    """Validate headers and body against the topic's contract, or raise ContractViolation.

    The event keeps the record's headers and bytes, and ``logged_at``, its Kafka time."""
    try:
        envelope = Envelope.from_headers(headers)
    except EnvelopeError as exc:
        raise ContractViolation(str(exc)) from exc
    if envelope.type != topic.event_type:
        raise ContractViolation(f"ce_type {envelope.type!r} is not {topic.event_type!r}")
    if envelope.schemaversion != SCHEMA_VERSION:
        raise ContractViolation(
            f"ce_schemaversion {envelope.schemaversion!r} is not understood here"
            f" (this consumer reads version {SCHEMA_VERSION})"
        )
    if value is None:
        raise ContractViolation("empty message body (tombstone) on an event topic")
    if b"\\u0000" in value and _NUL_ESCAPE.search(value):
        raise ContractViolation(
            "the body holds a NUL character (\\u0000), which no text in a contract may hold"
        )
    try:
        body = topic.model.model_validate_json(value)
    except ValidationError as exc:
        raise ContractViolation(_short(exc)) from exc
    return Event(
        envelope, body, topic.name, partition, offset, key, logged_at, tuple(headers), value
    )


_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
"""``\\u0000`` in JSON text (an odd run of backslashes before ``u0000``): Postgres stores no
NUL in text or jsonb, so such a body is refused here rather than by the database."""


def _short(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}" for e in errors[:10]
    )
