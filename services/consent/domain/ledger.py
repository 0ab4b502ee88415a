"""Reading the consent ledger bitemporally. Pure: no I/O, no framework.

Every event has two times: ``effective_at`` (valid time: when the choice took effect in the
world) and ``recorded_at`` (transaction time: when the ledger learnt it). A question is
asked at a valid time *as known* at a transaction time: "what had the subject consented to
on 1 Sept, as we knew it on 10 Sept?" An event recorded after ``known_at`` does not exist
for that question, whatever its valid time.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from contracts.events import ConsentEvent
from contracts.vocabulary import ConsentState
from services.eligibility.matching import covers

__all__ = ["ConsentInForce", "as_known_at", "ledger_order", "state_at"]


@dataclass(frozen=True, slots=True)
class ConsentInForce:
    """The subject's consent for one (purpose, data category) at one point of both times."""

    purpose: str
    data_category: str
    state: ConsentState
    decided_by: ConsentEvent
    """The latest relevant event: it alone decides the state."""
    superseded: tuple[UUID, ...]
    """Earlier relevant events it overrides, oldest first (in ledger order)."""
    explanation: str


def ledger_order(event: ConsentEvent) -> tuple[datetime, datetime, UUID]:
    """Valid time, then transaction time, then the id: a total order, whatever arrives when."""
    return (event.effective_at, event.recorded_at, event.consent_event_id)


def as_known_at(events: Iterable[ConsentEvent], known_at: datetime | None) -> list[ConsentEvent]:
    """The history as the ledger knew it at ``known_at`` (all of it for None), in valid time."""
    known = [e for e in events if known_at is None or e.recorded_at <= known_at]
    return sorted(known, key=ledger_order)


def state_at(
    events: Iterable[ConsentEvent], *, valid_at: datetime, known_at: datetime | None = None
) -> list[ConsentInForce]:
    """The consent in force at ``valid_at`` as known at ``known_at`` (None: everything known).

    One entry per (purpose, data category) named by an event in force by then (effective at
    or before ``valid_at``, recorded at or before ``known_at``), sorted by purpose and
    category. For each key, the relevant events are those whose purpose covers the key's
    purpose and one of whose categories covers the key's category: a withdrawal of ``user``
    for ``ai`` is relevant to a grant of ``user.content`` for ``ai.training``. The latest
    relevant event in ledger order decides. The answer depends on the set of events only,
    never on the order they are given in.
    """
    in_force = [
        e
        for e in as_known_at(events, known_at)
        if e.effective_at <= valid_at  # already sorted in ledger order
    ]
    keys = sorted({(e.purpose, c) for e in in_force for c in e.data_categories})
    answer = []
    for purpose, category in keys:
        relevant = [
            e
            for e in in_force
            if covers(e.purpose, purpose) and any(covers(c, category) for c in e.data_categories)
        ]
        *earlier, decided_by = relevant  # never empty: the key comes from one of them
        answer.append(
            ConsentInForce(
                purpose=purpose,
                data_category=category,
                state=decided_by.state,
                decided_by=decided_by,
                superseded=tuple(e.consent_event_id for e in earlier),
                explanation=_explain(purpose, category, decided_by, earlier),
            )
        )
    return answer


def _explain(
    purpose: str, category: str, event: ConsentEvent, earlier: Sequence[ConsentEvent]
) -> str:
    scope = f"{event.purpose} on {', '.join(event.data_categories)}"
    reach = (
        ""
        if event.purpose == purpose and category in event.data_categories
        else f" (which covers {purpose} on {category})"
    )
    overrides = (
        f"; overrides {len(earlier)} earlier event{'s' if len(earlier) != 1 else ''}"
        if earlier
        else ""
    )
    return (
        f"{event.state.value} by {event.mechanism.value} for {scope}{reach},"
        f" effective {event.effective_at.isoformat()}, recorded {event.recorded_at.isoformat()}"
        f" (event {event.consent_event_id}){overrides}"
    )
