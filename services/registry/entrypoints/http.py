"""Registry HTTP API: translate requests into use cases, nothing else.

Snapshot registration, three ways (all sealed atomically, all under the same rules):

- ``POST /dataset-versions``: one JSON document, up to 100,000 records.
- Chunked upload: ``POST /dataset-versions/uploads`` (the header) → upload id;
  ``PUT …/uploads/{id}/chunks/{n}`` (NDJSON records; sending ``n`` again replaces it);
  ``POST …/uploads/{id}/seal``. ``GET`` shows an upload, ``DELETE`` abandons it.
- ``POST /dataset-versions/stream``: NDJSON, the header on line 1, records after it.

NDJSON bodies are read as they arrive. On any refusal the rest of the body is read and
discarded before answering, so a client still sending gets the answer, not a reset.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response, status
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from contracts.base import CategoryPath, DatasetRef, SubjectId
from contracts.events import FindingStatus, Severity
from services.registry.adapters.findings import FindingStore
from services.registry.adapters.repository import RegistryRepository
from services.registry.adapters.snapshots import SnapshotRepository
from services.registry.domain.ndjson import MAX_LINE_BYTES, LineTooLong
from services.registry.domain.snapshots import (
    DatasetVersionHeader,
    DatasetVersionRegistration,
    LineError,
)
from services.registry.entrypoints.refusals import after_draining, line_errors
from services.registry.entrypoints.schemas import (
    NDJSON_EXAMPLE,
    ChunkInfo,
    ChunkReceiptResponse,
    DatasetVersionResponse,
    ErrorResponse,
    LineErrorResponse,
    QueryTime,
    RecordKey,
    SubjectCategory,
    SubjectDatasetVersion,
    UploadResponse,
)
from services.registry.service.registration import (
    BackfillNotSupported,
    ChunkTooLarge,
    DatasetVersionExists,
    DuplicateRecords,
    EmptyRegistration,
    RecordConflict,
    RegistrationError,
    SealedVersion,
    StagedRowsLost,
    UploadExpired,
    UploadNotFound,
    UploadSealed,
    UploadStatus,
    abandon_upload,
    open_upload,
    put_chunk,
    register_dataset_version,
    register_stream,
    seal_upload,
    upload_status,
)
from services.runtime.guards import STREAMED_BODY_MAX_BYTES
from services.runtime.host import RuntimeDep
from services.runtime.http import VersionFilter

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["registry"])

SUBJECT_SAMPLE = 20
"""Record ids shown per (dataset version, category) in the subject query."""

_STATUS: dict[type[RegistrationError], int] = {
    DatasetVersionExists: 409,
    UploadNotFound: 404,
    UploadExpired: 410,
    UploadSealed: 409,
    RecordConflict: 409,
    StagedRowsLost: 409,
    DuplicateRecords: 422,
    EmptyRegistration: 422,
    BackfillNotSupported: 422,
    ChunkTooLarge: 413,
}

_E404 = {"model": ErrorResponse, "description": "No such upload"}
_E410 = {
    "model": ErrorResponse,
    "description": "The upload expired: nothing arrived for `UPLOAD_IDLE_TIMEOUT_S`, its staged"
    " rows are dropped and its dataset version's name is free (open a new upload)",
}
_E409 = {
    "model": ErrorResponse,
    "description": "The version exists or is sealed already, or a record is already registered"
    " with other facts (records are immutable; `records` names them)",
}
_E413 = {"model": ErrorResponse, "description": "Too many records for one request"}
_E422 = {
    "model": LineErrorResponse,
    "description": "A line is not a valid record (its number and field are named), a line is"
    f" longer than {MAX_LINE_BYTES} bytes, the body holds no records, or a record appears"
    " twice (`records` names every occurrence). Nothing of the body was kept.",
}
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


@router.post(
    "/dataset-versions",
    status_code=status.HTTP_201_CREATED,
    responses={409: _E409, 422: {"description": "Invalid registration"}},
)
async def post_dataset_version(
    registration: DatasetVersionRegistration, runtime: RuntimeDep
) -> Any:
    """Register and seal a dataset version with its records (up to 100,000), atomically."""
    try:
        async with runtime.unit_of_work() as uow:
            await register_dataset_version(uow, registration, now=datetime.now(UTC))
    except RegistrationError as exc:
        return _refusal(exc)
    return {"dataset": registration.dataset, "records": len(registration.records), "sealed": True}


@router.post(
    "/dataset-versions/uploads",
    status_code=status.HTTP_201_CREATED,
    response_model=UploadResponse,
    responses={409: _E409},
)
async def post_upload(header: DatasetVersionHeader, runtime: RuntimeDep) -> Any:
    """Open a chunked upload for a dataset version: reserves the name and version.

    The version is not sealed, and no query shows it, until ``…/seal`` commits.
    """
    try:
        async with runtime.unit_of_work() as uow:
            upload_id = await open_upload(uow, header, now=datetime.now(UTC))
            state = await upload_status(uow, upload_id)
    except RegistrationError as exc:
        return _refusal(exc)
    return _upload(state, runtime.settings.upload_idle_timeout_s)


@router.put(
    "/dataset-versions/uploads/{upload_id}/chunks/{chunk}",
    response_model=ChunkReceiptResponse,
    responses={
        200: {"description": "The chunk replaced one of the same number"},
        201: {"description": "The chunk was staged"},
        404: _E404,
        409: _E409,
        410: _E410,
        413: _E413,
        422: _E422,
    },
    openapi_extra=_NDJSON_BODY,
    max_body_size=STREAMED_BODY_MAX_BYTES,  # streamed, with record limits of its own
)
async def put_upload_chunk(
    upload_id: UUID,
    chunk: Annotated[int, Path(ge=0, le=2_147_483_647)],
    request: Request,
    response: Response,
    runtime: RuntimeDep,
) -> Any:
    """Stage one chunk: NDJSON, one record per line (the fields of a record in
    ``POST /dataset-versions``), streamed and validated line by line.

    Idempotent per chunk number: sending chunk ``n`` again replaces it. All or nothing: on
    a bad line nothing of this chunk is kept (an earlier chunk ``n`` stays as it was).
    Chunks may be sent in any order and concurrently.
    """
    body = request.stream()
    try:
        async with runtime.unit_of_work() as uow:
            receipt = await put_chunk(uow, upload_id, chunk, body, now=datetime.now(UTC))
    except (RegistrationError, LineError, LineTooLong) as exc:
        return await _refuse_body(body, exc, chunk=chunk)
    except ClientDisconnect:
        return Response(status_code=400)
    response.status_code = status.HTTP_200_OK if receipt.replaced else status.HTTP_201_CREATED
    return ChunkReceiptResponse(
        upload_id=receipt.upload_id,
        chunk=receipt.chunk,
        records=receipt.records,
        replaced=receipt.replaced,
    )


@router.post(
    "/dataset-versions/uploads/{upload_id}/seal",
    response_model=DatasetVersionResponse,
    responses={404: _E404, 409: _E409, 410: _E410, 422: _E422},
)
async def post_upload_seal(upload_id: UUID, runtime: RuntimeDep) -> Any:
    """Seal the upload as its dataset version, in one transaction: the staged records are
    registered (a record registered before with other facts is a 409 naming it), become
    the version's members, and the version gets its seal time and time of use. Until the
    transaction commits, nothing of it is visible; if it fails, nothing is sealed and the
    upload stays open (fix the chunks named, then seal again).
    """
    try:
        async with runtime.unit_of_work() as uow:
            sealed = await seal_upload(uow, upload_id, now=datetime.now(UTC))
    except RegistrationError as exc:
        return _refusal(exc)
    return _version(sealed)


@router.get(
    "/dataset-versions/uploads/{upload_id}",
    response_model=UploadResponse,
    responses={404: _E404, 410: _E410},
)
async def get_upload(upload_id: UUID, runtime: RuntimeDep) -> Any:
    """An upload: its dataset version, state and the chunks staged so far."""
    try:
        async with runtime.unit_of_work() as uow:
            state = await upload_status(uow, upload_id)
    except RegistrationError as exc:
        return _refusal(exc)
    return _upload(state, runtime.settings.upload_idle_timeout_s)


@router.delete(
    "/dataset-versions/uploads/{upload_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={404: _E404, 409: _E409, 410: _E410},
)
async def delete_upload(upload_id: UUID, runtime: RuntimeDep) -> Response:
    """Abandon an open upload: its staged rows go and its name and version are free again."""
    try:
        async with runtime.unit_of_work() as uow:
            await abandon_upload(uow, upload_id)
    except RegistrationError as exc:
        return _refusal(exc)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/dataset-versions/stream",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetVersionResponse,
    responses={409: _E409, 413: _E413, 422: _E422},
    openapi_extra=_NDJSON_BODY,
    max_body_size=STREAMED_BODY_MAX_BYTES,  # streamed, with record limits of its own
)
async def post_stream(request: Request, runtime: RuntimeDep) -> Any:
    """Register a dataset version in one request: NDJSON whose line 1 is the header
    (``dataset``, ``purpose``, ``created_at``, optional ``training_started_at``) and every
    further line a record. Staged as it streams and sealed at the end, in one transaction:
    a failure or a dropped connection leaves nothing registered.
    """
    body = request.stream()
    try:
        async with runtime.unit_of_work() as uow:
            sealed = await register_stream(uow, body, now=datetime.now(UTC))
    except (RegistrationError, LineError, LineTooLong) as exc:
        return await _refuse_body(body, exc)
    except ClientDisconnect:
        return Response(status_code=400)
    return _version(sealed)


@router.get("/dataset-versions", response_model=list[SubjectDatasetVersion])
async def list_dataset_versions_of_subject(
    runtime: RuntimeDep,
    subject_id: Annotated[SubjectId, Query(description="The subject whose records to look for")],
    category: Annotated[
        CategoryPath | None,
        Query(
            description="Only records of this category or one below it (`user.content`"
            " matches `user.content.private`)"
        ),
    ] = None,
    as_of: Annotated[
        QueryTime | None,
        Query(description="Only versions sealed at or before this instant (offset required)"),
    ] = None,
) -> Any:
    """Sealed dataset versions holding records of ``subject_id``, oldest seal first, with
    the subject's records per category (counts and a sample). Unsealed uploads never appear.
    """
    async with runtime.pool.acquire() as conn:
        rows = await SnapshotRepository(conn).versions_of_subject(
            subject_id, category, as_of, SUBJECT_SAMPLE
        )
    versions: dict[int, SubjectDatasetVersion] = {}
    for row in rows:
        version = versions.get(row["dataset_version_id"])
        if version is None:
            version = versions[row["dataset_version_id"]] = SubjectDatasetVersion(
                **_version_fields(row), subject_records=0, categories=[]
            )
        version.subject_records += row["subject_records"]
        version.categories.append(
            SubjectCategory(
                category=row["category"],
                records=row["subject_records"],
                sample=[
                    RecordKey(source_system=s, record_id=r)
                    for s, r in zip(row["sample_sources"], row["sample_ids"], strict=True)
                ],
            )
        )
    return list(versions.values())


@router.get(
    "/dataset-version",
    response_model=DatasetVersionResponse,
    responses={404: {"model": ErrorResponse, "description": "No sealed version of that name"}},
)
async def get_dataset_version(
    runtime: RuntimeDep,
    namespace: Annotated[str, Query(min_length=1)],
    name: Annotated[str, Query(min_length=1)],
    version: Annotated[str, Query(min_length=1)],
) -> Any:
    """One sealed dataset version, named in the query string (names hold slashes)."""
    dataset = DatasetRef(namespace=namespace, name=name, version=version)
    async with runtime.pool.acquire() as conn:
        row = await SnapshotRepository(conn).sealed_version(dataset)
    if row is None:
        raise HTTPException(404, f"no sealed dataset version {dataset.key}")
    return DatasetVersionResponse(**_version_fields(row), upload_id=row["upload_id"])


@router.get("/findings")
async def list_findings(
    runtime: RuntimeDep,
    dataset: VersionFilter,
    subject_id: Annotated[
        str | None, Query(description="Findings some of this subject's records contribute to")
    ] = None,
    severity: Severity | None = None,
    finding_status: Annotated[
        FindingStatus | None,
        Query(alias="status", description="`active` or `retracted`; both when omitted"),
    ] = None,
    as_of: Annotated[
        QueryTime | None,
        Query(description="Each finding as it was published by then (transaction time)"),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[dict[str, Any]]:
    """Findings by dataset version (namespace, name and version together), subject or
    severity, each in its latest published state, oldest detection first."""
    async with runtime.pool.acquire() as conn:
        return await FindingStore(conn).findings(
            dataset=dataset,
            subject_id=subject_id,
            severity=severity,
            status=finding_status,
            as_of=as_of,
            limit=limit,
        )


@router.get("/evaluation-jobs")
async def list_evaluation_jobs(runtime: RuntimeDep) -> list[dict[str, Any]]:
    """Dataset versions waiting to be re-evaluated whole (after a seal or a new policy
    version), with the attempts and last error of any that failed."""
    async with runtime.pool.acquire() as conn:
        return await FindingStore(conn).pending_jobs()


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


# --- translation -----------------------------------------------------------------------


def _refusal(exc: RegistrationError) -> JSONResponse:
    content: dict[str, Any] = {"detail": exc.message}
    if exc.details:
        content["chunks" if isinstance(exc, StagedRowsLost) else "records"] = exc.details
    return JSONResponse(content, status_code=_STATUS.get(type(exc), 422))


async def _refuse_body(
    body: AsyncIterator[bytes], exc: Exception, *, chunk: int | None = None
) -> Response:
    """Answer a refused NDJSON body once the client has sent all of it."""
    if isinstance(exc, RegistrationError):
        return await after_draining(body, _refusal(exc))
    assert isinstance(exc, LineError | LineTooLong)
    return await after_draining(
        body, JSONResponse({"detail": line_errors(exc, chunk)}, status_code=422)
    )


def _version_fields(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "dataset": DatasetRef(namespace=row["namespace"], name=row["name"], version=row["version"]),
        "purpose": row["purpose"],
        "created_at": row["created_at"],
        "training_started_at": row["training_started_at"],
        "sealed_at": row["sealed_at"],
        "used_at": row["used_at"],
        "record_count": row["record_count"],
    }


def _version(sealed: SealedVersion) -> DatasetVersionResponse:
    return DatasetVersionResponse(
        dataset=sealed.dataset,
        purpose=sealed.purpose,
        created_at=sealed.created_at,
        training_started_at=sealed.training_started_at,
        sealed_at=sealed.sealed_at,
        used_at=sealed.used_at,
        record_count=sealed.record_count,
        upload_id=sealed.upload_id,
    )


def _upload(state: UploadStatus, idle_timeout_s: float) -> UploadResponse:
    return UploadResponse(
        upload_id=state.upload_id,
        state="sealed" if state.sealed_at else "open",
        dataset=state.dataset,
        purpose=state.purpose,
        created_at=state.created_at,
        training_started_at=state.training_started_at,
        opened_at=state.opened_at,
        sealed_at=state.sealed_at,
        records=state.records,
        chunks=[ChunkInfo(**c) for c in state.chunks],
        expires_at=(
            state.idle_since + timedelta(seconds=idle_timeout_s)
            if state.idle_since is not None and state.sealed_at is None
            else None
        ),
    )
