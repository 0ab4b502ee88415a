"""The lineage executor of deletion cases: consumes ``deletion.tasks.v1`` (tasks whose
``target_system`` is ``lineage``), marks models through the model-status rules
(``service.models.set_model_status``: the same transitions and guards as the API), and
acknowledges on ``deletion.task-results.v1`` through the outbox, in one transaction.

**Action ``mark_models``.** ``parameters.models``: ``[{"model": {namespace, name,
version}, "status": "destroyed" | "superseded"}]``. Each model is set to its status, audited
as actor ``deletion:<case id>``. Setting the status a model has changes nothing (a re-sent
task is harmless); a model asked to be ``superseded`` that is ``destroyed`` already counts
as marked (destruction is final and says more).

Acknowledgement: ``done`` when every model is marked; ``failed`` naming each model the
rules refused and why (e.g. a quarantined model with a ``destroy_required`` flag cannot be
``superseded``); ``not_applicable`` when lineage knows none of the models.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from uuid import NAMESPACE_URL, uuid5

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.base import ModelRef
from contracts.events import DeletionTask, TaskOutcome, TaskResult
from contracts.topics import TASK_RESULTS
from services.lineage.adapters.status import ModelStatusStore
from services.lineage.domain.status import ExplicitStatus
from services.lineage.service.models import ModelNotFound, StatusRefused, set_model_status
from services.runtime.messages import Event
from services.runtime.unit_of_work import UnitOfWork

__all__ = ["ACTION", "EXECUTOR", "MarkModels", "mark_models", "on_deletion_task"]

log = logging.getLogger(__name__)

EXECUTOR = "lineage"
ACTION = "mark_models"
MARKS = (ExplicitStatus.DESTROYED, ExplicitStatus.SUPERSEDED)


class ModelMark(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    model: ModelRef
    status: ExplicitStatus


class MarkModels(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    models: tuple[ModelMark, ...] = Field(min_length=1)


async def mark_models(
    uow: UnitOfWork, marks: MarkModels, *, actor: str, reason: str, now: datetime
) -> tuple[TaskOutcome, str]:
    """Mark every model; the outcome and what happened to each."""
    done: list[str] = []
    unknown: list[str] = []
    refused: list[str] = []
    for mark in marks.models:
        key = mark.model.key
        if mark.status not in MARKS:
            refused.append(f"{key}: a deletion marks models destroyed or superseded only")
            continue
        try:
            await set_model_status(
                uow.connection, mark.model, mark.status, actor=actor, reason=reason, now=now
            )
        except ModelNotFound:
            unknown.append(key)
            continue
        except StatusRefused as exc:
            explicit = await ModelStatusStore(uow.connection).explicit(mark.model)
            if mark.status is ExplicitStatus.SUPERSEDED and (
                explicit is not None and explicit.status is ExplicitStatus.DESTROYED
            ):
                done.append(f"{key} destroyed already")
                continue
            refused.append(str(exc))
            continue
        done.append(f"{key} {mark.status.value}")
    parts = []
    if done:
        parts.append("marked: " + ", ".join(done))
    if unknown:
        parts.append("unknown to lineage: " + ", ".join(unknown))
    if refused:
        parts.append("refused: " + "; ".join(refused))
    text = "; ".join(parts)
    text = text if len(text) <= 4096 else text[:4095] + "…"
    if refused:
        return TaskOutcome.FAILED, text
    if not done:
        return TaskOutcome.NOT_APPLICABLE, text
    return TaskOutcome.DONE, text


async def on_deletion_task(event: Event[DeletionTask], uow: UnitOfWork) -> None:
    """Carry out a lineage task and acknowledge it (other systems' tasks are skipped)."""
    task = event.body
    if task.target_system != EXECUTOR:
        return
    now = datetime.now(UTC)
    if task.action != ACTION:
        outcome, reason = (
            TaskOutcome.FAILED,
            f"lineage carries out {ACTION} only, not {task.action}",
        )
    else:
        try:
            marks = MarkModels.model_validate(task.parameters)
        except ValidationError as exc:
            errors = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'parameters'}: {e['msg']}"
                for e in exc.errors()
            )
            outcome, reason = TaskOutcome.FAILED, f"parameters not understood: {errors}"[:4096]
        else:
            outcome, reason = await mark_models(
                uow,
                marks,
                actor=f"deletion:{task.case_id}",
                reason=f"deletion case {task.case_id}, task {task.task_id}",
                now=now,
            )
    log.info("deletion task %s (%s): %s — %s", task.task_id, task.action, outcome.value, reason)
    uow.publish(
        TASK_RESULTS,
        TaskResult(
            task_id=task.task_id,
            case_id=task.case_id,
            executor=EXECUTOR,
            outcome=outcome,
            reason=reason,
            completed_at=now,
        ),
        key=str(task.case_id),
        event_id=str(uuid5(NAMESPACE_URL, f"consenttrace:lineage-result:{task.task_id}")),
    )
