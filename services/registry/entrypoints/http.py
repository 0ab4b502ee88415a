"""Registry HTTP API: translate requests into use cases, nothing else."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, status

from services.registry.adapters.repository import RegistryRepository
from services.registry.domain.snapshots import DatasetVersionRegistration
from services.registry.service.handlers import DatasetVersionExists, register_dataset_version
from services.runtime.host import RuntimeDep
from services.runtime.http import VersionFilter

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["registry"])


@router.post("/dataset-versions", status_code=status.HTTP_201_CREATED, responses={409: {}})
async def post_dataset_version(
    registration: DatasetVersionRegistration, runtime: RuntimeDep
) -> dict[str, Any]:
    """Register and seal a dataset version with its records, atomically."""
    try:
        async with runtime.unit_of_work() as uow:
            await register_dataset_version(uow, registration, now=datetime.now(UTC))
    except DatasetVersionExists as exc:
        raise HTTPException(409, str(exc)) from exc
    return {"dataset": registration.dataset, "records": len(registration.records), "sealed": True}


@router.get("/findings")
async def list_findings(runtime: RuntimeDep, dataset: VersionFilter) -> list[dict[str, Any]]:
    """Findings, optionally for one dataset version (namespace, name and version together)."""
    async with runtime.pool.acquire() as conn:
        return await RegistryRepository(conn).findings(dataset)


@router.get("/policy-versions")
async def list_policy_versions(runtime: RuntimeDep) -> list[dict[str, Any]]:
    """The policy versions this registry evaluates with (its own projection)."""
    async with runtime.pool.acquire() as conn:
        policies = await RegistryRepository(conn).policies()
    return [
        {
            "policy_id": p.policy_id,
            "version": p.version,
            "valid_from": p.valid_from,
            "published_at": published_at,
        }
        for p, published_at in sorted(policies, key=lambda pv: (pv[0].policy_id, pv[1]))
    ]
