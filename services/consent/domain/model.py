"""Consent ledger rules. Pure: no I/O, no framework."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID, uuid4, uuid5

from contracts.events import ConsentEvent, ConsentEvidence, ConsentMechanism, ConsentState

__all__ = ["FUTURE_TOLERANCE", "ConsentChange", "InvalidConsentChange", "record_change"]

FUTURE_TOLERANCE = timedelta(minutes=5)
"""Clock skew we accept between the caller and us for ``effective_at``."""

_LEDGER_NAMESPACE = UUID("6f1c2f7e-5b8a-4d0e-9a51-2c1f0b3e7d10")


class InvalidConsentChange(ValueError):
    """The change cannot be recorded; the message says exactly why."""


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """What a caller asks us to record."""

    subject_id: str
    jurisdiction: str
    purpose: str
    data_categories: tuple[str, ...]
    state: ConsentState
    mechanism: ConsentMechanism
    policy_version: str
    effective_at: datetime
    source_system: str
    evidence: ConsentEvidence
    erasure_requested: bool = False


def record_change(
    change: ConsentChange, *, now: datetime, idempotency_key: str | None
) -> ConsentEvent:
    """Turn a requested change into a ledger fact recorded at ``now``.

    With an idempotency key, the event id is derived from it, so a retried request
    maps onto the fact already recorded instead of appending a second one.
    """
    if change.effective_at > now + FUTURE_TOLERANCE:
        raise InvalidConsentChange(
            f"effective_at {change.effective_at.isoformat()} is more than "
            f"{int(FUTURE_TOLERANCE.total_seconds() // 60)} minutes in the future"
        )
    if change.erasure_requested and change.state is not ConsentState.WITHDRAWN:
        raise InvalidConsentChange("erasure can only be requested with a withdrawal")
    if len(set(change.data_categories)) != len(change.data_categories):
        raise InvalidConsentChange("data_categories contains duplicates")
    event_id = (
        uuid5(_LEDGER_NAMESPACE, f"{change.source_system}\x1f{idempotency_key}")
        if idempotency_key
        else None
    )
    return ConsentEvent(
        consent_event_id=event_id or uuid4(),
        subject_id=change.subject_id,
        jurisdiction=change.jurisdiction,
        purpose=change.purpose,
        data_categories=change.data_categories,
        state=change.state,
        mechanism=change.mechanism,
        policy_version=change.policy_version,
        effective_at=change.effective_at,
        recorded_at=now,
        source_system=change.source_system,
        evidence=change.evidence,
        erasure_requested=change.erasure_requested,
    )
