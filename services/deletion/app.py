"""Deletion service wiring: the one place that assembles it. Nothing runs at import."""

from __future__ import annotations

from pathlib import Path

from faststream import FastStream

from contracts.topics import CASES, CONSENT_EVENTS, MODEL_FLAGS
from services.deletion.access import ACCESS
from services.deletion.entrypoints.http import router
from services.deletion.service.handlers import on_consent_event, on_model_flag
from services.runtime.consumer import Subscription
from services.runtime.host import ServiceSpec, create_broker
from services.runtime.settings import ServiceSettings

SPEC = ServiceSpec(
    name="deletion",
    title="ConsentTrace deletion workflow",
    description="Deletion cases with deadlines, approvals, tasks and evidence.",
    migrations=Path(__file__).parent / "migrations" / "versions",
    subscriptions=(
        Subscription(MODEL_FLAGS, on_model_flag, description="Model flags → destruction cases."),
        Subscription(CONSENT_EVENTS, on_consent_event, description="Erasure requests → cases."),
    ),
    routers=(router,),
    access=ACCESS,
    publishes=(CASES,),
)


def asyncapi_app() -> FastStream:
    """For ``faststream docs gen --factory``."""
    from services.runtime.asyncapi import describe

    return describe(SPEC, create_broker(ServiceSettings(service_name=SPEC.name)))
