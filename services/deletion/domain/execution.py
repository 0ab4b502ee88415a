"""Executing a case: the tasks a frozen scope turns into, when the case may move on, what
verification checks, and what is still missing. Pure: rows and answers in, decisions out.

- **Tasks** (``plan_tasks``): one per target system. ``registry`` (built in) purges the
  records of the selector and rebuilds the manifests of the versions holding them (data
  cases only); ``lineage`` (built in) marks each model ``destroyed`` or ``superseded``
  (when the scope holds models); every frozen webhook system gets the selector and the
  models. A task's id is derived from (case, system, action, attempt): a re-sent task has a
  new id, so a late acknowledgement of an earlier attempt is recognised as stale.
- **Moving on** (``next_move``): while executing, one failed task fails the case (with the
  task's reason); once every task is acknowledged (``done`` or ``not_applicable``) the
  case goes to verification. Nothing moves a case that is not executing (held, failed…).
- **Verification** (``verification_checks`` / ``verdict``): queries that confirm the
  targets are gone or marked — the subjects' records in no sealed version, a purged
  dataset version's manifest empty, each model's status ``destroyed`` (``superseded``
  accepts ``destroyed`` too: it is final and stronger). A webhook system cannot be queried:
  its acknowledgement is what there is. A case completes only when every check confirms.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid5

from contracts.events import CaseKind, CaseState, TaskOutcome
from services.deletion.domain.workflow import Command

__all__ = [
    "ACK_PATH",
    "BUILTIN_SYSTEMS",
    "LINEAGE",
    "REGISTRY",
    "TASK_NAMESPACE",
    "WEBHOOK_ACTIONS",
    "Check",
    "CheckKind",
    "CheckResult",
    "Move",
    "PlannedTask",
    "TaskState",
    "TaskView",
    "delivery_delay",
    "fit_target",
    "iso",
    "judge_acknowledged",
    "judge_category",
    "judge_manifest",
    "judge_model",
    "judge_subject",
    "missing",
    "next_move",
    "plan_tasks",
    "progress",
    "states",
    "task_id_for",
    "verdict",
    "verification_checks",
    "verification_delay",
]

REGISTRY, LINEAGE = "registry", "lineage"
BUILTIN_SYSTEMS = frozenset({REGISTRY, LINEAGE})
TASK_NAMESPACE = UUID("a3f0c9e2-51d4-4b8e-9c1a-7e2d5b6f8a90")
ACK_PATH = "/api/v1/task-acknowledgements"
"""Where a webhook system acknowledges a task (on the deletion service)."""

WEBHOOK_ACTIONS: Mapping[CaseKind, str] = {
    CaseKind.SUBJECT_ERASURE: "erase_subject_data",
    CaseKind.CATEGORY_PURGE: "purge_category_data",
    CaseKind.DATASET_PURGE: "purge_dataset_data",
    CaseKind.MODEL_DESTRUCTION: "destroy_model_artifacts",
}


class TaskState(StrEnum):
    PENDING = "pending"
    """Sent, not acknowledged yet."""
    DONE = "done"
    FAILED = "failed"
    NOT_APPLICABLE = "not_applicable"

    @classmethod
    def of(cls, outcome: TaskOutcome) -> TaskState:
        return cls(outcome.value)

    @property
    def acknowledged(self) -> bool:
        return self is not TaskState.PENDING

    @property
    def settled(self) -> bool:
        """Acknowledged, and not a failure."""
        return self in (TaskState.DONE, TaskState.NOT_APPLICABLE)


MAX_TARGET = 256
"""A task target's length in the contract (``DeletionTask.targets``)."""


def fit_target(key: str) -> str:
    """``key`` as a task target: a longer one (dataset and model names may be long) keeps
    its start and ends with a digest of the whole; the exact references travel in the
    task's parameters."""
    if len(key) <= MAX_TARGET:
        return key
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    return f"{key[: MAX_TARGET - 40]}…sha256:{digest}"


def task_id_for(case_id: UUID, system: str, action: str, attempt: int) -> UUID:
    return uuid5(TASK_NAMESPACE, f"{case_id}|{system}|{action}|{attempt}")


@dataclass(frozen=True, slots=True)
class PlannedTask:
    system: str
    action: str
    targets: tuple[str, ...]
    parameters: dict[str, Any]
    executor: str
    """``builtin`` (an executor consuming deletion.tasks.v1) or ``webhook``."""


