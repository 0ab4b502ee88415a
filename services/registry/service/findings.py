"""Keeping findings true to the facts: after a consent event, a seal, a policy version.

Two paths, one computation (``domain.findings.judge``) and one write (``FindingStore``'s
``reconcile`` then ``refresh``):

- a consent event re-judges that subject's uses, in the consumer's transaction;
- a seal or a new policy version enqueues whole dataset versions (``evaluation_jobs``),
  which ``EvaluationWorker`` re-judges one per transaction, off the event path (a policy
  version can reach millions of memberships; a consumer must not hold a batch that long).

Both publish every finding whose published state changes (new, new totals, retracted,
active again) on ``registry.findings.v1`` through the outbox.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from uuid import NAMESPACE_URL, UUID, uuid5

from opentelemetry.trace import use_span

from contracts.events import ConsentEvent, ConsentState, DatasetFinding, PolicyChange
from contracts.topics import FINDINGS
from services.registry.adapters.findings import (
    EVALUATION_CHANNEL,
    ContributionKey,
    FindingStore,
    StoredContribution,
)
from services.registry.adapters.repository import RegistryRepository
from services.registry.domain.findings import (
    Contribution,
    PolicyBook,
    grant_changes_nothing,
    judge,
    withdrawal_totals,
)
from services.runtime.consumer import start_event_span
from services.runtime.db import Connection
from services.runtime.messages import Event
from services.runtime.telemetry import current_trace_id, trace_id_of
from services.runtime.unit_of_work import UnitOfWork, unit_of_work
from services.runtime.worker import WorkerContext, WorkerSpec

__all__ = [
    "EVALUATION_WORKER",
    "enqueue_evaluation",
    "enqueue_for_policy",
    "evaluate_next_version",
    "reevaluate_subjects",
]

log = logging.getLogger(__name__)
SLICE_SUBJECTS = 5_000
"""Subjects judged together during a whole-version evaluation: one history query, one
write of their contributions; bounds memory whatever the version's size."""


async def enqueue_evaluation(conn: Connection, version_ids: Sequence[int], cause: str) -> int:
    """Ask for whole-version evaluations (in the caller's transaction)."""
    if not version_ids:
        return 0
    return await FindingStore(conn).enqueue_versions(version_ids, cause)


async def enqueue_for_policy(uow: UnitOfWork, change: PolicyChange) -> int:
    """Every sealed version whose reading of this policy the new version may change: those
    used from its ``valid_from`` until the next version of the policy takes over."""
    policy = change.policy
    later = [
        doc.valid_from
        for doc, _ in await RegistryRepository(uow.connection).policies()
        if doc.policy_id == policy.policy_id and doc.valid_from > policy.valid_from
    ]
    store = FindingStore(uow.connection)
    versions = await store.versions_in_window(policy.valid_from, min(later, default=None))
    return await enqueue_evaluation(
        uow.connection, versions, f"policy {policy.policy_id} version {policy.version}"
    )


async def reevaluate_subjects(
    uow: UnitOfWork,
    subject_ids: Sequence[str],
    causes: Mapping[str, Event[ConsentEvent]] | None = None,
    new_events: Mapping[str, Sequence[ConsentEvent]] | None = None,
) -> int:
    """Re-judge every use of these subjects; returns how many findings changed.

    ``new_events``: what brought each subject here. A subject whose new events are all
    grants effective after the latest time of use of any sealed version is not re-judged:
    no judgement can change (``grant_changes_nothing``). Most grants arrive so, and then
    cost no membership lookup at all.

    ``causes``: the consent event of each subject that brought this about (the last of a
    batch). A finding changed is stored and published in the trace of the latest of them
    among the subjects whose contributions to it changed, not in the batch's trace: one
    withdrawal is followed through every service (an operator's question is "what did
    this withdrawal cause?").

    Several consumers may run this at once: it holds the subjects' versions shared and
    locks only the findings it changes (see ``adapters.findings``)."""
    if not subject_ids:
        return 0
    conn = uow.connection
    store = FindingStore(conn)
    await store.enter_gate()
    subjects = sorted(set(subject_ids))
    # Subjects whose new events are all grants: perhaps nothing to judge (asked only then).
    granting = {
        s: events
        for s in subjects
        if (events := (new_events or {}).get(s))
        and all(e.state is ConsentState.GRANTED for e in events)
    }
    if granting:
        # Read inside the gate: a version sealed after this read is evaluated whole once
        # this transaction has committed (``evaluate_next_version``), with these events.
        latest = await store.latest_use()
        idle = {
            s
            for s, events in granting.items()
            if all(grant_changes_nothing(e, latest) for e in events)
        }
        subjects = [s for s in subjects if s not in idle]
        if not subjects:
            return 0
    uses = await store.uses_of_subjects(subjects)
    versions = {u.dataset_version_id for u in uses}
    await store.share_versions(versions)
    stored = await store.contributions_of_subjects(subjects)
    if not uses and not stored:
        return 0
    if extra := {k[1] for k in stored} - versions:
        # Contributions in versions that no longer hold the subjects' records (purged):
        # read again once no evaluation of those versions can be writing them.
        await store.share_versions(extra)
        stored = await store.contributions_of_subjects(subjects)
    repo = RegistryRepository(conn)
    histories = await repo.histories(sorted({u.subject_id for u in uses}))
    book = await _policy_book(repo)
    desired = judge(uses, histories, book)
    if not causes:
        return await _settle(uow, store, desired, stored)
    touched = await store.reconcile_by_subject(desired, stored, lock=True)
    order = {subject: n for n, subject in enumerate(causes)}
    cause_of = {
        finding_id: max(mine, key=order.__getitem__)
        for finding_id, subjects in touched.items()
        if (mine := [s for s in subjects if s in order])
    }
    # One span per causing event, not per finding: a withdrawal changes ten findings.
    spans = {subject: start_event_span(causes[subject]) for subject in set(cause_of.values())}
    try:
        traces = {
            finding_id: trace_id_of(spans[subject]) for finding_id, subject in cause_of.items()
        }
        # Every use of these subjects was judged: their withdrawals' findings add up here.
        known = withdrawal_totals(desired, touched)
        changed = await store.refresh(touched, current_trace_id(), traces, known)
        for finding, seq in changed:
            subject = cause_of.get(finding.finding_id)
            with use_span(spans[subject]) if subject is not None else nullcontext():
                _publish(uow, finding, seq)
    finally:
        for span in spans.values():
            span.end()
    return len(changed)


