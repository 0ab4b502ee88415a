"""Execution and verification use cases.

- **On approval** (an ``AFTER_STEP`` hook, in the approval's own transaction): a case whose
  scope is frozen moves to ``executing`` and its tasks go out on ``deletion.tasks.v1``
  (through the outbox), one per target system; webhook systems' deliveries are queued for
  the webhook worker (``service.webhooks``). A case approved while its scope was never
  frozen stays ``approved`` (start execution refuses it until it is scoped). A case released
  from a hold back to ``approved`` starts then. Nothing is dispatched while a case is held:
  the state machine refuses every step but release/cancel/reject on hold, and the webhook
  worker delivers only to cases that are ``executing`` (holding the case's row lock while
  it delivers).
- **Acknowledgements** (``on_task_result``, consuming ``deletion.task-results.v1``): each
  result updates its task and writes ``task_acknowledged``. A failed task fails the case
  with its reason; once every task is ``done`` or ``not_applicable`` the case goes to
  ``verifying``. A result for an id no current task has (an earlier attempt, re-sent
  since) or from another system than the task's is recorded as ``acknowledgement_ignored``.
- **Resume** of a case failed while executing re-sends only the failed tasks, each as a new
  attempt with a new id; tasks already done are never sent again.
- **Verification** (``VERIFICATION_WORKER``, a background worker — never the consumer):
  queries the registry and lineage over HTTP for every target (``domain.execution``),
  writes ``verification`` with the results, and completes the case only when every check
  confirms; otherwise the case stays ``verifying``, what is missing is in
  ``cases.execution``, and it is checked again later (backing off to every 10 minutes).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from contracts.base import DatasetRef, ModelRef
from contracts.events import CaseState, DeletionTask, TaskResult
from contracts.topics import DELETION_TASKS
from services.deletion.adapters.repository import CaseRepository
from services.deletion.adapters.services_client import (
    ServiceRejected,
    ServicesClient,
    ServiceUnavailable,
)
from services.deletion.adapters.tasks import (
    DELIVERY_CHANNEL,
    VERIFICATION_CHANNEL,
    TaskStore,
    task_json,
)
from services.deletion.domain.execution import (
    Check,
    CheckKind,
    CheckResult,
    TaskState,
    TaskView,
    iso,
    judge_acknowledged,
    judge_category,
    judge_manifest,
    judge_model,
    judge_subject,
    next_move,
    plan_tasks,
    progress,
    states,
    verdict,
    verification_checks,
    verification_delay,
)
from services.deletion.domain.workflow import Command, Step, TransitionRefused
from services.deletion.service.cases import AFTER_STEP, act
from services.runtime.db import Connection
from services.runtime.messages import Event
from services.runtime.settings import ServiceSettings
from services.runtime.unit_of_work import UnitOfWork, unit_of_work
from services.runtime.worker import WorkerContext, WorkerSpec

__all__ = [
    "EXECUTOR_ACTOR",
    "VERIFICATION_WORKER",
    "after_step",
    "apply_result",
    "dispatch_tasks",
    "execution_view",
    "install",
    "on_task_result",
    "publish_task",
    "refresh_progress",
    "verify_next",
]

log = logging.getLogger(__name__)

EXECUTOR_ACTOR = "consenttrace:deletion"
"""Who the automatic steps (start execution, fail, verify, complete) are audited as."""
VERIFICATION_LEASE = timedelta(seconds=60)
"""A claimed verification is left alone this long (a crashed worker's is retried then)."""


# --- the hook ---------------------------------------------------------------------------


async def after_step(uow: UnitOfWork, case_id: UUID, step: Step, now: datetime) -> None:
    """What follows a workflow step, in its transaction (registered in ``AFTER_STEP``)."""
    command, after = step.command, step.after.state
    store = TaskStore(uow.connection)
    if command is Command.APPROVE or (command is Command.RELEASE and after is CaseState.APPROVED):
        case = await store.case(case_id)
        if case is not None and case["targets"] is not None:
            await act(
                uow,
                case_id,
                Command.START_EXECUTION,
                actor=EXECUTOR_ACTOR,
                reason=f"approved by {step.after.approved_by or step.actor}: tasks dispatched",
                now=now,
            )
        return
    if command is Command.START_EXECUTION:
        await dispatch_tasks(uow, case_id, now)
    elif command is Command.RESUME and after is CaseState.EXECUTING:
        await _resend_failed(uow, case_id, now)
    elif command is Command.RELEASE and after is CaseState.EXECUTING:
        await store.notify(DELIVERY_CHANNEL)
        await _advance(uow, case_id, now)
    elif after is CaseState.VERIFYING:
        await store.schedule_verification(case_id, now)
        await store.notify(VERIFICATION_CHANNEL)
    await refresh_progress(uow.connection, case_id)


def install() -> None:
    """Register the hook once (importing this module does it)."""
    if after_step not in AFTER_STEP:
        AFTER_STEP.append(after_step)


install()


# --- dispatching ------------------------------------------------------------------------


def publish_task(uow: UnitOfWork, row: dict[str, Any]) -> DeletionTask:
    task = DeletionTask(
        task_id=row["task_id"],
        case_id=row["case_id"],
        target_system=row["target_system"],
        action=row["action"],
        targets=tuple(row["targets"]),
        issued_at=row["issued_at"],
        parameters=row["parameters"],
    )
    uow.publish(DELETION_TASKS, task, key=str(task.case_id), event_id=f"task:{task.task_id}")
    return task


def _sent(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "task_id": str(r["task_id"]),
            "system": r["target_system"],
            "action": r["action"],
            "executor": r["executor"],
            "attempt": r["attempt"],
            "targets": list(r["targets"]),
        }
        for r in rows
    ]


