"""Message plumbing of the event path: encoding, decoding, error kinds, backoff, dead letters."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg
import pytest
from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError, NodeNotReadyError
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from contracts.events import (
    ConsentEvent,
    ConsentEvidence,
    ConsentMechanism,
    ConsentState,
)
from contracts.topics import CONSENT_EVENTS, FINDINGS, POLICIES
from services.runtime import backoff
from services.runtime.backoff import backoff_delays
from services.runtime.consumer import dead_letter_message
from services.runtime.errors import ContractViolation, PermanentError, is_transient
from services.runtime.messages import decode_event, encode_event
from services.runtime.outbox import OutboxMessage
from services.runtime.telemetry import extract_from_headers
from services.runtime.testing import dataset_finding

T0 = datetime(2025, 1, 10, 9, 30, tzinfo=UTC)


def consent_event(**overrides: Any) -> ConsentEvent:
    fields: dict[str, Any] = {
        "consent_event_id": UUID("0f8fad5b-d9cb-469f-a165-70867728950e"),
        "subject_id": "member:8812",
        "jurisdiction": "GB",
        "purpose": "ai.training.generative",
        "data_categories": ("user.content.public",),
        "state": ConsentState.WITHDRAWN,
        "mechanism": ConsentMechanism.OPT_OUT,
        "policy_version": "2024-09-18",
        "effective_at": T0,
        "recorded_at": T0,
        "source_system": "settings",
        "evidence": ConsentEvidence(collection_point="settings/genai"),
    }
    fields.update(overrides)
    return ConsentEvent(**fields)


def decode(message: OutboxMessage, *, topic: Any = CONSENT_EVENTS, **overrides: Any) -> Any:
    fields: dict[str, Any] = {
        "value": message.value,
        "headers": list(message.headers),
        "partition": 3,
        "offset": 42,
        "key": message.key,
    }
    fields.update(overrides)
    return decode_event(topic, **fields)


def consent_message(**overrides: Any) -> OutboxMessage:
    event = consent_event(**overrides)
    return encode_event(CONSENT_EVENTS, event, key=event.subject_id, source="consent")


def replace_header(message: OutboxMessage, name: str, value: bytes) -> list[tuple[str, bytes]]:
    return [(n, value if n == name else v) for n, v in message.headers]


# --- encode / decode ------------------------------------------------------------------


def test_consent_event_round_trips_through_an_outbox_record() -> None:
    event = consent_event(erasure_requested=True, data_categories=("user", "user.contact"))
    message = encode_event(CONSENT_EVENTS, event, key=event.subject_id, source="consent")

    assert message.topic == "consent.events.v1"
    assert message.key == b"member:8812"
    decoded = decode(message)

    assert decoded.body == event
    assert decoded.envelope.type == "io.consenttrace.consent.changed"
    assert decoded.envelope.source == "consent"
    assert decoded.envelope.subject == "member:8812"
    assert (decoded.topic, decoded.partition, decoded.offset) == ("consent.events.v1", 3, 42)
    assert decoded.key == b"member:8812"
    assert decoded.id == decoded.envelope.id


def test_the_body_is_bare_json_of_the_contract() -> None:
    event = consent_event()
    message = encode_event(CONSENT_EVENTS, event, key=event.subject_id, source="consent")
    body = json.loads(message.value)
    assert body["subject_id"] == "member:8812"
    assert body["evidence"]["notice_text_hash"] is None
    assert ConsentEvent.model_validate(body) == event


def test_event_id_can_be_chosen_and_is_random_otherwise() -> None:
    event = consent_event()
    chosen = encode_event(
        CONSENT_EVENTS, event, key="k", source="consent", event_id=str(event.consent_event_id)
    )
    assert decode(chosen).id == str(event.consent_event_id)
    first, second = (decode(consent_message()).id for _ in range(2))
    assert first != second


def test_encode_refuses_a_body_of_another_model() -> None:
    finding = dataset_finding(finding_id=UUID(int=1), detected_at=T0)
    with pytest.raises(TypeError, match=r"consent\.events\.v1 carries ConsentEvent"):
        encode_event(CONSENT_EVENTS, finding, key="k", source="registry")
    with pytest.raises(TypeError, match="DatasetFinding, not ConsentEvent"):
        encode_event(FINDINGS, consent_event(), key="k", source="consent")


def test_wrong_ce_type_is_a_contract_violation() -> None:
    message = consent_message()
    with pytest.raises(ContractViolation, match=r"'io\.consenttrace\.consent\.changed'"):
        decode(message, topic=POLICIES)
    headers = replace_header(message, "ce_type", b"io.consenttrace.other")
    with pytest.raises(ContractViolation, match=r"ce_type 'io\.consenttrace\.other' is not"):
        decode(message, headers=headers)


def test_missing_envelope_headers_are_a_contract_violation() -> None:
    message = consent_message()
    headers = [h for h in message.headers if h[0] != "ce_id"]
    with pytest.raises(ContractViolation, match="ce_id"):
        decode(message, headers=headers)
    with pytest.raises(ContractViolation, match="missing CloudEvents headers"):
        decode(message, headers=[])


@pytest.mark.parametrize("value", [b"not json", b"{", b"", b"\xff\xfe"])
def test_a_body_that_is_not_json_is_a_contract_violation(value: bytes) -> None:
    with pytest.raises(ContractViolation, match=r"^<body>: Invalid JSON"):
        decode(consent_message(), value=value)


def test_json_that_is_not_an_object_is_a_contract_violation() -> None:
    with pytest.raises(ContractViolation, match=r"^<body>: Input should be an object"):
        decode(consent_message(), value=b"[1, 2]")


def test_json_violating_the_contract_names_each_field() -> None:
    body = json.loads(consent_message().value)
    body.update(subject_id="has space", jurisdiction="germany")
    del body["purpose"]
    with pytest.raises(ContractViolation) as excinfo:
        decode(consent_message(), value=json.dumps(body).encode())
    message = str(excinfo.value)
    assert "subject_id: String should match pattern" in message
    assert "jurisdiction: String should match pattern" in message
    assert "purpose: Field required" in message
    assert "germany" not in message, "input values (personal data) must not leak into errors"


def test_nested_contract_errors_carry_their_path() -> None:
    body = json.loads(consent_message().value)
    body["evidence"]["surprise"] = 1
    with pytest.raises(ContractViolation, match=r"evidence\.surprise: Extra inputs"):
        decode(consent_message(), value=json.dumps(body).encode())


def test_a_tombstone_is_a_contract_violation() -> None:
    with pytest.raises(ContractViolation, match=r"empty message body \(tombstone\)"):
        decode(consent_message(), value=None)


def test_contract_violations_are_dead_lettered_not_retried() -> None:
    exc = ContractViolation("x")
    assert isinstance(exc, PermanentError)
    assert exc.reason == "contract_violation"
    assert not is_transient(exc)


def test_a_body_of_an_unknown_schema_version_is_refused() -> None:
    message = consent_message()
    headers = replace_header(message, "ce_schemaversion", b"2")
    with pytest.raises(ContractViolation, match="schemaversion"):
        decode(message, headers=headers)


# --- trace context ----------------------------------------------------------------------


def test_traceparent_is_injected_inside_a_span() -> None:
    tracer = TracerProvider().get_tracer(__name__)
    with tracer.start_as_current_span("consent intake") as span:
        message = consent_message()
    context = span.get_span_context()

    headers = dict(message.headers)
    version, trace_id, parent_id, flags = headers["traceparent"].decode().split("-")
    assert (version, trace_id, parent_id) == (
        "00",
        f"{context.trace_id:032x}",
        f"{context.span_id:016x}",
    )
    assert int(flags, 16) & 0x01, "sampled"
    decoded = decode(message)
    assert decoded.body == consent_event()
    continued = trace.get_current_span(extract_from_headers(message.headers))
    assert continued.get_span_context().trace_id == context.trace_id


def test_no_traceparent_outside_a_span() -> None:
    names = [name for name, _ in consent_message().headers]
    assert "traceparent" not in names
    assert "tracestate" not in names


# --- transient or permanent -------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        OSError("network unreachable"),
        ConnectionRefusedError(111, "refused"),
        ConnectionResetError(),
        TimeoutError(),  # asyncio.TimeoutError is this class since Python 3.11
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.SerializationError("could not serialize access"),
        asyncpg.exceptions.DeadlockDetectedError("deadlock detected"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
        asyncpg.exceptions.AdminShutdownError("terminating connection"),
        asyncpg.exceptions.InterfaceError("connection is closed"),
        KafkaConnectionError("broker down"),
        NodeNotReadyError("node not ready"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_infrastructure_failures_are_transient(exc: BaseException) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.UniqueViolationError("duplicate key"),
        asyncpg.exceptions.DataError("invalid input"),
        asyncpg.exceptions.InvalidTextRepresentationError("invalid input syntax"),
        asyncpg.exceptions.UndefinedTableError("relation does not exist"),
        asyncpg.InterfaceError("the server expects 2 arguments for this query, 1 was passed"),
        ValueError("bad"),
        KeyError("k"),
        PermanentError("no"),
        ContractViolation("no"),
        MessageSizeTooLargeError(),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_of_the_message_or_the_code_are_not_transient(exc: BaseException) -> None:
    assert not is_transient(exc)


# --- backoff ------------------------------------------------------------------------------

initials = st.floats(min_value=1e-3, max_value=100, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(initial=initials, factor=st.floats(min_value=1, max_value=1e4), count=st.integers(1, 40))
def test_delays_are_jittered_below_a_doubling_capped_ceiling(
    initial: float, factor: float, count: int
) -> None:
    maximum = initial * factor
    delays = list(itertools.islice(backoff_delays(initial, maximum), count))
    for n, delay in enumerate(delays):
        ceiling = min(initial * 2**n, maximum)
        assert ceiling / 2 <= delay <= ceiling


@pytest.fixture
def jitter_bounds(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[float, float]]]:
    """Record the (low, high) of every jitter draw; each draw returns its high bound."""
    calls: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        calls.append((low, high))
        return high

    monkeypatch.setattr(backoff.random, "uniform", uniform)
    yield calls


def test_ceilings_double_then_stay_at_the_maximum(
    jitter_bounds: list[tuple[float, float]],
) -> None:
    delays = list(itertools.islice(backoff_delays(0.1, 1.0), 7))
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert [low for low, _ in jitter_bounds] == pytest.approx([d / 2 for d in delays])


def test_no_delay_exceeds_the_maximum_even_when_initial_is_larger(
    jitter_bounds: list[tuple[float, float]],
) -> None:
    delays = list(itertools.islice(backoff_delays(20.0, 10.0), 3))
    assert max(delays) <= 10.0


# --- dead letters --------------------------------------------------------------------------


def consumer_record(
    *,
    key: bytes | None = b"member:8812",
    value: bytes | None = b"\xffnot json",
    headers: list[tuple[str, bytes]] | None = None,
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="consent.events.v1",
        partition=2,
        offset=1017,
        timestamp=1_736_500_000_000,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=headers if headers is not None else [],
    )


ORIGINAL_HEADERS = [
    ("ce_id", b"evt-1"),
    ("ce_id", b"evt-1-duplicate"),
    ("empty", b""),
    ("binary", b"\x00\xff"),
    ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
]


def test_dead_letter_keeps_the_original_record_and_adds_the_error() -> None:
    record = consumer_record(headers=ORIGINAL_HEADERS)
    exc = ContractViolation("<body>: Invalid JSON: expected value at line 1 column 1")

    message = dead_letter_message(record, exc.reason, exc, "registry.consent.events.v1")

    assert message.topic == "consent.events.v1.dlq"
    assert message.key == b"member:8812"
    assert message.value == b"\xffnot json"
    assert list(message.headers[: len(ORIGINAL_HEADERS)]) == ORIGINAL_HEADERS
    added = dict(message.headers[len(ORIGINAL_HEADERS) :])
    assert added["dlq_reason"] == b"contract_violation"
    assert added["dlq_error"] == str(exc).encode()
    assert added["dlq_exception"] == b"services.runtime.errors.ContractViolation"
    assert added["dlq_source_topic"] == b"consent.events.v1"
    assert added["dlq_source_partition"] == b"2"
    assert added["dlq_source_offset"] == b"1017"
    assert added["dlq_consumer_group"] == b"registry.consent.events.v1"
    failed_at = datetime.fromisoformat(added["dlq_failed_at"].decode())
    assert failed_at.tzinfo is not None
    assert all(isinstance(v, bytes) for _, v in message.headers)


def test_dead_letter_keeps_empty_values_and_missing_keys() -> None:
    message = dead_letter_message(
        consumer_record(key=None, value=b""), "handler_error", RuntimeError("boom"), "g"
    )
    assert message.key is None
    assert message.value == b""
    assert dict(message.headers)["dlq_exception"] == b"builtins.RuntimeError"


def test_dead_letter_of_a_tombstone_does_not_fail() -> None:
    exc = ContractViolation("empty message body (tombstone) on an event topic")
    message = dead_letter_message(consumer_record(value=None), exc.reason, exc, "g")
    assert message.topic == "consent.events.v1.dlq"
    assert dict(message.headers)["dlq_error"] == str(exc).encode()


def test_dead_letter_error_text_is_bounded() -> None:
    message = dead_letter_message(consumer_record(), "handler_error", ValueError("x" * 10_000), "g")
    assert len(dict(message.headers)["dlq_error"]) == 4000
