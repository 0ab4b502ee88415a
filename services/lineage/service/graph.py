"""Lineage graph queries: upstream/downstream of any node, with a depth and an as-of time,
and the same subgraph drawn by Graphviz.

Reads only. All queries of one answer run in one read-only REPEATABLE READ transaction,
so the walk and the descriptions of what it found are of the same moment.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from datetime import datetime
from typing import Literal
from uuid import UUID

from services.lineage.adapters.graph import INFINITY, GraphRepository, Resolved, Walk
from services.lineage.domain.graph import (
    Direction,
    Graph,
    JobInfo,
    NodeQuery,
    build_graph,
    job_key,
    parse_node_id,
    run_key,
)
from services.runtime.db import Connection

__all__ = [
    "DOT_TIMEOUT_S",
    "MAX_DRAWN_NODES",
    "GraphTooLarge",
    "NodeNotFound",
    "RenderFailed",
    "RendererMissing",
    "lineage_graph",
    "not_found_message",
    "render",
]

MAX_DRAWN_NODES = 1500
"""Past this, a picture is no longer readable (and ``dot`` takes seconds): 422."""
DOT_TIMEOUT_S = 30.0


class NodeNotFound(LookupError):
    """The node id names nothing in the graph (as of the time asked): HTTP 404."""


class GraphTooLarge(ValueError):
    """Too many nodes to draw: HTTP 422."""


class RendererMissing(RuntimeError):
    """Graphviz ``dot`` is not installed here: HTTP 503."""


class RenderFailed(RuntimeError):
    """``dot`` failed or took too long."""


async def lineage_graph(
    conn: Connection,
    node_id: str,
    *,
    depth: int,
    direction: Direction,
    as_of: datetime | None,
) -> Graph:
    """The lineage of ``node_id`` through at most ``depth`` runs, as of ``as_of`` (only
    edges reported by then). Raises ``InvalidNodeId`` (422) and ``NodeNotFound`` (404)."""
    query = parse_node_id(node_id)
    at = as_of if as_of is not None else INFINITY
    when = f" as of {as_of.isoformat()}" if as_of is not None else ""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        repo = GraphRepository(conn)
        await repo.tune_reads()
        jobs: list[JobInfo] = []
        if query.kind == "version":
            resolved = await repo.resolve_versions(query.candidates, at)
            what = "dataset or model version"
        elif query.kind == "run":
            assert query.run_id is not None
            resolved = await repo.resolve_run(query.run_id, at)
            what = "run"
        else:
            resolved, job = await repo.resolve_job(query.candidates, at)
            what = "job"
            if job is not None and resolved.run_ids:
                jobs.append(JobInfo(job[0], job[1], resolved.run_ids))
        _require(resolved, node_id, what, when)
        return await _walk(repo, query.kind, resolved, jobs, depth, direction, at)


_WHAT = {"version": "dataset or model version", "run": "run", "job": "job"}


def not_found_message(query: NodeQuery) -> str:
    """Why a node id names nothing in the graph (HTTP 404)."""
    return f"no {_WHAT[query.kind]} {query.text!r} in the lineage graph"


def _require(resolved: Resolved, node_id: str, what: str, when: str) -> None:
    if not resolved.known:
        raise NodeNotFound(f"no {what} {node_id!r} in the lineage graph")
    if not resolved.node_ids and not resolved.run_ids:
        raise NodeNotFound(f"{what} {node_id!r} is not in the lineage graph{when}")


async def _walk(
    repo: GraphRepository,
    kind: str,
    resolved: Resolved,
    jobs: Sequence[JobInfo],
    depth: int,
    direction: Direction,
    at: datetime,
) -> Graph:
    ways: list[Literal["upstream", "downstream"]] = []
    if direction in (Direction.DOWNSTREAM, Direction.BOTH):
        ways.append("downstream")
    if direction in (Direction.UPSTREAM, Direction.BOTH):
        ways.append("upstream")
    edges = Walk()
    own_io: list[tuple[UUID, Literal["input", "output"], int]] = []
    if resolved.node_ids:
        for way in ways:
            edges.extend(await repo.walk(resolved.node_ids, way, depth, at))
    elif depth > 0:
        # A run (or a job's runs) is the first run of the walk: its own outputs
        # (downstream) or inputs (upstream), then on from those.
        io = await repo.run_io(resolved.run_ids, at)
        for way in ways:
            side = "output" if way == "downstream" else "input"
            mine = [row for row in io if row[1] == side]
            own_io += mine
            edges.extend(await repo.walk([n for _, _, n in mine], way, depth - 1, at))
    node_ids = {*resolved.node_ids, *edges.srcs, *edges.dsts}
    run_ids = {*resolved.run_ids, *edges.runs}
    node_ids.update(n for _, _, n in own_io)
    versions = await repo.versions(sorted(node_ids))
    runs = await repo.runs(sorted(run_ids))
    if kind == "version":
        starts = [versions[n].key for n in resolved.node_ids]
    elif kind == "run":
        starts = [run_key(r) for r in resolved.run_ids]
    else:
        starts = [job_key(j.namespace, j.name) for j in jobs]
    return build_graph(
        starts,
        versions,
        runs,
        zip(edges.srcs, edges.runs, edges.dsts, strict=True),
        own_io,
        jobs,
    )


async def render(dot_source: str, fmt: Literal["svg", "png"], *, nodes: int) -> bytes:
    """Graphviz ``dot`` output for ``dot_source``: raises ``RendererMissing`` without
    ``dot``, ``GraphTooLarge`` past ``MAX_DRAWN_NODES``, ``RenderFailed`` on error."""
    if nodes > MAX_DRAWN_NODES:
        raise GraphTooLarge(
            f"{nodes} nodes are too many to draw (at most {MAX_DRAWN_NODES}):"
            " lower depth, pick one direction, or use the JSON graph"
        )
    dot = shutil.which("dot")
    if dot is None:
        raise RendererMissing(
            "Graphviz 'dot' is not installed on this server, so lineage pictures are off"
            " (install it: apt-get install graphviz); the JSON graph is at"
            " /api/v1/lineage/graph"
        )
    proc = await asyncio.create_subprocess_exec(
        dot,
        f"-T{fmt}",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(dot_source.encode()), DOT_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RenderFailed(f"dot took longer than {DOT_TIMEOUT_S:.0f} s") from None
    if proc.returncode != 0:
        raise RenderFailed(f"dot failed ({proc.returncode}): {err.decode(errors='replace')[:500]}")
    return out
