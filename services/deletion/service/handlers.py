"""Deletion event handlers: each runs inside one unit of work."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from contracts.events import ConsentEvent, ModelFlag, PolicyChange
from contracts.policy import PolicyDocument
from services.deletion.adapters.repository import CaseRepository
from services.deletion.domain.cases import case_for_erasure, case_for_flag
from services.deletion.service.cases import open_case
from services.runtime.consumer import continue_trace
from services.runtime.messages import Event
from services.runtime.unit_of_work import UnitOfWork

__all__ = [
    "on_consent_event",
    "on_consent_events",
    "on_model_flag",
    "on_model_flags",
    "on_policy_change",
]


async def on_model_flag(event: Event[ModelFlag], uow: UnitOfWork) -> None:
    """A model flagged for destruction or retraining opens a case, once per model."""
    await on_model_flags([event], uow)


async def on_model_flags(events: Sequence[Event[ModelFlag]], uow: UnitOfWork) -> None:
    """``on_model_flag`` for a fetched batch. Most flags are for a model whose case is
    already open (every new finding on its data flags it again): those are found in one
    query and skipped, instead of a failed insert each. A new case is opened in the trace
    of the first flag that asked for it, with that flag in its scope, as one at a time."""
    wanted = [(event, case) for event in events if (case := case_for_flag(event.body))]
    if not wanted:
        return
    opened = await CaseRepository(uow.connection).existing({case.case_id for _, case in wanted})
    for event, case in wanted:
        if case.case_id not in opened:
            opened.add(case.case_id)
            with continue_trace(event):
                await open_case(uow, case)


async def on_consent_event(event: Event[ConsentEvent], uow: UnitOfWork) -> None:
    """A withdrawal that requests erasure, or that the policy says requires erasure, opens
    a subject-erasure case (once per withdrawal)."""
    await on_consent_events([event], uow)


async def on_consent_events(events: Sequence[Event[ConsentEvent]], uow: UnitOfWork) -> None:
    """``on_consent_event`` for a fetched batch: the policy versions are read and parsed
    once for the batch, not once per event (most events open no case at all). A case is
    opened in the trace of the withdrawal that asked for it."""
    policies = await _policies(uow)
    for event in events:
        if (case := case_for_erasure(event.body, policies)) is not None:
            with continue_trace(event):
                await open_case(uow, case)


async def on_policy_change(event: Event[PolicyChange], uow: UnitOfWork) -> None:
    """Our own projection of policy versions (never a call to the consent service)."""
    policy = event.body.policy
    await uow.connection.execute(
        "INSERT INTO policy_versions (policy_id, version, published_at, document)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        policy.policy_id,
        policy.version,
        event.body.published_at,
        policy.model_dump(mode="json"),
    )


async def _policies(uow: UnitOfWork) -> list[tuple[PolicyDocument, datetime]]:
    rows = await uow.connection.fetch(
        "SELECT document::text AS document, published_at FROM policy_versions"
    )
    return [(PolicyDocument.model_validate_json(r["document"]), r["published_at"]) for r in rows]
