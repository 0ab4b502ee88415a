"""Decoding ``registry.registrations.v1``: one topic, three message kinds told apart by
their ``ce_type`` (``contracts.registration``).

The runtime's ``decode_event`` reads one type per topic; here the type picks the body's
model, then ``decode_event`` checks the envelope, the schema version and the body exactly
as it does for every topic. A violation is a ``ContractViolation`` (dead-lettered).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import cast

from contracts.envelope import Envelope, EnvelopeError
from contracts.registration import (
    REGISTRATION_TYPES,
    RegistrationBatch,
    RegistrationBody,
    RegistrationOpened,
    RegistrationSealed,
)
from contracts.topics import Topic
from services.runtime.errors import ContractViolation
from services.runtime.messages import Event, decode_event

__all__ = ["decode_registration"]


def decode_registration(
    topic: Topic,
    *,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]],
    partition: int,
    offset: int,
    key: bytes | None,
    logged_at: datetime | None = None,
) -> Event[RegistrationBody]:
    """The body ``ce_type`` announces, validated; the key must be its dataset version's key
    (what keeps one version's messages in order, in one partition)."""
    try:
        type_ = Envelope.from_headers(headers).type
    except EnvelopeError as exc:
        raise ContractViolation(str(exc)) from exc
    model = REGISTRATION_TYPES.get(type_)
    if model is None:
        raise ContractViolation(
            f"ce_type {type_!r} is not one of {', '.join(sorted(REGISTRATION_TYPES))}"
        )
    event = decode_event(
        replace(topic, event_type=type_, model=model),
        value=value,
        headers=headers,
        partition=partition,
        offset=offset,
        key=key,
        logged_at=logged_at,
    )
    body = event.body
    assert isinstance(body, RegistrationOpened | RegistrationBatch | RegistrationSealed)
    expected = body.dataset.key
    if key != expected.encode():
        shown = key.decode("utf-8", "replace") if key is not None else None
        raise ContractViolation(
            f"key {shown!r} is not the dataset version's key {expected!r}: a registration's"
            " messages must share that key to stay in order in one partition"
        )
    return cast(Event[RegistrationBody], event)
