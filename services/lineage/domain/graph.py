"""Lineage queries shaped as a graph, and drawn. Pure: no I/O.

The graph is version-level and bipartite, as runs report it: a dataset or model version
(``dataset:{namespace}:{name}#{version}``, ``model:{namespace}:{name}#{version}``, the ids
our evidence paths use) is read by runs (``run:{uuid}``) that write other versions. A job
(``job:{namespace}:{name}``) stands for its runs. The answer has the shape Marquez's
``GET /api/v1/lineage`` gives (``{"graph": [{"id", "type", "data", "inEdges",
"outEdges"}]}``, edges ``{"origin", "destination"}``), with node types ``DATASET``,
``MODEL``, ``RUN`` and ``JOB``.

Depth counts runs: the graph holds every node reachable from the start through at most
``depth`` runs in the asked direction (a run, or a job's runs, count as the first).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from json.encoder import encode_basestring
from typing import Any, Literal
from uuid import UUID

__all__ = [
    "DEFAULT_DEPTH",
    "MAX_DEPTH",
    "SEVERITY_RANK",
    "Direction",
    "FindingInfo",
    "Graph",
    "GraphNode",
    "InvalidNodeId",
    "JobInfo",
    "NodeQuery",
    "NodeType",
    "RunInfo",
    "VersionEdge",
    "VersionInfo",
    "build_graph",
    "dumps",
    "graph_document",
    "graph_json",
    "graph_json_of",
    "job_data_json",
    "job_key",
    "node_head",
    "node_json",
    "parse_node_id",
    "run_data_json",
    "run_key",
    "to_dot",
    "version_data_json",
    "version_key",
]

DEFAULT_DEPTH = 20
"""As Marquez's lineage endpoint."""
MAX_DEPTH = 64
"""The deepest walk asked for; propagation follows runs this far too."""
SEVERITY_RANK = {"destroy_required": 3, "retrain_required": 2, "review": 1}


class NodeType(StrEnum):
    DATASET = "DATASET"
    MODEL = "MODEL"
    RUN = "RUN"
    JOB = "JOB"


class Direction(StrEnum):
    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"
    BOTH = "both"


class InvalidNodeId(ValueError):
    """A node id that names no kind of node we know (an HTTP 422)."""


# ----------------------------------------------------------------------------- node ids


def version_key(namespace: str, name: str, version: str, is_model: bool) -> str:
    """As ``propagation.Node.key``: ``dataset:`` or ``model:`` ns ``:`` name ``#`` version."""
    return f"{'model' if is_model else 'dataset'}:{namespace}:{name}#{version}"


def run_key(run_id: UUID) -> str:
    return f"run:{run_id}"


def job_key(namespace: str, name: str) -> str:
    return f"job:{namespace}:{name}"


@dataclass(frozen=True, slots=True)
class NodeQuery:
    """A parsed node id.

    Namespaces are URIs (``s3://bucket``, ``postgres://host:5432``) and names may hold
    ``:`` or ``#``, so a dataset or job id can split in more than one way. ``candidates``
    lists every split, the likeliest first (Marquez's rule: a ``:`` followed by ``//`` or a
    digit belongs to a URI); the repository takes the first one the graph knows.
    ``version`` None in a candidate means every version of that dataset.
    """

    kind: Literal["version", "run", "job"]
    text: str
    candidates: tuple[tuple[str, str, str | None], ...] = ()
    run_id: UUID | None = None


def _splits(rest: str, sep: str) -> list[tuple[str, str]]:
    """Every (left, right) split of ``rest`` at ``sep`` with both sides non-empty."""
    out = []
    at = rest.find(sep)
    while at != -1:
        if 0 < at < len(rest) - 1:
            out.append((rest[:at], rest[at + 1 :]))
        at = rest.find(sep, at + 1)
    return out


def _uri_like(rest: str, at: int) -> bool:
    tail = rest[at + 1 :]
    return tail.startswith("//") or tail[:1].isdigit()


def _namespace_splits(rest: str) -> list[tuple[str, str]]:
    splits = _splits(rest, ":")
    # Marquez's preference first: a ':' that starts '//' or a port is part of the namespace.
    return sorted(splits, key=lambda s: _uri_like(rest, len(s[0])))