async def dispatch_tasks(uow: UnitOfWork, case_id: UUID, now: datetime) -> list[dict[str, Any]]:
    """Send the tasks of the frozen scope not sent yet (the case is executing and locked)."""
    store = TaskStore(uow.connection)
    case = await store.case(case_id)
    if case is None or case["targets"] is None:
        raise TransitionRefused(
            "cannot start execution: the case's scope was never frozen (ask for scoping:"
            f" POST /api/v1/cases/{case_id}/scope, then approval)"
        )
    created = await store.insert(case_id, plan_tasks(case["targets"]), now)
    for row in created:
        publish_task(uow, row)
    if created:
        await CaseRepository(uow.connection).record_evidence(
            case_id,
            at=now,
            kind="tasks_sent",
            actor=EXECUTOR_ACTOR,
            data={"resent": False, "tasks": _sent(created)},
        )
        if any(r["executor"] == "webhook" for r in created):
            await store.notify(DELIVERY_CHANNEL)
    await _advance(uow, case_id, now)
    return created


async def _resend_failed(uow: UnitOfWork, case_id: UUID, now: datetime) -> None:
    store = TaskStore(uow.connection)
    failed = [t for t in await store.tasks(case_id) if t["state"] == TaskState.FAILED.value]
    resent = [await store.resend(t, now) for t in failed]
    for row in resent:
        publish_task(uow, row)
    if resent:
        await CaseRepository(uow.connection).record_evidence(
            case_id,
            at=now,
            kind="tasks_sent",
            actor=EXECUTOR_ACTOR,
            data={
                "resent": True,
                "tasks": [
                    {**sent, "replaces": str(old["task_id"]), "failed_with": old["reason"]}
                    for sent, old in zip(_sent(resent), failed, strict=True)
                ],
            },
        )
        await store.notify(DELIVERY_CHANNEL)
    await _advance(uow, case_id, now)


