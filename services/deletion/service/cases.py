"""Case use cases: open, act (one state-machine command), extend, export. Each runs in the
caller's unit of work: the case row is locked, the step is stored with its history row and
its evidence entry, and ``deletion.cases.v1`` hears of it, all in one commit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any
from uuid import UUID

from contracts.events import CaseKind, CaseStatusChanged
from contracts.topics import CASES
from services.deletion.adapters.repository import CaseRepository
from services.deletion.domain.cases import Case, Regime, extended_deadline
from services.deletion.domain.evidence import build_bundle, iso
from services.deletion.domain.workflow import Command, Step, transition
from services.runtime.db import Connection
from services.runtime.telemetry import current_trace_id
from services.runtime.unit_of_work import UnitOfWork

__all__ = [
    "AFTER_STEP",
    "CaseNotFound",
    "StaleVersion",
    "act",
    "export_bundle",
    "extend_deadline",
    "open_case",
]


class CaseNotFound(LookupError):
    pass


class StaleVersion(RuntimeError):
    """The caller acted on a version of the case that has changed since (HTTP 409)."""


AfterStep = Callable[[UnitOfWork, UUID, Step, datetime], Awaitable[None]]
AFTER_STEP: list[AfterStep] = []
"""What follows a step in the same transaction (execution registers dispatching tasks on
approval, for example). Kept as a list so the workflow knows nothing of executors."""


async def open_case(uow: UnitOfWork, case: Case) -> bool:
    """Open the case unless its cause already did; True when it is new."""
    repo = CaseRepository(uow.connection)
    if not await repo.open(case, current_trace_id()):
        return False
    await repo.record_evidence(
        case.case_id,
        at=case.received_at,
        kind="opened",
        actor=case.requester,
        data={
            "kind": case.kind.value,
            "cause": case.cause_key,
            "legal_basis": case.legal_basis,
            "regime": case.regime.value,
            "deadline": iso(case.deadline),
            "scope": case.scope,
        },
    )
    uow.publish(CASES, case.opened(), key=str(case.case_id), event_id=f"case:{case.case_id}:1")
    return True


async def act(
    uow: UnitOfWork,
    case_id: UUID,
    command: Command,
    *,
    actor: str,
    reason: str,
    now: datetime,
    expected_version: int | None = None,
    evidence: dict[str, Any] | None = None,
) -> Step:
    """Apply one command; raises CaseNotFound, StaleVersion or TransitionRefused."""
    repo = CaseRepository(uow.connection)
    locked = await repo.status_for_update(case_id)
    if locked is None:
        raise CaseNotFound(f"no case {case_id}")
    status, version = locked
    if expected_version is not None and expected_version != version:
        raise StaleVersion(
            f"case {case_id} is at version {version}, not {expected_version}: reload it and decide"
            " again"
        )
    step = transition(status, command, actor=actor, reason=reason)
    new_version = await repo.save_status(
        case_id, status.state, step.after, actor=actor, reason=reason, at=now
    )
    await repo.record_evidence(
        case_id,
        at=now,
        kind=command.value,
        actor=actor,
        data={
            "from": status.state.value,
            "to": step.after.state.value,
            "reason": reason,
            **(evidence or {}),
        },
    )
    row = await repo.get(case_id, now)
    assert row is not None
    uow.publish(
        CASES,
        CaseStatusChanged(
            case_id=case_id,
            kind=CaseKind(row["kind"]),
            state=step.after.state,
            previous_state=status.state,
            actor=actor,
            reason=reason or command.value,
            deadline=row["deadline"],
            changed_at=now,
        ),
        key=str(case_id),
        event_id=f"case:{case_id}:{new_version}",
    )
    for follow in AFTER_STEP:
        await follow(uow, case_id, step, now)
    return step


async def extend_deadline(
    uow: UnitOfWork, case_id: UUID, *, actor: str, reason: str, now: datetime
) -> datetime:
    """Extend the deadline as the case's regime allows (once, with a reason)."""
    repo = CaseRepository(uow.connection)
    if await repo.status_for_update(case_id) is None:
        raise CaseNotFound(f"no case {case_id}")
    row = await repo.get(case_id, now)
    assert row is not None
    new_deadline = extended_deadline(
        Regime(row["regime"]),
        row["original_deadline"],
        already_extended=row["extension_reason"] is not None,
        reason=reason,
    )
    await repo.extend(case_id, new_deadline, reason)
    await repo.record_evidence(
        case_id,
        at=now,
        kind="deadline_extended",
        actor=actor,
        data={"from": iso(row["deadline"]), "to": iso(new_deadline), "reason": reason},
    )
    return new_deadline


async def export_bundle(conn: Connection, case_id: UUID, now: datetime) -> bytes:
    """The case's evidence bundle (canonical JSON, verifiable offline)."""
    repo = CaseRepository(conn)
    row = await repo.get(case_id, now)
    if row is None:
        raise CaseNotFound(f"no case {case_id}")
    entries = await repo.evidence(case_id)
    case = {
        "case_id": str(case_id),
        "kind": row["kind"],
        "state": row["state"],
        "legal_basis": row["legal_basis"],
        "regime": row["regime"],
        "requester": row["requester"],
        "received_at": iso(row["received_at"]),
        "deadline": iso(row["deadline"]),
        "scope": row["scope"],
        "targets": row.get("targets"),
    }
    return build_bundle(case, entries, exported_at=now)
