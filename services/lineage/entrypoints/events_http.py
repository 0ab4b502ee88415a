"""The OpenLineage events of a run, as received: ``GET /api/v1/lineage/events?runId=``."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Response

from services.lineage.adapters.repository import LineageRepository
from services.runtime.host import RuntimeDep

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["lineage"])

_EVENTS_DESCRIPTION = """\
A JSON array of the run's events, each spliced in **exactly as received** (the HTTP body once
its Content-Encoding is undone, or the Kafka record's value), byte for byte: the array is
`[`, the events separated by `,` and a line break, `]`. Parsed, it is the list of the
original event objects; each element's text (found e.g. with Python's
`json.JSONDecoder.raw_decode`) is what the producer sent, less any white space around it.

Ordered by `eventTime`, then by receipt. An event received twice (the same content, whatever
its bytes) appears once, as first received. An event recorded before raw events were kept
comes back in its canonical form. An unknown run gives `[]`.
"""


@router.get(
    "/lineage/events",
    response_class=Response,
    responses={
        200: {
            "description": _EVENTS_DESCRIPTION,
            "content": {"application/json": {"schema": {"type": "array", "items": {}}}},
        },
        422: {"description": "`runId` is missing or not a UUID"},
    },
)
async def list_run_events(
    runtime: RuntimeDep,
    run_id: Annotated[UUID, Query(alias="runId", description="The run's `runId`")],
) -> Response:
    """The OpenLineage events received for one run, byte for byte as received."""
    async with runtime.pool.acquire() as conn:
        events = await LineageRepository(conn).received_events(run_id)
    body = b"[\n" + b",\n".join(events) + b"\n]" if events else b"[]"
    return Response(body, media_type="application/json")
