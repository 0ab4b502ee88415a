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
from contracts.registration import TYPE_PREFIX, RegistrationMessage

__all__ = [
    "ALL_TOPICS",
    "CASES",
    "CONSENT_EVENTS",
    "DELETION_TASKS",
    "FINDINGS",
    "INTAKE_TOPICS",
    "MODEL_FLAGS",
    "OPENLINEAGE",
    "POLICIES",
    "REGISTRATIONS",
    "TASK_RESULTS",
    "TOPICS",
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
    "consent.policies.v1", "policy_id", "io.consenttrace.policy.published", PolicyChange
)
FINDINGS = Topic(
    "registry.findings.v1", "dataset version key", "io.consenttrace.dataset.finding", DatasetFinding
)
OPENLINEAGE = Topic(
    "lineage.openlineage.v1", "job namespace/name", "io.openlineage.run.event", RunEvent
)
"""Written as the OpenLineage Kafka transport writes it: JSON body, no CloudEvents headers."""
MODEL_FLAGS = Topic(
    "lineage.model-flags.v1", "model version key", "io.consenttrace.model.flag", ModelFlag
)
DELETION_TASKS = Topic(
    "deletion.tasks.v1", "case_id", "io.consenttrace.deletion.task", DeletionTask
)
TASK_RESULTS = Topic(
    "deletion.task-results.v1", "case_id", "io.consenttrace.deletion.task-result", TaskResult
)
CASES = Topic(
    "deletion.cases.v1", "case_id", "io.consenttrace.deletion.case-status", CaseStatusChanged
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
    "registry.registrations.v1", "dataset version key", TYPE_PREFIX, RegistrationMessage
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
