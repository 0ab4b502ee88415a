"""Deletion HTTP API (legal's view): translate requests, nothing else."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from fastapi import APIRouter, HTTPException

from services.deletion.adapters.repository import CaseRepository
from services.runtime.host import RuntimeDep

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["deletion"])


@router.get("/cases")
async def list_cases(runtime: RuntimeDep) -> list[dict[str, Any]]:
    """Every case, open ones first and nearest deadline first, with days left."""
    async with runtime.pool.acquire() as conn:
        return await CaseRepository(conn).list(datetime.now(UTC))


@router.get("/cases/{case_id}", responses={404: {}})
async def get_case(case_id: UUID, runtime: RuntimeDep) -> dict[str, Any]:
    async with runtime.pool.acquire() as conn:
        case = await CaseRepository(conn).get(case_id, datetime.now(UTC))
    if case is None:
        raise HTTPException(404, f"no case {case_id}")
    return case
