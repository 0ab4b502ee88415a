"""Lineage graph queries at scale: a 200,000-node lineage graph built in SQL, walked over HTTP,
beside Marquez's lineage SQL and an in-memory adjacency walk on the same graph.

    python bench/lineage_graph.py [--nodes N] [--queries Q] [--runs K]

Starts a Tansu broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set), a fresh database on the
Postgres of ``DATABASE_URL`` (else 127.0.0.1:5432) and the lineage service as a process, like
the other benches (whose helpers it reuses). Then:

1. **Graph (untimed).** N dataset/model versions in layers of ``--width`` (20 layers for
   200,000: depth 19), written with ``generate_series`` straight into ``runs`` and
   ``run_io`` as the service stores them (its triggers fill ``lineage_nodes`` and
   ``lineage_edges``). Every version past the first layer is the output of its own run,
   which reads 1-5 parents (uniform): 75 % from the layer above, 25 % from 2-4 layers up
   (skip connections, as a fine-tune reading a base model and an old snapshot), within
   ``--window`` positions of its own (so descendants fan out as a cone: a first-layer
   version has ~10,000). 35 % of the versions past the second layer are models.
2. **HTTP.** ``GET /api/v1/lineage/graph?nodeId=…&direction=downstream`` (then ``upstream``),
   default depth 20, for Q random versions, sequential on one keep-alive connection of a
   minimal HTTP/1.1 client (``_load_http.LoadClient``; until 2026-11-26 httpx, whose own parsing
   added 2-10 ms to bodies of several MB), after a warm-up; time = request sent → whole
   body received (not parsed). K runs; figures per
   size bucket of the answer (versions other than the start): p50/p99 of each run, then
   the median over runs. The same answers built in this process (``lineage_graph``: walk,
   descriptions, graph), and the walk alone (its SQL, with this process's garbage collector
   paused while it is timed), give the split.
3. **In-memory adjacency.** ``lineage_edges`` loaded into Python dicts (load time, memory),
   then the same walks as breadth-first searches in Python (traversal only: describing the
   nodes and writing JSON cost the same either way), and the cost of the per-query version
   check such a cache needs to stay consistent across replicas (one round trip).
4. **Marquez's SQL**, adapted to our tables (see ``MARQUEZ_*``), on a few versions per
   bucket, beside our walk (SQL only) on the same versions and the same database.
5. **Propagation.** A finding on the version whose descendants are closest to 10,000,
   driven exactly as the service does it: ``handlers.on_finding`` in one unit of work (graph
   lock, finding saved, ``_sync_flags``: ``downstream_edges`` → ``flag_changes`` →
   ``save_flags`` → one outbox row per flag), committed; K times with fresh findings. Beside
   it, ``downstream_edges`` alone, now and as it was (the recursive CTE over ``run_io``
   before ``lineage_0004``), with their results compared.

Figures go to stdout, progress to stderr, everything to
``bench/results/lineage_graph-<UTC timestamp>.json``. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from _common import (
    bench_run,
    drop_and_stop,
    load_average,
    postgres_server_url,
    quantile,
    rss_mib,
    run_meta,
    server_version,
    write_result,
)
from _load_http import LoadClient

from contracts.envelope import Envelope
from contracts.topics import FINDINGS
from services.lineage.adapters.graph import INFINITY, GraphRepository
from services.lineage.adapters.repository import MAX_DEPTH, LineageRepository
from services.lineage.domain.graph import Direction, parse_node_id, version_key
from services.lineage.domain.graph_index import ACCELERATED
from services.lineage.domain.propagation import LineageEdge, Node
from services.lineage.service.graph import lineage_graph
from services.lineage.service.graph_cache import GraphCache
from services.lineage.service.handlers import on_finding
from services.runtime import embedded
from services.runtime.db import Connection, init_connection
from services.runtime.messages import Event
from services.runtime.testing import ServiceProcess, dataset_finding, migrate_service
from services.runtime.unit_of_work import unit_of_work

REPO_ROOT = Path(__file__).resolve().parents[1]
API = "/api/v1/lineage/graph"
BUCKETS = ((0, 0), (1, 99), (100, 999), (1000, 4999), (5000, 10**9))
T0 = datetime(2025, 1, 1, tzinfo=UTC)

Row = dict[str, Any]


def bucket_of(n: int) -> str:
    for low, high in BUCKETS:
        if low <= n <= high:
            return bucket_name(low, high)
    raise ValueError(n)


def bucket_name(low: int, high: int) -> str:
    if low == high:
        return f"{low}"
    return f"{low:,}+" if high >= 10**9 else f"{low:,}-{high:,}"


# ----------------------------------------------------------------------------- the graph

GRAPH_SQL = """
SET max_parallel_workers_per_gather = 0;
CREATE FUNCTION pg_temp.h(x bigint, salt bigint) RETURNS bigint LANGUAGE sql IMMUTABLE
    AS $$ SELECT hashint8extended(x, salt) & 9223372036854775807 $$;
CREATE UNLOGGED TABLE bench_nodes AS
SELECT i, i / {width} AS layer, i % {width} AS pos,
       (i / {width}) >= 2 AND pg_temp.h(i, 11) % 100 < 35 AS is_model
FROM generate_series(0, {nodes} - 1) i;
CREATE UNLOGGED TABLE bench_parents AS
SELECT DISTINCT c.i AS child,
       greatest(c.layer - CASE WHEN pg_temp.h(c.i * 8 + j, 2) % 100 < 75 THEN 1
                               ELSE 2 + pg_temp.h(c.i * 8 + j, 3) % 3 END, 0) * {width}
       + (c.pos + pg_temp.h(c.i * 8 + j, 4) % (2 * {window} + 1) - {window} + {width})
         % {width} AS parent
