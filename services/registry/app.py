"""Registry service wiring: the one place that assembles it. Nothing runs at import."""

from __future__ import annotations

from pathlib import Path

from faststream import FastStream

from contracts.topics import (
    CONSENT_EVENTS,
    DELETION_TASKS,
    FINDINGS,
    POLICIES,
    REGISTRATIONS,
    TASK_RESULTS,
)
from services.registry.access import ACCESS
from services.registry.entrypoints.composition_http import router as composition_router
from services.registry.entrypoints.eligibility_http import router as eligibility_router
from services.registry.entrypoints.http import router
from services.registry.entrypoints.kafka import decode_registration
from services.registry.service.findings import EVALUATION_WORKER
from services.registry.service.handlers import (
    on_consent_event,
    on_consent_events,
    on_policy_change,
)
from services.registry.service.purge import on_deletion_task
from services.registry.service.registration_events import on_registration
from services.registry.service.upload_expiry import UPLOAD_EXPIRY_WORKER
from services.runtime.consumer import Subscription
from services.runtime.host import ServiceSpec, create_broker
from services.runtime.settings import ServiceSettings

SPEC = ServiceSpec(
    name="registry",
    title="ConsentTrace training-data registry",
    description="Records, sealed dataset versions, and findings when consent or policy changes.",
    migrations=Path(__file__).parent / "migrations" / "versions",
    subscriptions=(
        Subscription(
            DELETION_TASKS,
            on_deletion_task,
            background=True,
            description="Deletion tasks for the registry → purge, acknowledged.",
        ),
        Subscription(
            POLICIES,
            on_policy_change,
            background=True,
            description="Policy versions projection.",
        ),
        Subscription(
            CONSENT_EVENTS,
            on_consent_event,
            batch_handler=on_consent_events,
            deduplicates=True,  # the projection is keyed by consent_event_id
            description="Consent changes → findings.",
        ),
        Subscription(
            REGISTRATIONS,
            on_registration,
            decoder=decode_registration,
            background=True,
            description="Dataset-version registration: opened, record batches, sealed.",
        ),
    ),
    routers=(router, eligibility_router, composition_router),
    access=ACCESS,
    publishes=(FINDINGS, TASK_RESULTS),
    workers=(EVALUATION_WORKER, UPLOAD_EXPIRY_WORKER),
)


def asyncapi_app() -> FastStream:
    """For ``faststream docs gen --factory``."""
    from services.runtime.asyncapi import describe

    return describe(SPEC, create_broker(ServiceSettings(service_name=SPEC.name)))
