"""Registry read API for other services and ML teams: what went into a dataset version,
and what a withdrawal would do. Translate requests into use cases, nothing else.

- ``GET /dataset-version/composition?namespace=&name=&version=``: records per category and
  per jurisdiction, distinct subjects.
- ``GET /dataset-version/subjects?namespace=&name=&version=[&after=][&limit=]``: distinct
  subject ids, keyset-paginated (``next_after`` is the next page's ``after``).
- ``POST /what-if/withdrawal``: the dataset versions that would get new or more severe
  findings if a subject, a category or a jurisdiction withdrew; nothing is changed.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts.base import (
    AwareDatetime,
    CategoryPath,
    DatasetRef,
    Jurisdiction,
    PurposePath,
    SubjectId,
)
from contracts.jurisdictions import GROUPS
from services.registry.adapters.composition import CompositionStore
from services.registry.domain.whatif import Scope, ScopeKind
from services.registry.service.whatif import (
    MAX_SUBJECTS_WITH_HISTORY,
    composition,
    subjects_page,
    what_if_withdrawal,
)
from services.runtime.host import RuntimeDep
from services.runtime.http import QueryTime

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["composition and what-if"])

MAX_PAGE = 10_000
_E404 = {"description": "No sealed dataset version of that name"}

_Part = Annotated[str, Query(min_length=1)]
"""``namespace``, ``name`` or ``version`` of a dataset version (names hold slashes)."""


def _sealed(namespace: str, name: str, version: str) -> DatasetRef:
    return DatasetRef(namespace=namespace, name=name, version=version)


@router.get("/dataset-version/composition", responses={404: _E404})
async def get_composition(
    runtime: RuntimeDep, namespace: _Part, name: _Part, version: _Part
) -> dict[str, Any]:
    """What a sealed version holds: records and distinct subjects in total, per category
    and per jurisdiction (from its memberships ⋈ records)."""
    dataset = _sealed(namespace, name, version)
    async with runtime.pool.acquire() as conn:
        answer = await composition(conn, dataset)
    if answer is None:
        raise HTTPException(404, f"no sealed dataset version {dataset.key}")
    return answer


@router.get("/dataset-versions/holding")
async def get_versions_holding(
    runtime: RuntimeDep,
    category: Annotated[list[CategoryPath], Query(min_length=1, max_length=100)],
    jurisdiction: Annotated[list[Jurisdiction], Query(max_length=100)] = [],  # noqa: B006
    collected_from: Annotated[QueryTime | None, Query()] = None,
    collected_until: Annotated[QueryTime | None, Query()] = None,
) -> list[dict[str, Any]]:
    """Sealed versions holding records of these categories (and below), optionally of these
    jurisdictions (a country covers its subdivisions) and collected in
    ``[collected_from, collected_until)``, with their counts: what a category purge
    reaches (the deletion service's scoping and verification)."""
    if collected_from and collected_until and collected_from >= collected_until:
        raise HTTPException(422, "collected_from must be before collected_until")
    async with runtime.pool.acquire() as conn:
        return await CompositionStore(conn).versions_holding(
            category, jurisdiction, collected_from, collected_until
        )


@router.get("/dataset-version/subjects", responses={404: _E404})
async def get_subjects(
    runtime: RuntimeDep,
    namespace: _Part,
    name: _Part,
    version: _Part,
    after: Annotated[
        str | None, Query(min_length=1, description="The last subject id of the previous page")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1000,
) -> dict[str, Any]:
    """The version's distinct subject ids in byte order, ``limit`` at a time."""
    dataset = _sealed(namespace, name, version)
    async with runtime.pool.acquire() as conn:
        answer = await subjects_page(conn, dataset, after=after, limit=limit)
    if answer is None:
        raise HTTPException(404, f"no sealed dataset version {dataset.key}")
    return answer


class WithdrawalWhatIf(BaseModel):
    """Exactly one of ``subject_id``, ``category``, ``jurisdiction``."""

    model_config = ConfigDict(extra="forbid")

    subject_id: SubjectId | None = None
    category: CategoryPath | None = Field(
        None, description="Everybody withdraws this category (and those below it)"
    )
    jurisdiction: str | None = Field(
        None,
        description="Everybody in this jurisdiction withdraws: a country (its subdivisions"
        " included), a subdivision (US-CA) or a group (EU, EEA)",
    )
    purpose: PurposePath | None = Field(
        None, description="Withdraw this purpose only; default: every purpose of the uses"
    )
    at: AwareDatetime | None = Field(None, description="When the withdrawal takes effect; now")
    max_subjects: int = Field(
        MAX_SUBJECTS_WITH_HISTORY,
        ge=1,
        le=100_000,
        description="Subjects with a consent history judged one by one (beyond: truncated)",
    )

    @field_validator("jurisdiction")
    @classmethod
    def _jurisdiction(cls, value: str | None) -> str | None:
        if value is None or value in GROUPS or re.fullmatch(r"[A-Z]{2}(-[A-Z0-9]{1,3})?", value):
            return value
        raise ValueError(
            f"{value!r} is not a jurisdiction: ISO 3166-1 alpha-2 (DE), with a subdivision"
            f" (US-CA), or a group ({', '.join(sorted(GROUPS))})"
        )

    @model_validator(mode="after")
    def _one_scope(self) -> WithdrawalWhatIf:
        given = [k for k in ScopeKind if getattr(self, k.value) is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one of subject_id, category, jurisdiction"
                + (f" (got {', '.join(k.value for k in given)})" if given else "")
            )
        return self

    def scope(self) -> Scope:
        kind = next(k for k in ScopeKind if getattr(self, k.value) is not None)
        return Scope(kind, getattr(self, kind.value))


@router.post("/what-if/withdrawal")
async def post_what_if_withdrawal(request: WithdrawalWhatIf, runtime: RuntimeDep) -> Any:
    """If this subject / category / jurisdiction withdrew consent (at ``at``), which
    dataset versions would get new or more severe findings, and how severe? Nothing is
    changed or published."""
    async with runtime.pool.acquire() as conn:
        answer = await what_if_withdrawal(
            conn,
            request.scope(),
            purpose=request.purpose,
            at=request.at,
            max_subjects=request.max_subjects,
        )
    return answer.as_json()