async def _advance(uow: UnitOfWork, case_id: UUID, now: datetime) -> None:
    """Fail the case or start its verification when its tasks say so."""
    locked = await CaseRepository(uow.connection).status_for_update(case_id)
    if locked is None:
        return
    move = next_move(locked[0].state, states(await TaskStore(uow.connection).tasks(case_id)))
    if move is not None:
        await act(uow, case_id, move.command, actor=EXECUTOR_ACTOR, reason=move.reason, now=now)


# --- acknowledgements -------------------------------------------------------------------


async def on_task_result(event: Event[TaskResult], uow: UnitOfWork) -> None:
    """An executor acknowledged a task (``deletion.task-results.v1``)."""
    await apply_result(uow, event.body, datetime.now(UTC))


async def apply_result(uow: UnitOfWork, result: TaskResult, now: datetime) -> None:
    repo = CaseRepository(uow.connection)
    if await repo.status_for_update(result.case_id) is None:
        log.warning("task result %s for unknown case %s ignored", result.task_id, result.case_id)
        return
    store = TaskStore(uow.connection)
    task = await store.task(result.task_id)
    said = {
        "task_id": str(result.task_id),
        "executor": result.executor,
        "outcome": result.outcome.value,
        "reason": result.reason,
        "completed_at": iso(result.completed_at),
    }

    async def ignore(why: str) -> None:
        await repo.record_evidence(
            result.case_id,
            at=now,
            kind="acknowledgement_ignored",
            actor=result.executor,
            data={**said, "why": why},
        )

    if task is None or task["case_id"] != result.case_id:
        await ignore(
            "no current task of the case has this id: an earlier attempt's (re-sent since)"
            " or an unknown one"
        )
        return
    if result.executor != task["target_system"]:
        await ignore(f"the task is {task['target_system']}'s, not {result.executor}'s")
        return
    current = TaskState(task["state"])
    if current.acknowledged:
        if current.value != result.outcome.value:
            await ignore(f"the task was acknowledged {current.value} already")
        return
    state = TaskState.of(result.outcome)
    await store.acknowledge(
        result.task_id,
        state,
        reason=result.reason,
        at=result.completed_at,
        result=result.model_dump(mode="json"),
    )
    await repo.record_evidence(
        result.case_id,
        at=now,
        kind="task_acknowledged",
        actor=result.executor,
        data={
            **said,
            "system": task["target_system"],
            "action": task["action"],
            "attempt": task["attempt"],
        },
    )
    await _advance(uow, result.case_id, now)
    await refresh_progress(uow.connection, result.case_id)


# --- verification -----------------------------------------------------------------------


@functools.cache
def _settings() -> ServiceSettings:
    return ServiceSettings()


def default_client() -> ServicesClient:
    """The registry and lineage as the environment configures them."""
    return ServicesClient.from_settings(_settings())


async def run_checks(
    services: ServicesClient, checks: Sequence[Check], tasks: Sequence[TaskView]
) -> list[CheckResult]:
    """Every check's result; a check a service cannot answer now is ``None`` (unknown)."""
    results = []
    for check in checks:
        try:
            results.append(await _run(services, check, tasks))
        except (ServiceUnavailable, ServiceRejected) as exc:
            results.append(CheckResult(check, None, str(exc)))
    return results


async def _run(services: ServicesClient, check: Check, tasks: Sequence[TaskView]) -> CheckResult:
    p = check.params
    match check.kind:
        case CheckKind.SUBJECT_RECORDS:
            return judge_subject(
                check, await services.subject_versions(p["subject_id"], p["category"])
            )
        case CheckKind.DATASET_MANIFEST:
            ref = DatasetRef.model_validate(p["dataset"])
            return judge_manifest(check, await services.dataset_version(ref))
        case CheckKind.CATEGORY_RECORDS:
            return judge_category(check, await services.versions_holding(p))
        case CheckKind.MODEL_STATUS:
            model = ModelRef.model_validate(p["model"])
            return judge_model(check, await services.model_status(model))
        case CheckKind.ACKNOWLEDGED:
            return judge_acknowledged(check, tasks)
    raise AssertionError(check.kind)