def parse_node_id(text: str) -> NodeQuery:
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise InvalidNodeId(
            f"node id {text!r} must look like dataset:NAMESPACE:NAME#VERSION,"
            " model:NAMESPACE:NAME#VERSION, run:UUID or job:NAMESPACE:NAME"
        )
    if kind == "run":
        try:
            return NodeQuery("run", text, run_id=UUID(rest))
        except ValueError:
            raise InvalidNodeId(f"node id {text!r}: {rest!r} is not a run UUID") from None
    if kind not in ("dataset", "model", "job"):
        raise InvalidNodeId(f"node id {text!r} must start with dataset:, model:, run: or job:")
    names = _namespace_splits(rest)
    if not names:
        raise InvalidNodeId(f"node id {text!r} has no NAMESPACE:NAME")
    if kind == "job":
        return NodeQuery("job", text, tuple((ns, name, None) for ns, name in names))
    versioned = [
        (ns, name, version) for ns, after in names for name, version in _splits(after, "#")
    ]
    # ``dataset:ns:name`` (no version) means every version of the dataset.
    return NodeQuery("version", text, (*versioned, *((ns, name, None) for ns, name in names)))


# ----------------------------------------------------------------------------- what a walk finds


VersionEdge = tuple[int, UUID, int]
"""(src, run_id, dst): run ``run_id`` read version ``src`` and wrote version ``dst`` (node
ids). Plain tuples: a walk finds tens of thousands."""


@dataclass(frozen=True, slots=True)
class FindingInfo:
    finding_id: UUID
    severity: str
    reason: str


@dataclass(frozen=True, slots=True)
class VersionInfo:
    node_id: int
    namespace: str
    name: str
    version: str
    is_model: bool
    flags: tuple[FindingInfo, ...] = ()
    """Active model flags (models)."""
    findings: tuple[FindingInfo, ...] = ()
    """Active findings on this very version (datasets)."""
    status: str | None = None
    """``model_status`` when one was set (quarantined, destroyed, …)."""

    @property
    def key(self) -> str:
        return version_key(self.namespace, self.name, self.version, self.is_model)

    @property
    def severity(self) -> str | None:
        """The gravest active flag or finding."""
        marks = self.flags or self.findings
        if not marks:
            return None
        return max(marks, key=lambda m: SEVERITY_RANK.get(m.severity, 0)).severity


@dataclass(frozen=True, slots=True)
class RunInfo:
    run_id: UUID
    job_namespace: str
    job_name: str
    started_at: str | None
    """ISO 8601, as stored."""
    ended_at: str | None
    state: str | None


@dataclass(frozen=True, slots=True)
class JobInfo:
    namespace: str
    name: str
    run_ids: tuple[UUID, ...]


@dataclass(slots=True)
class GraphNode:
    id: str
    type: NodeType
    data_json: str
    """The node's ``data``, as JSON text (written once, copied into the answer as is)."""
    in_edges: list[str] = field(default_factory=list)
    out_edges: list[str] = field(default_factory=list)
    flagged: bool = False
    severity: str | None = None
    label: str = ""

    @property
    def data(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.data_json)
        return value


@dataclass(slots=True)
class Graph:
    """Nodes by id, with their edges as the other end's id (sorted, each once)."""

    starts: frozenset[str]
    """Where the walk started (every version of a dataset asked for without one)."""
    nodes: dict[str, GraphNode]

    @property
    def edge_count(self) -> int:
        return sum(len(n.out_edges) for n in self.nodes.values())


_q = encode_basestring
"""A JSON string, as ``json.dumps(value, ensure_ascii=False)`` writes it."""


def _qn(value: str | None) -> str:
    return "null" if value is None else encode_basestring(value)


def _marks_json(marks: Sequence[FindingInfo]) -> str:
    if not marks:
        return "[]"
    return (
        "["
        + ",".join(
            f'{{"findingId":"{m.finding_id}","severity":{_q(m.severity)},"reason":{_q(m.reason)}}}'
            for m in marks
        )
        + "]"
    )


def version_data_json(info: VersionInfo) -> str:
    """A version node's ``data`` as compact JSON text."""
    kind = NodeType.MODEL if info.is_model else NodeType.DATASET
    ns, name, version = _q(info.namespace), _q(info.name), _q(info.version)
    return (
        f'{{"id":{{"namespace":{ns},"name":{name},"version":{version}}},'
        f'"type":"{kind}","namespace":{ns},"name":{name},"version":{version},'
        f'"flagged":{"true" if info.flags else "false"},"flags":{_marks_json(info.flags)},'
        f'"findings":{_marks_json(info.findings)},"status":{_qn(info.status)}}}'
    )


def run_data_json(info: RunInfo) -> str:
    """A run node's ``data`` as compact JSON text."""
    return (
        f'{{"id":"{info.run_id}","job":{{"namespace":{_q(info.job_namespace)},'
        f'"name":{_q(info.job_name)}}},"jobId":{_q(job_key(info.job_namespace, info.job_name))},'
        f'"startedAt":{_qn(info.started_at)},"endedAt":{_qn(info.ended_at)},'
        f'"state":{_qn(info.state)}}}'
    )


