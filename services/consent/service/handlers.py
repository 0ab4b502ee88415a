"""Consent use cases: each runs inside one unit of work (state + outbox in one commit)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from contracts.events import ConsentEvent, PolicyChange
from contracts.policy import PolicyDocument
from contracts.topics import CONSENT_EVENTS, POLICIES
from services.consent.adapters.repository import ConsentRepository, StoredBatch
from services.consent.domain.model import (
    ConsentChange,
    GpcSignal,
    GpcWithdrawal,
    InvalidPolicy,
    UnreadableChange,
    batch_digest,
    gpc_coverage,
    policy_problems,
    record_batch,
    record_change,
    record_gpc_withdrawals,
)
from services.runtime.db import Connection
from services.runtime.errors import PermanentError
from services.runtime.messages import encode_event
from services.runtime.telemetry import current_trace_id
from services.runtime.unit_of_work import UnitOfWork

__all__ = [
    "BatchRecorded",
    "ConsentRecorded",
    "GpcRecorded",
    "IdempotencyConflict",
    "publish_policy",
    "record_consent",
    "record_consent_batch",
    "record_gpc_signal",
    "record_new_consent",
]


class IdempotencyConflict(PermanentError):
    """The idempotency key was already used for a different change."""

    reason = "idempotency_conflict"


@dataclass(frozen=True, slots=True)
class GpcRecorded:
    """The withdrawals a GPC signal became, and the coverage that decided them."""

    events: tuple[ConsentEvent, ...]
    coverage: tuple[GpcWithdrawal, ...]
    created: bool


@dataclass(frozen=True, slots=True)
class ConsentRecorded:
    event: ConsentEvent
    created: bool
    gpc: GpcRecorded | None = None


@dataclass(frozen=True, slots=True)
class BatchRecorded:
    events: tuple[ConsentEvent, ...]
    created: bool
    idempotency_key: str | None = None


async def record_consent(
    uow: UnitOfWork,
    change: ConsentChange,
    *,
    now: datetime,
    idempotency_key: str | None,
    gpc: GpcSignal | None = None,
) -> ConsentRecorded:
    """Append the change and publish it; a retried request returns the first fact.

    With a GPC signal, the withdrawals it implies are recorded in the same transaction.
    """
    event = record_change(change, now=now, idempotency_key=idempotency_key)
    repo = ConsentRepository(uow.connection)
    created = await repo.append(event, current_trace_id())
    if created:
        _publish(uow, [event])
    else:
        existing = await repo.get(event.consent_event_id)
        assert existing is not None
        if not _same_request(existing, event):
            raise IdempotencyConflict(
                f"Idempotency-Key {idempotency_key!r} was already used for a different"
                " consent change"
            )
        event = existing
    signal = None
    if gpc is not None:
        # The signal's time is the request's, so a retry's differs: compare without it.
        signal = await _record_gpc(
            uow,
            repo,
            gpc,
            now=now,
            idempotency_key=idempotency_key,
            replay=not created,
            effective_at_given=False,
        )
    return ConsentRecorded(event, created, signal)


async def record_new_consent(
    conn: Connection,
    change: ConsentChange,
    *,
    now: datetime,
    idempotency_key: str | None,
    source: str,
) -> ConsentRecorded | None:
    """``record_consent`` without a GPC signal, for the usual case, a change the ledger
    does not hold yet: the fact and its message in one statement, with no transaction
    block around it (``ConsentRepository.append_and_publish``). None, with nothing
    written, when the ledger holds its id already: a retry, which ``record_consent``
    answers (the first fact, or a conflict)."""
    event = record_change(change, now=now, idempotency_key=idempotency_key)
    message = encode_event(
        CONSENT_EVENTS, event, key=event.subject_id, source=source, event_id=_event_id(event)
    )
    if await ConsentRepository(conn).append_and_publish(event, current_trace_id(), message):
        return ConsentRecorded(event, created=True)
    return None


async def record_consent_batch(
    uow: UnitOfWork,
    changes: Sequence[ConsentChange | UnreadableChange],
    *,
    now: datetime,
    idempotency_key: str | None,
) -> BatchRecorded:
    """Append every change of the batch, or none (InvalidBatch names each bad one).

    With an idempotency key, a retried batch returns the facts recorded the first time and
    records nothing; the same key with different content is a conflict.
    """
    events = record_batch(changes, now=now, idempotency_key=idempotency_key)
    repo = ConsentRepository(uow.connection)
    if idempotency_key is not None:
        digest = batch_digest([c for c in changes if isinstance(c, ConsentChange)])
        claim = StoredBatch(idempotency_key, digest, tuple(e.consent_event_id for e in events), now)
        if not await repo.add_batch(claim, current_trace_id()):
            stored = await repo.batch(idempotency_key)
            assert stored is not None
            if stored.request_digest != digest:
                raise IdempotencyConflict(
                    f"Idempotency-Key {idempotency_key!r} was already used for a different"
                    f" batch (recorded {stored.recorded_at.isoformat()},"
                    f" {len(stored.event_ids)} changes)"
                )
            replayed = await repo.get_many(stored.event_ids)
            return BatchRecorded(tuple(replayed), False, idempotency_key)
    inserted = await repo.append_many(events, current_trace_id())
    if len(inserted) != len(events):  # only a derived id already in the ledger can do this
        raise IdempotencyConflict(
            f"Idempotency-Key {idempotency_key!r}: {len(events) - len(inserted)} of the batch's"
            " event ids are already in the ledger"
        )
    _publish(uow, events)
    return BatchRecorded(tuple(events), True, idempotency_key)


async def record_gpc_signal(
    uow: UnitOfWork,
    signal: GpcSignal,
    *,
    now: datetime,
    idempotency_key: str | None,
    effective_at_given: bool = True,
) -> GpcRecorded:
    """Record only the withdrawals a GPC signal implies where the subject lives (maybe none)."""
    repo = ConsentRepository(uow.connection)
    return await _record_gpc(
        uow,
        repo,
        signal,
        now=now,
        idempotency_key=idempotency_key,
        replay=False,
        effective_at_given=effective_at_given,
    )


async def _record_gpc(
    uow: UnitOfWork,
    repo: ConsentRepository,
    signal: GpcSignal,
    *,
    now: datetime,
    idempotency_key: str | None,
    replay: bool,
    effective_at_given: bool = True,
) -> GpcRecorded:
    """The policies in force now decide what the signal withdraws in the subject's place.

    A replay (the ids derived from the key already exist) records nothing and returns what
    was recorded the first time.
    """
    coverage = tuple(
        gpc_coverage(await repo.policy_versions(), jurisdiction=signal.jurisdiction, at=now)
    )
    events = record_gpc_withdrawals(signal, coverage, now=now, idempotency_key=idempotency_key)
    if not events:
        return GpcRecorded((), coverage, not replay)
    ids = [e.consent_event_id for e in events]
    existing = await repo.get_many(ids) if idempotency_key else []
    if replay or existing:
        _check_same(existing, events, idempotency_key, effective_at_given)
        return GpcRecorded(tuple(existing), coverage, False)
    inserted = await repo.append_many(events, current_trace_id())
    if len(inserted) != len(events):  # a concurrent twin committed first
        existing = await repo.get_many(ids)
        _check_same(existing, events, idempotency_key, effective_at_given)
        return GpcRecorded(tuple(existing), coverage, False)
    _publish(uow, events)
    return GpcRecorded(tuple(events), coverage, True)


def _check_same(
    existing: Sequence[ConsentEvent],
    requested: Sequence[ConsentEvent],
    idempotency_key: str | None,
    effective_at_given: bool,
) -> None:
    by_id = {e.consent_event_id: e for e in requested}
    ignored = {"recorded_at"} if effective_at_given else {"recorded_at", "effective_at"}
    for event in existing:
        if not _same_request(event, by_id[event.consent_event_id], ignored):
            raise IdempotencyConflict(
                f"Idempotency-Key {idempotency_key!r} was already used for a different GPC signal"
            )


async def publish_policy(
    uow: UnitOfWork, policy: PolicyDocument, *, now: datetime
) -> tuple[PolicyChange, bool]:
    """Store a policy version and publish it; versions are immutable once published."""
    if problems := policy_problems(policy):
        raise InvalidPolicy("; ".join(problems))
    repo = ConsentRepository(uow.connection)
    change = PolicyChange(policy=policy, published_at=now)
    if await repo.add_policy(policy, now):
        uow.publish(
            POLICIES,
            change,
            key=policy.policy_id,
            event_id=f"policy:{policy.policy_id}:{policy.version}",
        )
        return change, True
    existing = {p.version: p for p in await repo.policies() if p.policy_id == policy.policy_id}
    if existing.get(policy.version) == policy:
        return change, False
    raise IdempotencyConflict(
        f"policy {policy.policy_id} version {policy.version} is already published with"
        " different content; publish a new version instead"
    )


def _publish(uow: UnitOfWork, events: Sequence[ConsentEvent]) -> None:
    for event in events:
        uow.publish(CONSENT_EVENTS, event, key=event.subject_id, event_id=_event_id(event))


def _event_id(event: ConsentEvent) -> str:
    """A consent event's message id is its ledger id: a retry publishes nothing new."""
    return str(event.consent_event_id)


def _same_request(
    a: ConsentEvent,
    b: ConsentEvent,
    ignored: set[str] | frozenset[str] = frozenset({"recorded_at"}),
) -> bool:
    return a.model_dump(exclude=set(ignored)) == b.model_dump(exclude=set(ignored))
