"""Findings for dataset versions affected by a consent withdrawal. Pure."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID, uuid5

from contracts.base import DatasetRef
from contracts.events import (
    ConsentEvent,
    ConsentState,
    DatasetFinding,
    FindingReason,
    FindingStatus,
    Severity,
)
from contracts.policy import PolicyDocument, WithdrawalRequires
from services.eligibility import Use, WithdrawalOutcome, policy_in_force, withdrawal_requirement

__all__ = ["FINDING_NAMESPACE", "SAMPLE_SIZE", "UsedRecords", "finding_id", "withdrawal_findings"]

FINDING_NAMESPACE = UUID("2b0c6c1e-8a3f-4d5b-b7e4-9f0a1d2c3e4f")
SAMPLE_SIZE = 20


@dataclass(frozen=True, slots=True)
class UsedRecords:
    """A subject's records of one category in one sealed dataset version."""

    dataset: DatasetRef
    purpose: str
    used_at: datetime
    jurisdiction: str
    category: str
    record_ids: tuple[str, ...]


def finding_id(
    dataset: DatasetRef,
    policy: PolicyDocument,
    reason: FindingReason,
    severity: Severity,
    cause_event_ids: Iterable[UUID],
) -> UUID:
    """Derived from the cause alone, so a replay or duplicate yields the same finding."""
    causes = ",".join(sorted(str(c) for c in cause_event_ids))
    return uuid5(
        FINDING_NAMESPACE,
        "|".join(
            (dataset.key, policy.policy_id, policy.version, reason.value, severity.value, causes)
        ),
    )


_SEVERITY = {
    WithdrawalRequires.DESTROY: Severity.DESTROY_REQUIRED,
    WithdrawalRequires.RETRAIN: Severity.RETRAIN_REQUIRED,
    WithdrawalRequires.EXCLUDE_FROM_FUTURE: Severity.EXCLUDE_FROM_FUTURE,
}


def withdrawal_findings(
    event: ConsentEvent,
    used: Sequence[UsedRecords],
    policies: Sequence[tuple[PolicyDocument, datetime]],
) -> list[DatasetFinding]:
    """Later-withdrawal findings: one per dataset version and severity the withdrawal reaches.

    What the withdrawal requires of each use comes from the eligibility engine, under
    each policy's reading in force for the time of use, as published now.
    """
    if event.state is not ConsentState.WITHDRAWN:
        return []
    grouped: dict[tuple[DatasetRef, Severity, str, str], list[tuple[UsedRecords, str]]] = (
        defaultdict(list)
    )
    readings: dict[tuple[str, str], PolicyDocument] = {}
    for records in used:
        use = Use(
            subject_id=event.subject_id,
            jurisdiction=records.jurisdiction,
            purpose=records.purpose,
            category=records.category,
            used_at=records.used_at,
        )
        for policy in _readings_in_force(policies, records.used_at):
            outcome = withdrawal_requirement(policy, use, event)
            if outcome is None or (severity := _SEVERITY.get(outcome.requires)) is None:
                continue
            readings[(policy.policy_id, policy.version)] = policy
            key = (records.dataset, severity, policy.policy_id, policy.version)
            grouped[key].append((records, _rule_text(policy, outcome)))
    findings = []
    for (dataset, severity, policy_id, version), uses in sorted(
        grouped.items(), key=lambda kv: (kv[0][0].key, *kv[0][1:])
    ):
        policy = readings[(policy_id, version)]
        record_ids = sorted({r for records, _ in uses for r in records.record_ids})
        cause = (event.consent_event_id,)
        findings.append(
            DatasetFinding(
                finding_id=finding_id(
                    dataset, policy, FindingReason.LATER_WITHDRAWAL, severity, cause
                ),
                status=FindingStatus.ACTIVE,
                dataset=dataset,
                severity=severity,
                reason=FindingReason.LATER_WITHDRAWAL,
                policy_id=policy.policy_id,
                policy_version=policy.version,
                rule="; ".join(sorted({text for _, text in uses}))[:4096],
                affected_records=len(record_ids),
                affected_subjects=1,
                sample_record_ids=tuple(record_ids[:SAMPLE_SIZE]),
                cause_event_ids=cause,
                detected_at=event.recorded_at,
            )
        )
    return findings


def _readings_in_force(
    versions: Sequence[tuple[PolicyDocument, datetime]], at: datetime
) -> list[PolicyDocument]:
    """Each policy's reading in force at ``at``: policies are independent documents, and a
    use is judged under every one of them (each yields its own findings)."""
    by_policy: dict[str, list[tuple[PolicyDocument, datetime]]] = defaultdict(list)
    for document, published_at in versions:
        by_policy[document.policy_id].append((document, published_at))
    readings = (policy_in_force(by_policy[policy_id], at) for policy_id in sorted(by_policy))
    return [reading for reading in readings if reading is not None]


def _rule_text(policy: PolicyDocument, outcome: WithdrawalOutcome) -> str:
    """The rule that decided, as legal wrote it: ``id (requires …): description``."""
    rule = next((r for r in policy.rules if r.id == outcome.rule_id), None)
    if rule is None:
        return "no rule governs this use: a withdrawal excludes the data from future training"
    erasure = " + erasure" if outcome.erasure else ""
    text = f"{rule.id} (withdrawal requires {outcome.requires.value}{erasure})"
    return f"{text}: {rule.description}" if rule.description else text