async def verify_next(
    ctx: WorkerContext, client: Callable[[], ServicesClient] | None = None
) -> bool:
    """Verify one case whose check is due; False when there is none."""
    now = datetime.now(UTC)
    async with ctx.pool.acquire() as conn:
        store = TaskStore(conn)
        case_id = await store.claim_verification(now, now + VERIFICATION_LEASE)
        if case_id is None:
            return False
        case = await store.case(case_id)
        tasks = states(await store.tasks(case_id))
    assert case is not None
    checks = verification_checks(case["targets"] or {}, tasks)
    async with (client or default_client)() as services:
        results = await run_checks(services, checks, tasks)
    confirmed, lines = verdict(results)
    at = datetime.now(UTC)
    async with unit_of_work(ctx.pool, ctx.source) as uow:
        locked = await CaseRepository(uow.connection).status_for_update(case_id)
        if locked is None or locked[0].state is not CaseState.VERIFYING:
            return True
        store = TaskStore(uow.connection)
        previous = await store.verification(case_id)
        attempt = (previous["attempts"] if previous else 0) + 1
        document = {
            "attempt": attempt,
            "checked_at": iso(at),
            "confirmed": confirmed,
            "results": [r.as_json() for r in results],
            "missing": lines,
        }
        await store.store_verification(
            case_id,
            at=at,
            confirmed=confirmed,
            results=document,
            next_at=at + timedelta(seconds=verification_delay(attempt)),
        )
        await CaseRepository(uow.connection).record_evidence(
            case_id, at=at, kind="verification", actor=EXECUTOR_ACTOR, data=document
        )
        if confirmed:
            await act(
                uow,
                case_id,
                Command.COMPLETE,
                actor=EXECUTOR_ACTOR,
                reason=f"verified: all {len(results)} check(s) confirm the targets are gone"
                " or marked",
                now=at,
            )
        await refresh_progress(uow.connection, case_id)
    return True


VERIFICATION_WORKER = WorkerSpec(
    name="case-verification", step=verify_next, channel=VERIFICATION_CHANNEL
)


# --- what is shown ----------------------------------------------------------------------


async def refresh_progress(conn: Connection, case_id: UUID) -> None:
    """Rewrite ``cases.execution`` from the tasks and the last verification."""
    store = TaskStore(conn)
    case = await store.case(case_id)
    tasks = await store.tasks(case_id)
    verification = await store.verification(case_id)
    if case is None or (not tasks and verification is None):
        return
    await store.set_progress(
        case_id,
        progress(
            CaseState(case["state"]),
            [task_json(t) for t in tasks],
            verification["results"] if verification and verification["results"] else None,
        ),
    )


async def execution_view(conn: Connection, case_id: UUID) -> dict[str, Any] | None:
    """Everything about the case's execution: targets, tasks with every delivery attempt,
    the verification and what is missing."""
    store = TaskStore(conn)
    case = await store.case(case_id)
    if case is None:
        return None
    tasks = await store.tasks(case_id)
    verification = await store.verification(case_id)
    last = verification["results"] if verification and verification["results"] else None
    view = progress(CaseState(case["state"]), [task_json(t) for t in tasks], last)
    deliveries = await store.deliveries(case_id)
    for task in view["tasks"]:
        task["delivery_log"] = [
            {
                "attempt": d["task_attempt"],
                "delivery": d["delivery"],
                "at": iso(d["at"]),
                "status_code": d["status_code"],
                "error": d["error"],
                "answer": d["answer"],
                "duration_ms": d["duration_ms"],
            }
            for d in deliveries
            if d["target_system"] == task["system"]
        ]
    return {
        "case_id": str(case_id),
        "state": case["state"],
        "targets": case["targets"],
        **view,
        "next_verification_at": iso(verification["next_check_at"]) if verification else None,
    }
