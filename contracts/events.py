"""Event bodies carried on the ConsentTrace topics (DESIGN §4, §5).

The CloudEvents attributes (id, type, source, time) travel in Kafka headers
(see :mod:`contracts.envelope`); these models are the JSON bodies.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any
from uuid import UUID

from pydantic import Field, StringConstraints, model_validator

from contracts.base import (
    AwareDatetime,
    CategoryPath,
    Contract,
    Count,
    DatasetRef,
    Jurisdiction,
    ModelRef,
    PurposePath,
    SubjectId,
)
from contracts.policy import PolicyDocument
from contracts.vocabulary import ConsentMechanism, ConsentState

__all__ = [
    "CaseKind",
    "CaseState",
    "CaseStatusChanged",
    "ConsentEvent",
    "ConsentEvidence",
    "ConsentMechanism",
    "ConsentState",
    "DatasetFinding",
    "DeletionTask",
    "FindingReason",
    "FindingStatus",
    "ModelFlag",
    "PolicyChange",
    "Severity",
    "TaskOutcome",
    "TaskResult",
]

_ShortText = Annotated[str, StringConstraints(min_length=1, max_length=256)]
_LongText = Annotated[str, StringConstraints(max_length=4096)]


# --- consent -----------------------------------------------------------------------


class ConsentEvidence(Contract):
    """How the consent was collected (after Kantara Consent Receipt / ISO 27560)."""

    collection_point: _ShortText
    notice_text_hash: Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")] | None = (
        None
    )
    user_agent: Annotated[str, StringConstraints(max_length=1024)] | None = None
    channel: _ShortText | None = None


class ConsentEvent(Contract):
    """One appended fact of the consent ledger. Key: ``subject_id``."""

    consent_event_id: UUID
    subject_id: SubjectId
    jurisdiction: Jurisdiction
    purpose: PurposePath
    data_categories: Annotated[tuple[CategoryPath, ...], Field(min_length=1, max_length=64)]
    state: ConsentState
    mechanism: ConsentMechanism
    policy_version: _ShortText
    effective_at: AwareDatetime
    recorded_at: AwareDatetime
    source_system: _ShortText
    evidence: ConsentEvidence
    erasure_requested: bool = False
    """True when the subject also asked for erasure (opens a deletion case)."""


# --- policies -----------------------------------------------------------------------


class PolicyChange(Contract):
    """A policy version was published. Key: ``policy_id``."""

    policy: PolicyDocument
    published_at: AwareDatetime
    supersedes_version: _ShortText | None = None


# --- findings and flags ------------------------------------------------------------


class Severity(StrEnum):
    DESTROY_REQUIRED = "destroy_required"
    RETRAIN_REQUIRED = "retrain_required"
    EXCLUDE_FROM_FUTURE = "exclude_from_future"
    REVIEW = "review"

    @property
    def flags_models(self) -> bool:
        """`exclude_from_future` constrains future snapshots only (DESIGN §3)."""
        return self is not Severity.EXCLUDE_FROM_FUTURE


class FindingReason(StrEnum):
    IMPROPER_USE = "improper_use"
    LATER_WITHDRAWAL = "later_withdrawal"


class FindingStatus(StrEnum):
    ACTIVE = "active"
    RETRACTED = "retracted"


class DatasetFinding(Contract):
    """Why a dataset version is affected. Key: the dataset version's key."""

    finding_id: UUID
    """Deterministic: derived from the cause, so replays never double it."""
    status: FindingStatus
    dataset: DatasetRef
    severity: Severity
    reason: FindingReason
    policy_id: _ShortText
    policy_version: _ShortText
    rule: _LongText
    affected_records: Count
    affected_subjects: Count
    sample_record_ids: Annotated[tuple[_ShortText, ...], Field(max_length=100)] = ()
    cause_event_ids: Annotated[tuple[UUID, ...], Field(max_length=1000)] = ()
    detected_at: AwareDatetime


class ModelFlag(Contract):
    """A model version is affected by a finding, with the path that proves it. Key: model."""

    flag_id: UUID
    status: FindingStatus
    model: ModelRef
    finding_id: UUID
    severity: Severity
    reason: FindingReason
    evidence_path: Annotated[tuple[_ShortText, ...], Field(min_length=2)]
    """Node ids from the finding's dataset version through runs to this model."""
    flagged_at: AwareDatetime


# --- deletion ----------------------------------------------------------------------


class CaseKind(StrEnum):
    SUBJECT_ERASURE = "subject_erasure"
    CATEGORY_PURGE = "category_purge"
    DATASET_PURGE = "dataset_purge"
    MODEL_DESTRUCTION = "model_destruction"


class CaseState(StrEnum):
    RECEIVED = "received"
    SCOPING = "scoping"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    EXECUTING = "executing"
    VERIFYING = "verifying"
    COMPLETED = "completed"
    REJECTED = "rejected"
    ON_HOLD = "on_hold"
    CANCELED = "canceled"
    FAILED = "failed"


class CaseStatusChanged(Contract):
    """A deletion case changed state. Key: ``case_id``."""

    case_id: UUID
    kind: CaseKind
    state: CaseState
    previous_state: CaseState | None
    actor: _ShortText
    reason: _LongText
    deadline: AwareDatetime | None
    changed_at: AwareDatetime


class DeletionTask(Contract):
    """Work for one target system. Key: ``case_id``."""

    task_id: UUID
    case_id: UUID
    target_system: _ShortText
    action: Annotated[str, StringConstraints(pattern=r"^[a-z_]+$")]
    targets: Annotated[tuple[_ShortText, ...], Field(min_length=1)]
    issued_at: AwareDatetime
    parameters: dict[str, Any] = Field(default_factory=dict)


class TaskOutcome(StrEnum):
    DONE = "done"
    FAILED = "failed"
    NOT_APPLICABLE = "not_applicable"


class TaskResult(Contract):
    """An executor's acknowledgement of a task. Key: ``case_id``."""

    task_id: UUID
    case_id: UUID
    executor: _ShortText
    outcome: TaskOutcome
    reason: _LongText = ""
    completed_at: AwareDatetime

    @model_validator(mode="after")
    def _failure_needs_reason(self) -> TaskResult:
        if self.outcome is TaskOutcome.FAILED and not self.reason:
            raise ValueError("a failed task result must say why (reason)")
        return self
