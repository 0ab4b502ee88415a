"""The registry executor of deletion cases: consumes ``deletion.tasks.v1`` (tasks whose
``target_system`` is ``registry``), purges, and acknowledges on
``deletion.task-results.v1`` through the outbox — all in the consumer's one transaction,
so a purge and its acknowledgement commit together or not at all.

**Action ``purge_records``.** ``parameters`` select the records (as the deletion service
froze them at scoping):

- ``subjects`` (with ``categories`` as a filter, that category and those below it): the
  subjects' records — deleted, with every membership, from every version;
- ``categories`` (no subjects), with ``jurisdictions``, ``collected_from`` (inclusive) and
  ``collected_until`` (exclusive) when given: such records — deleted everywhere;
- ``dataset_versions``: the versions' memberships are all removed (their manifests are
  emptied) and the records they held are deleted unless another sealed version still
  holds them (those stay: they are another version's, outside the case).

**Manifest.** A sealed version's manifest is what the registry says the snapshot holds:
its membership set and what is derived from it — ``record_count`` (in ``GET
/dataset-version`` and the subject query), the composition (records and distinct subjects
per category and jurisdiction) and the subject list. Rebuilding it without the purged
records means: the memberships are deleted and ``record_count`` is reduced by exactly the
memberships each version lost, in the purge's transaction (the compositions cached per
process are keyed by ``record_count``, so they are computed again). The seal time, time of
use and purpose do not change: the version stays what it was, minus the purged records.

**Findings.** A purged record no longer contributes to any finding. The purged records'
subjects are re-judged in the same transaction (``reevaluate_subjects``): their
contributions to the versions that lost them are dropped, each finding touched gets its new
totals, and one left with no contribution is retracted — published on
``registry.findings.v1`` as usual (lineage then retracts its flags). Above
``SYNC_SUBJECTS`` subjects the versions are queued for whole re-evaluation instead
(``evaluation_jobs``, worked off by the evaluation worker after the purge commits).

**Acknowledgement.** ``done`` with what was purged and the manifests rebuilt (before →
after); ``not_applicable`` when nothing matched (the registry holds none of it: a re-sent
task after a purge that went through says so too); ``failed`` with the reason when the task
cannot be carried out (an unknown action, parameters that select nothing coherent).

Not covered (owned by registration): records staged in an upload that is still open are not
part of any sealed version and are not purged; if that upload is sealed later they come
back. A tombstone list checked at registration would stop that.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import NAMESPACE_URL, uuid5

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from contracts.base import AwareDatetime, CategoryPath, DatasetRef, SubjectId
from contracts.events import DeletionTask, TaskOutcome, TaskResult
from contracts.topics import TASK_RESULTS
from services.registry.adapters.findings import FindingStore
from services.registry.adapters.purge import ManifestChange, PurgeStore
from services.registry.service.findings import enqueue_evaluation, reevaluate_subjects
from services.runtime.messages import Event
from services.runtime.unit_of_work import UnitOfWork

__all__ = [
    "ACTION",
    "EXECUTOR",
    "SYNC_SUBJECTS",
    "PurgeReport",
    "PurgeSelection",
    "on_deletion_task",
    "purge",
]

log = logging.getLogger(__name__)

EXECUTOR = "registry"
ACTION = "purge_records"
SYNC_SUBJECTS = 5_000
"""Up to this many subjects, findings are re-judged in the purge's transaction."""


