"""Lineage service wiring: the one place that assembles it. Nothing runs at import."""

from __future__ import annotations

from pathlib import Path

from faststream import FastStream

from contracts.topics import DELETION_TASKS, FINDINGS, MODEL_FLAGS, OPENLINEAGE, TASK_RESULTS
from services.lineage.access import ACCESS
from services.lineage.entrypoints.events_http import router as events_router
from services.lineage.entrypoints.graph_http import router as graph_router
from services.lineage.entrypoints.http import router
from services.lineage.entrypoints.kafka import decode_openlineage
from services.lineage.entrypoints.models_http import router as models_router
from services.lineage.service.executor import on_deletion_task
from services.lineage.service.graph_cache import PRUNE_WORKER
from services.lineage.service.handlers import on_finding, on_findings, on_openlineage_event
from services.runtime.consumer import Subscription
from services.runtime.host import ServiceSpec, create_broker
from services.runtime.settings import ServiceSettings

SPEC = ServiceSpec(
    name="lineage",
    title="ConsentTrace model lineage",
    description="OpenLineage runs at version level; dataset findings become model flags.",
    migrations=Path(__file__).parent / "migrations" / "versions",
    subscriptions=(
        Subscription(
            DELETION_TASKS,
            on_deletion_task,
            background=True,
            description="Deletion tasks for lineage → models destroyed/superseded, acknowledged.",
        ),
        Subscription(
            OPENLINEAGE,
            on_openlineage_event,
            decoder=decode_openlineage,
            background=True,
            description="OpenLineage RunEvents as the Kafka transport writes them.",
        ),
        Subscription(
            FINDINGS,
            on_finding,
            batch_handler=on_findings,
            description="Dataset findings → model flags.",
        ),
    ),
    routers=(router, events_router, models_router, graph_router),
    workers=(PRUNE_WORKER,),
    access=ACCESS,
    publishes=(MODEL_FLAGS, TASK_RESULTS),
)


def asyncapi_app() -> FastStream:
    """For ``faststream docs gen --factory``."""
    from services.runtime.asyncapi import describe

    return describe(SPEC, create_broker(ServiceSettings(service_name=SPEC.name)))
