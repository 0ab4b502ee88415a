"""The webhook executor: external systems take part in a case through signed HTTP calls.

**Registering a system** (``PUT /api/v1/webhook-systems/{system}``): its callback URL, a
secret shared with it (at least 32 characters) and the case kinds it takes part in. The
systems of a case's kind are frozen with its scope; each gets one task.

**Delivery** (``WEBHOOK_WORKER``, a background worker). A task is ``POST``ed to the system's
URL with the ``DeletionTask`` JSON as body (exactly as on ``deletion.tasks.v1``; schema
``contracts/schemas/deletion.tasks.v1.schema.json``) and these headers:

====================================== ==================================================
``X-ConsentTrace-Timestamp``           Unix time in seconds when it was signed
``X-ConsentTrace-Signature``           ``v1=`` + hex HMAC-SHA256(secret,
                                       timestamp + ``.`` + body bytes)
``X-ConsentTrace-System``              the system's name
``X-ConsentTrace-Task``                the task id (the idempotency key: a task may be
                                       delivered more than once, always with the same id)
``X-ConsentTrace-Delivery``            which delivery of this attempt this is (1, 2, …)
====================================== ==================================================

The system answers **2xx** to accept the task. With a JSON body ``{"outcome": "done" |
"failed" | "not_applicable", "reason": "…"}`` that answer is its acknowledgement; without
one it acknowledges later (below). Anything else (another status, no answer within 10 s,
a refused connection) is retried with exponential backoff (2 s, 4 s, … capped at 15 min,
±20 % jitter), each attempt recorded in ``task_deliveries``; after 12 failed deliveries
the task fails ("undeliverable") and with it the case — ``resume`` re-sends it. Only
cases that are ``executing`` get deliveries, with the case's row locked during the call:
nothing goes out while a case is on hold.

**Acknowledging** (``POST /api/v1/task-acknowledgements`` on the deletion service): body
``{"task_id": "…", "outcome": "done" | "failed" | "not_applicable", "reason": "…",
"completed_at": "…" (optional, with offset)}``, signed the same way with the system's
secret, plus ``X-ConsentTrace-System``. A ``failed`` outcome needs a reason. It becomes a
``TaskResult`` on ``deletion.task-results.v1`` (202); a bad or stale signature is 401, a
task that is not this system's current one 404 (a re-sent task has a new id), a different
outcome than one already acknowledged 409.

**Verifying a signature** (receivers of deliveries do this; the service does it for
acknowledgements): take the timestamp header and the raw body bytes, refuse a timestamp
more than 5 minutes from now (replays), compute ``HMAC-SHA256(secret, timestamp + "." +
body)`` and compare its hex digest with the signature after ``v1=`` in constant time
(``verify_signature`` below; in Python ``hmac.compare_digest``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.base import AwareDatetime
from contracts.events import DeletionTask, TaskOutcome, TaskResult
from contracts.topics import TASK_RESULTS
from services.deletion.adapters.repository import CaseRepository
from services.deletion.adapters.tasks import DELIVERY_CHANNEL, TaskStore
from services.deletion.domain.execution import TaskState, delivery_delay
from services.deletion.service.execution import EXECUTOR_ACTOR, refresh_progress
from services.runtime.unit_of_work import UnitOfWork, unit_of_work
from services.runtime.worker import WorkerContext, WorkerSpec

__all__ = [
    "DELIVERY_TIMEOUT_S",
    "MAX_DELIVERIES",
    "SIGNATURE_HEADER",
    "SYSTEM_HEADER",
    "TIMESTAMP_HEADER",
    "TOLERANCE_S",
    "WEBHOOK_WORKER",
    "Acknowledgement",
    "AcknowledgementRefused",
    "SignatureInvalid",
    "acknowledge",
    "deliver_next",
    "sign",
    "verify_signature",
]

log = logging.getLogger(__name__)

TIMESTAMP_HEADER = "X-ConsentTrace-Timestamp"
SIGNATURE_HEADER = "X-ConsentTrace-Signature"
SYSTEM_HEADER = "X-ConsentTrace-System"
TASK_HEADER = "X-ConsentTrace-Task"
DELIVERY_HEADER = "X-ConsentTrace-Delivery"
TOLERANCE_S = 300
"""A signature older or newer than this (seconds) is refused: replays."""
MAX_DELIVERIES = 12
DELIVERY_TIMEOUT_S = 10.0


# --- signatures -------------------------------------------------------------------------


class SignatureInvalid(ValueError):
    """The request is not signed by the system it names (HTTP 401)."""


def sign(secret: str, timestamp: int | str, body: bytes) -> str:
    """``v1=`` + hex HMAC-SHA256 over ``timestamp.body`` with the system's secret."""
    message = str(timestamp).encode("ascii") + b"." + body
    return "v1=" + hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify_signature(
    secret: str,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: int = TOLERANCE_S,
) -> None:
    """Raise ``SignatureInvalid`` unless ``signature`` signs ``body`` at ``timestamp`` with
    ``secret`` and the timestamp is within ``tolerance_s`` of ``now``."""
    if not timestamp or not signature:
        raise SignatureInvalid(f"{TIMESTAMP_HEADER} and {SIGNATURE_HEADER} are required")
    try:
        at = int(timestamp)
    except ValueError:
        raise SignatureInvalid(f"{TIMESTAMP_HEADER} must be Unix seconds") from None
    current = time.time() if now is None else now
    if abs(current - at) > tolerance_s:
        raise SignatureInvalid(
            f"{TIMESTAMP_HEADER} is {int(current - at)} s from now (more than {tolerance_s} s)"
        )
    if not hmac.compare_digest(sign(secret, at, body), signature.strip()):
        raise SignatureInvalid("the signature does not match the body and timestamp")