_BOOK: tuple[tuple[int, object], PolicyBook] | None = None


async def _policy_book(repo: RegistryRepository) -> PolicyBook:
    """The policy versions, parsed once per change of the projection (not per event)."""
    global _BOOK
    fingerprint = await repo.policies_fingerprint()
    if _BOOK is None or _BOOK[0] != fingerprint:
        _BOOK = (fingerprint, PolicyBook(await repo.policies()))
    return _BOOK[1]


async def evaluate_next_version(ctx: WorkerContext) -> bool:
    """Work off one evaluation job; False when there is none."""
    async with ctx.pool.acquire() as conn:
        store = FindingStore(conn)
        version_id = await store.next_job()
        if version_id is None:
            return False
        # Outside any transaction: every consent transaction that may have judged its
        # subject without this version (or under an older policy) commits first.
        await store.pass_gate()
    try:
        async with unit_of_work(ctx.pool, ctx.source) as uow:
            await _evaluate_version(uow, version_id)
    except Exception as exc:
        if ctx.is_transient(exc):
            raise
        log.exception("evaluation of dataset version %s failed", version_id)
        async with ctx.pool.acquire() as conn:
            await FindingStore(conn).fail_job(version_id, f"{type(exc).__name__}: {exc}")
    return True


async def _evaluate_version(uow: UnitOfWork, version_id: int) -> None:
    """Re-judge one sealed version, a slice of subjects at a time (its uses are streamed
    from a cursor in subject order), then refresh every finding touched once."""
    store = FindingStore(uow.connection)
    enqueued_at = await store.claim_job(version_id)
    if enqueued_at is None:
        return  # another worker has it, or it is done
    await store.lock_versions([version_id])
    version = await store.version(version_id)
    if version is not None:
        repo = RegistryRepository(uow.connection)
        book = await _policy_book(repo)
        touched: set[UUID] = set()
        seen: set[str] = set()
        async for uses in store.uses_of_version(version, slice_subjects=SLICE_SUBJECTS):
            subjects = sorted({u.subject_id for u in uses})
            seen.update(subjects)
            histories = await repo.histories(subjects)
            stored = await store.contributions_of_version(version_id, subjects)
            touched |= await store.reconcile(judge(uses, histories, book), stored)
        touched |= await store.drop_contributions_except(version_id, seen)
        changed = await store.refresh(touched, current_trace_id())
        for finding, seq in changed:
            _publish(uow, finding, seq)
        log.info("dataset version %s evaluated: %d finding(s) changed", version_id, len(changed))
    await store.finish_job(version_id, enqueued_at)


async def _settle(
    uow: UnitOfWork,
    store: FindingStore,
    desired: Sequence[Contribution],
    stored: dict[ContributionKey, StoredContribution],
) -> int:
    """A consent transaction's write, in its own trace: ``desired`` is every use of its
    subjects judged (see ``reevaluate_subjects``)."""
    touched = await store.reconcile(desired, stored, lock=True)
    known = withdrawal_totals(desired, touched)
    changed = await store.refresh(touched, current_trace_id(), totals=known)
    for finding, seq in changed:
        _publish(uow, finding, seq)
    return len(changed)


def _publish(uow: UnitOfWork, finding: DatasetFinding, seq: int) -> None:
    """One message per published state: its id names the finding and the state's number."""
    uow.publish(
        FINDINGS,
        finding,
        key=finding.dataset.key,
        event_id=str(uuid5(NAMESPACE_URL, f"finding:{finding.finding_id}:{seq}")),
    )


EVALUATION_WORKER = WorkerSpec(
    name="finding-evaluation", step=evaluate_next_version, channel=EVALUATION_CHANNEL
)
