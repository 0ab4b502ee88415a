"""Registry event handlers: each runs inside one unit of work.

Registration use cases (HTTP) are in ``registration.py``; how findings follow the facts
is in ``findings.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from contracts.events import ConsentEvent, PolicyChange
from services.registry.adapters.repository import RegistryRepository
from services.registry.service.findings import enqueue_for_policy, reevaluate_subjects
from services.runtime.messages import Event
from services.runtime.unit_of_work import UnitOfWork

__all__ = ["on_consent_event", "on_consent_events", "on_policy_change"]


async def on_policy_change(event: Event[PolicyChange], uow: UnitOfWork) -> None:
    """Keep our own projection of policy versions (never call the consent service); a new
    version re-evaluates every sealed dataset version whose reading it may change."""
    change = event.body
    if await RegistryRepository(uow.connection).save_policy(change.policy, change.published_at):
        await enqueue_for_policy(uow, change)


async def on_consent_event(event: Event[ConsentEvent], uow: UnitOfWork) -> None:
    """Record the change and re-judge every use of the subject's records."""
    if await RegistryRepository(uow.connection).save_consent(event.body):
        subject = event.body.subject_id
        await reevaluate_subjects(uow, [subject], new_events={subject: [event.body]})


async def on_consent_events(events: Sequence[Event[ConsentEvent]], uow: UnitOfWork) -> None:
    """``on_consent_event`` for a fetched batch: one statement per step, not per event; the
    findings a subject's event changed carry that event's trace."""
    new = await RegistryRepository(uow.connection).save_consents(
        [e.body for e in events], [e.value for e in events]
    )
    fresh = {e.consent_event_id for e in new}
    causes: dict[str, Event[ConsentEvent]] = {}
    new_events: dict[str, list[ConsentEvent]] = {}
    for event in events:  # in batch order: a subject's last event wins, and counts as latest
        if event.body.consent_event_id in fresh:
            causes.pop(event.body.subject_id, None)
            causes[event.body.subject_id] = event
            new_events.setdefault(event.body.subject_id, []).append(event.body)
    await reevaluate_subjects(uow, list(causes), causes, new_events)
