"""Hostile messages on every topic a service consumes, against the services as processes.

For each topic (the subscriptions are read from each service's spec, so a new one is
covered the day it is added): a dozen bad records, then one valid record. Every bad record
must reach ``<topic>.dlq`` exactly once per consumer group reading the topic, with its
original key, bytes and headers plus ``dlq_reason`` / ``dlq_error``; the valid record after
them must be processed (the consumer went on), and never dead-lettered.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.base import DatasetRef, ModelRef
from contracts.events import (
    ConsentEvent,
    ConsentEvidence,
    ConsentMechanism,
    ConsentState,
    DeletionTask,
    FindingReason,
    FindingStatus,
    ModelFlag,
    PolicyChange,
    Severity,
    TaskOutcome,
    TaskResult,
)
from contracts.policy import LawfulBasis, PolicyDocument, PolicyRule
from contracts.registration import RegistrationOpened, registration_message
from contracts.topics import (
    CONSENT_EVENTS,
    DELETION_TASKS,
    FINDINGS,
    MODEL_FLAGS,
    OPENLINEAGE,
    POLICIES,
    REGISTRATIONS,
    TASK_RESULTS,
    Topic,
)
from services.runtime.messages import encode_event
from services.runtime.testing import (
    ServiceProcess,
    StartStack,
    collect,
    dataset_finding,
    header,
    produce,
)

pytestmark = pytest.mark.integration

SERVICES = ("consent", "registry", "lineage", "deletion")
T0 = datetime(2024, 6, 1, tzinfo=UTC)
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


def consumers() -> dict[str, tuple[str, ...]]:
    """Topic name → the services that consume it, from each service's spec."""
    found: dict[str, list[str]] = {}
    for service in SERVICES:
        spec = importlib.import_module(f"services.{service}.app").SPEC
        for subscription in spec.subscriptions:
            found.setdefault(subscription.topic.name, []).append(service)
    return {topic: tuple(names) for topic, names in found.items()}


@pytest.fixture(scope="module")
def stack(start_stack: StartStack) -> Iterator[dict[str, ServiceProcess]]:
    readers = sorted({s for names in consumers().values() for s in names})
    with start_stack(readers, "hostile_kafka") as services:
        yield services


# --------------------------------------------------------------- one valid record per topic


def _event(topic: Topic, body: Any, key: str) -> Record:
    message = encode_event(topic, body, key=key, source="/test/hostile")
    return message.key, message.value, list(message.headers)


def consent_event(tag: str) -> Record:
    body = ConsentEvent(
        consent_event_id=uuid.uuid4(),
        subject_id=f"{tag}-member",
        jurisdiction="US",
        purpose=f"{tag}.training",
        data_categories=("user",),
        state=ConsentState.GRANTED,
        mechanism=ConsentMechanism.EXPLICIT_OPT_IN,
        policy_version="1",
        effective_at=T0,
        recorded_at=T0,
        source_system="hostile",
        evidence=ConsentEvidence(collection_point="hostile"),
    )
    return _event(CONSENT_EVENTS, body, body.subject_id)


def policy_change(tag: str) -> Record:
    policy = PolicyDocument(
        policy_id=f"{tag}-policy",
        version="1",
        valid_from=T0,
        rules=(
            PolicyRule(
                id="hostile",
                jurisdictions=("US",),
                purposes=(f"{tag}.training",),
                data_categories=("user",),
                lawful_bases=(LawfulBasis(mechanism=ConsentMechanism.EXPLICIT_OPT_IN),),
                description="hostile input test",
            ),
        ),
    )
    return _event(POLICIES, PolicyChange(policy=policy, published_at=T0), policy.policy_id)


def finding(tag: str) -> Record:
    body = dataset_finding(
        ("s3://hostile", tag, "v1"),
        severity=Severity.REVIEW,
        reason=FindingReason.LATER_WITHDRAWAL,
        policy_id=f"{tag}-policy",
        rule="hostile",
        detected_at=T0,
    )
    return _event(FINDINGS, body, body.dataset.key)


def model_flag(tag: str) -> Record:
    model = ModelRef(namespace="models://hostile", name=tag, version="1")
    body = ModelFlag(
        flag_id=uuid.uuid4(),
        status=FindingStatus.ACTIVE,
        model=model,
        finding_id=uuid.uuid4(),
        severity=Severity.REVIEW,
        reason=FindingReason.LATER_WITHDRAWAL,
        evidence_path=(f"dataset:s3://hostile:{tag}#v1", model.key),
        flagged_at=T0,
    )
    return _event(MODEL_FLAGS, body, model.key)