FROM bench_nodes c, generate_series(1, 1 + (pg_temp.h(c.i, 1) % 5)::int) j
WHERE c.layer > 0;
CREATE FUNCTION pg_temp.ns(model boolean) RETURNS text LANGUAGE sql IMMUTABLE
    AS $$ SELECT CASE WHEN model THEN 'models://bench' ELSE 's3://bench' END $$;
CREATE FUNCTION pg_temp.nm(i int, model boolean) RETURNS text LANGUAGE sql IMMUTABLE
    AS $$ SELECT CASE WHEN model THEN 'model_' ELSE 'table_' END || lpad((i / 3)::text, 6, '0') $$;
CREATE FUNCTION pg_temp.ver(i int) RETURNS text LANGUAGE sql IMMUTABLE
    AS $$ SELECT substr(md5('v' || i), 1, 12) $$;
CREATE FUNCTION pg_temp.at(layer int, pos int) RETURNS timestamptz LANGUAGE sql IMMUTABLE
    AS $$ SELECT timestamptz '2025-01-01' + layer * interval '1 hour' + pos * interval '100 ms' $$;
INSERT INTO runs (run_id, job_namespace, job_name, started_at, ended_at, state)
SELECT md5('run' || i)::uuid, 'bench', 'job_' || (i % 5000), pg_temp.at(layer, pos),
       pg_temp.at(layer, pos) + interval '5 min', 'COMPLETE'
FROM bench_nodes WHERE layer > 0;
INSERT INTO run_io (run_id, direction, namespace, name, version, is_model, seen_at)
SELECT md5('run' || c.i)::uuid, 'input', pg_temp.ns(p.is_model), pg_temp.nm(p.i, p.is_model),
       pg_temp.ver(p.i), p.is_model, pg_temp.at(c.layer, c.pos)
FROM bench_parents bp JOIN bench_nodes c ON c.i = bp.child JOIN bench_nodes p ON p.i = bp.parent
UNION ALL
SELECT md5('run' || c.i)::uuid, 'output', pg_temp.ns(c.is_model), pg_temp.nm(c.i, c.is_model),
       pg_temp.ver(c.i), c.is_model, pg_temp.at(c.layer, c.pos) + interval '5 min'
FROM bench_nodes c WHERE c.layer > 0;
"""

VACUUM_SQL = [
    "VACUUM ANALYZE runs",
    "VACUUM ANALYZE run_io",
    "VACUUM ANALYZE lineage_nodes",
    "VACUUM ANALYZE lineage_edges",
    "CHECKPOINT",
]

SIZES_SQL = """
SELECT c.relname, pg_relation_size(c.oid) AS bytes FROM pg_class c
WHERE c.relname IN ('run_io', 'run_io_pkey', 'run_io_by_dataset', 'run_io_run_nodes',
                    'lineage_nodes', 'lineage_nodes_pkey', 'lineage_nodes_identity',
                    'lineage_edges', 'lineage_edges_pkey', 'lineage_edges_up', 'runs')
"""


# ----------------------------------------------------------------------------- before 0004

OLD_DOWNSTREAM_EDGES_SQL = """
WITH RECURSIVE edges AS (
    SELECT i.namespace AS s_ns, i.name AS s_name, i.version AS s_ver,
           i.is_model AS s_model, i.run_id, o.namespace AS t_ns, o.name AS t_name,
           o.version AS t_ver, o.is_model AS t_model, 1 AS depth
    FROM run_io i JOIN run_io o ON o.run_id = i.run_id AND o.direction = 'output'
    WHERE i.direction = 'input' AND i.namespace = $1 AND i.name = $2
      AND i.version = $3
    UNION
    SELECT i.namespace, i.name, i.version, i.is_model, i.run_id, o.namespace,
           o.name, o.version, o.is_model, e.depth + 1
    FROM edges e
    JOIN run_io i ON i.direction = 'input' AND i.namespace = e.t_ns
                 AND i.name = e.t_name AND i.version = e.t_ver
    JOIN run_io o ON o.run_id = i.run_id AND o.direction = 'output'
    WHERE e.depth < $4
)
SELECT DISTINCT s_ns, s_name, s_ver, s_model, run_id, t_ns, t_name, t_ver, t_model
FROM edges
"""
"""``LineageRepository.downstream_edges`` before ``lineage_0004`` (git show HEAD)."""


# ----------------------------------------------------------------------------- Marquez

MARQUEZ_GET_LINEAGE_SQL = """
WITH RECURSIVE
    job_io AS (
        SELECT io.run_id AS job_uuid,
               ARRAY_AGG(DISTINCT io.node_id) FILTER (WHERE io.direction = 'input') AS inputs,
               ARRAY_AGG(DISTINCT io.node_id) FILTER (WHERE io.direction = 'output') AS outputs
        FROM run_io io
        WHERE io.seen_at <= $3
        GROUP BY io.run_id
    ),
    lineage(job_uuid, inputs, outputs, depth) AS (
        SELECT job_uuid,
               COALESCE(inputs, Array[]::int[]) AS inputs,
               COALESCE(outputs, Array[]::int[]) AS outputs,
               0 AS depth
        FROM job_io
        WHERE job_uuid = ANY($1::uuid[])
        UNION
        SELECT io.job_uuid, io.inputs, io.outputs, l.depth + 1
        FROM job_io io, lineage l
        WHERE io.job_uuid != l.job_uuid AND {overlap}
          AND depth < $2
    )