def job_data_json(info: JobInfo) -> str:
    """A job node's ``data`` as compact JSON text (its runs' ids, sorted)."""
    data = {
        "id": {"namespace": info.namespace, "name": info.name},
        "namespace": info.namespace,
        "name": info.name,
        "runs": sorted(str(r) for r in info.run_ids),
    }
    return _compact(data)


def node_head(key: str, kind: NodeType, data_json: str) -> str:
    """A node's JSON up to its in-edges: ``{"id":…,"type":…,"data":…,"inEdges":[``."""
    return '{"id":' + _q(key) + ',"type":"' + kind + '","data":' + data_json + ',"inEdges":['


def node_json(key: str, head: str, in_edges: Sequence[str], out_edges: Sequence[str]) -> str:
    """One node of the answer, its edges given as the other ends' ids (sorted, distinct).

    Each edge object is written whole at both of its ends, as Marquez does; they are joined
    around the node's own quoted id rather than built one by one (tens of thousands)."""
    me = _q(key)
    ins = (
        '{"origin":'
        + (',"destination":' + me + '},{"origin":').join(map(_q, in_edges))
        + ',"destination":' + me + "}"
        if in_edges
        else ""
    )  # fmt: skip
    outs = (
        '{"origin":' + me + ',"destination":'
        + ('},{"origin":' + me + ',"destination":').join(map(_q, out_edges))
        + "}"
        if out_edges
        else ""
    )  # fmt: skip
    return head + ins + '],"outEdges":[' + outs + "]}"


def graph_json_of(
    nodes: Mapping[str, str],
    edges_in: Mapping[str, Sequence[str]],
    edges_out: Mapping[str, Sequence[str]],
) -> bytes:
    """The answer from node heads (``node_head``) and each node's sorted edge ends."""
    empty: Sequence[str] = ()
    return (
        '{"graph":['
        + ",".join(
            node_json(key, nodes[key], edges_in.get(key, empty), edges_out.get(key, empty))
            for key in sorted(nodes)
        )
        + "]}"
    ).encode()


def _version_node(info: VersionInfo, key: str) -> GraphNode:
    kind = NodeType.MODEL if info.is_model else NodeType.DATASET
    return GraphNode(
        key,
        kind,
        version_data_json(info),
        flagged=bool(info.flags),
        severity=info.severity,
        label=f"{info.name}\n#{_short(info.version)}",
    )


def _run_node(info: RunInfo, key: str) -> GraphNode:
    label = f"{info.job_name}\nrun {key[4:12]}"
    return GraphNode(key, NodeType.RUN, run_data_json(info), label=label)


def _job_node(info: JobInfo) -> GraphNode:
    return GraphNode(
        job_key(info.namespace, info.name), NodeType.JOB, job_data_json(info), label=info.name
    )


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _short(version: str, width: int = 12) -> str:
    return version if len(version) <= width else version[: width - 1] + "…"


def build_graph(
    starts: Iterable[str],
    versions: Mapping[int, VersionInfo],
    runs: Mapping[UUID, RunInfo],
    version_edges: Iterable[VersionEdge],
    run_io: Iterable[tuple[UUID, Literal["input", "output"], int]] = (),
    jobs: Sequence[JobInfo] = (),
) -> Graph:
    """Assemble the graph from what a walk found.

    ``version_edges`` become ``src → run → dst``; ``run_io`` adds a start run's own inputs
    (``version → run``) and outputs (``run → version``); a job points at its runs. Every
    end of an edge must be described in ``versions``/``runs``/``jobs``.
    """
    nodes: dict[str, GraphNode] = {}
    version_keys = {node_id: info.key for node_id, info in versions.items()}
    run_keys = {run_id: run_key(run_id) for run_id in runs}
    for info in versions.values():
        nodes[version_keys[info.node_id]] = _version_node(info, version_keys[info.node_id])
    for info_run in runs.values():
        nodes[run_keys[info_run.run_id]] = _run_node(info_run, run_keys[info_run.run_id])
    for job in jobs:
        nodes[job_key(job.namespace, job.name)] = _job_node(job)

    # Appended as found, then sorted without duplicates: a run with several inputs and
    # outputs is found once per (input, output). No object per edge (garbage collector).
    for src, run_id, dst in version_edges:
        run, origin, destination = run_keys[run_id], version_keys[src], version_keys[dst]
        nodes[origin].out_edges.append(run)
        nodes[run].in_edges.append(origin)
        nodes[run].out_edges.append(destination)
        nodes[destination].in_edges.append(run)
    for run_id, direction, node_id in run_io:
        run, version = run_keys[run_id], version_keys[node_id]
        if direction == "input":
            nodes[version].out_edges.append(run)
            nodes[run].in_edges.append(version)
        else:
            nodes[run].out_edges.append(version)
            nodes[version].in_edges.append(run)
    for job in jobs:
        origin = job_key(job.namespace, job.name)
        for r in job.run_ids:
            nodes[origin].out_edges.append(run_keys[r])
            nodes[run_keys[r]].in_edges.append(origin)
    for node in nodes.values():
        if node.in_edges:
            node.in_edges = sorted(set(node.in_edges))
        if node.out_edges:
            node.out_edges = sorted(set(node.out_edges))
    return Graph(frozenset(starts), nodes)