def deletion_task(tag: str) -> Record:
    body = DeletionTask(
        task_id=uuid.uuid4(),
        case_id=uuid.uuid4(),
        target_system=f"{tag}-system",  # nobody's: each executor skips it
        action="purge",
        targets=("nothing",),
        issued_at=T0,
    )
    return _event(DELETION_TASKS, body, str(body.case_id))


def task_result(tag: str) -> Record:
    body = TaskResult(
        task_id=uuid.uuid4(),
        case_id=uuid.uuid4(),  # no such case: noted and ignored
        executor=f"{tag}-executor",
        outcome=TaskOutcome.DONE,
        completed_at=T0,
    )
    return _event(TASK_RESULTS, body, str(body.case_id))


def registration_opened(tag: str) -> Record:
    body = RegistrationOpened(
        dataset=DatasetRef(namespace="s3://hostile", name=tag, version="v1"),
        purpose=f"{tag}.training",
        created_at=T0,
    )
    message = registration_message(body, source="/test/hostile")
    return message.key, message.value, list(message.headers)


def run_event(tag: str) -> Record:
    body = {
        "eventTime": T0.isoformat().replace("+00:00", "Z"),
        "eventType": "START",
        "producer": "https://example.com/hostile",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": str(uuid.uuid4()), "facets": {}},
        "job": {"namespace": "hostile", "name": f"train-{tag}"},
        "inputs": [],
        "outputs": [],
    }
    return f"hostile/train-{tag}".encode(), json.dumps(body).encode(), []


@dataclass(frozen=True)
class TopicCase:
    topic: Topic
    valid: Callable[[str], Record]
    text: tuple[str | int, ...]
    """A free-text field of the body: where oversized, NUL and surrogate text goes."""
    enum: tuple[tuple[str | int, ...], str]
    """A field of a closed vocabulary, and a value outside it."""
    envelope: bool = True
    """Whether the topic's records carry CloudEvents headers (OpenLineage's do not)."""
    accepted: frozenset[str] = frozenset()
    """Hostile cases the topic's contract accepts by design (so they are not dead letters)."""


CASES = {
    c.topic.name: c
    for c in (
        TopicCase(CONSENT_EVENTS, consent_event, ("source_system",), (("state",), "maybe")),
        TopicCase(
            POLICIES,
            policy_change,
            ("policy", "rules", 0, "description"),
            (("policy", "rules", 0, "lawful_bases", 0, "mechanism"), "telepathy"),
        ),
        TopicCase(FINDINGS, finding, ("rule",), (("severity",), "apocalyptic")),
        TopicCase(MODEL_FLAGS, model_flag, ("evidence_path", 0), (("status",), "zombie")),
        TopicCase(DELETION_TASKS, deletion_task, ("target_system",), (("action",), "NUKE-IT")),
        TopicCase(TASK_RESULTS, task_result, ("reason",), (("outcome",), "maybe_done")),
        TopicCase(
            REGISTRATIONS, registration_opened, ("dataset", "name"), (("purpose",), "Not A Path!")
        ),
        TopicCase(
            OPENLINEAGE,
            run_event,
            ("job", "name"),
            (("eventType",), "EXPLODE"),
            envelope=False,
            # OpenLineage 2-0-2 allows custom properties and sets no length on a job name.
            accepted=frozenset({"unknown field", "oversized value"}),
        ),
    )
}


def test_every_consumed_topic_has_a_hostile_case() -> None:
    assert set(consumers()) == set(CASES)


# ------------------------------------------------------------------------ hostile records


def _set(body: Any, path: tuple[str | int, ...], value: Any) -> Any:
    body = copy.deepcopy(body)
    node = body
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    return body


def _replace_header(headers: list[tuple[str, bytes]], name: str, value: bytes | None) -> list[Any]:
    return [(k, value if k == name else v) for k, v in headers]


