"""Consent HTTP API: translate requests into use cases, nothing else."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, HTTPException, Query, Response, status
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

from contracts.base import SubjectId
from contracts.events import ConsentEvent, PolicyChange
from contracts.policy import PolicyDocument
from services.consent.domain.model import (
    BATCH_LIMIT,
    ConsentChange,
    GpcSignal,
    InvalidBatch,
    InvalidConsentChange,
    InvalidPolicy,
    UnreadableChange,
)
from services.consent.entrypoints.export_html import render_export
from services.consent.entrypoints.schemas import (
    BatchErrorResponse,
    ConsentBatchRequest,
    ConsentBatchResponse,
    ConsentChangeRequest,
    ConsentInForceResponse,
    ConsentStateResponse,
    ErrorResponse,
    GpcRequest,
    GpcResponse,
    PolicyVersionResponse,
    QueryTime,
    RecordedConsent,
    SubjectExportResponse,
)
from services.consent.service.handlers import (
    IdempotencyConflict,
    publish_policy,
    record_consent,
    record_consent_batch,
    record_gpc_signal,
    record_new_consent,
)
from services.consent.service.views import (
    consent_history,
    consent_state,
    policy_documents,
    subject_export,
)
from services.runtime.host import RuntimeDep

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["consent"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Makes a retry safe: the same key and body record nothing twice",
    ),
]
SecGpc = Annotated[
    str | None,
    Header(
        alias="Sec-GPC",
        description="Global Privacy Control: `1` when the subject's browser sent the signal",
    ),
]
UserAgent = Annotated[str | None, Header(alias="User-Agent", include_in_schema=False)]

_409 = {"model": ErrorResponse, "description": "The Idempotency-Key was used for other content"}
_422 = {"model": ErrorResponse, "description": "The change cannot be recorded (reason given)"}


def _gpc_sent(value: str | None) -> bool:
    """The GPC spec's only signal value is ``1``; anything else is no signal."""
    return value is not None and value.strip() == "1"


@router.post(
    "/consent-events",
    status_code=status.HTTP_201_CREATED,
    response_model=RecordedConsent,
    responses={200: {"description": "Replay of an idempotent request"}, 409: _409, 422: _422},
)
async def post_consent_event(
    body: ConsentChangeRequest,
    runtime: RuntimeDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
    sec_gpc: SecGpc = None,
    user_agent: UserAgent = None,
) -> RecordedConsent:
    """Record one consent change in the ledger and publish it on ``consent.events.v1``.

    With ``Sec-GPC: 1``, the withdrawals the policies in force give a GPC signal in the
    subject's jurisdiction are recorded in the same transaction (``gpc_withdrawals``).
    """
    now = datetime.now(UTC)
    change = body.to_change()
    gpc = _gpc_of_change(change, now, user_agent) if _gpc_sent(sec_gpc) else None
    try:
        recorded = None
        if gpc is None:  # the usual request: one statement, one round trip
            async with runtime.pool.acquire() as conn:
                recorded = await record_new_consent(
                    conn, change, now=now, idempotency_key=idempotency_key, source=runtime.source
                )
        if recorded is None:  # a GPC signal, or a retry to compare with the first fact
            async with runtime.unit_of_work() as uow:
                recorded = await record_consent(
                    uow, change, now=now, idempotency_key=idempotency_key, gpc=gpc
                )
    except InvalidConsentChange as exc:
        raise HTTPException(422, str(exc)) from exc
    except IdempotencyConflict as exc:
        raise HTTPException(409, str(exc)) from exc
    if not recorded.created:
        response.status_code = status.HTTP_200_OK
    withdrawals = recorded.gpc.events if recorded.gpc else ()
    return RecordedConsent(**dict(recorded.event), gpc_withdrawals=withdrawals)


def _gpc_of_change(change: ConsentChange, now: datetime, user_agent: str | None) -> GpcSignal:
    return GpcSignal(
        subject_id=change.subject_id,
        jurisdiction=change.jurisdiction,
        source_system=change.source_system,
        user_agent=change.evidence.user_agent or user_agent,
        collection_point=change.evidence.collection_point,
        effective_at=now,
    )


