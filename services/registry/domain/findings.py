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
    PolicyDocument,
    PolicyRule,
    Severity,
)
from services.registry.domain.policy import (
    covers,
    governing_rule,
    policy_in_force,
    severity_of_withdrawal,
)

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


def withdrawal_findings(
    event: ConsentEvent,
    used: Sequence[UsedRecords],
    policies: Sequence[tuple[PolicyDocument, datetime]],
) -> list[DatasetFinding]:
    """Later-withdrawal findings: one per dataset version and severity the withdrawal reaches.

    A use is affected when the dataset's purpose falls under the withdrawn purpose and
    the record's category under a withdrawn category; its severity comes from the policy
    rule that governs the use, as the rules are read now for the time of use.
    """
    if event.state is not ConsentState.WITHDRAWN:
        return []
    grouped: dict[tuple[DatasetRef, Severity], list[tuple[UsedRecords, PolicyDocument, str]]] = (
        defaultdict(list)
    )
    for use in used:
        if not covers(event.purpose, use.purpose):
            continue
        if not any(covers(c, use.category) for c in event.data_categories):
            continue
        if use.used_at > event.effective_at:
            continue  # used after the withdrawal: an improper use, judged at seal time
        policy = policy_in_force(policies, use.used_at)
        if policy is None:
            continue
        rule = governing_rule(
            policy, jurisdiction=use.jurisdiction, purpose=use.purpose, category=use.category
        )
        severity = severity_of_withdrawal(rule)
        if severity is None:
            continue
        text = rule.description if rule and rule.description else _describe(rule)
        grouped[(use.dataset, severity)].append((use, policy, text))
    findings = []
    for (dataset, severity), uses in sorted(
        grouped.items(), key=lambda kv: (kv[0][0].key, kv[0][1])
    ):
        policy = uses[0][1]
        record_ids = sorted({r for use, _, _ in uses for r in use.record_ids})
        findings.append(
            DatasetFinding(
                finding_id=finding_id(
                    dataset,
                    policy,
                    FindingReason.LATER_WITHDRAWAL,
                    severity,
                    [event.consent_event_id],
                ),
                status=FindingStatus.ACTIVE,
                dataset=dataset,
                severity=severity,
                reason=FindingReason.LATER_WITHDRAWAL,
                policy_id=policy.policy_id,
                policy_version=policy.version,
                rule="; ".join(sorted({text for _, _, text in uses})),
                affected_records=len(record_ids),
                affected_subjects=1,
                sample_record_ids=tuple(record_ids[:SAMPLE_SIZE]),
                cause_event_ids=(event.consent_event_id,),
                detected_at=event.recorded_at,
            )
        )
    return findings


def _describe(rule: PolicyRule | None) -> str:
    if rule is None:
        return "no rule governs this use: a withdrawal excludes the data from future training"
    return (
        f"withdrawal requires {rule.withdrawal_requires.value} for {rule.purpose}"
        f" on {', '.join(rule.data_categories)} in {', '.join(rule.jurisdictions)}"
    )
