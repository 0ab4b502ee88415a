"""Lineage use cases: each runs inside one unit of work."""

from __future__ import annotations

from contracts.events import DatasetFinding, FindingStatus
from contracts.openlineage import RunEvent
from contracts.topics import MODEL_FLAGS
from services.lineage.adapters.repository import LineageRepository
from services.lineage.domain.propagation import flags_for_finding
from services.runtime.messages import Event
from services.runtime.telemetry import current_trace_id
from services.runtime.unit_of_work import UnitOfWork

__all__ = ["ingest_run_event", "on_finding", "on_openlineage_event"]


async def ingest_run_event(uow: UnitOfWork, event: RunEvent) -> bool:
    """Record a run's inputs and outputs at version level; duplicates change nothing."""
    return await LineageRepository(uow.connection).record_run_event(event)


async def on_openlineage_event(event: Event[RunEvent], uow: UnitOfWork) -> None:
    await ingest_run_event(uow, event.body)


async def on_finding(event: Event[DatasetFinding], uow: UnitOfWork) -> None:
    """Flag every model downstream of the finding's dataset version, with its evidence path.

    A retraction creates no flag. Removing the flags that rested on it alone is not done
    yet (lineage issue): they stay, and say which finding they rest on.
    """
    finding = event.body
    if finding.status is FindingStatus.RETRACTED:
        return
    repo = LineageRepository(uow.connection)
    edges = await repo.downstream_edges(
        finding.dataset.namespace, finding.dataset.name, finding.dataset.version
    )
    for flag in await repo.save_flags(flags_for_finding(finding, edges), current_trace_id()):
        uow.publish(MODEL_FLAGS, flag, key=flag.model.key, event_id=str(flag.flag_id))
