"""The in-memory lineage graph against the SQL walk, on a real lineage database.

A seeded random graph (runs with 1-3 inputs and 1-2 outputs, models and datasets, tricky
names, flags, findings, statuses) is written into the lineage tables the way the service
writes them; then every node id (versions with and without version, runs, jobs) in every
direction at several depths must answer byte for byte what the SQL path answers — after
the first load, after changes applied incrementally (new runs and versions, a dataset
becoming a model, flags raised and retracted, statuses, run states), with a writer
committing out of order, and after the change log was pruned under the copy.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

import asyncpg
import pytest

from services.lineage.adapters.graph_changes import GraphChangeLog
from services.lineage.domain.graph import Direction, graph_json, parse_node_id
from services.lineage.service.graph import NodeNotFound, lineage_graph
from services.lineage.service.graph_cache import GraphCache, NotCached
from services.runtime.testing import migrate_service

pytestmark = pytest.mark.integration

DEPTHS = (1, 20)  # depth 0 and others: tests/unit/lineage/test_graph_index.py
NAMESPACES = ("s3://lake", "postgres://db:5432", "models://ml")


@dataclass
class Graph:
    """What the test wrote, to name every node."""

    versions: list[tuple[str, str, str, bool]] = field(default_factory=list)
    runs: list[tuple[uuid.UUID, str, str]] = field(default_factory=list)

    def node_ids(self) -> Iterator[str]:
        for ns, name, version, is_model in self.versions:
            kind = "model" if is_model else "dataset"
            yield f"{kind}:{ns}:{name}#{version}"
            yield f"dataset:{ns}:{name}"
        for run_id, job_ns, job_name in self.runs:
            yield f"run:{run_id}"
            yield f"job:{job_ns}:{job_name}"


@pytest.fixture
async def pool(make_database: Callable[[str], str]) -> AsyncIterator[asyncpg.Pool]:
    url = make_database("lineage_cache")
    migrate_service("lineage", url)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=6)
    try:
        yield pool
    finally:
        await pool.close()


async def add_run(
    conn: asyncpg.Connection,
    graph: Graph,
    rng: random.Random,
    inputs: list[tuple[str, str, str, bool]],
    outputs: list[tuple[str, str, str, bool]],
) -> uuid.UUID:
    run_id = uuid.UUID(int=rng.getrandbits(128), version=4)
    job = (rng.choice(("jobs", "jobs:etl")), f"job-{rng.randrange(6)}")
    await conn.execute(
        "INSERT INTO runs (run_id, job_namespace, job_name, started_at, state)"
        " VALUES ($1, $2, $3, now(), 'RUNNING')",
        run_id,
        *job,
    )
    rows = [(run_id, "input", *v) for v in inputs] + [(run_id, "output", *v) for v in outputs]
    await conn.executemany(
        "INSERT INTO run_io (run_id, direction, namespace, name, version, is_model, seen_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, now()) ON CONFLICT DO NOTHING",
        rows,
    )
    graph.runs.append((run_id, *job))
    for v in (*inputs, *outputs):
        if v not in graph.versions:
            graph.versions.append(v)
    return run_id


def new_version(rng: random.Random, n: int, tag: str = "") -> tuple[str, str, str, bool]:
    is_model = rng.random() < 0.4
    ns = NAMESPACES[2] if is_model else rng.choice(NAMESPACES[:2])
    name = rng.choice((f"t{n}", f"t:{n}", f"t#{n}", f'tä"{n}')) + tag
    return ns, name, rng.choice(("v1", "2025-01-01", "a#b")), is_model


async def grow(
    conn: asyncpg.Connection, graph: Graph, rng: random.Random, runs: int, tag: str = ""
) -> None:
    """``runs`` more runs, each reading 0-3 known versions and writing 1-2 new ones (one
    run in ten also writes a version that exists: a second writer)."""
    for _ in range(runs):
        known = graph.versions or [new_version(rng, 0, tag)]
        inputs = rng.sample(known, min(len(known), rng.randint(0, 3)))  # 0: a source run
        outputs = [new_version(rng, len(graph.versions) + i, tag) for i in range(rng.randint(1, 2))]
        if graph.versions and rng.random() < 0.1:
            outputs.append(rng.choice(graph.versions))
        await add_run(conn, graph, rng, inputs, outputs)


async def mark(conn: asyncpg.Connection, graph: Graph, rng: random.Random, count: int) -> None:
    """Flags on models, findings on datasets, statuses on models (some retracted)."""
    for _ in range(count):
        ns, name, version, is_model = rng.choice(graph.versions)
        finding = uuid.UUID(int=rng.getrandbits(128), version=4)
        severity = rng.choice(("destroy_required", "retrain_required", "review"))
        body = json.dumps({"reason": rng.choice(("improper_use", "later_withdrawal"))})
        if is_model:
            await conn.execute(
                "INSERT INTO model_flags (flag_id, namespace, name, version, finding_id,"
                " severity, status, body) VALUES ($1, $2, $3, $4, $5, $6, 'active', $7)",
                uuid.uuid4(), ns, name, version, finding, severity, body,
            )  # fmt: skip
            await conn.execute(
                "INSERT INTO model_status (namespace, name, version, status, actor, reason,"
                " changed_at) VALUES ($1, $2, $3, $4, 'ml', 'test', now())"
                " ON CONFLICT (namespace, name, version) DO UPDATE SET status = excluded.status",
                ns, name, version, rng.choice(("quarantined", "destroyed", "active")),
            )  # fmt: skip
        else:
            await conn.execute(
                "INSERT INTO findings (finding_id, namespace, name, version, severity, status,"
                " body) VALUES ($1, $2, $3, $4, $5, 'active', $6)",
                finding, ns, name, version, severity, body,
            )  # fmt: skip
    await conn.execute(
        "UPDATE model_flags SET status = 'retracted' WHERE flag_id IN"
        " (SELECT flag_id FROM model_flags ORDER BY flag_id LIMIT 2)"
    )
    await conn.execute(
        "UPDATE runs SET state = 'COMPLETE', ended_at = now() WHERE run_id IN"
        " (SELECT run_id FROM runs ORDER BY run_id LIMIT 3)"
    )


async def sql_answer(pool: asyncpg.Pool, node_id: str, depth: int, way: Direction) -> bytes | None:
    async with pool.acquire() as conn:
        try:
            graph = await lineage_graph(conn, node_id, depth=depth, direction=way, as_of=None)
        except NodeNotFound:
            return None
        return graph_json(graph)


async def loaded(pool: asyncpg.Pool) -> GraphCache:
    cache = GraphCache(pool, max_versions=1_000_000)
    with pytest.raises(NotCached):
        await cache.answer(parse_node_id("run:" + str(uuid.uuid4())), 1, Direction.BOTH)
    for _ in range(200):
        if cache.ready:
            return cache
        await asyncio.sleep(0.05)
    raise AssertionError("the graph copy did not load")


async def assert_same(pool: asyncpg.Pool, cache: GraphCache, graph: Graph) -> int:
    """Every node id, direction and depth: the copy's answer is the SQL path's."""
    compared = 0
    for node_id in dict.fromkeys(graph.node_ids()):
        for way in Direction:
            for depth in DEPTHS:
                want = await sql_answer(pool, node_id, depth, way)
                got = await cache.answer(parse_node_id(node_id), depth, way)
                assert got == want, f"{node_id} {way} depth {depth}"
                compared += want is not None
    return compared


async def test_the_copy_answers_what_sql_answers(pool: asyncpg.Pool) -> None:
    rng = random.Random(20261126)
    graph = Graph()
    async with pool.acquire() as conn:
        await grow(conn, graph, rng, 20)
        await mark(conn, graph, rng, 10)
    cache = await loaded(pool)
    assert await assert_same(pool, cache, graph) > 200
    assert await cache.answer(parse_node_id("dataset:s3://nowhere:x#1"), 2, Direction.BOTH) is None

    # Changes, applied incrementally: more runs (new edges onto known versions), a known
    # dataset version written as a model (its id changes), flags, retractions, statuses.
    reloads = cache.reloads
    async with pool.acquire() as conn:
        await grow(conn, graph, rng, 8)
        ns, name, version, _ = next(v for v in graph.versions if not v[3])
        await add_run(conn, graph, rng, [graph.versions[0]], [(ns, name, version, True)])
        graph.versions.append((ns, name, version, True))
        await mark(conn, graph, rng, 8)
    await assert_same(pool, cache, graph)
    assert cache.reloads == reloads, "changes were applied without re-reading the graph"


async def test_a_writer_committing_late_is_not_missed(pool: asyncpg.Pool) -> None:
    """A transaction that started before another but commits after it: a copy that caught
    up in between must still see the late one (the reason for snapshots, not sequences)."""
    rng = random.Random(7)
    graph = Graph()
    async with pool.acquire() as conn:
        await grow(conn, graph, rng, 5)
    cache = await loaded(pool)
    # Two writers on versions committed before (neither waits on the other's new rows).
    early_graph = Graph(list(graph.versions))
    late_graph = Graph(list(graph.versions))
    async with pool.acquire() as early, pool.acquire() as late:
        tx = early.transaction()
        await tx.start()
        await grow(early, early_graph, rng, 2, tag="-early")  # uncommitted: older txid
        await grow(late, late_graph, rng, 2, tag="-late")  # committed first
        await assert_same_visible(pool, cache, late_graph)
        await tx.commit()
    graph.versions = list(dict.fromkeys([*early_graph.versions, *late_graph.versions]))
    graph.runs = [*early_graph.runs, *late_graph.runs]
    await assert_same_visible(pool, cache, graph)


async def assert_same_visible(pool: asyncpg.Pool, cache: GraphCache, graph: Graph) -> None:
    for node_id in dict.fromkeys(graph.node_ids()):
        want = await sql_answer(pool, node_id, 20, Direction.BOTH)
        got = await cache.answer(parse_node_id(node_id), 20, Direction.BOTH)
        assert got == want, node_id


async def prune_all(conn: asyncpg.Connection) -> None:
    await conn.execute("UPDATE graph_changes SET logged_at = now() - interval '1 day'")
    assert await GraphChangeLog(conn).prune(600, 100_000, txids_retention_s=86_400) > 0
    assert await conn.fetchval("SELECT count(*) FROM graph_changes") == 0


async def test_pruning_the_log_under_a_copy(pool: asyncpg.Pool) -> None:
    """Rows the copy has seen can go without harm; rows it has not seen make it re-read the
    whole graph rather than miss them."""
    rng = random.Random(11)
    graph = Graph()
    async with pool.acquire() as conn:
        await grow(conn, graph, rng, 6)
    cache = await loaded(pool)
    async with pool.acquire() as conn:
        await grow(conn, graph, rng, 3)
    await assert_same_visible(pool, cache, graph)  # the copy has seen those changes
    reloads = cache.reloads
    async with pool.acquire() as conn:
        await prune_all(conn)
    await assert_same_visible(pool, cache, graph)
    assert cache.reloads == reloads, "changes the copy had seen were pruned: no re-read"

    async with pool.acquire() as conn:
        await grow(conn, graph, rng, 3)
        await prune_all(conn)  # gone before the copy looked
    await assert_same_visible(pool, cache, graph)
    assert cache.reloads == reloads + 1
