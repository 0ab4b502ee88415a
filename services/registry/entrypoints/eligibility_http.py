"""Registry eligibility API: translate requests into the eligibility use cases, nothing else.

- ``POST /eligibility/filter?purpose=P[&at=T][&report=summary]``: NDJSON records in (the
  lines of a registration upload), the lines of the eligible ones out, byte for byte, in
  input order; or, with ``report=summary``, the counts as JSON.
- ``GET /records/{source_system}/{record_id}/eligibility``: one registered record's
  eligibility explained, decision by decision, with the events that decided.

The filter reads and decides the whole body before it answers, so that a bad line
anywhere is a 422 naming it and never a truncated 200: the eligible lines are spooled
(in memory up to ``SPOOL_IN_MEMORY``, then to an anonymous temporary file) and streamed
from there once the last line is decided.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import IO, Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from contracts.base import DatasetRef, PurposePath
from contracts.events import ConsentEvent
from services.registry.domain.ndjson import MAX_LINE_BYTES, LineTooLong
from services.registry.domain.preflight import SAMPLE_EXCLUDED
from services.registry.domain.snapshots import LineError
from services.registry.entrypoints.refusals import after_draining, line_errors
from services.registry.entrypoints.schemas import NDJSON_EXAMPLE, ErrorResponse, LineErrorResponse
from services.registry.service.eligibility import (
    MissingPurpose,
    NotFound,
    RecordEligibility,
    explain_record,
    filter_records,
)
from services.runtime.host import RuntimeDep
from services.runtime.http import QueryTime, VersionFilter

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["eligibility"])

SPOOL_IN_MEMORY = 16 * 1024 * 1024
"""Bytes of eligible lines kept in memory before the spool moves to a temporary file."""
STREAM_BLOCK = 1 << 20
"""Bytes per write of the streamed answer."""

_NDJSON_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-ndjson": {
                "schema": {"type": "string", "format": "binary"},
                "example": NDJSON_EXAMPLE,
            }
        },
    }
}


# --- answers ----------------------------------------------------------------------------


class PolicyVersionRef(BaseModel):
    policy_id: str
    version: str


class ExcludedRecordOut(BaseModel):
    source_system: str
    record_id: str
    subject_id: str
    category: str
    jurisdiction: str
    reason: str = Field(description="The first excluding decision's reason, or `no_policy`")
    policy_id: str | None
    rule_id: str | None


class FilterSummaryResponse(BaseModel):
    """What ``report=summary`` answers."""

    purpose: str
    at: datetime
    policies: list[PolicyVersionRef] = Field(
        description="The policy versions in force at `at` that speak to the purpose"
    )
    records: int
    eligible: int
    excluded: int
    excluded_by_reason: dict[str, int]
    sample_excluded: list[ExcludedRecordOut] = Field(
        description=f"The first {SAMPLE_EXCLUDED} excluded records, in input order"
    )


class RecordOut(BaseModel):
    source_system: str
    record_id: str
    subject_id: str
    category: str
    jurisdiction: str
    collected_at: datetime


class UseOut(BaseModel):
    purpose: str
    at: datetime = Field(description="The time of use")
    known_at: datetime | None = Field(
        description="Facts recorded and policy versions published later were ignored;"
        " null: everything known now"
    )
    dataset: DatasetRef | None = Field(
        None, description="The sealed dataset version the use was taken from"
    )


class DecisionOut(BaseModel):
    policy_id: str
    policy_version: str
    published_at: datetime
    eligible: bool
    reason: str
    rule_id: str | None
    rule_description: str | None
    mechanism: str | None
    explanation: str
    consent_events: list[ConsentEvent] = Field(description="The deciding events, in full")


class RecordEligibilityResponse(BaseModel):
    record: RecordOut
    use: UseOut
    eligible: bool = Field(
        description="True only when every policy that speaks to the use decides eligible;"
        " false when none does (`no_policy`)"
    )
    reason: str = Field(
        description="The first excluding decision's reason (by policy id), `no_policy`, or"
        " when eligible the first decision's"
    )
    decisions: list[DecisionOut] = Field(
        description="One per policy whose version in force speaks to the purpose"
    )
    consent_history: list[ConsentEvent] = Field(
        description="Every consent event of the subject as known at `known_at`, oldest first"
    )


# --- routes -----------------------------------------------------------------------------


@router.post(
    "/eligibility/filter",
    response_model=None,
    responses={
        200: {
            "model": FilterSummaryResponse,
            "description": "The eligible records' lines as sent, in input order"
            " (`application/x-ndjson`); with `report=summary`, the counts (JSON)."
            " Headers `X-Records`, `X-Eligible`, `X-Excluded` carry the counts either way.",
            "content": {"application/x-ndjson": {"schema": {"type": "string", "format": "binary"}}},
        },
        422: {
            "model": LineErrorResponse,
            "description": "A line is not a valid record (its number and field are named) or"
            f" is longer than {MAX_LINE_BYTES} bytes; nothing was answered but this.",
        },
    },
    openapi_extra=_NDJSON_BODY,
)
async def post_eligibility_filter(
    request: Request,
    runtime: RuntimeDep,
    purpose: Annotated[
        PurposePath, Query(description="The purpose of the intended use, e.g. `ai.training`")
    ],
    at: Annotated[
        QueryTime | None,
        Query(description="The time of the intended use (offset required); default now"),
    ] = None,
    report: Annotated[
        Literal["lines", "summary"],
        Query(description="`lines`: the eligible lines (NDJSON); `summary`: counts (JSON)"),
    ] = "lines",
) -> Response:
    """Which of these records may be used for ``purpose`` at ``at``? NDJSON in, one record
    per line as in a registration upload; the eligible records' lines out, byte for byte and
    in input order, ready to be sent on as a registration chunk.

    A record is eligible when every policy whose version in force at ``at`` speaks to the
    purpose decides eligible; when none speaks to it, it is not (`no_policy`).
    """
    use_at = at or datetime.now(UTC)
    body = request.stream()
    # The spool outlives this call: the streamed answer reads it back, then closes it.
    spool: IO[bytes] | None = None
    if report == "lines":
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115
    try:
        result = await filter_records(
            runtime.pool,
            body,
            purpose=purpose,
            at=use_at,
            on_eligible=spool.write if spool is not None else None,
        )
    except BaseException as exc:
        if spool is not None:
            spool.close()
        if isinstance(exc, LineError | LineTooLong):
            return await _refuse_body(body, exc)
        if isinstance(exc, ClientDisconnect):
            return Response(status_code=400)
        raise
    summary = result.summary
    counts = {
        "X-Records": str(summary.records),
        "X-Eligible": str(summary.eligible),
        "X-Excluded": str(summary.excluded),
    }
    if spool is None:
        return JSONResponse(summary.as_json(purpose, use_at, result.readings), headers=counts)
    return StreamingResponse(_spooled(spool), media_type="application/x-ndjson", headers=counts)


@router.get(
    "/records/{source_system}/{record_id:path}/eligibility",
    response_model=RecordEligibilityResponse,
    responses={
        404: {
            "model": ErrorResponse,
            "description": "No such record, no such sealed dataset version, or the version"
            " does not hold the record",
        },
        422: {"description": "No purpose and no dataset version; a bad parameter"},
    },
)
async def get_record_eligibility(
    source_system: str,
    record_id: str,
    runtime: RuntimeDep,
    dataset: VersionFilter,
    purpose: Annotated[
        PurposePath | None,
        Query(description="The purpose of the use; default the dataset version's"),
    ] = None,
    at: Annotated[
        QueryTime | None,
        Query(description="The time of use; default the dataset version's time of use, or now"),
    ] = None,
    known_at: Annotated[
        QueryTime | None,
        Query(
            description="Answer as known then: consent events recorded and policy versions"
            " published after it are ignored"
        ),
    ] = None,
) -> Any:
    """Why a registered record may (not) be used for a purpose at a time: every policy's
    decision with its rule, mechanism and deciding consent events, and the subject's whole
    consent history as known at ``known_at``.

    Name a sealed dataset version holding the record (``namespace``, ``name``, ``version``)
    to explain the use it was put to: its purpose and time of use are then the defaults.
    """
    try:
        async with runtime.pool.acquire() as conn:
            answer = await explain_record(
                conn,
                source_system,
                record_id,
                purpose=purpose,
                at=at,
                known_at=known_at,
                dataset=dataset,
                now=datetime.now(UTC),
            )
    except NotFound as exc:
        raise HTTPException(404, exc.message) from None
    except MissingPurpose as exc:
        raise HTTPException(422, exc.message) from None
    return _explained(answer)


# --- translation ------------------------------------------------------------------------


def _explained(answer: RecordEligibility) -> RecordEligibilityResponse:
    record, explanation = answer.record, answer.explanation
    use = explanation.use
    return RecordEligibilityResponse(
        record=RecordOut(
            source_system=record.source_system,
            record_id=record.record_id,
            subject_id=record.subject_id,
            category=record.category,
            jurisdiction=record.jurisdiction,
            collected_at=record.collected_at,
        ),
        use=UseOut(
            purpose=use.purpose,
            at=use.used_at,
            known_at=explanation.known_at,
            dataset=answer.dataset.dataset if answer.dataset is not None else None,
        ),
        eligible=explanation.verdict.eligible,
        reason=explanation.verdict.reason,
        decisions=[
            DecisionOut(
                policy_id=d.decision.policy_id,
                policy_version=d.decision.policy_version,
                published_at=d.reading.published_at,
                eligible=d.decision.eligible,
                reason=d.decision.reason.value,
                rule_id=d.decision.rule_id,
                rule_description=d.rule.description if d.rule is not None else None,
                mechanism=d.decision.mechanism.value if d.decision.mechanism else None,
                explanation=d.decision.explanation,
                consent_events=list(d.consent_events),
            )
            for d in explanation.decisions
        ],
        consent_history=list(explanation.consent_history),
    )


def _spooled(spool: IO[bytes]) -> Iterator[bytes]:
    """The spooled lines, read back in blocks (Starlette runs this in its thread pool)."""
    try:
        spool.seek(0)
        while block := spool.read(STREAM_BLOCK):
            yield block
    finally:
        spool.close()


async def _refuse_body(body: AsyncIterator[bytes], exc: LineError | LineTooLong) -> Response:
    """422 for a bad line, once the client has sent all of its body (as registration does)."""
    return await after_draining(
        body, JSONResponse({"detail": line_errors(exc, None)}, status_code=422)
    )
