"""Scoping use case: resolve a case into concrete targets by asking the registry and
lineage (HTTP reads, from the request that asks for it — never on the event path), freeze
them into the case with an evidence entry, and submit the scope for approval.

Three short steps, no transaction held while the other services answer:

1. lock the case and move it into ``scoping`` (``start_scoping`` from ``received``,
   ``resume`` from a failure at scoping, ``rescope`` from ``awaiting_approval``);
2. read: the registry for the dataset versions holding the records in scope, lineage for
   the models downstream of them (or of the case's model), the webhook systems for the
   case's kind;
3. lock the case again; if it is still ``scoping``: store the targets (``cases.targets``),
   write ``scope_frozen`` (the targets and their digest) and ``submit_scope``. If a service
   could not answer: ``fail`` with the reason — resumable: asking for scoping again resumes
   the case and resolves it anew.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from contracts.events import CaseKind, CaseState
from services.deletion.adapters.repository import CaseRepository
from services.deletion.adapters.services_client import (
    ServiceRejected,
    ServicesClient,
    ServiceUnavailable,
)
from services.deletion.adapters.tasks import TaskStore
from services.deletion.domain.scoping import (
    DATA_KINDS,
    FoundVersion,
    ScopeRequest,
    ScopingError,
    digest,
    freeze,
    parse_request,
    resolve_models,
    summary,
    versions_from_listing,
    versions_of_subjects,
)
from services.deletion.domain.workflow import Command, TransitionRefused
from services.deletion.service.cases import CaseNotFound, act
from services.runtime.db import Pool
from services.runtime.unit_of_work import unit_of_work

__all__ = ["DESCENDANTS_DEPTH", "ScopingOutcome", "scope_case"]

DESCENDANTS_DEPTH = 64
"""How many runs downstream lineage is walked for models (its ``MAX_DEPTH``)."""
DIRECT_DEPTH = 64
"""Direct models may sit behind derived datasets: the walk goes as far, then keeps those
with no model on the way (``domain.scoping.models_downstream``)."""


@dataclass(frozen=True, slots=True)
class ScopingOutcome:
    frozen: bool
    targets: dict[str, Any] | None
    digest: str | None
    reason: str


async def scope_case(
    pool: Pool,
    source: str,
    client: Callable[[], ServicesClient],
    case_id: UUID,
    *,
    actor: str,
    reason: str,
    now: Callable[[], datetime],
) -> ScopingOutcome:
    """Resolve and freeze the case's scope, or fail it at scoping with the reason.
    Raises CaseNotFound, or TransitionRefused when the case cannot be scoped now."""
    async with unit_of_work(pool, source) as uow:
        repo = CaseRepository(uow.connection)
        locked = await repo.status_for_update(case_id)
        if locked is None:
            raise CaseNotFound(f"no case {case_id}")
        status = locked[0]
        why = reason or "scope requested"
        if status.state is CaseState.RECEIVED:
            await act(uow, case_id, Command.START_SCOPING, actor=actor, reason=why, now=now())
        elif status.state is CaseState.FAILED and status.failed_step is CaseState.SCOPING:
            await act(uow, case_id, Command.RESUME, actor=actor, reason=why, now=now())
        elif status.state is CaseState.AWAITING_APPROVAL:
            await act(uow, case_id, Command.RESCOPE, actor=actor, reason=why, now=now())
        elif status.state is not CaseState.SCOPING:
            raise TransitionRefused(
                f"cannot scope a case in state {status.state.value}: scoping happens before"
                " approval (received, scoping, awaiting approval, or failed at scoping)"
            )
        case = await TaskStore(uow.connection).case(case_id)
        assert case is not None
        systems = await TaskStore(uow.connection).systems_for_kind(case["kind"])

    failure: str | None = None
    targets: dict[str, Any] | None = None
    try:
        request = parse_request(case["kind"], case["scope"])
        targets = await _resolve(client, request, systems)
    except (ServiceUnavailable, ServiceRejected) as exc:
        failure = f"scoping: {exc}"
    except ScopingError as exc:
        failure = f"scoping: {exc}"

    async with unit_of_work(pool, source) as uow:
        repo = CaseRepository(uow.connection)
        locked = await repo.status_for_update(case_id)
        assert locked is not None
        if locked[0].state is not CaseState.SCOPING:
            raise TransitionRefused(
                f"the case changed while its scope was being resolved (it is now"
                f" {locked[0].state.value}): nothing was frozen"
            )
        if failure is not None or targets is None:
            why = failure or "scoping: nothing resolved"
            await act(uow, case_id, Command.FAIL, actor=actor, reason=why, now=now())
            return ScopingOutcome(False, None, None, why)
        frozen_digest = digest(targets)
        line = summary(targets)
        await TaskStore(uow.connection).freeze(case_id, targets)
        at = now()
        await repo.record_evidence(
            case_id,
            at=at,
            kind="scope_frozen",
            actor=actor,
            data={"digest": frozen_digest, "summary": line, "targets": targets},
        )
        await act(
            uow,
            case_id,
            Command.SUBMIT_SCOPE,
            actor=actor,
            reason=f"scope frozen ({frozen_digest[:19]}…): {line}",
            now=at,
            evidence={"digest": frozen_digest},
        )
    return ScopingOutcome(True, targets, frozen_digest, line)


async def _resolve(
    client: Callable[[], ServicesClient], request: ScopeRequest, systems: list[str]
) -> dict[str, Any]:
    notes: list[str] = []
    async with client() as services:
        versions: list[FoundVersion] = []
        if request.kind is CaseKind.SUBJECT_ERASURE:
            answers = await services.subjects_versions(request.subjects, request.categories)
            versions = versions_of_subjects(answers, request.categories)
        elif request.kind is CaseKind.CATEGORY_PURGE:
            versions = versions_from_listing(await services.versions_holding(request.selector()))
        elif request.kind is CaseKind.DATASET_PURGE and request.dataset is not None:
            registered = await services.dataset_version(request.dataset)
            if registered is None:
                notes.append(f"the registry holds no sealed version {request.dataset.key}")
                versions = versions_from_listing(
                    [{"dataset": request.dataset.model_dump(), "records": 0}]
                )
            else:
                versions = versions_from_listing(
                    [
                        {
                            "dataset": request.dataset.model_dump(),
                            "records": registered.get("record_count", 0),
                            "record_count": registered.get("record_count"),
                        }
                    ]
                )
        graphs: dict[str, dict[str, Any] | None] = {}
        if request.kind in DATA_KINDS:
            depth = DESCENDANTS_DEPTH if request.include_descendants else DIRECT_DEPTH
            for found in versions:
                graphs[found.dataset.key] = await services.downstream(found.dataset.key, depth)
        elif request.model is not None:
            depth = DESCENDANTS_DEPTH if request.include_descendants else 0
            graph = await services.downstream(request.model.key, depth)
            if graph is None:
                notes.append(f"lineage does not know {request.model.key}")
            graphs[request.model.key] = graph
        models = resolve_models(request, graphs)
    return freeze(request, versions=versions, models=models, systems=systems, notes=notes)