@router.post(
    "/consent-events/batch",
    status_code=status.HTTP_201_CREATED,
    response_model=ConsentBatchResponse,
    responses={
        200: {"description": "Replay of a batch already recorded under this Idempotency-Key"},
        400: {"model": ErrorResponse, "description": "Sec-GPC sent with a batch"},
        409: _409,
        422: {"model": BatchErrorResponse, "description": "Invalid changes; nothing recorded"},
    },
)
async def post_consent_batch(
    body: Annotated[ConsentBatchRequest, Body()],
    runtime: RuntimeDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
    sec_gpc: SecGpc = None,
) -> ConsentBatchResponse:
    """Record up to 1,000 changes in one transaction: all of them, or none.

    Each change's event id derives from the ``Idempotency-Key`` and its index, so a retried
    batch records nothing twice (200, the events recorded the first time); the same key
    with other content is a 409. A 422 names every failing index and why.
    """
    if _gpc_sent(sec_gpc):
        raise HTTPException(
            400,
            "Sec-GPC is a signal about one subject's request; send it with"
            " POST /api/v1/consent-events or POST /api/v1/subjects/{subject_id}/gpc,"
            " not with a batch",
        )
    changes = _read_items(body.changes)
    try:
        async with runtime.unit_of_work() as uow:
            recorded = await record_consent_batch(
                uow, changes, now=datetime.now(UTC), idempotency_key=idempotency_key
            )
    except InvalidBatch as exc:
        raise _batch_error(str(exc), exc.errors) from exc
    except IdempotencyConflict as exc:
        raise HTTPException(409, str(exc)) from exc
    if not recorded.created:
        response.status_code = status.HTTP_200_OK
    return ConsentBatchResponse(
        idempotency_key=idempotency_key,
        replayed=not recorded.created,
        count=len(recorded.events),
        events=list(recorded.events),
    )


def _read_items(items: list[Any]) -> list[ConsentChange | UnreadableChange]:
    """Each item against the request schema, so that every failing index is named at once."""
    if len(items) > BATCH_LIMIT:  # refused as a whole: not worth reading
        return [UnreadableChange("not read: the batch is too large")] * len(items)
    read: list[ConsentChange | UnreadableChange] = []
    for item in items:
        try:
            read.append(ConsentChangeRequest.model_validate(item).to_change())
        except ValidationError as exc:
            reasons = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'change'}: {err['msg']}"
                for err in exc.errors()
            )
            read.append(UnreadableChange(reasons))
    return read


def _batch_error(message: str, errors: Any) -> HTTPException:
    return HTTPException(
        422,
        {"message": message, "errors": [{"index": i, "reason": r} for i, r in errors]},
    )


@router.post(
    "/subjects/{subject_id}/gpc",
    status_code=status.HTTP_201_CREATED,
    response_model=GpcResponse,
    responses={
        200: {"description": "Nothing to record (GPC not covered there) or a replay"},
        400: {"model": ErrorResponse, "description": "The request does not carry Sec-GPC: 1"},
        409: _409,
        422: _422,
    },
)
async def post_gpc_signal(
    subject_id: SubjectId,
    body: GpcRequest,
    runtime: RuntimeDep,
    response: Response,
    idempotency_key: IdempotencyKey = None,
    sec_gpc: SecGpc = None,
) -> GpcResponse:
    """Record the withdrawals a Global Privacy Control signal implies for the subject.

    The policies in force now say, per jurisdiction, which purposes and categories a GPC
    signal withdraws; each becomes one ``gpc_signal`` withdrawal. The request itself must
    carry ``Sec-GPC: 1``.
    """
    if not _gpc_sent(sec_gpc):
        got = "no Sec-GPC header" if sec_gpc is None else f"Sec-GPC: {sec_gpc!r}"
        raise HTTPException(
            400,
            f"this endpoint records a Global Privacy Control signal and needs the request"
            f" header Sec-GPC: 1 (got {got}); to withdraw consent otherwise, use"
            " POST /api/v1/consent-events",
        )
    now = datetime.now(UTC)
    signal = GpcSignal(
        subject_id=subject_id,
        jurisdiction=body.jurisdiction,
        source_system=body.source_system,
        user_agent=body.evidence.user_agent,
        collection_point=body.evidence.collection_point,
        effective_at=body.effective_at or now,
    )
    try:
        async with runtime.unit_of_work() as uow:
            recorded = await record_gpc_signal(
                uow,
                signal,
                now=now,
                idempotency_key=idempotency_key,
                effective_at_given=body.effective_at is not None,
            )
    except InvalidConsentChange as exc:
        raise HTTPException(422, str(exc)) from exc
    except IdempotencyConflict as exc:
        raise HTTPException(409, str(exc)) from exc
    policies = sorted({w.policy_ref for w in recorded.coverage})
    if not recorded.coverage:
        message = (
            f"no policy in force gives a GPC signal effect in {body.jurisdiction};"
            " nothing was recorded"
        )
    elif not recorded.created:
        message = "replay: these withdrawals were recorded by the first request with this key"
    else:
        n = len(recorded.events)
        message = f"GPC withdrew {n} (purpose, categories) pair{'s' if n != 1 else ''} in" + (
            f" {body.jurisdiction}"
        )
    if not recorded.created or not recorded.events:
        response.status_code = status.HTTP_200_OK
    return GpcResponse(
        subject_id=subject_id,
        jurisdiction=body.jurisdiction,
        covered=bool(recorded.coverage),
        message=message,
        policies=policies,
        replayed=bool(recorded.coverage) and not recorded.created,
        withdrawals=list(recorded.events),
    )


