"""Deletion cases opened from their causes, and the deadlines of each legal regime."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.base import DatasetRef, ModelRef
from contracts.events import (
    CaseKind,
    CaseState,
    ConsentEvent,
    ConsentEvidence,
    ConsentMechanism,
    ConsentState,
    FindingReason,
    FindingStatus,
    ModelFlag,
    Severity,
)
from contracts.policy import (
    LawfulBasis,
    PolicyDocument,
    PolicyRule,
    WithdrawalEffect,
    WithdrawalRequires,
)
from services.deletion.domain.cases import (
    Regime,
    add_calendar_months,
    case_for_erasure,
    case_for_flag,
    deadline,
    regime_for,
)

T0 = datetime(2025, 1, 31, 16, 45, 12, tzinfo=UTC)
LLM = ModelRef(namespace="models", name="assistant-llm", version="7")
POSTS = DatasetRef(namespace="s3://lake", name="posts", version="v1")


def flag(**overrides: Any) -> ModelFlag:
    fields: dict[str, Any] = {
        "flag_id": uuid4(),
        "status": FindingStatus.ACTIVE,
        "model": LLM,
        "finding_id": uuid4(),
        "severity": Severity.DESTROY_REQUIRED,
        "reason": FindingReason.IMPROPER_USE,
        "evidence_path": (POSTS.key, f"run:{uuid4()}", LLM.key),
        "flagged_at": T0,
    }
    fields.update(overrides)
    return ModelFlag(**fields)


def consent_event(**overrides: Any) -> ConsentEvent:
    fields: dict[str, Any] = {
        "consent_event_id": UUID("0f8fad5b-d9cb-469f-a165-70867728950e"),
        "subject_id": "member:8812",
        "jurisdiction": "DE",
        "purpose": "ai.training",
        "data_categories": ("user.content", "user.contact"),
        "state": ConsentState.WITHDRAWN,
        "mechanism": ConsentMechanism.ERASURE_REQUEST,
        "policy_version": "1",
        "effective_at": T0 - timedelta(minutes=1),
        "recorded_at": T0,
        "source_system": "privacy-center",
        "evidence": ConsentEvidence(collection_point="privacy-center/erase"),
        "erasure_requested": True,
    }
    fields.update(overrides)
    return ConsentEvent(**fields)


# --- calendar months ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        ((2024, 1, 31), 1, (2024, 2, 29)),
        ((2023, 1, 31), 1, (2023, 2, 28)),
        ((2000, 1, 31), 1, (2000, 2, 29)),
        ((1900, 1, 31), 1, (1900, 2, 28)),
        ((2100, 1, 30), 1, (2100, 2, 28)),
        ((2024, 3, 31), 1, (2024, 4, 30)),
        ((2024, 1, 15), 1, (2024, 2, 15)),
        ((2024, 12, 15), 1, (2025, 1, 15)),
        ((2024, 12, 31), 2, (2025, 2, 28)),
        ((2024, 2, 29), 12, (2025, 2, 28)),
        ((2024, 2, 29), 48, (2028, 2, 29)),
        ((2024, 5, 31), -1, (2024, 4, 30)),
        ((2024, 1, 15), -1, (2023, 12, 15)),
        ((2024, 8, 31), 0, (2024, 8, 31)),
    ],
)
def test_add_calendar_months_clamps_to_the_end_of_month(
    start: tuple[int, int, int], months: int, expected: tuple[int, int, int]
) -> None:
    moment = datetime(*start, 9, 30, tzinfo=UTC)
    assert add_calendar_months(moment, months) == datetime(*expected, 9, 30, tzinfo=UTC)


offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
moments = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 12, 31), timezones=offsets
)


@settings(max_examples=200, deadline=None)
@given(moment=moments)
def test_one_calendar_month_later_is_28_to_31_days_at_the_same_time_of_day(
    moment: datetime,
) -> None:
    later = add_calendar_months(moment, 1)
    assert timedelta(days=28) <= later - moment <= timedelta(days=31)
    assert later.timetz() == moment.timetz()
    assert later.utcoffset() == moment.utcoffset()
    assert (later.year * 12 + later.month) - (moment.year * 12 + moment.month) == 1
    last_day = calendar.monthrange(later.year, later.month)[1]
    assert later.day == min(moment.day, last_day)


@settings(max_examples=200, deadline=None)
@given(moment=moments, months=st.integers(-60, 60))
def test_month_arithmetic_lands_in_the_right_month(moment: datetime, months: int) -> None:
    later = add_calendar_months(moment, months)
    assert (later.year * 12 + later.month) - (moment.year * 12 + moment.month) == months
    assert later.day <= moment.day
    assert later.timetz() == moment.timetz()


# --- deadlines and regimes ------------------------------------------------------------------


def test_gdpr_deadline_is_one_calendar_month() -> None:
    assert deadline(Regime.GDPR, T0) == datetime(2025, 2, 28, 16, 45, 12, tzinfo=UTC)
    received = datetime(2024, 3, 15, 8, 0, tzinfo=UTC)
    assert deadline(Regime.GDPR, received) == datetime(2024, 4, 15, 8, 0, tzinfo=UTC)


def test_ccpa_deadline_is_45_days() -> None:
    assert deadline(Regime.CCPA, T0) == T0 + timedelta(days=45)
    assert deadline(Regime.CCPA, T0) == datetime(2025, 3, 17, 16, 45, 12, tzinfo=UTC)


def test_custom_deadline_is_30_days() -> None:
    assert deadline(Regime.CUSTOM, T0) == T0 + timedelta(days=30)


@pytest.mark.parametrize(
    ("jurisdiction", "regime"),
    [
        ("DE", Regime.GDPR),
        ("DE-BY", Regime.GDPR),
        ("FR", Regime.GDPR),
        ("IE", Regime.GDPR),
        ("NO", Regime.GDPR),
        ("IS", Regime.GDPR),
        ("LI", Regime.GDPR),
        ("GB", Regime.GDPR),
        ("GB-SCT", Regime.GDPR),
        ("CH", Regime.GDPR),
        ("US-CA", Regime.CCPA),
        ("US-NY", Regime.CUSTOM),
        ("US", Regime.CUSTOM),
        ("CA", Regime.CUSTOM),
        ("BR", Regime.CUSTOM),
        ("HK", Regime.CUSTOM),
    ],
)
def test_regime_for(jurisdiction: str, regime: Regime) -> None:
    assert regime_for(jurisdiction) is regime


# --- cases from model flags -----------------------------------------------------------------


@pytest.mark.parametrize("severity", [Severity.DESTROY_REQUIRED, Severity.RETRAIN_REQUIRED])
def test_destroy_or_retrain_flags_open_a_model_destruction_case(severity: Severity) -> None:
    source = flag(severity=severity)
    case = case_for_flag(source)
    assert case is not None
    assert case.kind is CaseKind.MODEL_DESTRUCTION
    assert case.state is CaseState.RECEIVED
    assert case.regime is Regime.CUSTOM
    assert case.received_at == source.flagged_at
    assert case.deadline == source.flagged_at + timedelta(days=30)
    assert case.scope["model"] == {"namespace": "models", "name": "assistant-llm", "version": "7"}
    assert case.scope["severity"] == severity.value
    assert case.scope["flag_ids"] == [str(source.flag_id)]
    assert case.scope["finding_ids"] == [str(source.finding_id)]
    assert case.scope["evidence_path"] == list(source.evidence_path)


@pytest.mark.parametrize("severity", [Severity.REVIEW, Severity.EXCLUDE_FROM_FUTURE])
def test_other_flags_open_no_case(severity: Severity) -> None:
    assert case_for_flag(flag(severity=severity)) is None


def test_flags_of_one_model_from_different_findings_share_one_case() -> None:
    first = case_for_flag(flag(severity=Severity.DESTROY_REQUIRED))
    second = case_for_flag(flag(severity=Severity.RETRAIN_REQUIRED, flagged_at=T0 + timedelta(1)))
    assert first is not None and second is not None
    assert first.case_id == second.case_id
    assert first.cause_key == second.cause_key


def test_flags_of_different_model_versions_open_different_cases() -> None:
    first = case_for_flag(flag())
    second = case_for_flag(flag(model=LLM.model_copy(update={"version": "8"})))
    assert first is not None and second is not None
    assert first.case_id != second.case_id


def test_an_opened_case_announces_itself() -> None:
    case = case_for_flag(flag())
    assert case is not None
    status = case.opened()
    assert status.case_id == case.case_id
    assert status.kind is CaseKind.MODEL_DESTRUCTION
    assert status.state is CaseState.RECEIVED
    assert status.previous_state is None
    assert status.deadline == case.deadline
    assert status.changed_at == case.received_at


# --- cases from erasure requests -------------------------------------------------------------


@pytest.mark.parametrize(
    ("jurisdiction", "regime", "legal_basis", "due"),
    [
        ("DE", Regime.GDPR, "GDPR Art. 17", datetime(2025, 2, 28, 16, 45, 12, tzinfo=UTC)),
        ("US-CA", Regime.CCPA, "CCPA §1798.105", T0 + timedelta(days=45)),
        ("US-NY", Regime.CUSTOM, "internal policy", T0 + timedelta(days=30)),
    ],
)
def test_withdrawal_with_erasure_opens_a_subject_erasure_case(
    jurisdiction: str, regime: Regime, legal_basis: str, due: datetime
) -> None:
    event = consent_event(jurisdiction=jurisdiction)
    case = case_for_erasure(event)
    assert case is not None
    assert case.kind is CaseKind.SUBJECT_ERASURE
    assert case.regime is regime
    assert case.legal_basis == legal_basis
    assert case.received_at == event.recorded_at
    assert case.deadline == due
    assert case.requester == "subject:member:8812"
    assert case.scope == {
        "subject_ids": ["member:8812"],
        "data_categories": ["user.content", "user.contact"],
        "erasure": "requested by the subject",
    }


def test_withdrawal_without_erasure_opens_no_case() -> None:
    assert case_for_erasure(consent_event(erasure_requested=False)) is None


def test_a_grant_never_opens_an_erasure_case() -> None:
    event = consent_event(state=ConsentState.GRANTED, erasure_requested=True)
    assert case_for_erasure(event) is None


def test_erasure_case_ids_follow_the_consent_event() -> None:
    first = case_for_erasure(consent_event())
    replay = case_for_erasure(consent_event())
    other = case_for_erasure(consent_event(consent_event_id=uuid4()))
    assert first is not None and replay is not None and other is not None
    assert first.case_id == replay.case_id
    assert first.case_id != other.case_id


def erasure_policy(*, erasure: bool, jurisdictions: tuple[str, ...] = ("EU",)) -> PolicyDocument:
    return PolicyDocument(
        policy_id="ai",
        version="3",
        valid_from=T0 - timedelta(days=365),
        rules=(
            PolicyRule(
                id="eu-content",
                jurisdictions=jurisdictions,
                purposes=("ai.training",),
                data_categories=("user.content",),
                lawful_bases=(LawfulBasis(mechanism=ConsentMechanism.EXPLICIT_OPT_IN),),
                withdrawal=WithdrawalEffect(requires=WithdrawalRequires.RETRAIN, erasure=erasure),
            ),
        ),
    )


def test_a_withdrawal_the_policy_says_requires_erasure_opens_a_case() -> None:
    event = consent_event(erasure_requested=False, mechanism=ConsentMechanism.OPT_OUT)
    policies = [(erasure_policy(erasure=True), T0 - timedelta(days=300))]
    case = case_for_erasure(event, policies)
    assert case is not None and case.kind is CaseKind.SUBJECT_ERASURE
    assert case.scope["erasure"] == "required by policy rule ai/3/eu-content"
    assert case_for_erasure(event, [(erasure_policy(erasure=False), T0)]) is None
    elsewhere = [(erasure_policy(erasure=True, jurisdictions=("US",)), T0)]
    assert case_for_erasure(event, elsewhere) is None, "no rule governs a DE withdrawal"
    not_yet = [(erasure_policy(erasure=True).model_copy(update={"valid_from": T0}), T0)]
    assert case_for_erasure(event, not_yet) is None, "read at the withdrawal's effective time"
    grant = consent_event(state=ConsentState.GRANTED, erasure_requested=False)
    assert case_for_erasure(grant, policies) is None
