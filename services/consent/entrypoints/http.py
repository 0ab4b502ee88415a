"""Consent HTTP API: translate requests into use cases, nothing else."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Response, status
from pydantic import BaseModel, ConfigDict, Field

from contracts.base import AwareDatetime, CategoryPath, Jurisdiction, PurposePath, SubjectId
from contracts.events import (
    ConsentEvent,
    ConsentEvidence,
    ConsentMechanism,
    ConsentState,
    PolicyChange,
    PolicyDocument,
)
from services.consent.adapters.repository import ConsentRepository
from services.consent.domain.model import ConsentChange, InvalidConsentChange
from services.consent.service.handlers import IdempotencyConflict, publish_policy, record_consent
from services.runtime.host import RuntimeDep

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["consent"])


class ConsentChangeRequest(BaseModel):
    """A consent change as a settings system or consent banner reports it."""

    model_config = ConfigDict(extra="forbid")

    subject_id: SubjectId
    jurisdiction: Jurisdiction
    purpose: PurposePath
    data_categories: Annotated[list[CategoryPath], Field(min_length=1, max_length=64)]
    state: ConsentState
    mechanism: ConsentMechanism
    policy_version: Annotated[str, Field(min_length=1, max_length=256)]
    effective_at: AwareDatetime
    source_system: Annotated[str, Field(min_length=1, max_length=256)]
    evidence: ConsentEvidence
    erasure_requested: bool = False

    def to_change(self) -> ConsentChange:
        return ConsentChange(
            subject_id=self.subject_id,
            jurisdiction=self.jurisdiction,
            purpose=self.purpose,
            data_categories=tuple(self.data_categories),
            state=self.state,
            mechanism=self.mechanism,
            policy_version=self.policy_version,
            effective_at=self.effective_at,
            source_system=self.source_system,
            evidence=self.evidence,
            erasure_requested=self.erasure_requested,
        )


IdempotencyKey = Annotated[
    str | None, Header(alias="Idempotency-Key", min_length=1, max_length=200)
]


@router.post(
    "/consent-events",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Replay of an idempotent request"}, 409: {}, 422: {}},
)
async def post_consent_event(
    body: ConsentChangeRequest,
    runtime: RuntimeDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> ConsentEvent:
    """Record one consent change in the ledger and publish it on ``consent.events.v1``."""
    try:
        async with runtime.unit_of_work() as uow:
            event, created = await record_consent(
                uow, body.to_change(), now=datetime.now(UTC), idempotency_key=idempotency_key
            )
    except InvalidConsentChange as exc:
        raise HTTPException(422, str(exc)) from exc
    except IdempotencyConflict as exc:
        raise HTTPException(409, str(exc)) from exc
    if not created:
        response.status_code = status.HTTP_200_OK
    return event


@router.get("/subjects/{subject_id}/consent-events")
async def subject_history(subject_id: SubjectId, runtime: RuntimeDep) -> list[ConsentEvent]:
    """Every recorded consent fact of a subject, in valid-time order."""
    async with runtime.pool.acquire() as conn:
        return await ConsentRepository(conn).history(subject_id)


@router.post("/policies", status_code=status.HTTP_201_CREATED, responses={409: {}})
async def post_policy(
    policy: PolicyDocument, runtime: RuntimeDep, response: Response
) -> PolicyChange:
    """Publish a policy version on ``consent.policies.v1``; it may re-read the past."""
    try:
        async with runtime.unit_of_work() as uow:
            change, created = await publish_policy(uow, policy, now=datetime.now(UTC))
    except IdempotencyConflict as exc:
        raise HTTPException(409, str(exc)) from exc
    if not created:
        response.status_code = status.HTTP_200_OK
    return change


@router.get("/policies")
async def list_policies(runtime: RuntimeDep) -> list[PolicyDocument]:
    async with runtime.pool.acquire() as conn:
        return await ConsentRepository(conn).policies()
