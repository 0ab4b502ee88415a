"""Consent read use cases: the ledger read bitemporally. No unit of work: nothing changes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from contracts.events import ConsentEvent
from contracts.policy import PolicyDocument
from services.consent.adapters.repository import ConsentRepository
from services.consent.domain.ledger import ConsentInForce, state_at
from services.consent.domain.model import policy_versions_named
from services.runtime.db import Connection

__all__ = [
    "SubjectExport",
    "consent_history",
    "consent_state",
    "policy_documents",
    "subject_export",
]


async def consent_state(
    conn: Connection, subject_id: str, *, valid_at: datetime, known_at: datetime
) -> list[ConsentInForce]:
    """The subject's consent in force at ``valid_at``, as the ledger knew it at ``known_at``."""
    events = await ConsentRepository(conn).history(subject_id, known_at=known_at)
    return state_at(events, valid_at=valid_at, known_at=known_at)


async def consent_history(
    conn: Connection, subject_id: str, *, known_at: datetime | None
) -> list[ConsentEvent]:
    """The subject's events as known at ``known_at`` (all when None), in valid-time order."""
    return await ConsentRepository(conn).history(subject_id, known_at=known_at)


@dataclass(frozen=True, slots=True)
class SubjectExport:
    """Everything the ledger holds about one subject, for legal."""

    subject_id: str
    generated_at: datetime
    events: list[ConsentEvent]
    state: list[ConsentInForce]
    policies: list[tuple[PolicyDocument, datetime]]
    """The stored policy versions the events name, with their publication time."""
    unresolved_policy_versions: list[str]
    """Policy versions the events name that this service has no document for."""


async def subject_export(
    conn: Connection, subject_id: str, *, now: datetime
) -> SubjectExport | None:
    """The subject's whole ledger, its state now and the policies it names; None: no events."""
    repo = ConsentRepository(conn)
    events = await repo.history(subject_id)
    if not events:
        return None
    policies, unresolved = policy_versions_named(
        (e.policy_version for e in events), await repo.policy_versions()
    )
    return SubjectExport(
        subject_id=subject_id,
        generated_at=now,
        events=events,
        state=state_at(events, valid_at=now, known_at=now),
        policies=policies,
        unresolved_policy_versions=unresolved,
    )


async def policy_documents(conn: Connection) -> list[PolicyDocument]:
    """Every stored policy version."""
    return await ConsentRepository(conn).policies()