def hostile_records(case: TopicCase, tag: str) -> dict[str, Record]:
    """Name → a bad record, keyed ``<tag>-<name>`` so its dead letter can be told apart."""
    _, value, headers = case.valid(tag)
    assert value is not None
    body = json.loads(value)

    def with_body(new: Any) -> bytes:
        return json.dumps(new, ensure_ascii=True).encode()

    bad: dict[str, tuple[bytes | None, list[tuple[str, bytes]]]] = {
        "not json": (b"\x00not json{", headers),
        "invalid utf-8": (b'{"a": "\xff\xfe\xc3\x28"}', headers),
        "json of the wrong shape": (b"[1, 2, 3]", headers),
        "wrong types": (with_body({k: [] for k in body}), headers),
        "unknown enum value": (with_body(_set(body, *case.enum)), headers),
        "missing field": (with_body({k: v for k, v in list(body.items())[1:]}), headers),
        "unknown field": (with_body({**body, "injected": "'; DROP TABLE inbox; --"}), headers),
        "oversized value": (with_body(_set(body, case.text, "x" * 900_000)), headers),
        "nul byte": (with_body(_set(body, case.text, "before\u0000after")), headers),
        "lone surrogate": (with_body(_set(body, case.text, "before\ud800after")), headers),
        "empty value": (b"", headers),
        "tombstone": (None, headers),
        "deep nesting": (b"[" * 50_000 + b"]" * 50_000, headers),
    }
    if case.envelope:
        bad |= {
            "no CloudEvents headers": (value, []),
            "wrong ce_type": (value, _replace_header(headers, "ce_type", b"io.example.other")),
            "wrong ce_specversion": (value, _replace_header(headers, "ce_specversion", b"0.3")),
            "ce_time not a time": (value, _replace_header(headers, "ce_time", b"yesterday")),
            "header not utf-8": (value, _replace_header(headers, "ce_id", b"\xff\xfe")),
            "header without value": (value, _replace_header(headers, "ce_id", None)),
        }
    return {
        name: (f"{tag}-{name}".encode(), v, h)
        for name, (v, h) in bad.items()
        if name not in case.accepted
    }


@pytest.mark.parametrize("topic", sorted(CASES))
async def test_bad_messages_are_dead_lettered_once_and_the_consumer_goes_on(
    stack: dict[str, ServiceProcess], kafka_bootstrap: str, topic: str
) -> None:
    case = CASES[topic]
    tag = f"hk{uuid.uuid4().hex[:8]}"
    bad = hostile_records(case, tag)
    valid = case.valid(tag)
    await produce(kafka_bootstrap, topic, [*bad.values(), valid])
    readers = [stack[name] for name in consumers()[topic]]

    # Every record handled, its offset committed: the bad ones dead-lettered, the valid one
    # processed (it is no dead letter, see below).
    deadline = time.monotonic() + 60
    for reader in readers:
        while not await reader.caught_up(topic):
            assert time.monotonic() < deadline, f"{reader.name} never got past the records"
            await asyncio.sleep(0.2)

    groups = {r.consumer_group(topic): r.name for r in readers}
    dead = await collect(
        kafka_bootstrap,
        case.topic.dlq,
        lambda r: (
            (r.key or b"").startswith(tag.encode()) and header(r, "dlq_consumer_group") in groups
        ),
        expected=len(bad) * len(readers),
        within=90,
    )
    problems = []
    for group, service in groups.items():
        letters = [r for r in dead if header(r, "dlq_consumer_group") == group]
        by_key: dict[bytes | None, list[Any]] = {}
        for letter in letters:
            by_key.setdefault(letter.key, []).append(letter)
        for name, (key, value, headers) in bad.items():
            got = by_key.get(key, [])
            if len(got) != 1:
                problems.append(f"{service}: {name!r} dead-lettered {len(got)} times")
                continue
            letter = got[0]
            if letter.value != (value if value is not None else b""):
                problems.append(f"{service}: {name!r} dead letter lost the original bytes")
            kept = [(k, v if v is not None else b"") for k, v in headers]  # null: empty
            if not all(h in (letter.headers or ()) for h in kept):
                problems.append(f"{service}: {name!r} dead letter lost the original headers")
            if not header(letter, "dlq_reason") or not header(letter, "dlq_error"):
                problems.append(f"{service}: {name!r} dead letter without its reason")
            if header(letter, "dlq_source_topic") != topic:
                problems.append(f"{service}: {name!r} dead letter without its source topic")
        if valid[0] in by_key:
            problems.append(f"{service}: the valid record was dead-lettered")
    reasons = sorted(
        {f"{header(r, 'dlq_reason')}: {(r.key or b'').decode()[len(tag) + 1 :]}" for r in dead}
    )
    assert not problems, "\n".join([*problems, "reasons seen:", *reasons])