def graph_json(graph: Graph) -> bytes:
    """``graph_document`` as compact JSON, written straight from the nodes' JSON text: the
    answer can hold tens of thousands of edge objects, and building them as dicts for
    ``json.dumps`` costs several times more."""
    nodes = graph.nodes
    return graph_json_of(
        {key: node_head(key, node.type, node.data_json) for key, node in nodes.items()},
        {key: node.in_edges for key, node in nodes.items()},
        {key: node.out_edges for key, node in nodes.items()},
    )


def graph_document(graph: Graph) -> dict[str, Any]:
    """Marquez's lineage shape: nodes sorted by id, edges sorted."""
    return {
        "graph": [
            {
                "id": node.id,
                "type": node.type.value,
                "data": node.data,
                "inEdges": [{"origin": o, "destination": node.id} for o in sorted(node.in_edges)],
                "outEdges": [{"origin": node.id, "destination": d} for d in sorted(node.out_edges)],
            }
            for node in (graph.nodes[k] for k in sorted(graph.nodes))
        ]
    }


# ----------------------------------------------------------------------------- picture

_FLAG_COLOURS = {
    "destroy_required": ("#b2182b", "#f4a6a6"),
    "retrain_required": ("#d6604d", "#fbd0c4"),
    "review": ("#e08214", "#fde0b8"),
}
_SHAPES = {
    NodeType.DATASET: "cylinder",
    NodeType.MODEL: "box3d",
    NodeType.RUN: "ellipse",
    NodeType.JOB: "component",
}


def _dot_string(value: str) -> str:
    """A DOT double-quoted string; ``\\n`` in ``value`` becomes a line break."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r", "").replace("\n", "\\n") + '"'


def to_dot(graph: Graph) -> str:
    """The graph in Graphviz DOT, left to right: flagged models red (shade by severity)
    with the severity in their label; datasets with active findings outlined in red; the
    start node drawn bold."""
    lines = [
        "digraph lineage {",
        '  graph [rankdir=LR, fontname="Helvetica", fontsize=10, nodesep=0.25, ranksep=0.5];',
        '  node [fontname="Helvetica", fontsize=9, style=filled, fillcolor="#ffffff",'
        ' color="#555555"];',
        '  edge [color="#888888", arrowsize=0.6];',
    ]
    for key in sorted(graph.nodes):
        node = graph.nodes[key]
        attrs = {
            "shape": _SHAPES[node.type],
            "label": node.label or node.id,
            "tooltip": node.id,
        }
        if node.type is NodeType.RUN:
            attrs.update(fillcolor="#eef3f8", fontsize="8")
        if node.severity is not None:
            line, fill = _FLAG_COLOURS.get(node.severity, _FLAG_COLOURS["destroy_required"])
            attrs.update(color=line, penwidth="2")
            if node.flagged:
                attrs.update(fillcolor=fill, fontcolor="#67001f")
                attrs["label"] = f"{attrs['label']}\n⚑ {node.severity}"
            else:
                attrs["label"] = f"{attrs['label']}\nfinding: {node.severity}"
        if key in graph.starts:
            attrs["penwidth"] = "3"
        rendered = ", ".join(f"{k}={_dot_string(v)}" for k, v in attrs.items())
        lines.append(f"  {_dot_string(key)} [{rendered}];")
    for key in sorted(graph.nodes):
        for destination in sorted(graph.nodes[key].out_edges):
            lines.append(f"  {_dot_string(key)} -> {_dot_string(destination)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def dumps(document: Mapping[str, Any]) -> bytes:
    """Compact JSON, as ``graph_json`` writes it."""
    return _compact(document).encode()
