"""Lineage graph storage: walks and node descriptions. Raw SQL on asyncpg.

Walks run on ``lineage_edges`` (``lineage_0004``): version-to-version edges with integer
node ids, kept by triggers from ``run_io``. A walk is one recursive CTE, breadth first,
whose each step probes a covering index (``lineage_edges_pkey`` downstream,
``lineage_edges_up`` upstream: Index Only Scans) for the whole frontier at once and keeps
only versions not seen before, so each version is expanded once, at its shortest hop,
whatever the number of paths to it. Results come back as arrays (one row per hop): far
cheaper to decode than a row per edge.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal
from uuid import UUID

from services.lineage.domain.graph import FindingInfo, RunInfo, VersionInfo
from services.runtime.db import Connection

__all__ = [
    "INFINITY",
    "READ_SETTINGS_SQL",
    "GraphRepository",
    "Resolved",
    "Walk",
    "WalkEdge",
]

INFINITY = datetime.max.replace(tzinfo=UTC)
"""``asOf`` when none is given: every edge counts (asyncpg sends it as ``infinity``)."""

WalkEdge = tuple[int, UUID, int, bool, bool]
"""(src node, run, dst node, src row's is_model, dst row's is_model)."""


@dataclass(slots=True)
class Walk:
    """The edges a walk followed, by column: no object per edge (a walk can follow tens of
    thousands, and each object kept alive is work for the garbage collector)."""

    srcs: list[int] = field(default_factory=list)
    runs: list[UUID] = field(default_factory=list)
    dsts: list[int] = field(default_factory=list)
    src_models: list[bool] = field(default_factory=list)
    dst_models: list[bool] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.srcs)

    def __iter__(self) -> Iterator[WalkEdge]:
        return zip(self.srcs, self.runs, self.dsts, self.src_models, self.dst_models, strict=True)

    def extend(self, other: Walk) -> None:
        self.srcs += other.srcs
        self.runs += other.runs
        self.dsts += other.dsts
        self.src_models += other.src_models
        self.dst_models += other.dst_models


def _walk_sql(near: str, far: str) -> str:
    """Breadth-first walk from the seed versions ($1) over at most $2 runs, as of $3.

    ``near`` is the column of the frontier's side of an edge, ``far`` the other end's.
    """
    index = "lineage_edges_pkey" if near == "src" else "lineage_edges_up"
    return f"""
    WITH RECURSIVE bfs(hop, frontier, seen, srcs, runs, dsts, src_models, dst_models) AS (
        SELECT 0, $1::int[], $1::int[], '{{}}'::int[], '{{}}'::uuid[], '{{}}'::int[],
               '{{}}'::boolean[], '{{}}'::boolean[]
        UNION ALL
        SELECT b.hop + 1, n.nxt, b.seen || n.nxt, s.srcs, s.runs, s.dsts, s.src_models,
               s.dst_models
        FROM bfs b
        CROSS JOIN LATERAL (  -- one hop: the frontier's edges ({index}, index only)
            SELECT array_agg(e.src) AS srcs, array_agg(e.run_id) AS runs,
                   array_agg(e.dst) AS dsts, array_agg(e.src_is_model) AS src_models,
                   array_agg(e.dst_is_model) AS dst_models, array_agg(e.{far}) AS reached
            FROM unnest(b.frontier) f(id)
            JOIN lineage_edges e ON e.{near} = f.id AND e.seen_at <= $3
        ) s
        CROSS JOIN LATERAL (  -- the next frontier: versions not seen at a shorter hop
            SELECT coalesce(array_agg(x), '{{}}') AS nxt
            FROM (SELECT unnest(s.reached) EXCEPT SELECT unnest(b.seen)) t(x)
        ) n
        WHERE b.hop < $2 AND cardinality(b.frontier) > 0
    )
    SELECT srcs, runs, dsts, src_models, dst_models FROM bfs WHERE srcs IS NOT NULL
    """


WALK_DOWNSTREAM_SQL = _walk_sql("src", "dst")
WALK_UPSTREAM_SQL = _walk_sql("dst", "src")

RESOLVE_VERSIONS_SQL = """
SELECT c.ord, n.node_id,
       EXISTS (SELECT 1 FROM run_io io
               WHERE io.namespace = n.namespace AND io.name = n.name
                 AND io.version = n.version AND io.seen_at <= $4) AS visible
FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY c(ns, name, ver, ord)
JOIN lineage_nodes n ON n.namespace = c.ns AND n.name = c.name
                    AND (c.ver IS NULL OR n.version = c.ver)
