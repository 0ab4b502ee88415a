"""Reads for the in-memory lineage graph: the whole graph, what changed since a snapshot,
and pruning of the change log (``lineage_0005``). Raw SQL on asyncpg."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from uuid import UUID

from services.lineage.adapters.graph import GraphRepository
from services.lineage.domain.graph import RunInfo, VersionInfo
from services.lineage.domain.graph_index import RunIO
from services.runtime.db import Connection

__all__ = ["Changes", "GraphChangeLog", "GraphRows", "snapshot_xmin"]

CHANGES_SQL = """
SELECT pg_current_snapshot()::text AS snapshot,
       (SELECT pruned_upto >= $1::xid8 FROM graph_changes_pruned)
       OR EXISTS (SELECT 1 FROM graph_changes_pruned_txids
                  WHERE txid >= $1::xid8
                    AND NOT pg_visible_in_snapshot(txid, $2::text::pg_snapshot)) AS pruned,
       array(SELECT DISTINCT node_id FROM graph_changes
             WHERE txid >= $1::xid8 AND node_id IS NOT NULL
               AND pg_visible_in_snapshot(txid, pg_current_snapshot())
               AND NOT pg_visible_in_snapshot(txid, $2::text::pg_snapshot)) AS node_ids,
       array(SELECT DISTINCT run_id FROM graph_changes
             WHERE txid >= $1::xid8 AND run_id IS NOT NULL
               AND pg_visible_in_snapshot(txid, pg_current_snapshot())
               AND NOT pg_visible_in_snapshot(txid, $2::text::pg_snapshot)) AS run_ids
"""

SNAPSHOT_SQL = "SELECT pg_current_snapshot()::text"
ALL_NODE_IDS_SQL = "SELECT coalesce(array_agg(node_id ORDER BY node_id), '{}') FROM lineage_nodes"
ALL_RUN_IDS_SQL = "SELECT coalesce(array_agg(run_id), '{}') FROM runs"
COUNT_SQL = "SELECT count(*) FROM lineage_nodes"

RUN_IO_SQL = """
SELECT coalesce(array_agg(run_id), '{{}}'), coalesce(array_agg(direction = 'output'), '{{}}'),
       coalesce(array_agg(node_id), '{{}}')
FROM run_io {where}
"""
SOME_RUN_IO_SQL = RUN_IO_SQL.format(where="WHERE run_id = ANY($1::uuid[])")

PRUNE_SQL = """
WITH pruned AS (
    DELETE FROM graph_changes
    WHERE ctid = ANY(ARRAY(SELECT ctid FROM graph_changes
                           WHERE logged_at < now() - make_interval(secs => $1)
                           ORDER BY logged_at LIMIT $2))
    RETURNING txid
), remembered AS (
    INSERT INTO graph_changes_pruned_txids (txid)
    SELECT DISTINCT txid FROM pruned
    ON CONFLICT (txid) DO NOTHING
)
SELECT count(*) FROM pruned
"""

FORGET_SQL = """
WITH forgotten AS (
    DELETE FROM graph_changes_pruned_txids
    WHERE pruned_at < now() - make_interval(secs => $1)
    RETURNING txid
)
UPDATE graph_changes_pruned SET pruned_upto = greatest(pruned_upto, f.upto)
FROM (SELECT max(txid) AS upto FROM forgotten) f
WHERE f.upto IS NOT NULL
"""


def snapshot_xmin(snapshot: str) -> int:
    """The ``xmin`` of a ``pg_snapshot`` in its text form (``xmin:xmax:xip,…``)."""
    return int(snapshot.partition(":")[0])


@dataclass(frozen=True, slots=True)
class Changes:
    snapshot: str
    """The snapshot the changes were read in (text form)."""
    pruned: bool
    """Changes since the last look may have been pruned: re-read everything."""
    node_ids: tuple[int, ...]
    run_ids: tuple[UUID, ...]

    @property
    def empty(self) -> bool:
        return not self.node_ids and not self.run_ids


@dataclass(frozen=True, slots=True)
class GraphRows:
    """Versions, runs and ``run_io`` rows read in one snapshot."""

    snapshot: str
    versions: Sequence[VersionInfo]
    runs: Sequence[RunInfo]
    run_io: Sequence[RunIO]


class GraphChangeLog:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._graph = GraphRepository(conn)

    async def versions_count(self) -> int:
        return int(await self._conn.fetchval(COUNT_SQL))

    async def changes_since(self, snapshot: str) -> Changes:
        """Version nodes and runs changed by transactions committed since ``snapshot``."""
        row = await self._conn.fetchrow(CHANGES_SQL, snapshot_xmin(snapshot), snapshot)
        assert row is not None
        return Changes(row[0], bool(row[1]), tuple(row[2]), tuple(row[3]))

    async def read_all(self, chunk: int = 20_000) -> AsyncIterator[GraphRows]:
        """The whole graph, a chunk at a time: every version first, then runs with their
        ``run_io`` rows (so a chunk names only versions already given). Call inside a
        REPEATABLE READ transaction: every chunk is of the same snapshot. Chunks keep the
        rows in memory at once small (the whole graph as Python objects was hundreds of
        MB on top of the copy) and let the caller yield between them."""
        snapshot = str(await self._conn.fetchval(SNAPSHOT_SQL))
        yield GraphRows(snapshot, (), (), ())  # the snapshot, even of an empty graph
        await self._graph.tune_reads()
        node_ids = list(await self._conn.fetchval(ALL_NODE_IDS_SQL))
        for at in range(0, len(node_ids), chunk):
            versions = await self._graph.versions(node_ids[at : at + chunk])
            yield GraphRows(snapshot, list(versions.values()), (), ())
        del node_ids
        run_ids = list(await self._conn.fetchval(ALL_RUN_IDS_SQL))
        for at in range(0, len(run_ids), chunk):
            some = run_ids[at : at + chunk]
            runs = await self._graph.runs(some)
            row = await self._conn.fetchrow(SOME_RUN_IO_SQL, some)
            assert row is not None
            run_io = list(zip(row[0], row[1], row[2], strict=True))
            yield GraphRows(snapshot, (), list(runs.values()), run_io)

    async def read_some(
        self, snapshot: str, node_ids: Sequence[int], run_ids: Sequence[UUID]
    ) -> GraphRows:
        """The given versions and runs, the runs' ``run_io`` rows and the versions those
        name; call inside the REPEATABLE READ transaction that read the changes."""
        await self._graph.tune_reads()
        row = await self._conn.fetchrow(SOME_RUN_IO_SQL, list(run_ids))
        assert row is not None
        run_io: list[RunIO] = list(zip(row[0], row[1], row[2], strict=True))
        wanted = sorted({*node_ids, *(node for _, _, node in run_io)})
        versions = await self._graph.versions(wanted)
        runs = await self._graph.runs(list(run_ids))
        return GraphRows(snapshot, list(versions.values()), list(runs.values()), run_io)

    async def prune(self, retention_s: float, limit: int, *, txids_retention_s: float) -> int:
        """Delete up to ``limit`` change rows older than ``retention_s`` (remembering their
        transactions for ``txids_retention_s``); how many went."""
        async with self._conn.transaction():
            pruned = int(await self._conn.fetchval(PRUNE_SQL, retention_s, limit))
            await self._conn.execute(FORGET_SQL, txids_retention_s)
        return pruned
