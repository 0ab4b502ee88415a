"""Consent service wiring: the one place that assembles it. Nothing runs at import."""

from __future__ import annotations

from pathlib import Path

from faststream import FastStream

from contracts.topics import CONSENT_EVENTS, POLICIES
from services.consent.access import ACCESS
from services.consent.entrypoints.http import router
from services.runtime.host import ServiceSpec, create_broker
from services.runtime.settings import ServiceSettings

SPEC = ServiceSpec(
    name="consent",
    title="ConsentTrace consent service",
    description="Append-only bitemporal consent ledger and policy versions.",
    migrations=Path(__file__).parent / "migrations" / "versions",
    routers=(router,),
    access=ACCESS,
    publishes=(CONSENT_EVENTS, POLICIES),
)


def asyncapi_app() -> FastStream:
    """For ``faststream docs gen --factory``: the service's broker with its publishers."""
    from services.runtime.asyncapi import describe

    return describe(SPEC, create_broker(ServiceSettings(service_name=SPEC.name)))