# --- acknowledgements -------------------------------------------------------------------


class Acknowledgement(BaseModel):
    """What a webhook system sends back about one task."""

    model_config = ConfigDict(extra="forbid")

    task_id: UUID
    outcome: TaskOutcome
    reason: str = Field(default="", max_length=4096)
    completed_at: AwareDatetime | None = None


class AcknowledgementRefused(Exception):
    """The acknowledgement cannot be taken; ``status_code`` says how to answer."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


def result_event_id(task_id: UUID, outcome: TaskOutcome) -> str:
    """The same acknowledgement twice is one event (consumers drop the second)."""
    return str(uuid5(NAMESPACE_URL, f"consenttrace:task-result:{task_id}:{outcome.value}"))


def publish_result(uow: UnitOfWork, result: TaskResult) -> None:
    uow.publish(
        TASK_RESULTS,
        result,
        key=str(result.case_id),
        event_id=result_event_id(result.task_id, result.outcome),
    )


async def acknowledge(
    uow: UnitOfWork,
    *,
    system: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    now: datetime,
) -> TaskResult:
    """Check a webhook system's signed acknowledgement and publish it as a TaskResult."""
    store = TaskStore(uow.connection)
    if not system:
        raise AcknowledgementRefused(401, f"{SYSTEM_HEADER} is required")
    secret = await store.secret(system)
    if secret is None:
        raise AcknowledgementRefused(401, f"no webhook system {system!r} is registered")
    try:
        verify_signature(secret, timestamp, signature, body, now=now.timestamp())
    except SignatureInvalid as exc:
        raise AcknowledgementRefused(401, str(exc)) from None
    try:
        ack = Acknowledgement.model_validate_json(body)
    except ValidationError as exc:
        raise AcknowledgementRefused(422, _errors(exc)) from None
    task = await store.task(ack.task_id)
    if task is None or task["target_system"] != system:
        raise AcknowledgementRefused(
            404,
            f"{system} has no current task {ack.task_id} (a re-sent task has a new id: see"
            f" {TASK_HEADER} of the latest delivery)",
        )
    state = TaskState(task["state"])
    if state.acknowledged and state.value != ack.outcome.value:
        raise AcknowledgementRefused(409, f"task {ack.task_id} was acknowledged {state.value}")
    try:
        result = TaskResult(
            task_id=ack.task_id,
            case_id=task["case_id"],
            executor=system,
            outcome=ack.outcome,
            reason=ack.reason,
            completed_at=ack.completed_at or now,
        )
    except ValidationError as exc:
        raise AcknowledgementRefused(422, _errors(exc)) from None
    publish_result(uow, result)
    return result


def _errors(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
    )


# --- delivery ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Answer:
    accepted: bool
    status_code: int | None
    error: str | None
    body: Any
    outcome: TaskOutcome | None = None
    reason: str = ""
    duration_ms: int = 0


