"""Deletion cases opened automatically from their causes, with regime deadlines. Pure."""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid5

from contracts.events import (
    CaseKind,
    CaseState,
    CaseStatusChanged,
    ConsentEvent,
    ConsentState,
    ModelFlag,
    Severity,
)
from contracts.jurisdictions import EU_EEA
from contracts.policy import PolicyDocument
from services.eligibility import Use, governing_rule, policy_in_force

__all__ = [
    "CASE_NAMESPACE",
    "NEAR_DUE_DAYS",
    "Case",
    "ExtensionRefused",
    "LegalBasis",
    "Regime",
    "add_calendar_months",
    "case_for_erasure",
    "case_for_flag",
    "deadline",
    "extended_deadline",
    "manual_case",
    "policy_requires_erasure",
    "urgency",
]

CASE_NAMESPACE = UUID("5e8b1d3a-7c24-4f9e-b0a6-3d1c8e2f9b47")
SYSTEM_ACTOR = "consenttrace:auto"


class Regime(StrEnum):
    GDPR = "gdpr"
    CCPA = "ccpa"
    CUSTOM = "custom"


def add_calendar_months(moment: datetime, months: int) -> datetime:
    """Same day ``months`` later, clamped to the month's last day (31 Jan + 1 → 28/29 Feb)."""
    month_index = moment.month - 1 + months
    year, month = moment.year + month_index // 12, month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def deadline(regime: Regime, received_at: datetime) -> datetime:
    """GDPR Art. 12(3): one calendar month; CCPA §1798.130: 45 calendar days; custom: 30 days."""
    if regime is Regime.GDPR:
        return add_calendar_months(received_at, 1)
    if regime is Regime.CCPA:
        return received_at + timedelta(days=45)
    return received_at + timedelta(days=30)


class LegalBasis(StrEnum):
    GDPR_ART_17 = "GDPR Art. 17"
    CCPA_1798_105 = "CCPA §1798.105"
    COURT_ORDER = "court order"
    CONTRACT = "contract"
    INTERNAL_POLICY = "internal policy"


class ExtensionRefused(ValueError):
    pass


NEAR_DUE_DAYS = 7
"""A case due within this many days is listed right after the overdue ones."""


def extended_deadline(
    regime: Regime, original: datetime, *, already_extended: bool, reason: str
) -> datetime:
    """GDPR Art. 12(3): two further months, once, with a reason; CCPA §1798.130(a)(2): one
    further 45 days, with a reason; a custom regime has no extension by law."""
    if not reason.strip():
        raise ExtensionRefused("an extension must record its reason")
    if already_extended:
        raise ExtensionRefused("the deadline was extended already: the law allows it once")
    if regime is Regime.GDPR:
        return add_calendar_months(original, 2)
    if regime is Regime.CCPA:
        return original + timedelta(days=45)
    raise ExtensionRefused("a custom regime's deadline has no extension")


def urgency(deadline_at: datetime, now: datetime, *, open_case: bool) -> tuple[int, datetime]:
    """Sort key: overdue first, then near-due, then the rest, each by deadline; closed last."""
    if not open_case:
        return (3, deadline_at)
    if deadline_at < now:
        return (0, deadline_at)
    if deadline_at - now <= timedelta(days=NEAR_DUE_DAYS):
        return (1, deadline_at)
    return (2, deadline_at)


def regime_for(jurisdiction: str) -> Regime:
    country = jurisdiction.split("-", 1)[0]
    if country in EU_EEA or country in {"GB", "CH"}:
        return Regime.GDPR
    if jurisdiction == "US-CA":
        return Regime.CCPA
    return Regime.CUSTOM


@dataclass(frozen=True, slots=True)
class Case:
    case_id: UUID
    kind: CaseKind
    cause_key: str
    legal_basis: str
    regime: Regime
    requester: str
    received_at: datetime
    deadline: datetime
    scope: dict[str, Any] = field(default_factory=dict)
    state: CaseState = CaseState.RECEIVED

    def opened(self) -> CaseStatusChanged:
        return CaseStatusChanged(
            case_id=self.case_id,
            kind=self.kind,
            state=self.state,
            previous_state=None,
            actor=self.requester,
            reason=f"opened automatically: {self.cause_key}",
            deadline=self.deadline,
            changed_at=self.received_at,
        )