ORDER BY c.ord, n.node_id
"""

RESOLVE_JOB_SQL = """
SELECT c.ord, r.run_id, coalesce(r.started_at, r.first_seen) <= $3 AS visible
FROM unnest($1::text[], $2::text[]) WITH ORDINALITY c(ns, name, ord)
JOIN runs r ON r.job_namespace = c.ns AND r.job_name = c.name
ORDER BY c.ord, r.run_id
"""

RUN_VISIBLE_SQL = "SELECT coalesce(started_at, first_seen) <= $2 FROM runs WHERE run_id = $1"

RUN_IO_SQL = """
SELECT array_agg(io.run_id), array_agg(io.direction), array_agg(io.node_id)
FROM run_io io WHERE io.run_id = ANY($1::uuid[]) AND io.seen_at <= $2
"""

DESCRIBE_VERSIONS_SQL = """
WITH n AS MATERIALIZED (
    SELECT n.node_id, n.namespace, n.name, n.version, n.is_model
    FROM unnest($1::int[]) u(id) JOIN lineage_nodes n ON n.node_id = u.id
), flags AS MATERIALIZED (
    SELECT n.node_id, f.finding_id, f.severity, coalesce(f.body->>'reason', '') AS reason
    FROM n JOIN model_flags f ON f.namespace = n.namespace AND f.name = n.name
                             AND f.version = n.version
    WHERE n.is_model AND f.status = 'active'
), findings AS MATERIALIZED (
    SELECT n.node_id, f.finding_id, f.severity, coalesce(f.body->>'reason', '') AS reason
    FROM n JOIN findings f ON f.namespace = n.namespace AND f.name = n.name
                          AND f.version = n.version
    WHERE NOT n.is_model AND f.status = 'active'
), status AS MATERIALIZED (
    SELECT n.node_id, s.status
    FROM n JOIN model_status s ON s.namespace = n.namespace AND s.name = n.name
                              AND s.version = n.version
    WHERE n.is_model
)
SELECT 'node' AS kind, array_agg(node_id) AS ids, array_agg(namespace) AS a,
       array_agg(name) AS b, array_agg(version) AS c, array_agg(is_model) AS models,
       NULL::uuid[] AS finding_ids
FROM n
UNION ALL
SELECT 'flag', array_agg(node_id), array_agg(severity), array_agg(reason), NULL, NULL,
       array_agg(finding_id)
FROM flags
UNION ALL
SELECT 'finding', array_agg(node_id), array_agg(severity), array_agg(reason), NULL, NULL,
       array_agg(finding_id)