SELECT DISTINCT ON (job_uuid) job_uuid, inputs AS input_uuids, outputs AS output_uuids
FROM lineage
"""
"""Marquez ``LineageDao.getLineage`` (api/src/main/java/marquez/db/LineageDao.java), the SQL
behind ``GET /api/v1/lineage``, adapted: a *job* is our run (our graph is version level, one
node per run like Marquez's run lineage), ``job_versions_io_mapping`` is ``run_io`` (rows
seen by the as-of time: Marquez has no as-of, the filter costs nothing here), a dataset
uuid is our integer node id (Marquez compares uuids; ints are cheaper, in its favour). Its
recursion joins every row of ``job_io`` against the frontier on array overlap, following
edges both ways (``array_cat(io.inputs, io.outputs) && array_cat(l.inputs, l.outputs)``);
to answer the same question as ours the overlap is made directed (``{overlap}``):
downstream ``io.inputs && l.outputs``, upstream ``io.outputs && l.inputs``. Seeds: the runs
that read the version (downstream) or wrote it (upstream), at depth 0, so its ``depth`` is
ours minus one. Everything else as written: ``job_io`` aggregated over the whole table per
query, ``UNION`` with ``depth`` in the row, ``DISTINCT ON`` at the end."""

MARQUEZ_UPSTREAM_RUNS_SQL = """
WITH RECURSIVE
  upstream_runs(r_uuid, dataset_namespace, dataset_name, dataset_version, u_r_uuid, depth) AS (
    SELECT r.uuid, rim.namespace, rim.name, rim.version, dv.run_id, 0 AS depth
    FROM (SELECT unnest($1::uuid[]) AS uuid) r
    LEFT JOIN run_io rim ON rim.run_id = r.uuid AND rim.direction = 'input'
                        AND rim.seen_at <= $3
    LEFT JOIN run_io dv ON dv.namespace = rim.namespace AND dv.name = rim.name
                       AND dv.version = rim.version AND dv.direction = 'output'
                       AND dv.seen_at <= $3
  UNION
    SELECT ur.u_r_uuid, rim2.namespace, rim2.name, rim2.version, dv2.run_id, ur.depth + 1
    FROM upstream_runs ur
    LEFT JOIN run_io rim2 ON rim2.run_id = ur.u_r_uuid AND rim2.direction = 'input'
                         AND rim2.seen_at <= $3
    LEFT JOIN run_io dv2 ON dv2.namespace = rim2.namespace AND dv2.name = rim2.name
                        AND dv2.version = rim2.version AND dv2.direction = 'output'
                        AND dv2.seen_at <= $3
    WHERE ur.u_r_uuid IS NOT NULL AND ur.u_r_uuid <> ur.r_uuid AND depth < $2
)
SELECT DISTINCT ON (r_uuid, dataset_namespace, dataset_name, dataset_version, u_r_uuid) *
FROM upstream_runs
"""
"""Marquez ``LineageDao.getUpstreamRuns`` (its version-level, directed walk: upstream only),
adapted: ``runs_input_mapping`` is ``run_io`` inputs, ``dataset_versions.run_uuid`` (the run
that wrote a version) is ``run_io`` outputs, joined on our text keys with our covering
indexes. Seeds: the runs that wrote the version, at depth 0."""


# ----------------------------------------------------------------------------- stack


@dataclass
class Bench:
    tag: str
    work_dir: Path
    server_url: str
    broker: embedded.TansuBroker | None = None
    bootstrap: str = ""
    databases: list[str] = field(default_factory=list)
    service: ServiceProcess | None = None

    def url(self) -> str:
        return embedded.database_url_for(self.server_url, f"bench_{self.tag}_lineage")

    def start(self) -> ServiceProcess:
        explicit = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
        if explicit:
            self.bootstrap = explicit
        else:
            self.broker = embedded.TansuBroker(log_path=self.work_dir / "tansu.log").start()
            self.bootstrap = self.broker.bootstrap_servers
        self.databases = [f"bench_{self.tag}_lineage"]
        embedded.create_databases_sync(self.server_url, self.databases)
        migrate_service("lineage", self.url())
        idempotence = self.broker is None and embedded.env_flag(
            os.environ, "KAFKA_ENABLE_IDEMPOTENCE", True
        )
        self.service = ServiceProcess(
            "lineage",
            self.url(),
            self.bootstrap,
            self.work_dir,
            idempotence=idempotence,
            group_prefix=f"bench-{self.tag}",
        ).start()
        self.service.wait_ready()
        return self.service

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop()
        drop_and_stop(self.server_url, self.databases, self.broker)


async def connect(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    await init_connection(conn)
    return conn


# ----------------------------------------------------------------------------- measures


@dataclass(frozen=True)
class Start:
    node_id: int
    key: str
    namespace: str
    name: str
    version: str


async def build_graph(dsn: str, args: argparse.Namespace, log: Callable[[str], None]) -> Row:
    conn = await connect(dsn)
    try:
        started = time.perf_counter()
        await conn.execute(GRAPH_SQL.format(nodes=args.nodes, width=args.width, window=args.window))
        built = time.perf_counter() - started
        log(f"  rows written in {built:.0f} s (triggers fill lineage_nodes/edges); vacuum …")
        for sql in VACUUM_SQL:
            await conn.execute(sql)
        counts = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM lineage_nodes) AS versions,"
            " (SELECT count(*) FROM runs) AS runs, (SELECT count(*) FROM run_io) AS run_io,"
            " (SELECT count(*) FROM lineage_edges) AS edges,"
            " (SELECT count(*) FROM lineage_nodes WHERE is_model) AS models"
        )
        assert counts is not None
        sizes = {r["relname"]: r["bytes"] // 1048576 for r in await conn.fetch(SIZES_SQL)}
        return {
            "build_s": built,
            "total_s": time.perf_counter() - started,
            **dict(counts),
            "layers": -(-args.nodes // args.width),
            "sizes_mb": sizes,
        }
    finally:
        await conn.close()


async def pick_starts(dsn: str, count: int, seed: int) -> list[Start]:
    conn = await connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT node_id, namespace, name, version, is_model FROM lineage_nodes"
        )
    finally:
        await conn.close()
    rng = random.Random(seed)
    return [
        Start(
            r["node_id"],
            version_key(r["namespace"], r["name"], r["version"], r["is_model"]),
            r["namespace"],
            r["name"],
            r["version"],
        )
        for r in rng.sample(list(rows), min(count, len(rows)))
    ]


def per_bucket(samples: Sequence[tuple[int, float]]) -> dict[str, Row]:
    """(versions in the answer, seconds) → p50/p99/max ms and count per bucket."""
    out: dict[str, Row] = {}
    for low, high in BUCKETS:
        ms = [s * 1000 for n, s in samples if low <= n <= high]
        if ms:
            out[bucket_name(low, high)] = {
                "count": len(ms),
                "p50": quantile(ms, 0.5),
                "p99": quantile(ms, 0.99),
                "max": max(ms),
            }
    return out


def median_buckets(runs: Sequence[dict[str, Row]]) -> dict[str, Row]:
    names = [bucket_name(lo, hi) for lo, hi in BUCKETS]
    out: dict[str, Row] = {}
    for name in names:
        present = [r[name] for r in runs if name in r]
        if present:
            out[name] = {
                key: statistics.median(p[key] for p in present)
                for key in ("count", "p50", "p99", "max")
            }
            out[name]["p99_runs"] = [p["p99"] for p in present]
    return out


SOURCE = "X-Lineage-Graph-Source"
FAR_FUTURE = "9999-12-31T00:00:00Z"
"""``asOf`` that changes nothing in the answer but makes the service walk in SQL."""


@dataclass
class HttpRun:
    samples: list[tuple[int, float]]
    """(versions besides the start, seconds) per start."""
    sizes: list[int]
    digests: list[str]
    sources: set[str]


async def http_latency(
    base_url: str, starts: Sequence[Start], direction: str, warmup: int, as_of: str | None = None
) -> HttpRun:
    """Sequential GETs of every start on one keep-alive connection, whole bodies received."""
    out = HttpRun([], [], [], set())
    extra = {"asOf": as_of} if as_of else {}
    client = LoadClient(base_url)
    try:
        for start in starts[:warmup]:
            await client.get(API, {"nodeId": start.key, "direction": direction, **extra})
        for start in starts:
            params = {"nodeId": start.key, "direction": direction, **extra}
            t = time.perf_counter()
            status, headers, body = await client.get(API, params)
            elapsed = time.perf_counter() - t
            if status != 200:
                raise RuntimeError(f"{status}: {body[:300]!r}")
            versions = body.count(b'{"id":"dataset:') + body.count(b'{"id":"model:')
            out.samples.append((versions - 1, elapsed))
            out.sizes.append(len(body))
            out.digests.append(hashlib.sha256(body).hexdigest())
            out.sources.add(headers.get(SOURCE.lower(), "?"))
    finally:
        await client.close()
    return out


async def warm_copy(service: ServiceProcess, start: Start, log: Callable[[str], None]) -> Row:
    """Ask until the in-memory copy answers: how long it took to load, and the memory."""
    assert service.proc is not None
    before = rss_mib(service.proc.pid)
    began = time.perf_counter()
    async with httpx.AsyncClient(base_url=service.url, timeout=120) as client:
        while True:
            response = await client.get(API, params={"nodeId": start.key, "depth": 0})
            if response.headers.get(SOURCE) == "memory":
                break
            if time.perf_counter() - began > 600:
                raise RuntimeError("the lineage graph copy did not load in 10 minutes")
            await asyncio.sleep(0.2)
    row = {
        "load_s": time.perf_counter() - began,
        "rss_before_mib": before,
        "rss_after_mib": rss_mib(service.proc.pid),
    }
    log(
        f"  copy loaded in {row['load_s']:.1f} s; service RSS {_f(before, 0)} → "
        f"{_f(row['rss_after_mib'], 0)} MiB"
    )
    return row


async def sql_latency(
    dsn: str, starts: Sequence[Start], direction: str, whole_too: bool
) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """The service's queries from this process: (versions, s) for walk + descriptions + the
    graph built (the whole ``lineage_graph``, when ``whole_too``) and for the walk alone."""
    conn = await connect(dsn)
    whole: list[tuple[int, float]] = []
    walk_only: list[tuple[int, float]] = []
    try:
        repo = GraphRepository(conn)
        for start in starts:
            versions = 0
            if whole_too:
                t = time.perf_counter()
                graph = await lineage_graph(
                    conn, start.key, depth=20, direction=Direction(direction), as_of=None
                )
                elapsed = time.perf_counter() - t
                versions = sum(1 for n in graph.nodes.values() if n.type.value != "RUN") - 1
                whole.append((versions, elapsed))
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                await repo.tune_reads()
                gc.disable()  # the walk's time, not a collection of this process's heap
                t = time.perf_counter()
                edges = await repo.walk([start.node_id], direction, 20, INFINITY)  # type: ignore[arg-type]
                elapsed = time.perf_counter() - t
                gc.enable()
                far = edges.dsts if direction == "downstream" else edges.srcs
                walk_only.append((len(set(far)), elapsed))
    finally:
        await conn.close()
    return whole, walk_only


@dataclass
class Adjacency:
    down: dict[int, list[tuple[int, Any]]]
    up: dict[int, list[tuple[int, Any]]]


async def load_adjacency(dsn: str) -> tuple[Adjacency, Row]:
    conn = await connect(dsn)
    try:
        tracemalloc.start()
        t = time.perf_counter()
        rows = await conn.fetch("SELECT src, run_id, dst, seen_at FROM lineage_edges")
        down: dict[int, list[tuple[int, Any]]] = {}
        up: dict[int, list[tuple[int, Any]]] = {}
        for src, _run, dst, seen in rows:
            down.setdefault(src, []).append((dst, seen))
            up.setdefault(dst, []).append((src, seen))
        del rows
        load_s = time.perf_counter() - t
        _, peak = tracemalloc.get_traced_memory()
        current, _ = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        prepared = await conn.prepare("SELECT $1::bigint")
        rtt: list[float] = []
        for i in range(500):
            t = time.perf_counter()
            await prepared.fetchval(i)
            rtt.append(time.perf_counter() - t)
        return Adjacency(down, up), {
            "load_s": load_s,
            "memory_mb": current / 1048576,
            "peak_mb": peak / 1048576,
            "version_check_ms_p50": quantile([x * 1000 for x in rtt], 0.5),
            "version_check_ms_p99": quantile([x * 1000 for x in rtt], 0.99),
        }
    finally:
        await conn.close()


def bfs(adjacency: dict[int, list[tuple[int, Any]]], start: int, depth: int) -> int:
    seen = {start}
    frontier = [start]
    for _ in range(depth):
        nxt = []
        for node in frontier:
            for other, _seen_at in adjacency.get(node, ()):
                if other not in seen:
                    seen.add(other)
                    nxt.append(other)
        if not nxt:
            break
        frontier = nxt
    return len(seen) - 1


def memory_walks(
    adj: Adjacency, starts: Sequence[Start], direction: str
) -> list[tuple[int, float]]:
    table = adj.down if direction == "downstream" else adj.up
    out = []
    gc.disable()
    for start in starts:
        t = time.perf_counter()
        n = bfs(table, start.node_id, 20)
        out.append((n, time.perf_counter() - t))
    gc.enable()
    return out


async def writer_compare(dsn: str, starts: Sequence[Start], runs: int) -> Row:
    """The service's copy loaded here, each answer written by the compiled writer and by the
    Python one (``GraphIndex.accelerated``), timed alone (no HTTP, no catch-up query; this
    process's collector frozen as the service's is), K runs; and their bytes compared."""
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, init=init_connection)
    try:
        cache = GraphCache(pool, max_versions=10**7)
        await cache._reload()  # the service's own load, without its task
        index = cache._index
    finally:
        await pool.close()
    assert index is not None
    out: Row = {"compiled_built": ACCELERATED}
    for direction in ("downstream", "upstream"):
        way = Direction(direction)
        found = [index.lookup(parse_node_id(s.key)) for s in starts]
        timed: dict[bool, list[dict[str, Row]]] = {True: [], False: []}
        same = 0
        for k in range(runs):
            for compiled in (True, False) if ACCELERATED else (False,):
                index.accelerated = compiled
                samples = []
                for query in found:
                    t = time.perf_counter()
                    body = index.answer(query, 20, way)
                    elapsed = time.perf_counter() - t
                    versions = body.count(b'{"id":"dataset:') + body.count(b'{"id":"model:')
                    samples.append((versions - 1, elapsed))
                timed[compiled].append(per_bucket(samples))
            if k == 0 and ACCELERATED:
                for query in found:
                    index.accelerated = True
                    mine = index.answer(query, 20, way)
                    index.accelerated = False
                    same += mine == index.answer(query, 20, way)
        out[direction] = {
            "compiled": median_buckets(timed[True]) if ACCELERATED else {},
            "python": median_buckets(timed[False]),
            "same_bytes": f"{same}/{len(found)}" if ACCELERATED else "-",
        }
    del index, cache
    gc.collect()
    return out


async def marquez_compare(
    dsn: str,
    starts: Sequence[Start],
    per_bucket_n: int,
    timeout_s: float,
    sizes: dict[int, tuple[int, int]],
    log: Callable[[str], None],
) -> Row:
    """Marquez's SQL beside ours on a few starts per bucket (sizes: node → (down, up))."""
    conn = await connect(dsn)
    await conn.execute(f"SET statement_timeout = '{int(timeout_s * 1000)}ms'")
    await conn.execute("SET jit = off")
    repo = GraphRepository(conn)
    chosen: dict[tuple[str, str], list[Start]] = {}
    for start in starts:
        for i, direction in enumerate(("downstream", "upstream")):
            b = bucket_of(sizes[start.node_id][i])
            if b != "0" and len(chosen.setdefault((direction, b), [])) < per_bucket_n:
                chosen[(direction, b)].append(start)
    rows: list[Row] = []
    try:
        for (direction, b), group in sorted(chosen.items()):
            for start in group:
                seed_dir = "input" if direction == "downstream" else "output"
                seeds = [
                    r["run_id"]
                    for r in await conn.fetch(
                        "SELECT run_id FROM run_io WHERE namespace = $1 AND name = $2"
                        " AND version = $3 AND direction = $4",
                        start.namespace,
                        start.name,
                        start.version,
                        seed_dir,
                    )
                ]
                t = time.perf_counter()
                ours = await repo.walk([start.node_id], direction, 20, INFINITY)  # type: ignore[arg-type]
                ours_s = time.perf_counter() - t
                our_runs = set(ours.runs)
                entry: Row = {
                    "direction": direction,
                    "bucket": b,
                    "versions": sizes[start.node_id][0 if direction == "downstream" else 1],
                    "ours_ms": ours_s * 1000,
                }
                variants = [
                    (
                        "getLineage",
                        MARQUEZ_GET_LINEAGE_SQL.format(
                            overlap="io.inputs && l.outputs"
                            if direction == "downstream"
                            else "io.outputs && l.inputs"
                        ),
                    )
                ]
                if direction == "upstream":
                    variants.append(("getUpstreamRuns", MARQUEZ_UPSTREAM_RUNS_SQL))
                for name, sql in variants:
                    t = time.perf_counter()
                    try:
                        result = await conn.fetch(sql, seeds, 19, INFINITY)
                        elapsed: float | None = time.perf_counter() - t
                        if name == "getLineage":
                            got = {r["job_uuid"] for r in result}
                        else:
                            got = {r["r_uuid"] for r in result} | {
                                r["u_r_uuid"] for r in result if r["u_r_uuid"] is not None
                            }
                        entry[f"{name}_same_runs"] = got == our_runs
                    except asyncpg.QueryCanceledError:
                        elapsed = None
                    entry[f"{name}_ms"] = elapsed * 1000 if elapsed is not None else None
                log(
                    f"  {direction} {b}: ours {entry['ours_ms']:.1f} ms, "
                    + ", ".join(
                        f"{k[:-3]} " + (f"{v:,.0f} ms" if v is not None else f"> {timeout_s:.0f} s")
                        for k, v in entry.items()
                        if k.endswith("_ms") and k != "ours_ms"
                    )
                )
                rows.append(entry)
    finally:
        await conn.close()
    return {"timeout_s": timeout_s, "rows": rows}


