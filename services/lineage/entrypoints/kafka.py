"""OpenLineage events on the wire: ``lineage.openlineage.v1`` as the Kafka transport writes it,
and the parsing the HTTP endpoint (``POST /api/v1/lineage``) shares with it.

The ``openlineage-python`` KafkaTransport produces the event's JSON (UTF-8, no CloudEvents
headers, no headers at all) keyed ``run:<job namespace>/<job name>`` (the parent's or root
parent's job when the run has a ``parent`` facet). The key only spreads runs over
partitions, so it is not read; the value's SHA-256 is the event id the inbox deduplicates.

Only RunEvents are accepted. A DatasetEvent or JobEvent (OpenLineage "static lineage")
declares what a dataset or job is, not that a run read or wrote a dataset version, so it
cannot be evidence in the graph: it is refused with a reason naming its kind (HTTP 422,
dead letter on Kafka) instead of being kept and silently ignored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from contracts.envelope import Envelope
from contracts.openlineage import AmbiguousOpenLineageEventError, parse_openlineage_event
from contracts.topics import Topic
from services.lineage.adapters.repository import ReceivedRunEvent
from services.runtime.errors import ContractViolation
from services.runtime.messages import Event

__all__ = ["EventRejected", "decode_openlineage", "parse_run_event"]

_JSON_OBJECT: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])
_SHOWN_ERRORS = 10


class EventRejected(ValueError):
    """The bytes are not an OpenLineage 2-0-2 RunEvent; ``errors`` says where and why.

    Each error is ``{"loc": [...], "msg": ..., "type": ...}`` with ``loc`` in the spec's
    (camelCase) names, e.g. ``["run", "runId"]``, the shape FastAPI uses for 422 bodies.
    """

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        super().__init__(
            "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or '<event>'}: {e['msg']}"
                for e in errors[:_SHOWN_ERRORS]
            )
            + (f"; and {len(errors) - _SHOWN_ERRORS} more" if len(errors) > _SHOWN_ERRORS else "")
        )


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


def _static_event_error(kind: str, payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    schema_url = payload.get("schemaURL")
    meant_as_run_event = "eventType" in payload or (
        isinstance(schema_url, str) and schema_url.endswith("RunEvent")
    )
    if meant_as_run_event and "run" not in payload:
        # A RunEvent that lost its run matches JobEvent (or DatasetEvent): say what is missing.
        return [
            {
                "loc": ["run"],
                "msg": "Field required: the event names an eventType or a RunEvent schemaURL,"
                f" so it is meant as a RunEvent, but without 'run' it is a {kind}",
                "type": "missing",
            }
        ]
    return [
        {
            "loc": [],
            "msg": f"a {kind} (OpenLineage static lineage) is not accepted: it says what a"
            " dataset or job is, not which run read or wrote which dataset version; send"
            " RunEvents",
            "type": "unsupported_event_kind",
        }
    ]


def parse_run_event(received: bytes, *, via: str) -> ReceivedRunEvent:
    """Parse the bytes of one OpenLineage event; only a RunEvent is accepted.

    The spec's ``oneOf`` is applied (``parse_openlineage_event``); only the spec's
    camelCase names are read. Raises ``EventRejected`` naming each problem.
    """
    try:
        payload = _JSON_OBJECT.validate_json(received)
    except ValidationError as exc:
        raise EventRejected(_errors(exc)) from exc
    if "run" in payload:
        # A JobEvent never has a run, a DatasetEvent never with a job (which a RunEvent
        # needs): with a run and no dataset, only a RunEvent can match. Validate once.
        try:
            return ReceivedRunEvent.of(payload, received=received, via=via)
        except ValidationError as exc:
            if "dataset" not in payload:
                raise EventRejected(_errors(exc)) from exc
    try:
        other = parse_openlineage_event(payload)
    except ValidationError as exc:
        raise EventRejected(_errors(exc)) from exc
    except AmbiguousOpenLineageEventError as exc:
        raise EventRejected([{"loc": [], "msg": str(exc), "type": "ambiguous_event"}]) from exc
    # Not a RunEvent (it failed above, or has no run): a DatasetEvent or a JobEvent.
    raise EventRejected(_static_event_error(type(other).__name__, payload))


def decode_openlineage(
    topic: Topic,
    *,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]],
    partition: int,
    offset: int,
    key: bytes | None,
    logged_at: datetime | None = None,
) -> Event[ReceivedRunEvent]:
    """The transport sends bare JSON without CloudEvents headers: the body's digest is its id.

    Anything but a valid RunEvent is a ContractViolation (the runtime dead-letters it with
    the reason in ``dlq_error``).
    """
    if value is None:
        raise ContractViolation("empty OpenLineage message (a tombstone carries no event)")
    try:
        body = parse_run_event(value, via=f"kafka:{topic.name}/{partition}@{offset}")
    except EventRejected as exc:
        raise ContractViolation(f"not an OpenLineage 2-0-2 RunEvent: {exc}") from exc
    envelope = Envelope(
        id="ol:" + hashlib.sha256(value).hexdigest(),
        type=topic.event_type,
        source=str(body.producer),
        time=body.event_time if body.event_time.tzinfo else datetime.now(UTC),
    )
    return Event(
        envelope, body, topic.name, partition, offset, key, logged_at, tuple(headers), value
    )
