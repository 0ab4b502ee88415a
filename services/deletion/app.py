"""Deletion service wiring: the one place that assembles it. Nothing runs at import."""

from __future__ import annotations

from pathlib import Path

from faststream import FastStream

from contracts.topics import (
    CASES,
    CONSENT_EVENTS,
    DELETION_TASKS,
    MODEL_FLAGS,
    POLICIES,
    TASK_RESULTS,
)
from services.deletion.access import ACCESS
from services.deletion.entrypoints.execution_http import acknowledgement_router
from services.deletion.entrypoints.execution_http import router as execution_router
from services.deletion.entrypoints.http import router
from services.deletion.service.execution import VERIFICATION_WORKER, on_task_result
from services.deletion.service.handlers import (
    on_consent_event,
    on_consent_events,
    on_model_flag,
    on_model_flags,
    on_policy_change,
)
from services.deletion.service.webhooks import WEBHOOK_WORKER
from services.runtime.consumer import Subscription
from services.runtime.host import ServiceSpec, create_broker
from services.runtime.settings import ServiceSettings

SPEC = ServiceSpec(
    name="deletion",
    title="ConsentTrace deletion workflow",
    description="Deletion cases with deadlines, approvals, tasks and evidence.",
    migrations=Path(__file__).parent / "migrations" / "versions",
    subscriptions=(
        Subscription(
            MODEL_FLAGS,
            on_model_flag,
            batch_handler=on_model_flags,
            description="Model flags → destruction cases.",
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
            description="Withdrawals requesting (or requiring) erasure → cases.",
        ),
        Subscription(
            TASK_RESULTS,
            on_task_result,
            background=True,
            description="Executors' acknowledgements → task states, failure or verification.",
        ),
    ),
    routers=(router, execution_router),
    open_routers=(acknowledgement_router,),
    access=ACCESS,
    workers=(WEBHOOK_WORKER, VERIFICATION_WORKER),
    publishes=(CASES, DELETION_TASKS, TASK_RESULTS),
)


def asyncapi_app() -> FastStream:
    """For ``faststream docs gen --factory``."""
    from services.runtime.asyncapi import describe

    return describe(SPEC, create_broker(ServiceSettings(service_name=SPEC.name)))
