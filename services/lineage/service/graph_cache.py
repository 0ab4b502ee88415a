"""The lineage graph "now" kept in the service's memory, for answers without SQL walks.

The first graph query starts loading a copy of the whole graph in the background (one
REPEATABLE READ snapshot) and is answered by SQL meanwhile, as are ``asOf`` queries
always. Once loaded, every answer first applies what transactions committed since the
copy's snapshot changed (``graph_changes``, ``lineage_0005``): one query when nothing
changed, a few more when something did. An answer therefore reflects every write
committed before the request arrived, as the SQL path does; any number of replicas each
keep their own copy. A copy that has not looked for longer than the change log keeps rows
(``GRAPH_CHANGES_RETENTION_S``) is re-read whole.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import weakref

import asyncpg

from services.lineage.adapters.graph_changes import GraphChangeLog, GraphRows
from services.lineage.domain.graph import Direction, NodeQuery
from services.lineage.domain.graph_index import ACCELERATED, GraphIndex
from services.runtime.worker import WorkerContext, WorkerSpec

__all__ = [
    "GRAPH_CHANGES_RETENTION_S",
    "PRUNE_WORKER",
    "GraphCache",
    "NotCached",
    "cache_for",
    "prune_graph_changes",
]

log = logging.getLogger(__name__)

GRAPH_CHANGES_RETENTION_S = 600.0
"""How long change rows are kept: a copy idle longer than this is re-read whole."""
PRUNED_TXIDS_RETENTION_S = 86_400.0
"""How long the transactions that lost change rows are remembered: past it, a copy whose
last look is older than the newest forgotten one is re-read whole."""
PRUNE_BATCH = 10_000
LOAD_CHUNK = 20_000
"""Versions or runs per read (and fragments per step) while the copy loads."""


class NotCached(Exception):
    """No copy to answer from (not loaded yet, too large, or turned off): use SQL."""


class GraphCache:
    """One process's copy of the graph; see the module docstring."""

    def __init__(self, pool: asyncpg.Pool, *, max_versions: int) -> None:
        self._pool = pool
        self._max_versions = max_versions
        self._index: GraphIndex | None = None
        self._snapshot = ""
        self._lock = asyncio.Lock()
        self._loader: asyncio.Task[None] | None = None
        self.too_large = False
        self.reloads = 0
        """Whole-graph reads so far (the first load included)."""

    @property
    def ready(self) -> bool:
        return self._index is not None

    async def answer(self, query: NodeQuery, depth: int, direction: Direction) -> bytes | None:
        """The graph JSON for ``query`` from the copy, brought up to date first; None when
        the graph does not know the node. Raises ``NotCached`` when there is no copy."""
        if self._index is None:
            self.start_loading()
            raise NotCached
        async with self._lock:
            await self._catch_up()
            index = self._index
        if index is None:  # re-read whole, and now too large for a copy
            raise NotCached
        # No await from here on: the answer is of the snapshot just caught up with.
        found = index.lookup(query)
        if not found.known:
            return None
        return index.answer(found, depth, direction)

    def start_loading(self) -> None:
        if self._loader is None and not self.too_large:
            self._loader = asyncio.create_task(self._load(), name="lineage-graph-cache-load")

    async def _load(self) -> None:
        try:
            async with self._lock:
                await self._reload()
        except Exception:
            log.exception("loading the lineage graph copy failed; answers stay on SQL")
        finally:
            self._loader = None

    async def _reload(self) -> None:
        started = time.perf_counter()
        async with self._pool.acquire() as conn:
            changes = GraphChangeLog(conn)
            count = await changes.versions_count()
            if count > self._max_versions:
                self.too_large = True
                self._index = None
                log.warning(
                    "lineage graph holds %d versions, more than GRAPH_CACHE_MAX_VERSIONS=%d:"
                    " answers stay on SQL",
                    count,
                    self._max_versions,
                )
                return
            index, snapshot = GraphIndex(), ""
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                async for rows in changes.read_all(LOAD_CHUNK):
                    _put(index, rows)
                    snapshot = rows.snapshot
        # Fragments a chunk at a time too, letting requests and consumers run in between.
        more = True
        while more:
            more = index.refresh(limit=LOAD_CHUNK)
            await asyncio.sleep(0)
        self.reloads += 1
        self._index, self._snapshot = index, snapshot
        # The copy lives until the next whole read: keep the collector's full passes off it.
        gc.freeze()
        log.info(
            "lineage graph copy loaded: %d versions, %d runs in %.2f s; answers written %s",
            index.versions,
            index.runs,
            time.perf_counter() - started,
            "in C (_graph_answer)" if ACCELERATED else "in Python: the C writer is not built",
        )

    async def _catch_up(self) -> None:
        assert self._index is not None
        rows: GraphRows | None = None
        async with self._pool.acquire() as conn:
            change_log = GraphChangeLog(conn)
            changes = await change_log.changes_since(self._snapshot)
            if not changes.pruned and changes.empty:
                self._snapshot = changes.snapshot
                return
            if not changes.pruned:
                # Read the changes again in the snapshot that reads what they name.
                async with conn.transaction(isolation="repeatable_read", readonly=True):
                    changes = await change_log.changes_since(self._snapshot)
                    if not changes.pruned:
                        rows = await change_log.read_some(
                            changes.snapshot, changes.node_ids, changes.run_ids
                        )
        if rows is None:  # changes were pruned before this copy saw them
            await self._reload()
            return
        _apply(self._index, rows)
        self._snapshot = rows.snapshot


def _put(index: GraphIndex, rows: GraphRows) -> None:
    index.put_versions(rows.versions)
    index.put_runs(rows.runs)
    index.put_run_io(rows.run_io)


def _apply(index: GraphIndex, rows: GraphRows) -> None:
    _put(index, rows)
    index.refresh()


_caches: weakref.WeakKeyDictionary[object, GraphCache] = weakref.WeakKeyDictionary()


def cache_for(owner: object, pool: asyncpg.Pool, *, max_versions: int) -> GraphCache:
    """The copy of the service runtime ``owner`` (one per process in production; tests may
    run several runtimes, each on its own database)."""
    cache = _caches.get(owner)
    if cache is None:
        cache = _caches[owner] = GraphCache(pool, max_versions=max_versions)
    return cache


async def prune_graph_changes(context: WorkerContext) -> bool:
    """Worker step: drop change rows past the retention (a batch at a time)."""
    async with context.pool.acquire() as conn:
        pruned = await GraphChangeLog(conn).prune(
            GRAPH_CHANGES_RETENTION_S, PRUNE_BATCH, txids_retention_s=PRUNED_TXIDS_RETENTION_S
        )
    return pruned >= PRUNE_BATCH


PRUNE_WORKER = WorkerSpec("graph-changes-prune", prune_graph_changes)
