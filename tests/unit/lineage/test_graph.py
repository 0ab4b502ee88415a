"""Lineage graph shaping (pure): node ids, Marquez's graph shape, the DOT picture."""

from __future__ import annotations

import re
from uuid import UUID, uuid5

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.lineage.domain.graph import (
    FindingInfo,
    Graph,
    InvalidNodeId,
    JobInfo,
    NodeType,
    RunInfo,
    VersionInfo,
    build_graph,
    dumps,
    graph_document,
    graph_json,
    parse_node_id,
    to_dot,
    version_key,
)
from services.lineage.domain.propagation import Node

RUNS = UUID("7d4c2b1a-0f9e-4d8c-b7a6-5e4d3c2b1a09")
FINDING = UUID("2f1d0c9e-5a4b-4c3d-8e2f-1a0b9c8d7e6f")


def run(label: str) -> UUID:
    return uuid5(RUNS, label)


def run_info(label: str, job: str = "train") -> RunInfo:
    return RunInfo(run(label), "ml", job, "2025-01-01T00:00:00+00:00", None, "RUNNING")


# ----------------------------------------------------------------------------- node ids


def test_version_ids_split_the_way_evidence_paths_write_them() -> None:
    query = parse_node_id("dataset:s3://lake:messages#v1")
    assert query.kind == "version"
    assert query.candidates[0] == ("s3://lake", "messages", "v1")
    node = Node("s3://lake", "messages", "v1")
    assert version_key(*node.identity, node.is_model) == node.key
    model = Node("models://ml", "clf", "3", is_model=True)
    assert version_key(*model.identity, True) == model.key == "model:models://ml:clf#3"


def test_uri_colons_belong_to_the_namespace_first() -> None:
    query = parse_node_id("dataset:postgres://db:5432:public.users#7")
    assert query.candidates[0] == ("postgres://db:5432", "public.users", "7")
    # The other splits stay candidates (a name may hold ':'), after the likely one.
    assert ("postgres", "//db:5432:public.users", "7") in query.candidates
    assert query.candidates[-1][2] is None  # without version: every version


def test_names_and_versions_holding_separators_are_candidates() -> None:
    query = parse_node_id("model:ns:a#b#c")
    assert ("ns", "a", "b#c") in query.candidates
    assert ("ns", "a#b", "c") in query.candidates
    assert ("ns", "a#b#c", None) in query.candidates


def test_run_and_job_ids() -> None:
    rid = run("x")
    assert parse_node_id(f"run:{rid}").run_id == rid
    job = parse_node_id("job:airflow://prod:etl.daily")
    assert job.kind == "job" and job.candidates[0] == ("airflow://prod", "etl.daily", None)


@pytest.mark.parametrize(
    "text",
    ["", "dataset", "dataset:", "table:a:b", "run:nope", "dataset:onlynamespace", "job::x"],
)
def test_bad_ids_are_refused(text: str) -> None:
    with pytest.raises(InvalidNodeId):
        parse_node_id(text)


# ----------------------------------------------------------------------------- shape


def small_graph() -> Graph:
    raw = VersionInfo(
        1,
        "s3://lake",
        "raw",
        "v1",
        False,
        findings=(FindingInfo(FINDING, "review", "improper_use"),),
    )
    clean = VersionInfo(2, "s3://lake", "clean", "v1", False)
    clf = VersionInfo(
        3,
        "models://ml",
        "clf",
        "1",
        True,
        flags=(
            FindingInfo(FINDING, "review", "later_withdrawal"),
            FindingInfo(UUID(int=7), "destroy_required", "improper_use"),
        ),
        status="quarantined",
    )
    versions = {v.node_id: v for v in (raw, clean, clf)}
    runs = {run(x): run_info(x) for x in ("a", "b")}
    return build_graph(
        [raw.key],
        versions,
        runs,
        [(1, run("a"), 2), (2, run("b"), 3), (1, run("a"), 2)],
    )


