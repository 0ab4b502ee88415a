"""Lineage graph HTTP API: upstream/downstream of a node as JSON (Marquez's lineage shape)
or as a picture (Graphviz SVG/PNG)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response

from services.lineage.domain.graph import (
    DEFAULT_DEPTH,
    MAX_DEPTH,
    Direction,
    Graph,
    InvalidNodeId,
    graph_json,
    parse_node_id,
    to_dot,
)
from services.lineage.service.graph import (
    GraphTooLarge,
    NodeNotFound,
    RendererMissing,
    RenderFailed,
    lineage_graph,
    not_found_message,
    render,
)
from services.lineage.service.graph_cache import NotCached, cache_for
from services.runtime.host import RuntimeDep
from services.runtime.http import QueryTime

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/lineage", tags=["lineage graph"])

NodeIdParam = Annotated[
    str,
    Query(
        alias="nodeId",
        min_length=1,
        max_length=4096,
        description="`dataset:{namespace}:{name}#{version}`, `model:{namespace}:{name}#{version}`,"
        " `run:{uuid}` or `job:{namespace}:{name}`; `dataset:{namespace}:{name}` without a"
        " version starts from every version of the dataset",
    ),
]
DepthParam = Annotated[
    int,
    Query(
        ge=0,
        le=MAX_DEPTH,
        description="How many runs away from the node to go (a run or job counts as the"
        " first); 0 is the node alone",
    ),
]
DirectionParam = Annotated[
    Direction, Query(description="`upstream`, `downstream`, or `both` (the union of the two)")
]
AsOfParam = Annotated[
    QueryTime | None,
    Query(
        alias="asOf",
        description="Only edges reported at or before this instant (offset required)",
    ),
]

SOURCE = "X-Lineage-Graph-Source"
"""Response header: ``memory`` (the in-memory copy answered) or ``sql`` (a walk in SQL:
``asOf`` given, the copy still loading, too large, or ``GRAPH_CACHE=false``). The same
answer either way."""

_GRAPH_EXAMPLE = {
    "graph": [
        {
            "id": "dataset:s3://lake:messages#v1",
            "type": "DATASET",
            "data": {"namespace": "s3://lake", "name": "messages", "version": "v1"},
            "inEdges": [],
            "outEdges": [
                {
                    "origin": "dataset:s3://lake:messages#v1",
                    "destination": "run:0f6c3a5e-0d0e-4b5e-9a55-4a5f5c1d2e3f",
                }
            ],
        }
    ]
}
_ERRORS: dict[int | str, dict[str, object]] = {
    404: {"description": "No such node in the graph (as of the time asked)"},
    422: {"description": "Bad node id, depth out of bounds, or a timestamp without offset"},
}


async def _graph(
    runtime: RuntimeDep,
    node_id: str,
    depth: int,
    direction: Direction,
    as_of: datetime | None,
) -> Graph:
    try:
        async with runtime.pool.acquire() as conn:
            return await lineage_graph(conn, node_id, depth=depth, direction=direction, as_of=as_of)
    except InvalidNodeId as exc:
        raise HTTPException(422, str(exc)) from None
    except NodeNotFound as exc:
        raise HTTPException(404, str(exc)) from None


@router.get(
    "/graph",
    response_class=Response,
    responses={
        200: {
            "description": "The lineage graph, Marquez's shape: nodes sorted by id, each with"
            " its type (`DATASET`, `MODEL`, `RUN`, `JOB`), data, and edges",
            "content": {"application/json": {"example": _GRAPH_EXAMPLE}},
        },
        **_ERRORS,
    },
)
async def get_lineage_graph(
    runtime: RuntimeDep,
    node_id: NodeIdParam,
    depth: DepthParam = DEFAULT_DEPTH,
    direction: DirectionParam = Direction.BOTH,
    as_of: AsOfParam = None,
) -> Response:
    """Upstream and/or downstream lineage of a dataset/model version, run or job.

    Dataset and model nodes say whether they are flagged (active model flags, with
    severity and finding), the active findings on them and the model status; run nodes
    their job, times and state. Flags, findings and run states are the current ones;
    ``asOf`` limits the edges.
    """
    if as_of is None and runtime.settings.graph_cache:
        body = await _from_copy(runtime, node_id, depth, direction)
        if body is not None:
            return Response(body, media_type="application/json", headers={SOURCE: "memory"})
    graph = await _graph(runtime, node_id, depth, direction, as_of)
    return Response(graph_json(graph), media_type="application/json", headers={SOURCE: "sql"})


async def _from_copy(
    runtime: RuntimeDep, node_id: str, depth: int, direction: Direction
) -> bytes | None:
    """The answer from the in-memory copy; None when there is none yet (SQL answers)."""
    try:
        query = parse_node_id(node_id)
    except InvalidNodeId as exc:
        raise HTTPException(422, str(exc)) from None
    cache = cache_for(runtime, runtime.pool, max_versions=runtime.settings.graph_cache_max_versions)
    try:
        body = await cache.answer(query, depth, direction)
    except NotCached:
        return None
    if body is None:
        raise HTTPException(404, not_found_message(query))
    return body


async def _picture(
    runtime: RuntimeDep,
    fmt: Literal["svg", "png"],
    node_id: str,
    depth: int,
    direction: Direction,
    as_of: datetime | None,
) -> Response:
    graph = await _graph(runtime, node_id, depth, direction, as_of)
    try:
        body = await render(to_dot(graph), fmt, nodes=len(graph.nodes))
    except GraphTooLarge as exc:
        raise HTTPException(422, str(exc)) from None
    except RendererMissing as exc:
        raise HTTPException(503, str(exc)) from None
    except RenderFailed as exc:
        raise HTTPException(500, str(exc)) from None
    media_type = "image/svg+xml" if fmt == "svg" else "image/png"
    return Response(body, media_type=media_type)


_PICTURE_ERRORS: dict[int | str, dict[str, object]] = {
    **_ERRORS,
    503: {"description": "Graphviz `dot` is not installed on this server"},
}


@router.get(
    "/graph.svg",
    response_class=Response,
    responses={200: {"content": {"image/svg+xml": {}}}, **_PICTURE_ERRORS},
)
async def get_lineage_svg(
    runtime: RuntimeDep,
    node_id: NodeIdParam,
    depth: DepthParam = DEFAULT_DEPTH,
    direction: DirectionParam = Direction.BOTH,
    as_of: AsOfParam = None,
) -> Response:
    """The same subgraph drawn by Graphviz: flagged models in red with their severity,
    datasets with active findings outlined, the start node bold."""
    return await _picture(runtime, "svg", node_id, depth, direction, as_of)


@router.get(
    "/graph.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **_PICTURE_ERRORS},
)
async def get_lineage_png(
    runtime: RuntimeDep,
    node_id: NodeIdParam,
    depth: DepthParam = DEFAULT_DEPTH,
    direction: DirectionParam = Direction.BOTH,
    as_of: AsOfParam = None,
) -> Response:
    """The subgraph as a PNG (see ``graph.svg``)."""
    return await _picture(runtime, "png", node_id, depth, direction, as_of)
