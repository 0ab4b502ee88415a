"""Consent use cases: each runs inside one unit of work (state + outbox in one commit)."""

from __future__ import annotations

from datetime import datetime

from contracts.events import ConsentEvent, PolicyChange, PolicyDocument
from contracts.topics import CONSENT_EVENTS, POLICIES
from services.consent.adapters.repository import ConsentRepository
from services.consent.domain.model import ConsentChange, record_change
from services.runtime.errors import PermanentError
from services.runtime.telemetry import current_trace_id
from services.runtime.unit_of_work import UnitOfWork

__all__ = ["IdempotencyConflict", "publish_policy", "record_consent"]


class IdempotencyConflict(PermanentError):
    """The idempotency key was already used for a different change."""

    reason = "idempotency_conflict"


async def record_consent(
    uow: UnitOfWork, change: ConsentChange, *, now: datetime, idempotency_key: str | None
) -> tuple[ConsentEvent, bool]:
    """Append the change and publish it; a retried request returns the first fact."""
    event = record_change(change, now=now, idempotency_key=idempotency_key)
    repo = ConsentRepository(uow.connection)
    if await repo.append(event, current_trace_id()):
        uow.publish(
            CONSENT_EVENTS, event, key=event.subject_id, event_id=str(event.consent_event_id)
        )
        return event, True
    existing = await repo.get(event.consent_event_id)
    assert existing is not None
    if _same_request(existing, event):
        return existing, False
    raise IdempotencyConflict(
        f"Idempotency-Key {idempotency_key!r} was already used for a different consent change"
    )


async def publish_policy(
    uow: UnitOfWork, policy: PolicyDocument, *, now: datetime
) -> tuple[PolicyChange, bool]:
    """Store a policy version and publish it; versions are immutable once published."""
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


def _same_request(a: ConsentEvent, b: ConsentEvent) -> bool:
    ignored = {"recorded_at"}
    return a.model_dump(exclude=ignored) == b.model_dump(exclude=ignored)
