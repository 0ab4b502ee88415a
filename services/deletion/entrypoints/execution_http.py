"""Deletion HTTP API for scoping, execution and webhook systems: translate, call a use case.

- ``POST /api/v1/cases/{case_id}/scope``: resolve the case's targets (registry and lineage
  over HTTP), freeze them, submit for approval; a service that cannot answer fails the case
  at scoping (503 with the case; asking again resumes it).
- ``GET /api/v1/cases/{case_id}/execution``: targets, tasks with their states and every
  delivery attempt, the last verification, what is missing.
- ``POST /api/v1/task-acknowledgements``: webhook systems acknowledge a task, signed with
  their secret (``services.deletion.service.webhooks``): authenticated by the signature, not
  by an API key.
- ``PUT`` / ``GET /api/v1/webhook-systems``: register external systems (secrets are never
  returned).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, HTTPException, Path, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

from contracts.events import CaseKind
from services.deletion.access import COMMAND_ROLES
from services.deletion.adapters.repository import CaseRepository
from services.deletion.adapters.services_client import ServicesClient
from services.deletion.adapters.tasks import TaskStore
from services.deletion.domain.execution import BUILTIN_SYSTEMS
from services.deletion.domain.workflow import Command, TransitionRefused
from services.deletion.service.cases import CaseNotFound
from services.deletion.service.execution import execution_view
from services.deletion.service.scoping import scope_case
from services.deletion.service.webhooks import (
    SIGNATURE_HEADER,
    SYSTEM_HEADER,
    TIMESTAMP_HEADER,
    AcknowledgementRefused,
    acknowledge,
)
from services.runtime.auth import AccessTable, Role, actor_of, allow, require_roles
from services.runtime.host import RuntimeDep

__all__ = ["ACKNOWLEDGEMENT_ACCESS", "EXECUTION_ACCESS", "acknowledgement_router", "router"]

router = APIRouter(prefix="/api/v1", tags=["deletion execution"])
acknowledgement_router = APIRouter(prefix="/api/v1", tags=["deletion execution"])
"""The webhook systems' callback alone: authenticated by its HMAC signature, not by an API
key, so it is meant to be served as an open route (like the health routes)."""

_Actor = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^\S(.*\S)?$")]
_SystemName = Annotated[
    str,
    Path(
        pattern=r"^[a-z][a-z0-9_-]{0,62}$",
        description="Lower-case name: letters, digits, `-`, `_`",
    ),
]


class ScopeRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actor: _Actor | None = Field(
        default=None,
        description="Who asks (with AUTH_MODE=api_keys: the authenticated principal)",
    )
    reason: str = Field(default="", max_length=2000)


class WebhookSystem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: AnyHttpUrl = Field(description="Where tasks are POSTed (http or https)")
    secret: str = Field(
        min_length=32,
        max_length=512,
        description="Shared secret for HMAC-SHA256 signatures (both ways); never returned",
    )
    case_kinds: list[CaseKind] = Field(
        default_factory=lambda: list(CaseKind),
        description="The kinds of case the system takes part in (default: all)",
    )
    enabled: bool = Field(
        default=True, description="False: new scopes leave it out (tasks already sent stay)"
    )
    actor: _Actor | None = None

    @field_validator("case_kinds")
    @classmethod
    def _some(cls, value: list[CaseKind]) -> list[CaseKind]:
        if not value:
            raise ValueError("name at least one case kind")
        return value


@router.post("/cases/{case_id}/scope", responses={404: {}, 409: {}, 503: {}})
async def post_scope(
    case_id: UUID, runtime: RuntimeDep, request: Request, body: ScopeRequestBody | None = None
) -> Any:
    """Resolve the case into concrete targets (records, dataset versions, models,
    descendants where chosen, webhook systems) by asking the registry and lineage, freeze
    them with an evidence entry (``scope_frozen``: the targets and their digest) and submit
    the scope for approval. From ``received``, ``scoping``, ``awaiting_approval`` (a
    rescope) or a failure at scoping (a resume). 503: a service could not answer and the
    case is now failed at scoping (the body holds the reason and the case)."""
    body = body or ScopeRequestBody()
    actor = actor_of(request, body.actor)
    require_roles(request, COMMAND_ROLES[Command.SUBMIT_SCOPE], "scoping a case")
    settings = runtime.settings
    try:
        outcome = await scope_case(
            runtime.pool,
            runtime.source,
            lambda: ServicesClient.from_settings(settings),
            case_id,
            actor=actor,
            reason=body.reason,
            now=lambda: datetime.now(UTC),
        )
    except CaseNotFound as exc:
        raise HTTPException(404, str(exc)) from None
    except TransitionRefused as exc:
        raise HTTPException(409, str(exc)) from None
    async with runtime.pool.acquire() as conn:
        case = await CaseRepository(conn).get(case_id, datetime.now(UTC))
    if not outcome.frozen:
        return JSONResponse({"detail": outcome.reason, "case": _jsonable(case)}, status_code=503)
    return case


@router.get("/cases/{case_id}/execution", responses={404: {}})
async def get_execution(case_id: UUID, runtime: RuntimeDep) -> dict[str, Any]:
    """The case's frozen targets, its tasks (state, attempt, reason, every webhook delivery
    attempt), the last verification with each check's result, and what is missing."""
    async with runtime.pool.acquire() as conn:
        view = await execution_view(conn, case_id)
    if view is None:
        raise HTTPException(404, f"no case {case_id}")
    return view