async def post(
    client: httpx.AsyncClient, url: str, secret: str, system: str, task: DeletionTask, n: int
) -> Answer:
    body = task.model_dump_json().encode()
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        SYSTEM_HEADER: system,
        TASK_HEADER: str(task.task_id),
        DELIVERY_HEADER: str(n),
    }
    started = time.perf_counter()
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        elapsed = int((time.perf_counter() - started) * 1000)
        error = f"{type(exc).__name__}: {exc or 'no answer'}"
        return Answer(False, None, error, None, duration_ms=elapsed)
    elapsed = int((time.perf_counter() - started) * 1000)
    try:
        answer: Any = response.json() if response.content else None
    except ValueError:
        answer = {"text": response.text[:500]}
    if not response.is_success:
        error = f"HTTP {response.status_code}: {response.text[:300]}"
        return Answer(False, response.status_code, error, answer, duration_ms=elapsed)
    outcome: TaskOutcome | None = None
    reason = ""
    if isinstance(answer, dict) and answer.get("outcome") is not None:
        try:
            outcome = TaskOutcome(answer["outcome"])
        except ValueError:
            error = f"answered an unknown outcome {answer['outcome']!r}"
            return Answer(False, response.status_code, error, answer, duration_ms=elapsed)
        reason = str(answer.get("reason") or "")[:4096]
        if outcome is TaskOutcome.FAILED and not reason:
            reason = "the system answered failed without a reason"
    return Answer(True, response.status_code, None, answer, outcome, reason, elapsed)


async def deliver_next(
    ctx: WorkerContext, *, transport: httpx.AsyncBaseTransport | None = None
) -> bool:
    """Deliver one due webhook task; False when none is due."""
    now = datetime.now(UTC)
    async with unit_of_work(ctx.pool, ctx.source) as uow:
        store = TaskStore(uow.connection)
        row = await store.claim_delivery(now)
        if row is None:
            return False
        task = DeletionTask(
            task_id=row["task_id"],
            case_id=row["case_id"],
            target_system=row["target_system"],
            action=row["action"],
            targets=tuple(row["targets"]),
            issued_at=row["issued_at"],
            parameters=row["parameters"],
        )
        n = int(row["deliveries"]) + 1
        async with httpx.AsyncClient(timeout=DELIVERY_TIMEOUT_S, transport=transport) as client:
            answer = await post(client, row["url"], row["secret"], task.target_system, task, n)
        at = datetime.now(UTC)
        await store.record_delivery(
            row,
            delivery=n,
            at=at,
            status_code=answer.status_code,
            error=answer.error,
            answer=answer.body,
            duration_ms=answer.duration_ms,
        )
        repo = CaseRepository(uow.connection)
        system = task.target_system
        if answer.accepted:
            await store.delivered(task.task_id, at=at, deliveries=n)
            await repo.record_evidence(
                task.case_id,
                at=at,
                kind="task_delivered",
                actor=EXECUTOR_ACTOR,
                data={
                    "task_id": str(task.task_id),
                    "system": system,
                    "attempt": row["attempt"],
                    "delivery": n,
                    "status_code": answer.status_code,
                    "answered": answer.outcome.value if answer.outcome else None,
                },
            )
            if answer.outcome is not None:
                publish_result(
                    uow,
                    TaskResult(
                        task_id=task.task_id,
                        case_id=task.case_id,
                        executor=system,
                        outcome=answer.outcome,
                        reason=answer.reason,
                        completed_at=at,
                    ),
                )
        elif n >= MAX_DELIVERIES:
            await store.retry_later(task.task_id, at=None, deliveries=n, error=answer.error or "")
            why = f"webhook {system} undeliverable after {n} deliveries; last: {answer.error}"
            await repo.record_evidence(
                task.case_id,
                at=at,
                kind="task_undeliverable",
                actor=EXECUTOR_ACTOR,
                data={"task_id": str(task.task_id), "system": system, "deliveries": n, "why": why},
            )
            publish_result(
                uow,
                TaskResult(
                    task_id=task.task_id,
                    case_id=task.case_id,
                    executor=system,
                    outcome=TaskOutcome.FAILED,
                    reason=why[:4096],
                    completed_at=at,
                ),
            )
        else:
            delay = timedelta(seconds=delivery_delay(n))
            await store.retry_later(
                task.task_id, at=at + delay, deliveries=n, error=answer.error or ""
            )
            log.info(
                "delivery %d of task %s to %s failed: %s", n, task.task_id, system, answer.error
            )
        await refresh_progress(uow.connection, task.case_id)
    return True


WEBHOOK_WORKER = WorkerSpec(name="webhook-delivery", step=deliver_next, channel=DELIVERY_CHANNEL)
