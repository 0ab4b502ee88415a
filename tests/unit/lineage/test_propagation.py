"""Taint propagation from a dataset finding through runs to every downstream model."""

from __future__ import annotations

import random
from collections import deque
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid5

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.base import ModelRef
from contracts.events import DatasetFinding, FindingReason, FindingStatus, Severity
from services.lineage.domain.propagation import (
    LineageEdge,
    Node,
    flag_changes,
    flag_id,
    flags_for_finding,
)
from services.runtime.testing import dataset_finding

T0 = datetime(2025, 1, 10, tzinfo=UTC)
FINDING = UUID("2f1d0c9e-5a4b-4c3d-8e2f-1a0b9c8d7e6f")
RUNS = UUID("7d4c2b1a-0f9e-4d8c-b7a6-5e4d3c2b1a09")


def ds(name: str, version: str = "v1") -> Node:
    return Node("s3://lake", name, version)


def model(name: str, version: str = "v1") -> Node:
    return Node("models", name, version, is_model=True)


def run(label: str) -> UUID:
    return uuid5(RUNS, label)


def edge(source: Node, label: str, target: Node) -> LineageEdge:
    return LineageEdge(source, run(label), target)


def finding_for(node: Node, **overrides: Any) -> DatasetFinding:
    fields: dict[str, Any] = {
        "finding_id": FINDING,
        "severity": Severity.RETRAIN_REQUIRED,
        "reason": FindingReason.LATER_WITHDRAWAL,
        "policy_id": "ai",
        "rule": "r",
        "detected_at": T0,
    }
    return dataset_finding((node.namespace, node.name, node.version), **fields | overrides)


POSTS = ds("posts")
TOKENS = ds("posts-tokenized")
BASE = model("base")
CHAT = model("chat")
DISTILLED = model("distilled")
UPSTREAM = ds("raw-posts")
UPSTREAM_MODEL = model("upstream-only")
OTHER = ds("clicks")
UNRELATED = model("ranker")
POSTS_V2 = ds("posts", "v2")
BASE_V2 = model("base", "v2")

GRAPH = [
    edge(UPSTREAM, "clean", POSTS),
    edge(UPSTREAM, "pretrain-upstream", UPSTREAM_MODEL),
    edge(POSTS, "pretrain", BASE),
    edge(BASE, "finetune", CHAT),
    edge(POSTS, "tokenize", TOKENS),
    edge(TOKENS, "distill", DISTILLED),
    edge(OTHER, "rank", UNRELATED),
    edge(POSTS_V2, "pretrain-v2", BASE_V2),
]


def flagged(finding: DatasetFinding, edges: list[LineageEdge]) -> dict[str, tuple[str, ...]]:
    return {f.model.key: f.evidence_path for f in flags_for_finding(finding, edges)}


def test_every_downstream_model_is_flagged_and_nothing_else() -> None:
    assert set(flagged(finding_for(POSTS), GRAPH)) == {BASE.key, CHAT.key, DISTILLED.key}


def test_evidence_paths_run_from_the_dataset_through_runs_to_the_model() -> None:
    paths = flagged(finding_for(POSTS), GRAPH)
    dataset_key = "dataset:s3://lake:posts#v1"
    assert paths[BASE.key] == (dataset_key, f"run:{run('pretrain')}", "model:models:base#v1")
    assert paths[CHAT.key] == (
        dataset_key,
        f"run:{run('pretrain')}",
        BASE.key,
        f"run:{run('finetune')}",
        CHAT.key,
    )
    assert paths[DISTILLED.key] == (
        dataset_key,
        f"run:{run('tokenize')}",
        TOKENS.key,
        f"run:{run('distill')}",
        DISTILLED.key,
    )


def test_the_evidence_path_is_the_shortest() -> None:
    shortcut = edge(POSTS, "distill-direct", DISTILLED)
    paths = flagged(finding_for(POSTS), [*GRAPH, shortcut])
    assert paths[DISTILLED.key] == (POSTS.key, f"run:{run('distill-direct')}", DISTILLED.key)


def test_a_finding_for_one_version_does_not_reach_another() -> None:
    assert set(flagged(finding_for(POSTS_V2), GRAPH)) == {BASE_V2.key}


