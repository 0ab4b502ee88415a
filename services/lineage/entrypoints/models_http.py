"""Lineage model API: status, inputs, what-if. Translate requests into use cases, nothing else.

- ``GET /model-status?namespace=&name=&version=``: status, clean, causes, notes, history.
- ``PUT /model-status?namespace=&name=&version=`` with ``{status, actor, reason}``.
- ``GET /model-inputs?namespace=&name=&version=``: upstream dataset versions with the
  registry's composition of each.
- ``GET /what-if?subject_id=…|category=…|jurisdiction=…[&purpose=][&at=]``: the models a
  withdrawal would flag; nothing is changed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from contracts.base import CategoryPath, ModelRef, PurposePath, SubjectId
from services.lineage.adapters.registry_client import RegistryRejected, RegistryUnavailable
from services.lineage.domain.status import SETTABLE, ExplicitStatus, parse_explicit
from services.lineage.service.models import (
    ModelNotFound,
    StatusRefused,
    model_inputs,
    model_status,
    set_model_status,
    what_if,
)
from services.runtime.auth import actor_of
from services.runtime.host import RuntimeDep
from services.runtime.http import QueryTime

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["models"])

_Name = Annotated[str, Query(min_length=1)]
_E404 = {"description": "Lineage never saw this model version in a run"}
_E503 = {"description": "REGISTRY_URL is not set, or the registry cannot answer"}


def _model(namespace: str, name: str, version: str) -> ModelRef:
    return ModelRef(namespace=namespace, name=name, version=version)


class StatusRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: ExplicitStatus = Field(
        description=f"One of {', '.join(SETTABLE)}; `active` clears an override."
        " `flagged` is derived from the model's flags and cannot be set."
    )
    actor: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Who sets it: with API keys, the key's principal (may be omitted)",
    )
    reason: str = Field(min_length=1, max_length=4096, description="Why")

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: object) -> object:
        return parse_explicit(value) if isinstance(value, str) else value


@router.get("/model-status", responses={404: _E404})
async def get_model_status(
    runtime: RuntimeDep, namespace: _Name, name: _Name, version: _Name
) -> dict[str, Any]:
    """Is this model clean? Its status, the active flags behind it (``causes``),
    ``exclude_from_future`` findings upstream (``notes``) and its status history."""
    async with runtime.pool.acquire() as conn:
        try:
            return await model_status(conn, _model(namespace, name, version))
        except ModelNotFound as exc:
            raise HTTPException(404, str(exc)) from exc


@router.put(
    "/model-status",
    responses={404: _E404, 409: {"description": "The change is not allowed (says why)"}},
)
async def put_model_status(
    body: StatusRequest,
    request: Request,
    runtime: RuntimeDep,
    namespace: _Name,
    name: _Name,
    version: _Name,
) -> dict[str, Any]:
    """Set the model's status (``quarantined``, ``superseded``, ``destroyed``, or ``active``
    to clear an override). Setting the status it has is a no-op; ``destroyed`` is final."""
    async with runtime.pool.acquire() as conn:
        try:
            return await set_model_status(
                conn,
                _model(namespace, name, version),
                body.status,
                actor=actor_of(request, body.actor),
                reason=body.reason,
                now=datetime.now(UTC),
            )
        except ModelNotFound as exc:
            raise HTTPException(404, str(exc)) from exc
        except StatusRefused as exc:
            raise HTTPException(409, str(exc)) from exc


@router.get("/model-inputs", responses={404: _E404, 503: _E503})
async def get_model_inputs(
    runtime: RuntimeDep, namespace: _Name, name: _Name, version: _Name
) -> Any:
    """The dataset versions upstream of the model, and the registry's composition of
    each (records per category and jurisdiction, distinct subjects)."""
    try:
        return await model_inputs(runtime.pool, _model(namespace, name, version), runtime.settings)
    except ModelNotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    except RegistryUnavailable as exc:
        raise HTTPException(503, str(exc)) from exc
    except RegistryRejected as exc:
        return JSONResponse({"detail": exc.detail}, exc.status_code)


@router.get("/what-if", responses={503: _E503})
async def get_what_if(
    runtime: RuntimeDep,
    subject_id: Annotated[SubjectId | None, Query()] = None,
    category: Annotated[CategoryPath | None, Query()] = None,
    jurisdiction: Annotated[
        str | None, Query(description="A country, a subdivision (US-CA), or EU / EEA")
    ] = None,
    purpose: Annotated[PurposePath | None, Query()] = None,
    at: Annotated[QueryTime | None, Query()] = None,
    max_subjects: Annotated[int | None, Query(ge=1, le=100_000)] = None,
) -> Any:
    """If this subject (or everybody's category, or a jurisdiction) withdrew now, which
    models would be flagged, how severely, and by which path? Nothing is changed."""
    scope = {
        k: v
        for k, v in (
            ("subject_id", subject_id),
            ("category", category),
            ("jurisdiction", jurisdiction),
        )
        if v is not None
    }
    if len(scope) != 1:
        raise HTTPException(422, "give exactly one of subject_id, category, jurisdiction")
    request: dict[str, Any] = dict(scope)
    if purpose is not None:
        request["purpose"] = purpose
    if at is not None:
        request["at"] = at.isoformat()
    if max_subjects is not None:
        request["max_subjects"] = max_subjects
    try:
        return await what_if(runtime.pool, runtime.settings, request)
    except RegistryUnavailable as exc:
        raise HTTPException(503, str(exc)) from exc
    except RegistryRejected as exc:
        return JSONResponse({"detail": exc.detail}, exc.status_code)