def _case_id(cause_key: str) -> UUID:
    return uuid5(CASE_NAMESPACE, cause_key)


def manual_case(
    *,
    kind: CaseKind,
    legal_basis: LegalBasis,
    regime: Regime,
    requester: str,
    received_at: datetime,
    scope: dict[str, Any],
    idempotency_key: str,
) -> Case:
    """A case legal opens by hand; the same idempotency key never opens two."""
    cause = f"manual:{requester}:{idempotency_key}"
    return Case(
        case_id=_case_id(cause),
        kind=kind,
        cause_key=cause,
        legal_basis=legal_basis.value,
        regime=regime,
        requester=requester,
        received_at=received_at,
        deadline=deadline(regime, received_at),
        scope=scope,
    )


def case_for_flag(flag: ModelFlag) -> Case | None:
    """A model that must be destroyed or retrained opens one model-destruction case per model."""
    if flag.severity not in (Severity.DESTROY_REQUIRED, Severity.RETRAIN_REQUIRED):
        return None
    cause = f"model:{flag.model.key}"
    return Case(
        case_id=_case_id(cause),
        kind=CaseKind.MODEL_DESTRUCTION,
        cause_key=cause,
        legal_basis="internal policy",
        regime=Regime.CUSTOM,
        requester=SYSTEM_ACTOR,
        received_at=flag.flagged_at,
        deadline=deadline(Regime.CUSTOM, flag.flagged_at),
        scope={
            "model": flag.model.model_dump(mode="json"),
            "severity": flag.severity.value,
            "flag_ids": [str(flag.flag_id)],
            "finding_ids": [str(flag.finding_id)],
            "evidence_path": list(flag.evidence_path),
        },
    )


def policy_requires_erasure(
    event: ConsentEvent, policies: Sequence[tuple[PolicyDocument, datetime]]
) -> str | None:
    """The rule (``policy/rule``) whose withdrawal effect asks for erasure of what this
    withdrawal covers, read at its effective time under each policy's reading in force;
    None when no rule does."""
    by_policy: dict[str, list[tuple[PolicyDocument, datetime]]] = {}
    for document, published_at in policies:
        by_policy.setdefault(document.policy_id, []).append((document, published_at))
    for policy_id in sorted(by_policy):
        reading = policy_in_force(by_policy[policy_id], event.effective_at)
        if reading is None:
            continue
        for category in event.data_categories:
            use = Use(
                subject_id=event.subject_id,
                jurisdiction=event.jurisdiction,
                purpose=event.purpose,
                category=category,
                used_at=event.effective_at,
            )
            rule = governing_rule(reading, use)
            if rule is not None and rule.withdrawal.erasure:
                return f"{reading.policy_id}/{reading.version}/{rule.id}"
    return None


def case_for_erasure(
    event: ConsentEvent, policies: Sequence[tuple[PolicyDocument, datetime]] = ()
) -> Case | None:
    """A withdrawal opens a subject-erasure case when the subject asked for erasure, or when
    the policy says that withdrawing this consent requires erasure (``withdrawal.erasure``)."""
    if event.state is not ConsentState.WITHDRAWN:
        return None
    required_by = None if event.erasure_requested else policy_requires_erasure(event, policies)
    if not event.erasure_requested and required_by is None:
        return None
    cause = f"erasure:{event.subject_id}:{event.consent_event_id}"
    regime = regime_for(event.jurisdiction)
    return Case(
        case_id=_case_id(cause),
        kind=CaseKind.SUBJECT_ERASURE,
        cause_key=cause,
        legal_basis={Regime.GDPR: "GDPR Art. 17", Regime.CCPA: "CCPA §1798.105"}.get(
            regime, "internal policy"
        ),
        regime=regime,
        requester=f"subject:{event.subject_id}",
        received_at=event.recorded_at,
        deadline=deadline(regime, event.recorded_at),
        scope={
            "subject_ids": [event.subject_id],
            "data_categories": list(event.data_categories),
            "erasure": "requested by the subject"
            if required_by is None
            else f"required by policy rule {required_by}",
        },
    )