@router.get(
    "/subjects/{subject_id}/consent",
    response_model=ConsentStateResponse,
    responses={422: {"description": "A timestamp without UTC offset"}},
)
async def subject_consent(
    subject_id: SubjectId,
    runtime: RuntimeDep,
    valid_at: Annotated[
        QueryTime | None, Query(description="Valid time: in force when? Default: now")
    ] = None,
    known_at: Annotated[
        QueryTime | None, Query(description="Transaction time: as known when? Default: now")
    ] = None,
) -> ConsentStateResponse:
    """The subject's consent per (purpose, category) at ``valid_at``, as known at ``known_at``.

    For each key the latest relevant event decides (a withdrawal of ``user`` overrides an
    earlier grant of ``user.content``); each entry names that event, the earlier events it
    overrides, and a one-line explanation. Events recorded after ``known_at`` are ignored.
    """
    now = datetime.now(UTC)
    valid, known = valid_at or now, known_at or now
    async with runtime.pool.acquire() as conn:
        entries = await consent_state(conn, subject_id, valid_at=valid, known_at=known)
    return ConsentStateResponse(
        subject_id=subject_id,
        valid_at=valid,
        known_at=known,
        consents=[ConsentInForceResponse.of(e) for e in entries],
    )


@router.get(
    "/subjects/{subject_id}/consent-events",
    responses={422: {"description": "A timestamp without UTC offset"}},
)
async def subject_history(
    subject_id: SubjectId,
    runtime: RuntimeDep,
    known_at: Annotated[
        QueryTime | None,
        Query(description="Transaction time: the history as known then. Default: everything"),
    ] = None,
) -> list[ConsentEvent]:
    """The subject's recorded consent facts as known at ``known_at``, in valid-time order."""
    async with runtime.pool.acquire() as conn:
        return await consent_history(conn, subject_id, known_at=known_at)


@router.get(
    "/subjects/{subject_id}/export",
    response_model=SubjectExportResponse,
    responses={
        200: {"content": {"text/html": {"example": "<!DOCTYPE html>…"}}},
        404: {"model": ErrorResponse, "description": "The subject has no ledger events"},
    },
)
async def export_subject(
    subject_id: SubjectId,
    runtime: RuntimeDep,
    output: Annotated[
        Literal["json", "html"],
        Query(alias="format", description="`html`: a self-contained page to print"),
    ] = "json",
) -> Any:
    """Everything the ledger holds about a subject, for legal: every event, the consent in
    force now, the policy versions the events name. ``?format=html`` renders it as a page."""
    async with runtime.pool.acquire() as conn:
        export = await subject_export(conn, subject_id, now=datetime.now(UTC))
    if export is None:
        raise HTTPException(404, f"subject {subject_id!r} has no consent events in the ledger")
    if output == "html":
        return HTMLResponse(render_export(export))
    return SubjectExportResponse(
        subject_id=export.subject_id,
        generated_at=export.generated_at,
        jurisdictions=sorted({e.jurisdiction for e in export.events}),
        events=export.events,
        state=[ConsentInForceResponse.of(e) for e in export.state],
        policy_versions=[
            PolicyVersionResponse(
                policy_id=p.policy_id,
                version=p.version,
                valid_from=p.valid_from,
                published_at=published,
                document=p,
            )
            for p, published in export.policies
        ],
        unresolved_policy_versions=export.unresolved_policy_versions,
    )


@router.post(
    "/policies",
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"description": "This version was already published with this content"},
        409: _409,
        422: {"model": ErrorResponse, "description": "Unknown purposes or categories"},
    },
)
async def post_policy(
    policy: PolicyDocument, runtime: RuntimeDep, response: Response
) -> PolicyChange:
    """Publish a policy version on ``consent.policies.v1``; it may re-read the past.

    Every purpose and data category it names must be a known term.
    """
    try:
        async with runtime.unit_of_work() as uow:
            change, created = await publish_policy(uow, policy, now=datetime.now(UTC))
    except InvalidPolicy as exc:
        raise HTTPException(422, str(exc)) from exc
    except IdempotencyConflict as exc:
        raise HTTPException(409, str(exc)) from exc
    if not created:
        response.status_code = status.HTTP_200_OK
    return change


@router.get("/policies")
async def list_policies(runtime: RuntimeDep) -> list[PolicyDocument]:
    """Every stored policy version."""
    async with runtime.pool.acquire() as conn:
        return await policy_documents(conn)
