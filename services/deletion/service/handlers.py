"""Deletion use cases: each runs inside one unit of work."""

from __future__ import annotations

from contracts.events import ConsentEvent, ModelFlag
from contracts.topics import CASES
from services.deletion.adapters.repository import CaseRepository
from services.deletion.domain.cases import Case, case_for_erasure, case_for_flag
from services.runtime.messages import Event
from services.runtime.telemetry import current_trace_id
from services.runtime.unit_of_work import UnitOfWork

__all__ = ["on_consent_event", "on_model_flag"]


async def on_model_flag(event: Event[ModelFlag], uow: UnitOfWork) -> None:
    """A model flagged for destruction or retraining opens a case, once per model."""
    await _open(uow, case_for_flag(event.body))


async def on_consent_event(event: Event[ConsentEvent], uow: UnitOfWork) -> None:
    """A withdrawal that requests erasure opens a subject-erasure case."""
    await _open(uow, case_for_erasure(event.body))


async def _open(uow: UnitOfWork, case: Case | None) -> None:
    if case is None:
        return
    if await CaseRepository(uow.connection).open(case, current_trace_id()):
        uow.publish(CASES, case.opened(), key=str(case.case_id), event_id=f"case:{case.case_id}:1")