def test_marquez_shape_sorted_with_edges_on_both_ends() -> None:
    document = graph_document(small_graph())
    nodes = document["graph"]
    ids = [n["id"] for n in nodes]
    assert ids == sorted(ids)
    assert all(list(n) == ["id", "type", "data", "inEdges", "outEdges"] for n in nodes)
    by_id = {n["id"]: n for n in nodes}
    ra, rb = f"run:{run('a')}", f"run:{run('b')}"
    raw, clean, clf = (
        "dataset:s3://lake:raw#v1",
        "dataset:s3://lake:clean#v1",
        "model:models://ml:clf#1",
    )
    assert by_id[raw]["outEdges"] == [{"origin": raw, "destination": ra}]
    assert by_id[ra]["inEdges"] == [{"origin": raw, "destination": ra}]
    assert by_id[ra]["outEdges"] == [{"origin": ra, "destination": clean}]  # duplicates once
    assert by_id[clf]["inEdges"] == [{"origin": rb, "destination": clf}]
    assert by_id[clf]["type"] == "MODEL" and by_id[ra]["type"] == "RUN"
    data = by_id[clf]["data"]
    assert data["flagged"] is True and data["status"] == "quarantined"
    assert {f["severity"] for f in data["flags"]} == {"review", "destroy_required"}
    assert by_id[raw]["data"]["flagged"] is False
    assert by_id[raw]["data"]["findings"][0]["findingId"] == str(FINDING)
    assert by_id[ra]["data"]["job"] == {"namespace": "ml", "name": "train"}
    assert by_id[ra]["data"]["jobId"] == "job:ml:train"
    assert dumps(document).startswith(b'{"graph":[{"id":"dataset:s3://lake:clean#v1"')
    assert graph_json(small_graph()) == dumps(document)


def test_run_io_and_jobs() -> None:
    out = VersionInfo(5, "s3://lake", "out", "1", False)
    inp = VersionInfo(6, "s3://lake", "in", "1", False)
    graph = build_graph(
        ["job:ml:etl"],
        {5: out, 6: inp},
        {run("a"): run_info("a", "etl")},
        [],
        [(run("a"), "output", 5), (run("a"), "input", 6)],
        [JobInfo("ml", "etl", (run("a"),))],
    )
    ra = f"run:{run('a')}"
    assert graph.nodes["job:ml:etl"].out_edges == [ra]
    assert graph.nodes["job:ml:etl"].type is NodeType.JOB
    assert sorted(graph.nodes[ra].in_edges) == ["dataset:s3://lake:in#1", "job:ml:etl"]
    assert graph.nodes[ra].out_edges == ["dataset:s3://lake:out#1"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 3), st.integers(0, 7)), max_size=30))
def test_every_edge_appears_once_at_each_end(triples: list[tuple[int, int, int]]) -> None:
    versions = {i: VersionInfo(i, "ns", f"d{i}", "1", i % 2 == 0) for i in range(8)}
    runs = {run(str(r)): run_info(str(r)) for r in range(4)}
    edges = [(s, run(str(r)), d) for s, r, d in triples]
    graph = build_graph([], versions, runs, edges)
    document = graph_document(graph)
    assert graph_json(graph) == dumps(document)
    outs = sorted((e["origin"], e["destination"]) for n in document["graph"] for e in n["outEdges"])
    ins = sorted((e["origin"], e["destination"]) for n in document["graph"] for e in n["inEdges"])
    assert outs == ins and len(set(outs)) == len(outs)
    expected = {(versions[s].key, f"run:{run(str(r))}") for s, r, _ in triples} | {
        (f"run:{run(str(r))}", versions[d].key) for _, r, d in triples
    }
    assert set(outs) == expected


# ----------------------------------------------------------------------------- picture


def test_dot_marks_flagged_models_with_their_gravest_severity() -> None:
    dot = to_dot(small_graph())
    assert dot.startswith("digraph lineage {") and dot.rstrip().endswith("}")
    clf_line = next(line for line in dot.splitlines() if line.startswith('  "model:'))
    assert 'fillcolor="#f4a6a6"' in clf_line and "destroy_required" in clf_line
    raw_line = next(line for line in dot.splitlines() if 'raw#v1" [' in line)
    assert 'penwidth="3"' in raw_line  # the start
    assert "finding: review" in raw_line  # a dataset with a finding: outlined, not filled
    assert 'fillcolor="#f4a6a6"' not in raw_line
    assert len(re.findall(r" -> ", dot)) == 4


def test_dot_and_json_escape_quotes_backslashes_and_newlines() -> None:
    odd = VersionInfo(1, 's3://x"y', "a\\b", "1\nü", False, status="q\u0001")
    graph = build_graph([], {1: odd}, {}, [])
    assert graph_json(graph) == dumps(graph_document(graph))
    assert graph_document(graph)["graph"][0]["data"]["name"] == "a\\b"
    dot = to_dot(build_graph([], {1: VersionInfo(1, 's3://x"y', "a\\b", "1", False)}, {}, []))
    assert '"dataset:s3://x\\"y:a\\\\b#1"' in dot
