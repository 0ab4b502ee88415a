"""Decoding ``lineage.openlineage.v1`` as the OpenLineage Kafka transport writes it."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

from pydantic import ValidationError

from contracts.envelope import Envelope
from contracts.openlineage import RunEvent
from contracts.topics import Topic
from services.runtime.errors import ContractViolation
from services.runtime.messages import Event

__all__ = ["decode_openlineage"]


def decode_openlineage(
    topic: Topic,
    *,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]],
    partition: int,
    offset: int,
    key: bytes | None,
) -> Event[RunEvent]:
    """The transport sends bare JSON without CloudEvents headers: the body's digest is its id."""
    if value is None:
        raise ContractViolation("empty OpenLineage message")
    try:
        body = RunEvent.model_validate_json(value)
    except ValidationError as exc:
        raise ContractViolation(f"not an OpenLineage 2-0-2 RunEvent: {exc}") from exc
    envelope = Envelope(
        id="ol:" + hashlib.sha256(value).hexdigest(),
        type=topic.event_type,
        source=str(body.producer),
        time=body.event_time if body.event_time.tzinfo else datetime.now(UTC),
    )
    return Event(envelope, body, topic.name, partition, offset, key)
