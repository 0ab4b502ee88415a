"""Lineage HTTP API: translate requests into use cases, nothing else."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response, status

from contracts.base import ModelRef
from contracts.openlineage import RunEvent
from services.lineage.adapters.repository import LineageRepository
from services.lineage.service.handlers import ingest_run_event
from services.runtime.host import RuntimeDep
from services.runtime.http import VersionFilter

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["lineage"])


@router.post(
    "/lineage",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "Already received"}, 422: {}},
)
async def post_lineage(event: RunEvent, runtime: RuntimeDep, response: Response) -> dict[str, Any]:
    """OpenLineage endpoint, as the ``openlineage-python`` HTTP transport calls it."""
    async with runtime.unit_of_work() as uow:
        created = await ingest_run_event(uow, event)
    if not created:
        response.status_code = status.HTTP_200_OK
    return {"runId": str(event.run.run_id), "accepted": True}


@router.get("/model-flags")
async def list_flags(runtime: RuntimeDep, version: VersionFilter) -> list[dict[str, Any]]:
    """Model flags with their evidence paths, optionally for one model version."""
    model = ModelRef(**version.model_dump()) if version else None
    async with runtime.pool.acquire() as conn:
        return await LineageRepository(conn).flags(model)
