"""Lineage use cases: each runs inside one unit of work.

Both ways the graph and its flags change — a run event (new edges) and a finding (new
state) — hold the *graph lock*: each sees the other's committed effect, so a run reported
after its inputs were found tainted is flagged at once, and a finding arriving while a run
is recorded misses none of its edges.
"""

from __future__ import annotations

from collections.abc import Sequence
from uuid import uuid4

from contracts.events import DatasetFinding, FindingStatus, ModelFlag
from contracts.openlineage import RunEvent
from contracts.topics import MODEL_FLAGS
from services.lineage.adapters.repository import LineageRepository
from services.lineage.domain.propagation import LineageEdge, flag_changes
from services.runtime.consumer import continue_trace
from services.runtime.messages import Event
from services.runtime.telemetry import current_trace_id
from services.runtime.unit_of_work import UnitOfWork

__all__ = ["ingest_run_event", "on_finding", "on_findings", "on_openlineage_event"]


async def ingest_run_event(uow: UnitOfWork, event: RunEvent) -> bool:
    """Record a run's inputs and outputs at version level; duplicates change nothing.

    New edges extend every active finding upstream of the run to what the run produced.
    Returns False for an event received before.
    """
    repo = LineageRepository(uow.connection)
    await repo.lock_graph()
    recorded = await repo.record_run_event(event)
    if recorded.new_io:
        for finding in await repo.findings_upstream_of_run(event.run.run_id):
            await _sync_flags(uow, repo, finding)
    return recorded.new_event


async def on_openlineage_event(event: Event[RunEvent], uow: UnitOfWork) -> None:
    await ingest_run_event(uow, event.body)


async def on_finding(event: Event[DatasetFinding], uow: UnitOfWork) -> None:
    """Flag every model downstream of the finding's dataset version, with its evidence path;
    a retracted finding retracts the flags that rested on it."""
    await on_findings([event], uow)


async def on_findings(events: Sequence[Event[DatasetFinding]], uow: UnitOfWork) -> None:
    """``on_finding`` for a fetched batch, in order, under one graph lock: the graph cannot
    change meanwhile, so each dataset version's downstream walk is done once for all the
    batch's findings on it (a policy re-reading sends thousands for a few versions), and
    the findings, their stored flags and the flags' changes are each one round trip. Each
    flag is stored and published in the trace of the finding that changed it."""
    repo = LineageRepository(uow.connection)
    await repo.lock_graph()
    findings = [event.body for event in events]
    await repo.save_findings(findings)
    stored = await repo.flags_of_findings(f.finding_id for f in findings)
    walks: dict[tuple[str, str, str], list[LineageEdge]] = {}
    changes: list[tuple[ModelFlag, str | None]] = []
    for event in events:
        finding = event.body
        mine = stored[finding.finding_id]
        changed = flag_changes(finding, await _edges(repo, finding, walks), mine)
        mine.update((flag.flag_id, flag) for flag in changed)  # a later state sees these
        with continue_trace(event):
            changes += _publish(uow, changed)
    await repo.save_flags(changes)


async def _sync_flags(uow: UnitOfWork, repo: LineageRepository, finding: DatasetFinding) -> None:
    stored = await repo.flags_of_findings([finding.finding_id])
    changes = flag_changes(finding, await _edges(repo, finding), stored[finding.finding_id])
    await repo.save_flags(_publish(uow, changes))


async def _edges(
    repo: LineageRepository,
    finding: DatasetFinding,
    walks: dict[tuple[str, str, str], list[LineageEdge]] | None = None,
) -> list[LineageEdge]:
    """The run edges downstream of the finding's dataset version, if it flags models."""
    if finding.status is not FindingStatus.ACTIVE or not finding.severity.flags_models:
        return []
    version = (finding.dataset.namespace, finding.dataset.name, finding.dataset.version)
    edges = walks.get(version) if walks is not None else None
    if edges is None:
        edges = await repo.downstream_edges(*version)
        if walks is not None:
            walks[version] = edges
    return edges


def _publish(uow: UnitOfWork, changes: Sequence[ModelFlag]) -> list[tuple[ModelFlag, str | None]]:
    """Publish each flag's new state in the current trace; the flags with that trace id."""
    for flag in changes:
        # One message per state: re-activation after a retraction must not look like a
        # duplicate to consumers, so each state gets a fresh id.
        uow.publish(MODEL_FLAGS, flag, key=flag.model.key, event_id=str(uuid4()))
    trace_id = current_trace_id()
    return [(flag, trace_id) for flag in changes]