def _model_targets(targets: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [
        {"model": m["model"], "status": m["action"], "key": m["key"]}
        for m in targets.get("models", ())
    ]


def plan_tasks(targets: Mapping[str, Any]) -> list[PlannedTask]:
    """The tasks of a frozen scope (``domain.scoping.freeze``), one per target system."""
    kind = CaseKind(targets["kind"])
    records = targets.get("records")
    models = _model_targets(targets)
    tasks: list[PlannedTask] = []
    if records is not None and records.get("keys"):
        tasks.append(
            PlannedTask(
                REGISTRY,
                "purge_records",
                tuple(fit_target(k) for k in records["keys"]),
                {"case_kind": kind.value, **records["selector"]},
                "builtin",
            )
        )
    if models:
        tasks.append(
            PlannedTask(
                LINEAGE,
                "mark_models",
                tuple(fit_target(m["key"]) for m in models),
                {"models": [{"model": m["model"], "status": m["status"]} for m in models]},
                "builtin",
            )
        )
    keys = [*(records["keys"] if records else ()), *(m["key"] for m in models)]
    for system in targets.get("systems", ()):
        if keys:
            tasks.append(
                PlannedTask(
                    system,
                    WEBHOOK_ACTIONS[kind],
                    tuple(fit_target(k) for k in keys),
                    {
                        "case_kind": kind.value,
                        "selector": records["selector"] if records else None,
                        "models": [{"model": m["model"], "status": m["status"]} for m in models],
                        "acknowledge": ACK_PATH,
                    },
                    "webhook",
                )
            )
    return tasks


# --- moving on --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskView:
    """What the decisions need of a task row."""

    system: str
    action: str
    state: TaskState
    reason: str = ""
    attempt: int = 1


@dataclass(frozen=True, slots=True)
class Move:
    command: Command
    reason: str


def next_move(state: CaseState, tasks: Sequence[TaskView]) -> Move | None:
    """What follows from the tasks' states for a case in ``state``; None: wait."""
    if state is not CaseState.EXECUTING:
        return None
    failed = [t for t in tasks if t.state is TaskState.FAILED]
    if failed:
        return Move(
            Command.FAIL,
            "; ".join(
                f"task {t.system}/{t.action} (attempt {t.attempt}) failed: {t.reason}"
                for t in failed
            )[:4000],
        )
    if all(t.state.settled for t in tasks):
        return Move(
            Command.START_VERIFICATION,
            f"every task acknowledged ({len(tasks)}): verifying the targets",
        )
    return None


# --- verification -----------------------------------------------------------------------


class CheckKind(StrEnum):
    SUBJECT_RECORDS = "subject_records"
    """``GET /dataset-versions?subject_id=S[&category=C]`` answers no version."""
    DATASET_MANIFEST = "dataset_manifest"
    """``GET /dataset-version`` answers ``record_count`` 0 (or no sealed version)."""
    CATEGORY_RECORDS = "category_records"
    """The registry's listing of versions holding the category's records is empty."""
    MODEL_STATUS = "model_status"
    """``GET /model-status`` answers the status asked for (or ``destroyed``)."""
    ACKNOWLEDGED = "acknowledged"
    """An external system: its acknowledgement is the only evidence there is."""


@dataclass(frozen=True, slots=True)
class Check:
    kind: CheckKind
    target: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CheckResult:
    check: Check
    confirmed: bool | None
    """True: gone or marked; False: still there; None: could not be asked."""
    detail: str

    def as_json(self) -> dict[str, Any]:
        return {
            "check": self.check.kind.value,
            "target": self.check.target,
            "confirmed": self.confirmed,
            "detail": self.detail,
        }


def verification_checks(targets: Mapping[str, Any], tasks: Sequence[TaskView] = ()) -> list[Check]:
    """Every query that must confirm the case's targets are gone or marked."""
    checks: list[Check] = []
    records = targets.get("records")
    if records is not None:
        selector = records["selector"]
        kind = CaseKind(targets["kind"])
        if kind is CaseKind.SUBJECT_ERASURE:
            categories = selector.get("categories") or [None]
            for subject in selector.get("subjects", ()):
                for category in categories:
                    checks.append(
                        Check(
                            CheckKind.SUBJECT_RECORDS,
                            f"subject:{subject}" + (f"/{category}" if category else ""),
                            {"subject_id": subject, "category": category},
                        )
                    )
        elif kind is CaseKind.DATASET_PURGE:
            for dataset in selector.get("dataset_versions", ()):
                key = f"dataset:{dataset['namespace']}:{dataset['name']}#{dataset['version']}"
                checks.append(Check(CheckKind.DATASET_MANIFEST, key, {"dataset": dataset}))
        elif kind is CaseKind.CATEGORY_PURGE:
            checks.append(
                Check(
                    CheckKind.CATEGORY_RECORDS,
                    ",".join(f"category:{c}" for c in selector.get("categories", ())),
                    {k: selector.get(k) for k in _CATEGORY_FILTER},
                )
            )
    for model in targets.get("models", ()):
        checks.append(
            Check(
                CheckKind.MODEL_STATUS,
                model["key"],
                {"model": model["model"], "status": model["action"]},
            )
        )
    for task in tasks:
        if task.system not in BUILTIN_SYSTEMS:
            checks.append(Check(CheckKind.ACKNOWLEDGED, f"system:{task.system}", {}))
    return checks


_CATEGORY_FILTER = ("categories", "jurisdictions", "collected_from", "collected_until")


def judge_subject(check: Check, versions: Sequence[Mapping[str, Any]]) -> CheckResult:
    if not versions:
        return CheckResult(check, True, "in no sealed dataset version")
    keys = ", ".join(
        f"dataset:{v['dataset']['namespace']}:{v['dataset']['name']}#{v['dataset']['version']}"
        f" ({v.get('subject_records', '?')})"
        for v in versions[:10]
    )
    return CheckResult(check, False, f"still in {len(versions)} version(s): {keys}")


def judge_manifest(check: Check, version: Mapping[str, Any] | None) -> CheckResult:
    if version is None:
        return CheckResult(check, True, "no sealed version of that name")
    count = int(version.get("record_count", 0))
    if count == 0:
        return CheckResult(check, True, "manifest empty (record_count 0)")
    return CheckResult(check, False, f"manifest still lists {count} record(s)")


def judge_category(check: Check, versions: Sequence[Mapping[str, Any]]) -> CheckResult:
    if not versions:
        return CheckResult(check, True, "no sealed version holds such records")
    total = sum(int(v.get("records", 0)) for v in versions)
    return CheckResult(check, False, f"{total} record(s) still in {len(versions)} version(s)")


def judge_model(check: Check, status: Mapping[str, Any] | None) -> CheckResult:
    wanted = str(check.params["status"])
    if status is None:
        return CheckResult(check, True, "lineage does not know this model: nothing to mark")
    explicit = status.get("explicit_status")
    if explicit == wanted or explicit == "destroyed":
        return CheckResult(check, True, f"status {explicit}")
    return CheckResult(
        check, False, f"status {status.get('status')} (explicit {explicit}), not {wanted}"
    )


def judge_acknowledged(check: Check, tasks: Sequence[TaskView]) -> CheckResult:
    system = check.target.removeprefix("system:")
    states = [t.state for t in tasks if t.system == system]
    if states and all(s.settled for s in states):
        return CheckResult(
            check, True, f"acknowledged {', '.join(s.value for s in states)} (not queryable)"
        )
    return CheckResult(check, False, "not acknowledged")


def verdict(results: Sequence[CheckResult]) -> tuple[bool, list[str]]:
    """(every check confirmed, what is missing: one line per unconfirmed check)."""
    lines = [
        f"{r.check.kind.value} {r.check.target}: "
        + ("could not be checked: " if r.confirmed is None else "")
        + r.detail
        for r in results
        if r.confirmed is not True
    ]
    return not lines, lines


# --- what a person sees -----------------------------------------------------------------


def missing(
    state: CaseState,
    tasks: Sequence[TaskView],
    verification: Mapping[str, Any] | None,
) -> list[str]:
    """What stands between the case and its completion, for a person."""
    if state is CaseState.COMPLETED:
        return []
    lines = [
        f"task {t.system}/{t.action}: "
        + ("not acknowledged yet" if t.state is TaskState.PENDING else f"failed: {t.reason}")
        for t in tasks
        if not t.state.settled
    ]
    if verification and verification.get("missing"):
        lines += [f"verification: {line}" for line in verification["missing"]]
    elif tasks and all(t.state.settled for t in tasks) and not verification:
        lines.append("verification: not run yet")
    return lines


def progress(
    state: CaseState,
    tasks: Sequence[Mapping[str, Any]],
    verification: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The ``cases.execution`` document: tasks with their states, the last verification,
    and what is missing."""
    views = [
        TaskView(t["system"], t["action"], TaskState(t["state"]), t.get("reason") or "")
        for t in tasks
    ]
    return {
        "tasks": [dict(t) for t in tasks],
        "verification": dict(verification) if verification else None,
        "missing": missing(state, views, verification),
    }


# --- timing -----------------------------------------------------------------------------


def delivery_delay(
    deliveries: int, *, base_s: float = 2.0, cap_s: float = 900.0, jitter: float = 0.2
) -> float:
    """Seconds before the next delivery after ``deliveries`` failed ones: exponential from
    ``base_s``, capped, with ±``jitter`` so that many tasks do not retry in step."""
    delay: float = min(base_s * 2.0 ** max(deliveries - 1, 0), cap_s)
    return delay * (1.0 + random.uniform(-jitter, jitter))


def verification_delay(attempts: int, *, base_s: float = 2.0, cap_s: float = 600.0) -> float:
    """Seconds before verifying again after ``attempts`` unconfirmed verifications."""
    delay: float = min(base_s * 2.0 ** max(attempts - 1, 0), cap_s)
    return delay


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def states(rows: Iterable[Mapping[str, Any]]) -> list[TaskView]:
    return [
        TaskView(
            r["target_system"],
            r["action"],
            TaskState(r["state"]),
            r.get("reason") or "",
            int(r.get("attempt", 1)),
        )
        for r in rows
    ]