async def old_downstream_edges(conn: Connection, start: Start) -> list[LineageEdge]:
    rows = await conn.fetch(
        OLD_DOWNSTREAM_EDGES_SQL, start.namespace, start.name, start.version, MAX_DEPTH
    )
    return [
        LineageEdge(
            Node(r["s_ns"], r["s_name"], r["s_ver"], r["s_model"]),
            r["run_id"],
            Node(r["t_ns"], r["t_name"], r["t_ver"], r["t_model"]),
        )
        for r in rows
    ]


async def propagation(dsn: str, start: Start, runs: int, log: Callable[[str], None]) -> Row:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2, init=init_connection)
    out: Row = {"start": start.key, "runs": []}
    try:
        async with pool.acquire() as conn:
            t = time.perf_counter()
            new = await LineageRepository(conn).downstream_edges(
                start.namespace, start.name, start.version
            )
            out["downstream_edges_ms"] = (time.perf_counter() - t) * 1000
            t = time.perf_counter()
            old = await old_downstream_edges(conn, start)
            out["downstream_edges_before_ms"] = (time.perf_counter() - t) * 1000
            out["edges"] = len(new)
            out["same_edges_as_before"] = sorted(map(repr, new)) == sorted(map(repr, old))
            out["descendants"] = len({e.target for e in new})
            out["models"] = len({e.target for e in new if e.target.is_model})
            log(
                f"  downstream_edges: {out['downstream_edges_ms']:.0f} ms now,"
                f" {out['downstream_edges_before_ms']:.0f} ms before lineage_0004"
                f" (same {len(new):,} edges: {out['same_edges_as_before']})"
            )
        for i in range(runs):
            finding = dataset_finding(
                (start.namespace, start.name, start.version), policy_id="bench", rule="bench"
            )
            envelope = Envelope.new(
                type=FINDINGS.event_type, source="/bench", subject=finding.dataset.key
            )
            event = Event(envelope, finding, FINDINGS.name, 0, i, None)
            t = time.perf_counter()
            async with unit_of_work(pool, "/consenttrace/lineage") as uow:
                await on_finding(event, uow)
            elapsed = time.perf_counter() - t
            async with pool.acquire() as conn:
                flags = await conn.fetchval(
                    "SELECT count(*) FROM model_flags WHERE finding_id = $1", finding.finding_id
                )
            out["runs"].append({"s": elapsed, "flags": flags})
            log(f"  finding → {flags:,} flags stored and committed in {elapsed * 1000:,.0f} ms")
    finally:
        await pool.close()
    out["median_s"] = statistics.median(r["s"] for r in out["runs"])
    return out