@acknowledgement_router.post(
    "/task-acknowledgements", status_code=202, responses={401: {}, 404: {}, 409: {}}
)
async def post_acknowledgement(
    request: Request,
    runtime: RuntimeDep,
    system: Annotated[str | None, Header(alias=SYSTEM_HEADER)] = None,
    timestamp: Annotated[str | None, Header(alias=TIMESTAMP_HEADER)] = None,
    signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER)] = None,
) -> dict[str, Any]:
    """A webhook system acknowledges a task: ``{"task_id", "outcome": "done" | "failed" |
    "not_applicable", "reason", "completed_at"?}``, signed with the system's secret
    (``X-ConsentTrace-Signature: v1=<hex HMAC-SHA256(secret, timestamp + "." + body)>``,
    ``X-ConsentTrace-Timestamp``, ``X-ConsentTrace-System``). Published as a
    ``TaskResult`` on ``deletion.task-results.v1``."""
    body = await request.body()
    try:
        async with runtime.unit_of_work() as uow:
            result = await acknowledge(
                uow,
                system=system,
                timestamp=timestamp,
                signature=signature,
                body=body,
                now=datetime.now(UTC),
            )
    except AcknowledgementRefused as exc:
        raise HTTPException(exc.status_code, exc.detail) from None
    return {
        "task_id": str(result.task_id),
        "case_id": str(result.case_id),
        "outcome": result.outcome.value,
        "accepted": True,
    }


@router.put("/webhook-systems/{system}", responses={200: {}, 201: {}, 422: {}})
async def put_webhook_system(
    system: _SystemName, body: WebhookSystem, runtime: RuntimeDep, request: Request
) -> JSONResponse:
    """Register an external system (or replace its URL, secret, kinds): the cases of its
    kinds scoped from now on send it a task by signed webhook."""
    if system in BUILTIN_SYSTEMS:
        raise HTTPException(422, f"{system!r} is a built-in executor's name")
    actor = actor_of(request, body.actor)
    async with runtime.pool.acquire() as conn:
        store = TaskStore(conn)
        created = await store.upsert_system(
            system,
            url=str(body.url),
            secret=body.secret,
            case_kinds=[k.value for k in body.case_kinds],
            enabled=body.enabled,
            actor=actor,
            at=datetime.now(UTC),
        )
        shown = next(s for s in await store.systems() if s["system"] == system)
    return JSONResponse(_jsonable(shown), status_code=201 if created else 200)


@router.get("/webhook-systems")
async def list_webhook_systems(runtime: RuntimeDep) -> list[dict[str, Any]]:
    """Every registered system (without its secret)."""
    async with runtime.pool.acquire() as conn:
        return await TaskStore(conn).systems()


def _jsonable(value: Any) -> Any:
    return jsonable_encoder(value)


_LEGAL = {Role.LEGAL_REQUESTER, Role.LEGAL_APPROVER}
EXECUTION_ACCESS: AccessTable = {
    ("POST", "/api/v1/cases/{case_id}/scope"): allow(COMMAND_ROLES[Command.SUBMIT_SCOPE]),
    ("GET", "/api/v1/cases/{case_id}/execution"): allow(_LEGAL, Role.PLATFORM_ADMIN),
    ("PUT", "/api/v1/webhook-systems/{system}"): allow(Role.PLATFORM_ADMIN),
    ("GET", "/api/v1/webhook-systems"): allow(Role.PLATFORM_ADMIN),
}
"""Entries for ``services.deletion.access.ACCESS``: every route of ``router``."""

ACKNOWLEDGEMENT_ACCESS: AccessTable = {
    ("POST", "/api/v1/task-acknowledgements"): allow(
        Role.PLATFORM_ADMIN,
        note="Webhook systems authenticate by signature (X-ConsentTrace-Signature), not by"
        " API key: this route is meant to be open (see the deletion README).",
    ),
}
"""Only while ``acknowledgement_router`` has to be served among the access-checked routers
(the runtime has no open routers for a service yet): then webhook systems need a
``platform_admin`` key as well as the signature."""
