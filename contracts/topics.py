"""Every topic, its key and its event type, in one place (DESIGN §5)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from contracts.events import (
    CaseStatusChanged,
    ConsentEvent,
    DatasetFinding,
    DeletionTask,
    ModelFlag,
    PolicyChange,
    TaskResult,
)
from contracts.openlineage import RunEvent
from contracts.registration import PARTITIONS as REGISTRATION_PARTITIONS
from contracts.registration import TYPE_PREFIX, RegistrationMessage

__all__ = [
    "ALL_TOPICS",
    "CASES",
    "CONSENT_EVENTS",
    "DELETION_TASKS",
    "DLQ_PARTITIONS",
    "FINDINGS",
    "INTAKE_TOPICS",
    "MODEL_FLAGS",
    "OPENLINEAGE",
    "POLICIES",
    "REGISTRATIONS",
    "TASK_RESULTS",
    "TOPICS",
    "TOPIC_PARTITIONS",
    "Topic",
    "dlq_of",
]

DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True, slots=True)
class Topic:
    """A contract topic: its name, what its key is, and the body it carries."""

    name: str
    key: str
    event_type: str
    """CloudEvents ``type`` of every event on the topic; for a topic carrying a family of
    messages (``REGISTRATIONS``), their common prefix (each kind is ``<event_type>.<kind>``)."""
    model: type[BaseModel]
    partitions: int = 6
    """Partitions it is created with (compose's ``kafka-init``, the Kubernetes base's
    ``KafkaTopic``, the embedded broker): the most members of one consumer group that can
    share it. Sized before the first event: adding partitions later moves keys."""

    @property
    def dlq(self) -> str:
        return dlq_of(self.name)


def dlq_of(topic: str) -> str:
    """Dead letters of ``topic`` go to ``<topic>.dlq``."""
    return f"{topic}{DLQ_SUFFIX}"


CONSENT_EVENTS = Topic(
    "consent.events.v1", "subject_id", "io.consenttrace.consent.changed", ConsentEvent
)
POLICIES = Topic(
    "consent.policies.v1", "policy_id", "io.consenttrace.policy.published", PolicyChange, 1
)
"""One partition: a handful of policy versions, read in the order they were published."""
FINDINGS = Topic(
    "registry.findings.v1", "dataset version key", "io.consenttrace.dataset.finding", DatasetFinding
)
OPENLINEAGE = Topic(
    "lineage.openlineage.v1", "job namespace/name", "io.openlineage.run.event", RunEvent
)
"""Written as the OpenLineage Kafka transport writes it: JSON body, no CloudEvents headers."""
MODEL_FLAGS = Topic(
    "lineage.model-flags.v1", "model version key", "io.consenttrace.model.flag", ModelFlag, 3
)
DELETION_TASKS = Topic(
    "deletion.tasks.v1", "case_id", "io.consenttrace.deletion.task", DeletionTask
)
TASK_RESULTS = Topic(
    "deletion.task-results.v1", "case_id", "io.consenttrace.deletion.task-result", TaskResult
)
CASES = Topic(
    "deletion.cases.v1", "case_id", "io.consenttrace.deletion.case-status", CaseStatusChanged, 3
)

TOPICS: tuple[Topic, ...] = (
    CONSENT_EVENTS,
    POLICIES,
    FINDINGS,
    OPENLINEAGE,
    MODEL_FLAGS,
    DELETION_TASKS,
    TASK_RESULTS,
    CASES,
)

REGISTRATIONS = Topic(
    "registry.registrations.v1",
    "dataset version key",
    TYPE_PREFIX,
    RegistrationMessage,
    REGISTRATION_PARTITIONS,
)
"""Dataset-version registration by Kafka, read by the registry (see contracts.registration):
``opened`` / ``batch`` / ``sealed``, each with its own ``ce_type`` under ``TYPE_PREFIX``.
Key: ``DatasetRef.key``. Created with ``contracts.registration.PARTITIONS`` (6) partitions
and ``RETENTION_MS`` (30 days); its dead letters in ``registry.registrations.v1.dlq``."""

INTAKE_TOPICS: tuple[Topic, ...] = (REGISTRATIONS,)
"""Topics a service reads from producers outside ConsentTrace (DESIGN §5: "a service may
add private ones"); not among ``TOPICS``, the topics between the four services."""

ALL_TOPICS: tuple[str, ...] = tuple(t.name for t in (*TOPICS, *INTAKE_TOPICS)) + tuple(
    t.dlq for t in (*TOPICS, *INTAKE_TOPICS)
)
"""Every topic name the system uses (between the services and intake), dead letters included."""

DLQ_PARTITIONS = 1
"""A dead-letter topic is read by people and tools, not by a scaled consumer group."""

TOPIC_PARTITIONS: dict[str, int] = {
    **{t.name: t.partitions for t in (*TOPICS, *INTAKE_TOPICS)},
    **{t.dlq: DLQ_PARTITIONS for t in (*TOPICS, *INTAKE_TOPICS)},
}
"""Each topic of ``ALL_TOPICS`` and its partitions: what every deployment creates."""