async def explain_walk(dsn: str, start: Start) -> list[str]:
    conn = await connect(dsn)
    try:
        from services.lineage.adapters.graph import READ_SETTINGS_SQL, WALK_DOWNSTREAM_SQL

        async with conn.transaction():
            await conn.execute(READ_SETTINGS_SQL)
            rows = await conn.fetch(
                "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + WALK_DOWNSTREAM_SQL,
                [start.node_id],
                20,
                INFINITY,
            )
        return [r[0] for r in rows]
    finally:
        await conn.close()


async def measure(bench: Bench, args: argparse.Namespace, log: Callable[[str], None]) -> Row:
    log(f"broker, database, lineage service (logs in {bench.work_dir}) …")
    service = await asyncio.to_thread(bench.start)
    dsn = bench.url()
    async with httpx.AsyncClient(base_url=service.url) as client:
        probe = await client.get(API)
        if probe.status_code == 404:
            raise RuntimeError(
                "GET /api/v1/lineage/graph is 404: mount services.lineage.entrypoints."
                "graph_http.router in services/lineage/app.py"
            )
    log(
        f"building the graph: {args.nodes:,} versions, layers of {args.width:,},"
        f" window ±{args.window} …"
    )
    graph = await build_graph(dsn, args, log)
    log(
        f"  {graph['versions']:,} versions ({graph['models']:,} models), {graph['runs']:,} runs,"
        f" {graph['run_io']:,} run_io rows, {graph['edges']:,} edges in {graph['total_s']:.0f} s"
    )
    starts = await pick_starts(dsn, args.queries + args.warmup, args.seed)
    log("the service's in-memory copy of the graph …")
    copy = await warm_copy(service, starts[0], log)

    result: Row = {"graph": graph, "http": {}, "http_sql": {}, "sql": {}, "memory": {}}
    result["copy"] = copy
    sizes: dict[int, list[int]] = {s.node_id: [0, 0] for s in starts}
    for direction in ("downstream", "upstream"):
        runs_http, runs_http_sql, runs_sql, runs_walk = [], [], [], []
        body_sizes: list[int] = []
        for k in range(args.runs):
            log(f"HTTP {direction}, run {k + 1}/{args.runs}: {args.queries} versions …")
            http = await http_latency(service.url, starts, direction, args.warmup)
            if http.sources != {"memory"}:
                raise RuntimeError(f"answers came from {http.sources}, not the copy alone")
            samples, body_sizes = http.samples, body_sizes + http.sizes
            if k == 0:
                log(f"HTTP {direction} through SQL (asOf far ahead) …")
                via_sql = await http_latency(
                    service.url, starts, direction, args.warmup, as_of=FAR_FUTURE
                )
                if via_sql.sources != {"sql"}:
                    raise RuntimeError(f"asOf answers came from {via_sql.sources}")
                runs_http_sql.append(per_bucket(via_sql.samples))
                same = sum(a == b for a, b in zip(http.digests, via_sql.digests, strict=True))
                copy[f"same_bytes_{direction}"] = f"{same}/{len(starts)}"
                log(f"  same bytes from the copy and from SQL: {same}/{len(starts)}")
            for start, (n, _) in zip(starts, samples, strict=True):
                sizes[start.node_id][0 if direction == "downstream" else 1] = n
            runs_http.append(per_bucket(samples))
            whole, walk_only = await sql_latency(dsn, starts, direction, whole_too=k == 0)
            if whole:
                runs_sql.append(per_bucket(whole))
            runs_walk.append(per_bucket(walk_only))
            everything = [s * 1000 for _, s in samples]
            log(
                f"  all: p50 {quantile(everything, 0.5):.2f} ms, p99"
                f" {quantile(everything, 0.99):.2f} ms; "
                + "; ".join(f"{b} p99 {v['p99']:.1f}" for b, v in runs_http[-1].items())
            )
        result["http"][direction] = median_buckets(runs_http)
        result["http_sql"][direction] = median_buckets(runs_http_sql)
        body_p50 = quantile(body_sizes, 0.5)
        result["http"][direction]["_body_kb_p50"] = None if body_p50 is None else body_p50 / 1024
        result["sql"][direction] = {
            "whole": median_buckets(runs_sql),
            "walk": median_buckets(runs_walk),
        }
    log("in-memory adjacency: loading lineage_edges …")
    adj, info = await load_adjacency(dsn)
    result["memory"].update(info)
    result["memory"]["walks"] = {}
    for direction in ("downstream", "upstream"):
        result["memory"]["walks"][direction] = median_buckets(
            [per_bucket(memory_walks(adj, starts, direction)) for _ in range(args.runs)]
        )
    del adj
    log(
        f"  loaded in {info['load_s']:.1f} s, {info['memory_mb']:.0f} MiB;"
        f" version check round trip p50 {info['version_check_ms_p50']:.3f} ms"
    )

    log("the copy's two writers in this process (compiled, Python) …")
    result["writers"] = await writer_compare(dsn, starts, args.runs)
    log(
        "  same bytes: "
        + ", ".join(f"{d} {result['writers'][d]['same_bytes']}" for d in ("downstream", "upstream"))
    )

    log("Marquez's SQL beside ours …")
    result["marquez"] = await marquez_compare(
        dsn,
        starts,
        args.marquez_per_bucket,
        args.marquez_timeout,
        {k: (v[0], v[1]) for k, v in sizes.items()},
        log,
    )

    target = min(
        (s for s in starts if sizes[s.node_id][0] > 0),
        key=lambda s: abs(sizes[s.node_id][0] - 10_000),
    )
    log(f"propagation from {target.key} ({sizes[target.node_id][0]:,} descendants) …")
    result["propagation"] = await propagation(dsn, target, args.runs, log)
    mid = min(starts, key=lambda s: abs(sizes[s.node_id][0] - 3000))
    result["explain"] = {
        "start": mid.key,
        "descendants": sizes[mid.node_id][0],
        "plan": await explain_walk(dsn, mid),
    }
    return result


