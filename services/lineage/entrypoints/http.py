"""Lineage HTTP API: translate requests into use cases, nothing else."""

from __future__ import annotations

import zlib
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from contracts.base import ModelRef
from contracts.openlineage import RunEvent
from services.lineage.adapters.repository import LineageRepository
from services.lineage.entrypoints.kafka import EventRejected, parse_run_event
from services.lineage.service.handlers import ingest_run_event
from services.runtime.host import RuntimeDep, runtime_of
from services.runtime.http import VersionFilter

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["lineage"])


# --- POST /lineage: OpenLineage events as the openlineage-python HTTP transport sends them ---
#
# The transport POSTs ``Serde.to_json(event)`` to ``<url>/api/v1/lineage`` with
# ``Content-Type: application/json``, optionally ``Content-Encoding: gzip``
# (``compression: gzip``), ``Authorization: Bearer <apiKey>`` (``auth: api_key``) and custom
# headers; any 2xx is success, 500/502/503/504 are retried, anything else raises. The
# Authorization header is not checked here (no API of this service authenticates; put an
# authenticating proxy in front). The body is read as bytes, not by FastAPI, so that it can
# be kept exactly as received and so that a bad event is a 4xx even while the database is
# away (a 503 would make the client retry an event that can never succeed).

MAX_EVENT_BYTES = 16 * 1024 * 1024
"""Largest event accepted, before and after its Content-Encoding is undone."""
_DRAIN_LIMIT = 256 * 1024 * 1024
"""Bytes of a refused body read and discarded before the connection is closed instead."""


class LineageAccepted(BaseModel):
    run_id: str = Field(alias="runId", description="The run the event is about")
    accepted: bool = True


class _Refused(Exception):
    def __init__(self, status_code: int, detail: str, headers: dict[str, str] | None = None):
        super().__init__(detail)
        self.status_code, self.detail, self.headers = status_code, detail, headers


def _inline_defs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its ``$defs`` substituted, for an OpenAPI request body."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    inlined: dict[str, Any] = walk(schema)
    return inlined


_RUN_EVENT_BODY = {
    "requestBody": {
        "required": True,
        "description": "An OpenLineage 2-0-2 RunEvent (JSON; `Content-Encoding: gzip` accepted).",
        "content": {
            "application/json": {"schema": _inline_defs(RunEvent.model_json_schema(by_alias=True))}
        },
    }
}


def decode_content(content_encoding: str | None, body: bytes) -> bytes:
    """The body with its ``Content-Encoding`` undone (``gzip``, ``x-gzip``, ``identity``)."""
    codings = [c.strip().lower() for c in (content_encoding or "").split(",") if c.strip()]
    for coding in reversed(codings):  # listed in the order they were applied
        if coding in ("gzip", "x-gzip"):
            body = _gunzip(body)
        elif coding != "identity":
            raise _Refused(
                415,
                f"Content-Encoding {coding!r} is not supported: send the event as is or gzip it",
                {"Accept-Encoding": "gzip, identity"},
            )
    return body


def _gunzip(data: bytes) -> bytes:
    out = bytearray()
    while data:  # a gzip stream may hold several members
        member = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += member.decompress(data, MAX_EVENT_BYTES + 1 - len(out))
        except zlib.error as exc:
            raise _Refused(400, f"the body is not valid gzip data ({exc})") from exc
        if len(out) > MAX_EVENT_BYTES:
            raise _Refused(413, f"the event is larger than {MAX_EVENT_BYTES} bytes uncompressed")
        if not member.eof:
            raise _Refused(400, "the body is not valid gzip data (it ends before its end)")
        data = member.unused_data
    return bytes(out)


def _check_content_type(content_type: str | None) -> None:
    media = (content_type or "application/json").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise _Refused(
            415, f"Content-Type must be application/json (an OpenLineage event), not {media!r}"
        )


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_EVENT_BYTES:
        raise _Refused(413, f"the event is larger than {MAX_EVENT_BYTES} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_EVENT_BYTES:
            raise _Refused(413, f"the event is larger than {MAX_EVENT_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _after_draining(request: Request, response: Response) -> Response:
    """``response`` once the client has sent the rest of its body (a client sending a body
    reads no answer before it is done), or with ``Connection: close`` past a limit."""
    seen = 0
    try:
        async for chunk in request.stream():
            seen += len(chunk)
            if seen > _DRAIN_LIMIT:
                response.headers["Connection"] = "close"
                break
    except (ClientDisconnect, RuntimeError):  # gone, or the body was read already
        pass
    return response


@router.post(
    "/lineage",
    status_code=status.HTTP_201_CREATED,
    response_model=LineageAccepted,
    responses={
        200: {"model": LineageAccepted, "description": "Already received (the same content)"},
        400: {"description": "The body says `Content-Encoding: gzip` but is not gzip data"},
        413: {"description": f"The event is larger than {MAX_EVENT_BYTES} bytes"},
        415: {"description": "Not JSON, or a Content-Encoding other than gzip"},
        422: {
            "description": "Not an OpenLineage 2-0-2 RunEvent: each error's `loc` names the"
            ' field (`["body", "run", "runId"]`), `msg` what is wrong with it. A'
            " DatasetEvent or JobEvent (static lineage) is refused too"
            " (`type: unsupported_event_kind`)."
        },
    },
    openapi_extra=_RUN_EVENT_BODY,
)
async def post_lineage(request: Request, response: Response) -> Any:
    """OpenLineage endpoint, as the ``openlineage-python`` HTTP transport calls it.

    Records the RunEvent's inputs and outputs at version level and keeps the event exactly
    as received (after its Content-Encoding); 201, or 200 when the same event (same
    canonical content) was received before. Events of a run may come in any order.
    """
    try:
        _check_content_type(request.headers.get("content-type"))
        received = decode_content(
            request.headers.get("content-encoding"), await _read_body(request)
        )
        event = parse_run_event(received, via="http")
    except _Refused as refused:
        return await _after_draining(
            request,
            JSONResponse({"detail": refused.detail}, refused.status_code, refused.headers),
        )
    except EventRejected as exc:
        detail = [{**e, "loc": ["body", *e["loc"]]} for e in exc.errors]
        return JSONResponse({"detail": detail}, status.HTTP_422_UNPROCESSABLE_CONTENT)
    except ClientDisconnect:
        return Response(status_code=status.HTTP_400_BAD_REQUEST)
    runtime = runtime_of(request)  # only now: a bad event is refused even without a database
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
