"""Deletion HTTP API (legal's view): translate requests into use cases, nothing else."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4

from fastapi import APIRouter, Header, HTTPException, Request, Response, status
from pydantic import BaseModel, Field, model_validator

from contracts.base import CategoryPath, DatasetRef, Jurisdiction, ModelRef, SubjectId
from contracts.events import CaseKind
from services.deletion.access import COMMAND_ROLES
from services.deletion.adapters.repository import CaseRepository
from services.deletion.domain.cases import (
    ExtensionRefused,
    LegalBasis,
    Regime,
    manual_case,
    urgency,
)
from services.deletion.domain.workflow import Command, TransitionRefused
from services.deletion.service.cases import (
    CaseNotFound,
    StaleVersion,
    act,
    export_bundle,
    extend_deadline,
    open_case,
)
from services.runtime.auth import actor_of, require_roles
from services.runtime.host import RuntimeDep

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["deletion"])

_Actor = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^\S(.*\S)?$")]
_Reason = Annotated[str, Field(max_length=2000)]
_WHO = (
    "With AUTH_MODE=api_keys: the authenticated principal, always; omit it or repeat that"
    " name (another name is a 403). With AUTH_MODE=off: required."
)


class CaseScope(BaseModel):
    """What the case is about; which fields are required depends on its kind."""

    model_config = {"extra": "forbid"}

    subject_ids: Annotated[list[SubjectId], Field(max_length=10_000)] = []
    categories: Annotated[list[CategoryPath], Field(max_length=100)] = []
    jurisdictions: Annotated[list[Jurisdiction], Field(max_length=100)] = []
    collected_from: datetime | None = None
    collected_until: datetime | None = None
    dataset: DatasetRef | None = None
    model: ModelRef | None = None
    include_descendants: bool = False


class OpenCase(BaseModel):
    model_config = {"extra": "forbid"}

    kind: CaseKind
    legal_basis: LegalBasis
    regime: Regime
    requester: _Actor | None = Field(default=None, description=f"Who opens the case. {_WHO}")
    scope: CaseScope
    received_at: datetime | None = Field(
        default=None, description="When the request was received (default: now)"
    )

    @model_validator(mode="after")
    def _scope_fits_kind(self) -> OpenCase:
        s = self.scope
        needs: dict[CaseKind, tuple[bool, str]] = {
            CaseKind.SUBJECT_ERASURE: (bool(s.subject_ids), "scope.subject_ids"),
            CaseKind.CATEGORY_PURGE: (bool(s.categories), "scope.categories"),
            CaseKind.DATASET_PURGE: (s.dataset is not None, "scope.dataset"),
            CaseKind.MODEL_DESTRUCTION: (s.model is not None, "scope.model"),
        }
        present, field = needs[self.kind]
        if not present:
            raise ValueError(f"a {self.kind.value} case needs {field}")
        if s.collected_from and s.collected_until and s.collected_from >= s.collected_until:
            raise ValueError("scope.collected_from must be before scope.collected_until")
        if self.received_at is not None and self.received_at.tzinfo is None:
            raise ValueError("received_at needs a UTC offset")
        return self


class CaseAction(BaseModel):
    model_config = {"extra": "forbid"}

    command: Command
    actor: _Actor | None = Field(default=None, description=f"Who gives the command. {_WHO}")
    reason: _Reason = ""
    expected_version: int | None = Field(
        default=None, description="Refuse (409) if the case changed since this version"
    )


class Extension(BaseModel):
    model_config = {"extra": "forbid"}

    actor: _Actor | None = Field(default=None, description=f"Who extends it. {_WHO}")
    reason: _Reason


@router.post("/cases", status_code=status.HTTP_201_CREATED, responses={200: {}, 422: {}})
async def post_case(
    body: OpenCase,
    runtime: RuntimeDep,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> dict[str, Any]:
    """Open a case. With an ``Idempotency-Key`` header, sending it again opens nothing new
    (200 with the case)."""
    requester = actor_of(request, body.requester, field="requester")
    now = datetime.now(UTC)
    case = manual_case(
        kind=body.kind,
        legal_basis=body.legal_basis,
        regime=body.regime,
        requester=requester,
        received_at=body.received_at or now,
        scope=body.scope.model_dump(mode="json", exclude_defaults=True),
        idempotency_key=idempotency_key or str(uuid4()),
    )
    async with runtime.unit_of_work() as uow:
        created = await open_case(uow, case)
        row = await CaseRepository(uow.connection).get(case.case_id, now)
    if not created:
        response.status_code = status.HTTP_200_OK
    assert row is not None
    return row


@router.get("/cases")
async def list_cases(runtime: RuntimeDep) -> list[dict[str, Any]]:
    """Every case: overdue first, then due within 7 days, then the rest by deadline; closed
    cases last. Each with ``days_left`` (negative when overdue)."""
    now = datetime.now(UTC)
    async with runtime.pool.acquire() as conn:
        cases = await CaseRepository(conn).all_cases(now)
    closed = {"completed", "rejected", "canceled"}
    return sorted(
        cases,
        key=lambda c: urgency(c["deadline"], now, open_case=c["state"] not in closed),
    )


@router.get("/cases/{case_id}", responses={404: {}})
async def get_case(case_id: UUID, runtime: RuntimeDep) -> dict[str, Any]:
    async with runtime.pool.acquire() as conn:
        case = await CaseRepository(conn).get(case_id, datetime.now(UTC))
    if case is None:
        raise HTTPException(404, f"no case {case_id}")
    return case


@router.post("/cases/{case_id}/actions", responses={404: {}, 409: {}})
async def post_action(
    case_id: UUID, body: CaseAction, runtime: RuntimeDep, request: Request
) -> dict[str, Any]:
    """Move the case through its workflow: one command (approve, reject, hold, release,
    cancel, resume, …), audited with its actor and reason. 409 says why it was refused."""
    actor = actor_of(request, body.actor)
    require_roles(request, COMMAND_ROLES[body.command], f"the command {body.command.value}")
    now = datetime.now(UTC)
    try:
        async with runtime.unit_of_work() as uow:
            await act(
                uow,
                case_id,
                body.command,
                actor=actor,
                reason=body.reason,
                now=now,
                expected_version=body.expected_version,
            )
            row = await CaseRepository(uow.connection).get(case_id, now)
    except CaseNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except (TransitionRefused, StaleVersion) as exc:
        raise HTTPException(409, str(exc)) from None
    assert row is not None
    return row


@router.post("/cases/{case_id}/extension", responses={404: {}, 409: {}})
async def post_extension(
    case_id: UUID, body: Extension, runtime: RuntimeDep, request: Request
) -> dict[str, Any]:
    """Extend the deadline as the regime allows (GDPR: two months, CCPA: 45 days; once)."""
    actor = actor_of(request, body.actor)
    now = datetime.now(UTC)
    try:
        async with runtime.unit_of_work() as uow:
            await extend_deadline(uow, case_id, actor=actor, reason=body.reason, now=now)
            row = await CaseRepository(uow.connection).get(case_id, now)
    except CaseNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except ExtensionRefused as exc:
        raise HTTPException(409, str(exc)) from None
    assert row is not None
    return row


@router.get("/cases/{case_id}/evidence", responses={404: {}})
async def get_evidence(case_id: UUID, runtime: RuntimeDep) -> list[dict[str, Any]]:
    """The case's evidence log, oldest first, each entry linked to the one before by hash."""
    async with runtime.pool.acquire() as conn:
        if await CaseRepository(conn).get(case_id, datetime.now(UTC)) is None:
            raise HTTPException(404, f"no case {case_id}")
        return await CaseRepository(conn).evidence(case_id)


@router.get(
    "/cases/{case_id}/evidence/bundle",
    response_class=Response,
    responses={200: {"content": {"application/json": {}}}, 404: {}},
)
async def get_bundle(
    case_id: UUID, runtime: RuntimeDep, download: Literal["0", "1"] = "1"
) -> Response:
    """The evidence bundle: case, log, human-readable report, head and digest, in canonical
    JSON. Verify it offline with ``python services/deletion/verify_evidence.py FILE``."""
    try:
        async with runtime.pool.acquire() as conn:
            data = await export_bundle(conn, case_id, datetime.now(UTC))
    except CaseNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    headers = (
        {"Content-Disposition": f'attachment; filename="case-{case_id}.evidence.json"'}
        if download == "1"
        else {}
    )
    return Response(data, media_type="application/json", headers=headers)
