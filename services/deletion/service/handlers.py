"""Deletion event handlers: each runs inside one unit of work."""

from __future__ import annotations

from contracts.events import ConsentEvent, ModelFlag
from services.deletion.domain.cases import case_for_erasure, case_for_flag
from services.deletion.service.cases import open_case
from services.runtime.messages import Event
from services.runtime.unit_of_work import UnitOfWork

__all__ = ["on_consent_event", "on_model_flag"]


async def on_model_flag(event: Event[ModelFlag], uow: UnitOfWork) -> None:
    """A model flagged for destruction or retraining opens a case, once per model."""
    if (case := case_for_flag(event.body)) is not None:
        await open_case(uow, case)


async def on_consent_event(event: Event[ConsentEvent], uow: UnitOfWork) -> None:
    """A withdrawal that requests erasure opens a subject-erasure case."""
    if (case := case_for_erasure(event.body)) is not None:
        await open_case(uow, case)