def test_flags_carry_the_finding() -> None:
    finding = finding_for(POSTS, severity=Severity.DESTROY_REQUIRED)
    flags = flags_for_finding(finding, GRAPH)
    for flag in flags:
        assert flag.finding_id == FINDING
        assert flag.severity is Severity.DESTROY_REQUIRED
        assert flag.reason is FindingReason.LATER_WITHDRAWAL
        assert flag.status is FindingStatus.ACTIVE
        assert flag.flagged_at == finding.detected_at
        assert flag.evidence_path[-1] == flag.model.key
    assert [f.model.name for f in flags] == sorted(f.model.name for f in flags)


def test_flag_ids_are_deterministic_per_finding_and_model() -> None:
    first = {f.model.key: f.flag_id for f in flags_for_finding(finding_for(POSTS), GRAPH)}
    again = {f.model.key: f.flag_id for f in flags_for_finding(finding_for(POSTS), GRAPH[::-1])}
    other = {
        f.model.key: f.flag_id
        for f in flags_for_finding(finding_for(POSTS, finding_id=UUID(int=7)), GRAPH)
    }
    assert first == again
    assert len(set(first.values())) == len(first)
    assert not set(first.values()) & set(other.values())
    assert first[BASE.key] == flag_id(FINDING, BASE)


@pytest.mark.parametrize(
    ("severity", "status"),
    [
        (Severity.EXCLUDE_FROM_FUTURE, FindingStatus.ACTIVE),
        (Severity.DESTROY_REQUIRED, FindingStatus.RETRACTED),
        (Severity.REVIEW, FindingStatus.RETRACTED),
    ],
)
def test_findings_that_flag_no_model(severity: Severity, status: FindingStatus) -> None:
    finding = finding_for(POSTS, severity=severity, status=status)
    assert flags_for_finding(finding, GRAPH) == []


@pytest.mark.parametrize("severity", [Severity.REVIEW, Severity.RETRAIN_REQUIRED])
def test_review_and_retrain_flag_models(severity: Severity) -> None:
    assert len(flags_for_finding(finding_for(POSTS, severity=severity), GRAPH)) == 3


def test_a_dataset_without_lineage_flags_nothing() -> None:
    assert flags_for_finding(finding_for(ds("orphan")), GRAPH) == []


@pytest.mark.timeout(10)
def test_cycles_terminate_and_flag_each_model_once() -> None:
    edges = [
        edge(POSTS, "a", BASE),
        edge(BASE, "b", CHAT),
        edge(CHAT, "c", BASE),
        edge(CHAT, "d", POSTS),
        edge(CHAT, "self", CHAT),
    ]
    flags = flags_for_finding(finding_for(POSTS), edges)
    assert sorted(f.model.key for f in flags) == sorted([BASE.key, CHAT.key])


# --- property: random lineage graphs --------------------------------------------------------

NODES = [ds("posts"), *(ds(f"d{i}") for i in range(4)), *(model(f"m{i}") for i in range(6))]


@st.composite
def graphs(draw: st.DrawFn) -> list[LineageEdge]:
    pairs = draw(
        st.lists(
            st.tuples(st.integers(0, len(NODES) - 1), st.integers(0, len(NODES) - 1)),
            max_size=30,
        )
    )
    return [LineageEdge(NODES[s], run(f"r{n % 7}-{s}"), NODES[t]) for n, (s, t) in enumerate(pairs)]


def distances(start: Node, edges: list[LineageEdge]) -> dict[Node, int]:
    """Independent BFS: hop counts from ``start`` over the edges."""
    hops = {start: 0}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for e in edges:
            if e.source == node and e.target not in hops:
                hops[e.target] = hops[node] + 1
                queue.append(e.target)
    return hops


