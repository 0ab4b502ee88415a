"""Registry event handlers: each runs inside one unit of work.

Registration use cases (HTTP) are in ``registration.py``.
"""

from __future__ import annotations

from contracts.events import ConsentEvent, ConsentState, PolicyChange
from contracts.topics import FINDINGS
from services.registry.adapters.repository import RegistryRepository
from services.registry.domain.findings import withdrawal_findings
from services.runtime.messages import Event
from services.runtime.telemetry import current_trace_id
from services.runtime.unit_of_work import UnitOfWork

__all__ = ["on_consent_event", "on_policy_change"]


async def on_policy_change(event: Event[PolicyChange], uow: UnitOfWork) -> None:
    """Keep our own projection of policy versions (never call the consent service)."""
    await RegistryRepository(uow.connection).save_policy(event.body.policy, event.body.published_at)


async def on_consent_event(event: Event[ConsentEvent], uow: UnitOfWork) -> None:
    """Record the change; a withdrawal yields findings for every dataset version it reaches."""
    repo = RegistryRepository(uow.connection)
    consent = event.body
    await repo.save_consent(consent)
    if consent.state is not ConsentState.WITHDRAWN:
        return
    findings = withdrawal_findings(
        consent, await repo.used_records_of(consent.subject_id), await repo.policies()
    )
    for finding in await repo.save_findings(findings, current_trace_id()):
        uow.publish(FINDINGS, finding, key=finding.dataset.key, event_id=str(finding.finding_id))