# ----------------------------------------------------------------------------- report


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def report(result: Row, meta: Row) -> str:
    g = result["graph"]
    lines = [
        "",
        f"ConsentTrace lineage graph   {meta['started_at']}",
        f"{g['versions']:,} versions ({g['models']:,} models) in {g['layers']} layers,"
        f" {g['runs']:,} runs, {g['run_io']:,} run_io rows, {g['edges']:,} lineage edges;"
        f" Postgres {meta['postgres_version']}; {meta['cpus']} CPUs; load {meta['load_before']}"
        f" → {meta['load_after']}",
        "",
        f"the service's in-memory copy: loaded in {_f(result['copy']['load_s'])} s; service"
        f" RSS {_f(result['copy']['rss_before_mib'], 0)} → {_f(result['copy']['rss_after_mib'], 0)}"
        f" MiB; same bytes as the SQL path: downstream"
        f" {result['copy'].get('same_bytes_downstream')}, upstream"
        f" {result['copy'].get('same_bytes_upstream')}",
        "",
        "GET /api/v1/lineage/graph (depth 20), sequential, whole body received; medians over"
        f" {meta['runs']} runs of per-run quantiles (HTTP: from the in-memory copy; HTTP via"
        " SQL, SQL+build: first run only), ms:",
        f"{'direction':<11} {'descendants':>12} {'n':>5} {'HTTP p50':>9} {'HTTP p99':>9}"
        f" {'via SQL p50':>12} {'via SQL p99':>12}"
        f" {'SQL+build p50':>14} {'walk p50':>9} {'walk p99':>9} {'in-memory p50':>14}",
    ]
    for direction in ("downstream", "upstream"):
        http = result["http"][direction]
        for low, high in BUCKETS:
            b = bucket_name(low, high)
            if b not in http:
                continue
            sql = result["sql"][direction]["whole"].get(b, {})
            walk = result["sql"][direction]["walk"].get(b, {})
            mem = result["memory"]["walks"][direction].get(b, {})
            via = result["http_sql"][direction].get(b, {})
            lines.append(
                f"{direction:<11} {b:>12} {http[b]['count']:>5.0f} {_f(http[b]['p50'], 2):>9}"
                f" {_f(http[b]['p99'], 2):>9} {_f(via.get('p50'), 2):>12}"
                f" {_f(via.get('p99'), 2):>12} {_f(sql.get('p50'), 2):>14}"
                f" {_f(walk.get('p50'), 2):>9} {_f(walk.get('p99'), 2):>9}"
                f" {_f(mem.get('p50'), 2):>14}"
            )
    w = result["writers"]
    lines += [
        "",
        "the copy's answer alone, in this process (no HTTP), p50 / p99 ms: compiled writer"
        f" (built: {w['compiled_built']}) beside the Python one",
    ]
    for direction in ("downstream", "upstream"):
        for low, high in BUCKETS:
            b = bucket_name(low, high)
            c, py = w[direction]["compiled"].get(b), w[direction]["python"].get(b)
            if py is None:
                continue
            ratio = f"  ({py['p50'] / c['p50']:.1f}x at p50)" if c and c["p50"] else ""
            lines.append(
                f"  {direction:<11} {b:>12}  compiled {_f(c and c['p50'], 2)} /"
                f" {_f(c and c['p99'], 2)}   Python {_f(py['p50'], 2)} / {_f(py['p99'], 2)}" + ratio
            )
        lines.append(f"  {direction}: same bytes from both writers {w[direction]['same_bytes']}")
    m = result["memory"]
    lines += [
        "",
        f"in-memory adjacency: {_f(m['load_s'])} s to load, {_f(m['memory_mb'], 0)} MiB in"
        f" Python; the version check per query is one round trip: p50"
        f" {_f(m['version_check_ms_p50'], 3)} ms, p99 {_f(m['version_check_ms_p99'], 3)} ms",
        "",
        f"Marquez's lineage SQL beside ours (SQL only, same database; timeout"
        f" {result['marquez']['timeout_s']:.0f} s), ms:",
    ]
    for row in result["marquez"]["rows"]:
        parts = [f"ours {_f(row['ours_ms'], 2)}"]
        for name in ("getLineage", "getUpstreamRuns"):
            if f"{name}_ms" in row:
                v = row[f"{name}_ms"]
                ratio = f" ({v / row['ours_ms']:,.0f} times ours)" if v is not None else ""
                same = row.get(f"{name}_same_runs")
                parts.append(
                    f"{name} {_f(v, 0) if v is not None else '> timeout'}{ratio}"
                    + ("" if same is None else f" same runs: {same}")
                )
        head = f"  {row['direction']:<10} {row['versions']:>6,} versions: "
        lines.append(head + "; ".join(parts))
    p = result["propagation"]
    each = ", ".join(f"{r['s'] * 1000:,.0f}" for r in p["runs"])
    lines += [
        "",
        f"propagation: {p['start']} — {p['descendants']:,} descendants, {p['models']:,} models,"
        f" {p['edges']:,} edges",
        f"  handlers.on_finding in one unit of work, committed (median of {len(p['runs'])}):"
        f" {p['median_s'] * 1000:,.0f} ms ({each});"
        f" flags stored: {p['runs'][0]['flags']:,}",
        f"  downstream_edges alone: {_f(p['downstream_edges_ms'], 0)} ms; as before lineage_0004:"
        f" {_f(p['downstream_edges_before_ms'], 0)} ms; same result: {p['same_edges_as_before']}",
        "",
        f"walk plan for {result['explain']['start']} ({result['explain']['descendants']:,}"
        " descendants), EXPLAIN (ANALYZE, BUFFERS):",
        *("  " + line for line in result["explain"]["plan"]),
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Lineage graph queries at scale.")
    parser.add_argument("--nodes", "-n", type=int, default=200_000)
    parser.add_argument("--width", type=int, default=10_000, help="versions per layer")
    parser.add_argument("--window", type=int, default=70, help="parents within ± positions")
    parser.add_argument("--queries", "-q", type=int, default=400, help="random versions")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--runs", "-k", type=int, default=3)
    parser.add_argument("--marquez-per-bucket", type=int, default=2)
    parser.add_argument("--marquez-timeout", type=float, default=30.0, help="seconds")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep-logs", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(line: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)

    tag = uuid.uuid4().hex[:8]
    work_dir = Path(tempfile.mkdtemp(prefix=f"ct-bench-lineage-{tag}-"))
    bench = Bench(tag, work_dir, postgres_server_url())
    meta: Row = {
        **run_meta(),
        "runs": args.runs,
        "args": vars(args),
    }
    with bench_run(bench.stop, work_dir, keep_logs=args.keep_logs) as run:
        result = asyncio.run(measure(bench, args, log))
        meta["load_after"] = load_average()
        meta["postgres_version"] = asyncio.run(server_version(bench.url()))
        print(report(result, meta))
        print(f"\nJSON: {write_result('lineage_graph', result, meta).relative_to(REPO_ROOT)}")
        run.failed = False
    return 1 if run.failed else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