@settings(max_examples=150, deadline=None)
@given(edges=graphs(), seed=st.integers(0, 2**32))
def test_flags_are_exactly_the_reachable_models_with_valid_shortest_paths(
    edges: list[LineageEdge], seed: int
) -> None:
    start = NODES[0]
    finding = finding_for(start)
    flags = flags_for_finding(finding, edges)

    shuffled = list(edges)
    random.Random(seed).shuffle(shuffled)
    assert flags_for_finding(finding, shuffled) == flags

    hops = distances(start, edges)
    reachable = {n.key for n in hops if n.is_model}
    assert {f.model.key for f in flags} == reachable
    assert len(flags) == len(reachable)

    by_key = {n.key: n for n in NODES}
    known = {(e.source.key, f"run:{e.run_id}", e.target.key) for e in edges}
    for flag in flags:
        path = flag.evidence_path
        assert path[0] == finding.dataset.key
        assert path[-1] == flag.model.key
        assert all(step.startswith("run:") for step in path[1::2])
        for i in range(0, len(path) - 2, 2):
            assert (path[i], path[i + 1], path[i + 2]) in known
        assert len(path) == 2 * hops[by_key[flag.model.key]] + 1


# --- flag lifecycle ----------------------------------------------------------------------


def apply(stored: dict[UUID, Any], changes: list[Any]) -> dict[UUID, Any]:
    return {**stored, **{f.flag_id: f for f in changes}}


def test_flags_appear_once_and_recomputing_changes_nothing() -> None:
    finding = finding_for(POSTS)
    first = flag_changes(finding, GRAPH, {})
    assert {f.model for f in first} and all(f.status is FindingStatus.ACTIVE for f in first)
    assert flag_changes(finding, GRAPH, apply({}, first)) == []


def test_a_retracted_finding_retracts_exactly_its_own_flags() -> None:
    finding = finding_for(POSTS)
    other = finding_for(POSTS, finding_id=uuid5(FINDING, "other"))
    mine = apply({}, flag_changes(finding, GRAPH, {}))
    theirs = apply({}, flag_changes(other, GRAPH, {}))

    retracted = flag_changes(
        finding.model_copy(update={"status": FindingStatus.RETRACTED}), GRAPH, mine
    )

    assert {f.flag_id for f in retracted} == set(mine)
    assert all(f.status is FindingStatus.RETRACTED for f in retracted)
    assert all(f.evidence_path == mine[f.flag_id].evidence_path for f in retracted)
    # The other cause's flags on the same models are untouched: those models stay flagged.
    assert flag_changes(other, GRAPH, theirs) == []
    assert {f.model for f in theirs.values()} == {f.model for f in retracted}
    # Retracting again changes nothing; re-activation brings the same flags back.
    after = apply(mine, retracted)
    assert (
        flag_changes(finding.model_copy(update={"status": FindingStatus.RETRACTED}), GRAPH, after)
        == []
    )
    again = flag_changes(finding, GRAPH, after)
    assert {f.flag_id for f in again} == set(mine)
    assert all(f.status is FindingStatus.ACTIVE for f in again)


def test_a_finding_that_flags_no_model_retracts_nothing_it_never_flagged() -> None:
    finding = finding_for(POSTS, severity=Severity.EXCLUDE_FROM_FUTURE)
    assert flag_changes(finding, GRAPH, {}) == []


def test_a_shorter_path_appearing_later_republishes_the_flag_with_it() -> None:
    finding = finding_for(POSTS)
    long_path = [edge(POSTS, "a", TOKENS), edge(TOKENS, "b", BASE), edge(BASE, "c", CHAT)]
    stored = apply({}, flag_changes(finding, long_path, {}))
    shortcut = [*long_path, edge(POSTS, "d", CHAT)]
    (changed,) = flag_changes(finding, shortcut, stored)
    assert changed.model == ModelRef(namespace=CHAT.namespace, name=CHAT.name, version=CHAT.version)
    assert len(changed.evidence_path) == 3


@settings(max_examples=60, deadline=None)
@given(order=st.permutations(range(len(GRAPH))), split=st.integers(0, len(GRAPH)))
def test_flags_converge_whatever_order_edges_arrive_in(order: list[int], split: int) -> None:
    """Edges arriving in two steps, in any order, leave the same flags as all at once."""
    finding = finding_for(POSTS)
    edges = [GRAPH[i] for i in order]
    stored = apply({}, flag_changes(finding, edges[:split], {}))
    stored = apply(stored, flag_changes(finding, edges, stored))
    assert stored == apply({}, flag_changes(finding, GRAPH, {}))