class PurgeSelection(BaseModel):
    """The records a ``purge_records`` task selects (its ``parameters``)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    subjects: tuple[SubjectId, ...] = ()
    categories: tuple[CategoryPath, ...] = ()
    jurisdictions: tuple[str, ...] = ()
    collected_from: AwareDatetime | None = None
    collected_until: AwareDatetime | None = None
    dataset_versions: tuple[DatasetRef, ...] = ()

    @model_validator(mode="after")
    def _one_selection(self) -> PurgeSelection:
        if not (self.subjects or self.categories or self.dataset_versions):
            raise ValueError("select subjects, categories or dataset_versions")
        if self.subjects and self.dataset_versions:
            raise ValueError("select subjects or dataset_versions, not both")
        return self

    def describe(self) -> str:
        if self.subjects:
            within = f" of {', '.join(self.categories)}" if self.categories else ""
            return f"records of {len(self.subjects)} subject(s){within}"
        if self.dataset_versions:
            return "records of " + ", ".join(d.key for d in self.dataset_versions)
        return "records of " + ", ".join(self.categories)


@dataclass
class PurgeReport:
    records: int = 0
    memberships: int = 0
    subjects: int = 0
    manifests: list[ManifestChange] = field(default_factory=list)
    findings_changed: int | None = None
    evaluations_enqueued: int = 0

    @property
    def anything(self) -> bool:
        return bool(self.records or self.memberships)

    def reason(self, selection: PurgeSelection) -> str:
        if not self.anything:
            return f"the registry holds no {selection.describe()}"
        manifests = "; ".join(f"{k} {b}→{a}" for k, b, a in self.manifests) or "none"
        findings = (
            f"{self.findings_changed} finding(s) changed"
            if self.findings_changed is not None
            else f"{self.evaluations_enqueued} version(s) queued for re-evaluation"
        )
        text = (
            f"purged {self.records} record(s) of {self.subjects} subject(s) and"
            f" {self.memberships} membership(s); manifests rebuilt: {manifests}; {findings}"
        )
        return text if len(text) <= 4096 else text[:4095] + "…"


async def purge(uow: UnitOfWork, selection: PurgeSelection, *, cause: str) -> PurgeReport:
    """Purge what ``selection`` names, in the caller's transaction."""
    conn = uow.connection
    findings = FindingStore(conn)
    await findings.enter_gate()
    store = PurgeStore(conn)
    report = PurgeReport()
    if selection.dataset_versions:
        version_ids = await store.version_ids(selection.dataset_versions)
        if not version_ids:
            return report
        await findings.lock_versions(version_ids)
        await store.select_members(version_ids)
        counts = await store.member_counts(version_ids)
        removed = {v: counts.get(v, 0) for v in version_ids}
        report.memberships = await store.delete_memberships_of_versions(version_ids)
        report.records = await store.delete_selected_records(only_orphans=True)
        report.manifests = await store.rebuild_manifests(removed)
    else:
        if selection.subjects:
            await store.select_subjects(selection.subjects, selection.categories)
        else:
            await store.select_categories(
                selection.categories,
                selection.jurisdictions,
                selection.collected_from,
                selection.collected_until,
            )
        removed = await store.touched()
        await findings.lock_versions(removed)
        report.memberships = await store.delete_memberships_of_selected()
        report.records = await store.delete_selected_records(only_orphans=False)
        report.manifests = await store.rebuild_manifests(removed)
    subjects = await store.subjects()
    report.subjects = len(subjects)
    if len(subjects) <= SYNC_SUBJECTS:
        report.findings_changed = await reevaluate_subjects(uow, subjects)
    else:
        report.evaluations_enqueued = await enqueue_evaluation(conn, sorted(removed), cause)
    return report


def _result_id(task: DeletionTask) -> str:
    return str(uuid5(NAMESPACE_URL, f"consenttrace:registry-result:{task.task_id}"))


async def on_deletion_task(event: Event[DeletionTask], uow: UnitOfWork) -> None:
    """Carry out a registry task and acknowledge it (other systems' tasks are skipped)."""
    task = event.body
    if task.target_system != EXECUTOR:
        return
    outcome, reason = await _execute(uow, task)
    log.info("deletion task %s (%s): %s — %s", task.task_id, task.action, outcome.value, reason)
    uow.publish(
        TASK_RESULTS,
        TaskResult(
            task_id=task.task_id,
            case_id=task.case_id,
            executor=EXECUTOR,
            outcome=outcome,
            reason=reason,
            completed_at=datetime.now(UTC),
        ),
        key=str(task.case_id),
        event_id=_result_id(task),
    )


async def _execute(uow: UnitOfWork, task: DeletionTask) -> tuple[TaskOutcome, str]:
    if task.action != ACTION:
        return TaskOutcome.FAILED, f"the registry carries out {ACTION} only, not {task.action}"
    try:
        selection = PurgeSelection.model_validate(task.parameters)
    except ValidationError as exc:
        errors = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'parameters'}: {e['msg']}"
            for e in exc.errors()
        )
        return TaskOutcome.FAILED, f"parameters not understood: {errors}"[:4096]
    report = await purge(uow, selection, cause=f"purge for deletion case {task.case_id}")
    outcome = TaskOutcome.DONE if report.anything else TaskOutcome.NOT_APPLICABLE
    return outcome, report.reason(selection)