FROM findings
UNION ALL
SELECT 'status', array_agg(node_id), array_agg(status), NULL, NULL, NULL, NULL FROM status
"""

NAMES_SQL = """
SELECT array_agg(n.node_id), array_agg(n.namespace), array_agg(n.name), array_agg(n.version)
FROM unnest($1::int[]) u(id) JOIN lineage_nodes n ON n.node_id = u.id
"""

NODE_ID_SQL = (
    "SELECT node_id FROM lineage_nodes WHERE namespace = $1 AND name = $2 AND version = $3"
)

DESCRIBE_RUNS_SQL = """
SELECT array_agg(r.run_id), array_agg(r.job_namespace), array_agg(r.job_name),
       array_agg(to_json(r.started_at) #>> '{}'), array_agg(to_json(r.ended_at) #>> '{}'),
       array_agg(r.state)
FROM unnest($1::uuid[]) u(id) JOIN runs r ON r.run_id = u.id
"""

READ_SETTINGS_SQL = "SET LOCAL random_page_cost = 1.1; SET LOCAL jit = off"
"""For the read transaction of one answer: the graph is probed a few thousand times per
answer from cache; the server default (4, for disks) makes the planner trade those probes
for a sequential scan of ``runs`` or ``lineage_nodes``, and JIT compiles a walk for longer
than the walk takes."""


@dataclass(frozen=True, slots=True)
class Resolved:
    """What a node id names: version node ids or run ids, and whether it exists at all."""

    node_ids: tuple[int, ...] = ()
    run_ids: tuple[UUID, ...] = ()
    known: bool = False
    """Known to the graph at all (maybe only after ``asOf``)."""


class GraphRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def tune_reads(self) -> None:
        """Planner settings for this transaction's graph reads (``SET LOCAL``)."""
        await self._conn.execute(READ_SETTINGS_SQL)

    async def resolve_versions(
        self, candidates: Sequence[tuple[str, str, str | None]], as_of: datetime
    ) -> Resolved:
        """The first candidate the graph knows: one version, or every version of a dataset
        named without one (those seen by ``as_of``)."""
        rows = await self._conn.fetch(
            RESOLVE_VERSIONS_SQL,
            [c[0] for c in candidates],
            [c[1] for c in candidates],
            [c[2] for c in candidates],
            as_of,
        )
        if not rows:
            return Resolved()
        first = rows[0]["ord"]
        chosen = [r for r in rows if r["ord"] == first]
        return Resolved(node_ids=tuple(r["node_id"] for r in chosen if r["visible"]), known=True)

    async def resolve_job(
        self, candidates: Sequence[tuple[str, str, str | None]], as_of: datetime
    ) -> tuple[Resolved, tuple[str, str] | None]:
        """The job's runs started by ``as_of``, and the job's (namespace, name)."""
        rows = await self._conn.fetch(
            RESOLVE_JOB_SQL, [c[0] for c in candidates], [c[1] for c in candidates], as_of
        )
        if not rows:
            return Resolved(), None
        first = rows[0]["ord"]
        chosen = [r for r in rows if r["ord"] == first]
        job = candidates[first - 1][:2]
        return Resolved(run_ids=tuple(r["run_id"] for r in chosen if r["visible"]), known=True), (
            job[0],
            job[1],
        )

    async def resolve_run(self, run_id: UUID, as_of: datetime) -> Resolved:
        visible = await self._conn.fetchval(RUN_VISIBLE_SQL, run_id, as_of)
        if visible is None:
            return Resolved()
        return Resolved(run_ids=(run_id,) if visible else (), known=True)

    async def run_io(
        self, run_ids: Sequence[UUID], as_of: datetime
    ) -> list[tuple[UUID, Literal["input", "output"], int]]:
        """The runs' own inputs and outputs reported by ``as_of``."""
        row = await self._conn.fetchrow(RUN_IO_SQL, list(run_ids), as_of)
        if row is None or row[0] is None:
            return []
        return list(zip(row[0], row[1], row[2], strict=True))

    async def walk(
        self,
        seeds: Sequence[int],
        direction: Literal["upstream", "downstream"],
        depth: int,
        as_of: datetime,
    ) -> Walk:
        """Every edge followed from ``seeds`` through at most ``depth`` runs, each once."""
        walk = Walk()
        if not seeds or depth <= 0:
            return walk
        sql = WALK_DOWNSTREAM_SQL if direction == "downstream" else WALK_UPSTREAM_SQL
        for row in await self._conn.fetch(sql, sorted(set(seeds)), depth, as_of):
            walk.srcs += row[0]
            walk.runs += row[1]
            walk.dsts += row[2]
            walk.src_models += row[3]
            walk.dst_models += row[4]
        return walk

    async def node_id(self, namespace: str, name: str, version: str) -> int | None:
        value = await self._conn.fetchval(NODE_ID_SQL, namespace, name, version)
        return int(value) if value is not None else None

    async def names(self, node_ids: Sequence[int]) -> dict[int, tuple[str, str, str]]:
        """(namespace, name, version) of each node id."""
        if not node_ids:
            return {}
        row = await self._conn.fetchrow(NAMES_SQL, list(node_ids))
        if row is None or row[0] is None:
            return {}
        return {i: (ns, n, v) for i, ns, n, v in zip(row[0], row[1], row[2], row[3], strict=True)}

    async def versions(self, node_ids: Sequence[int]) -> dict[int, VersionInfo]:
        """Names, active flags (models), active findings (datasets) and status."""
        if not node_ids:
            return {}
        rows = {r["kind"]: r for r in await self._conn.fetch(DESCRIBE_VERSIONS_SQL, list(node_ids))}
        marks: dict[str, dict[int, list[FindingInfo]]] = {"flag": {}, "finding": {}}
        for kind, by_node in marks.items():
            row = rows[kind]
            if row["ids"] is None:
                continue
            for node_id, severity, reason, finding_id in zip(
                row["ids"], row["a"], row["b"], row["finding_ids"], strict=True
            ):
                by_node.setdefault(node_id, []).append(FindingInfo(finding_id, severity, reason))
        status_row = rows["status"]
        status = (
            dict(zip(status_row["ids"], status_row["a"], strict=True))
            if status_row["ids"] is not None
            else {}
        )
        node_row = rows["node"]
        if node_row["ids"] is None:
            return {}
        flags, findings = marks["flag"], marks["finding"]
        return {
            node_id: VersionInfo(
                node_id,
                namespace,
                name,
                version,
                is_model,
                flags=_sorted_marks(flags, node_id) if flags else (),
                findings=_sorted_marks(findings, node_id) if findings else (),
                status=status.get(node_id) if status else None,
            )
            for node_id, namespace, name, version, is_model in zip(
                node_row["ids"],
                node_row["a"],
                node_row["b"],
                node_row["c"],
                node_row["models"],
                strict=True,
            )
        }

    async def runs(self, run_ids: Sequence[UUID]) -> dict[UUID, RunInfo]:
        if not run_ids:
            return {}
        row = await self._conn.fetchrow(DESCRIBE_RUNS_SQL, list(run_ids))
        if row is None or row[0] is None:
            return {}
        return {
            info.run_id: info
            for info in (
                RunInfo(*values)
                for values in zip(row[0], row[1], row[2], row[3], row[4], row[5], strict=True)
            )
        }


def _mark_order(mark: FindingInfo) -> tuple[str, str]:
    return (mark.severity, str(mark.finding_id))


def _sorted_marks(marks: dict[int, list[FindingInfo]], node_id: int) -> tuple[FindingInfo, ...]:
    found = marks.get(node_id)
    return tuple(sorted(found, key=_mark_order)) if found else ()
