"""Taint propagation from a dataset finding to every downstream model version. Pure."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from uuid import UUID, uuid5

from contracts.base import DatasetRef, ModelRef
from contracts.events import DatasetFinding, FindingStatus, ModelFlag

__all__ = [
    "FLAG_NAMESPACE",
    "LineageEdge",
    "Node",
    "flag_changes",
    "flag_id",
    "flags_for_finding",
]

FLAG_NAMESPACE = UUID("a3d9e0c4-1f7b-4c62-8e15-5b7f2d9c0a61")


@dataclass(frozen=True, slots=True, order=True)
class Node:
    """A dataset or model version in the lineage graph."""

    namespace: str
    name: str
    version: str
    is_model: bool = False

    @property
    def key(self) -> str:
        kind = "model" if self.is_model else "dataset"
        return f"{kind}:{self.namespace}:{self.name}#{self.version}"

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.namespace, self.name, self.version)


@dataclass(frozen=True, slots=True)
class LineageEdge:
    """A run read ``source`` and wrote ``target``."""

    source: Node
    run_id: UUID
    target: Node


def flag_id(finding_id: UUID, model: Node) -> UUID:
    return uuid5(FLAG_NAMESPACE, f"{finding_id}|{model.key}")


def flags_for_finding(finding: DatasetFinding, edges: Iterable[LineageEdge]) -> list[ModelFlag]:
    """Flag every model reachable from the finding's dataset version, with its shortest path.

    Breadth-first over run edges (dataset → run → model → run → model …), so each path
    is the shortest evidence chain; ties break on the sorted edge order for determinism.
    """
    if finding.status is not FindingStatus.ACTIVE or not finding.severity.flags_models:
        return []
    adjacency: dict[tuple[str, str, str], list[LineageEdge]] = {}
    for edge in sorted(edges, key=lambda e: (e.source, str(e.run_id), e.target)):
        adjacency.setdefault(edge.source.identity, []).append(edge)
    start = finding.dataset
    start_key = DatasetRef(namespace=start.namespace, name=start.name, version=start.version).key
    paths: dict[tuple[str, str, str], tuple[Node, tuple[str, ...]]] = {}
    queue: deque[tuple[tuple[str, str, str], tuple[str, ...]]] = deque(
        [((start.namespace, start.name, start.version), (start_key,))]
    )
    seen = {queue[0][0]}
    while queue:
        identity, path = queue.popleft()
        for edge in adjacency.get(identity, ()):
            target = edge.target.identity
            if target in seen:
                continue
            seen.add(target)
            target_path = (*path, f"run:{edge.run_id}", edge.target.key)
            paths[target] = (edge.target, target_path)
            queue.append((target, target_path))
    return [
        ModelFlag(
            flag_id=flag_id(finding.finding_id, node),
            status=FindingStatus.ACTIVE,
            model=ModelRef(namespace=node.namespace, name=node.name, version=node.version),
            finding_id=finding.finding_id,
            severity=finding.severity,
            reason=finding.reason,
            evidence_path=path,
            flagged_at=finding.detected_at,
        )
        for node, path in sorted(paths.values(), key=lambda p: p[0])
        if node.is_model
    ]


def flag_changes(
    finding: DatasetFinding, edges: Iterable[LineageEdge], stored: Mapping[UUID, ModelFlag]
) -> list[ModelFlag]:
    """What must change in the finding's stored flags so that they say what the graph says.

    New flags and flags whose evidence path changed (a shorter path appeared) are
    (re)published active; active flags the finding no longer supports (it was retracted, or
    its severity flags no model) are retracted, keeping what they said. A flag is per
    (finding, model): a model reached by another finding keeps that finding's flag, so
    retracting one cause removes exactly the flags resting on it (the alternate-path case
    included: another path of the *same* finding is the same flag).
    """
    desired = {f.flag_id: f for f in flags_for_finding(finding, edges)}
    changes = [flag for flag_id, flag in desired.items() if stored.get(flag_id) != flag]
    changes += [
        flag.model_copy(update={"status": FindingStatus.RETRACTED})
        for flag_id, flag in stored.items()
        if flag_id not in desired and flag.status is FindingStatus.ACTIVE
    ]
    return sorted(changes, key=lambda f: (f.model.namespace, f.model.name, f.model.version))
