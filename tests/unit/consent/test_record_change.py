"""Turning a requested consent change into a ledger fact."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts.events import ConsentEvidence, ConsentMechanism, ConsentState
from services.consent.domain.model import (
    FUTURE_TOLERANCE,
    ConsentChange,
    InvalidConsentChange,
    record_change,
)

NOW = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)


def change(**overrides: Any) -> ConsentChange:
    fields: dict[str, Any] = {
        "subject_id": "member:8812",
        "jurisdiction": "US-CA",
        "purpose": "ai.training.generative",
        "data_categories": ("user.content.public", "user.content.private"),
        "state": ConsentState.WITHDRAWN,
        "mechanism": ConsentMechanism.OPT_OUT,
        "policy_version": "2024-09-18",
        "effective_at": NOW - timedelta(hours=1),
        "source_system": "settings",
        "evidence": ConsentEvidence(collection_point="settings/genai"),
    }
    fields.update(overrides)
    return ConsentChange(**fields)


def test_a_change_becomes_a_fact_recorded_now() -> None:
    requested = change(erasure_requested=True)
    event = record_change(requested, now=NOW, idempotency_key=None)
    assert event.recorded_at == NOW
    assert event.effective_at == requested.effective_at
    assert (event.subject_id, event.jurisdiction, event.purpose) == (
        "member:8812",
        "US-CA",
        "ai.training.generative",
    )
    assert event.data_categories == requested.data_categories
    assert event.state is ConsentState.WITHDRAWN
    assert event.mechanism is ConsentMechanism.OPT_OUT
    assert event.policy_version == "2024-09-18"
    assert event.source_system == "settings"
    assert event.evidence == requested.evidence
    assert event.erasure_requested is True


@pytest.mark.parametrize(
    "ahead",
    [FUTURE_TOLERANCE + timedelta(microseconds=1), FUTURE_TOLERANCE * 2, timedelta(days=365)],
)
def test_effective_time_too_far_in_the_future_is_refused(ahead: timedelta) -> None:
    with pytest.raises(InvalidConsentChange, match="in the future"):
        record_change(change(effective_at=NOW + ahead), now=NOW, idempotency_key=None)


@pytest.mark.parametrize(
    "offset",
    [FUTURE_TOLERANCE, timedelta(minutes=4), timedelta(0), -timedelta(days=500)],
)
def test_effective_time_within_tolerance_or_past_is_accepted(offset: timedelta) -> None:
    event = record_change(change(effective_at=NOW + offset), now=NOW, idempotency_key=None)
    assert event.effective_at == NOW + offset


def test_tolerance_is_compared_as_instants_across_offsets() -> None:
    berlin_noon = datetime(2025, 1, 10, 13, 4, tzinfo=timezone(timedelta(hours=1)))
    assert record_change(change(effective_at=berlin_noon), now=NOW, idempotency_key=None)
    too_late = datetime(2025, 1, 10, 13, 6, tzinfo=timezone(timedelta(hours=1)))
    with pytest.raises(InvalidConsentChange):
        record_change(change(effective_at=too_late), now=NOW, idempotency_key=None)


def test_erasure_only_with_a_withdrawal() -> None:
    granted = change(state=ConsentState.GRANTED, erasure_requested=True)
    with pytest.raises(InvalidConsentChange, match="erasure"):
        record_change(granted, now=NOW, idempotency_key=None)


@pytest.mark.parametrize(
    "categories",
    [("user.content", "user.content"), ("user", "user.contact", "user")],
)
def test_duplicate_categories_are_refused(categories: tuple[str, ...]) -> None:
    with pytest.raises(InvalidConsentChange, match="duplicates"):
        record_change(change(data_categories=categories), now=NOW, idempotency_key=None)


def test_contract_rules_still_apply() -> None:
    with pytest.raises(ValidationError, match="jurisdiction"):
        record_change(change(jurisdiction="california"), now=NOW, idempotency_key=None)


# --- idempotency ------------------------------------------------------------------------------

printable = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40
)


@settings(max_examples=100, deadline=None)
@given(key=printable, source=printable)
def test_a_retried_request_maps_onto_the_same_fact(key: str, source: str) -> None:
    requested = change(source_system=source)
    first = record_change(requested, now=NOW, idempotency_key=key)
    retry = record_change(requested, now=NOW + timedelta(seconds=30), idempotency_key=key)
    assert first.consent_event_id == retry.consent_event_id
    assert first.consent_event_id.version == 5


@settings(max_examples=100, deadline=None)
@given(key=printable, other_key=printable, source=printable, other_source=printable)
def test_different_key_or_source_gives_a_different_fact(
    key: str, other_key: str, source: str, other_source: str
) -> None:
    assume(key != other_key and source != other_source)
    base = record_change(change(source_system=source), now=NOW, idempotency_key=key)
    other_key_id = record_change(change(source_system=source), now=NOW, idempotency_key=other_key)
    other_source_id = record_change(
        change(source_system=other_source), now=NOW, idempotency_key=key
    )
    assert base.consent_event_id != other_key_id.consent_event_id
    assert base.consent_event_id != other_source_id.consent_event_id


def test_the_same_key_from_two_sources_does_not_collide() -> None:
    web = record_change(change(source_system="web"), now=NOW, idempotency_key="req-1")
    app = record_change(change(source_system="app"), now=NOW, idempotency_key="req-1")
    assert web.consent_event_id != app.consent_event_id


def test_without_a_key_every_request_is_a_new_fact() -> None:
    requested = change()
    ids = {
        record_change(requested, now=NOW, idempotency_key=None).consent_event_id for _ in range(5)
    }
    assert len(ids) == 5
    assert all(i.version == 4 for i in ids)


def test_the_key_does_not_depend_on_the_body() -> None:
    """The id is the key's; the handler detects a reused key with a different body."""
    first = record_change(change(), now=NOW, idempotency_key="req-1")
    other = record_change(
        replace(change(), state=ConsentState.GRANTED), now=NOW, idempotency_key="req-1"
    )
    assert first.consent_event_id == other.consent_event_id
