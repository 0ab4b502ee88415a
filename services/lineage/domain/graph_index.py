"""The lineage graph "now", in memory: walks and answers without a database round trip.

A copy of what the lineage tables say at one database snapshot: versions (their id, kind
and ``data``), runs (their ``data``, inputs and outputs) and jobs (their runs). The service
keeps it current by applying what changed since (``service/graph_cache.py``); answers
for an ``asOf`` time are not served from here (the copy has no past).

It answers exactly what the SQL walk (``adapters/graph.py``) and ``build_graph`` +
``graph_json`` answer, byte for byte (tested): breadth first, each version expanded once,
at its shortest hop; a version's readers and their outputs are one run away downstream, its
writers and their inputs one run away upstream. Pure: no I/O.

Memory: no Python object per edge. A version's readers and writers and a run's inputs and
outputs are ``array('i')`` (untracked by the garbage collector: a copy of a big graph
adds nothing to the collector's full passes), runs are numbered densely, and each node's
JSON head is one string.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from services.lineage.domain.graph import (
    Direction,
    JobInfo,
    NodeQuery,
    NodeType,
    RunInfo,
    VersionInfo,
    graph_json_of,
    job_data_json,
    job_key,
    node_head,
    run_data_json,
    run_key,
    version_data_json,
)

__all__ = ["GraphIndex", "Lookup", "RunIO"]

RunIO = tuple[UUID, bool, int]
"""(run, is output, version node id): one ``run_io`` row."""


def _name_key(namespace: str, name: str) -> str:
    return f"{namespace}\x00{name}"


def _version_name_key(namespace: str, name: str, version: str) -> str:
    return f"{namespace}\x00{name}\x00{version}"


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a node id names in the index: ``known`` False means nothing (HTTP 404)."""

    known: bool
    versions: tuple[int, ...] = ()
    runs: tuple[int, ...] = ()
    job: JobInfo | None = None


@dataclass(slots=True)
class _Found:
    """A walk's result: nodes by key, their JSON heads, and each node's edge ends."""

    heads: dict[str, str] = field(default_factory=dict)
    ins: dict[str, set[str]] = field(default_factory=dict)
    outs: dict[str, set[str]] = field(default_factory=dict)

    def edge(self, origin: str, destination: str) -> None:
        outs = self.outs.get(origin)
        if outs is None:
            self.outs[origin] = {destination}
        else:
            outs.add(destination)
        ins = self.ins.get(destination)
        if ins is None:
            self.ins[destination] = {origin}
        else:
            ins.add(origin)


class GraphIndex:
    """Versions by node id, runs by dense index, jobs by name; see the module docstring."""

    def __init__(self) -> None:
        self._key: dict[int, str] = {}
        self._head: dict[int, str] = {}
        self._by_version: dict[str, int] = {}
        self._by_name: dict[str, array[int]] = {}
        self._readers: dict[int, array[int]] = {}
        self._writers: dict[int, array[int]] = {}
        self._run_index: dict[UUID, int] = {}
        self._run_key: list[str] = []
        self._run_head: list[str] = []
        self._run_job: list[str] = []
        self._inputs: list[array[int]] = []
        self._outputs: list[array[int]] = []
        self._jobs: dict[str, array[int]] = {}

    # --------------------------------------------------------------------------- updates

    @property
    def versions(self) -> int:
        return len(self._key)

    @property
    def runs(self) -> int:
        return len(self._run_key)

    def put_versions(self, infos: Iterable[VersionInfo]) -> None:
        """Add or replace versions (kind, flags, findings, status)."""
        for info in infos:
            node = info.node_id
            key = info.key
            kind = NodeType.MODEL if info.is_model else NodeType.DATASET
            if node not in self._key:
                self._by_version[_version_name_key(info.namespace, info.name, info.version)] = node
                self._by_name.setdefault(_name_key(info.namespace, info.name), array("i")).append(
                    node
                )
            self._key[node] = key
            self._head[node] = node_head(key, kind, version_data_json(info))

    def put_runs(self, infos: Iterable[RunInfo]) -> None:
        """Add or replace runs (job, times, state). A run's job never changes."""
        for info in infos:
            index = self._run_index.get(info.run_id)
            key = run_key(info.run_id)
            head = node_head(key, NodeType.RUN, run_data_json(info))
            if index is None:
                index = len(self._run_key)
                self._run_index[info.run_id] = index
                self._run_key.append(key)
                self._run_head.append(head)
                job = _name_key(info.job_namespace, info.job_name)
                self._run_job.append(job)
                self._inputs.append(array("i"))
                self._outputs.append(array("i"))
                self._jobs.setdefault(job, array("i")).append(index)
            else:
                self._run_head[index] = head

    def put_run_io(self, rows: Iterable[RunIO]) -> None:
        """Add ``run_io`` rows (runs and versions must be known; rows already there are
        ignored: ``run_io`` only grows)."""
        for run_id, is_output, node in rows:
            run = self._run_index[run_id]
            mine, theirs = (
                (self._outputs[run], self._writers)
                if is_output
                else (self._inputs[run], self._readers)
            )
            if node in mine:
                continue
            mine.append(node)
            runs = theirs.get(node)
            if runs is None:
                theirs[node] = array("i", (run,))
            else:
                runs.append(run)

    def has_run(self, run_id: UUID) -> bool:
        return run_id in self._run_index

    def has_version(self, node_id: int) -> bool:
        return node_id in self._key

    # --------------------------------------------------------------------------- lookups

    def lookup(self, query: NodeQuery) -> Lookup:
        """The first candidate the graph knows, as ``adapters.graph.GraphRepository``'s
        ``resolve_*`` (everything here is visible: no ``asOf``)."""
        if query.kind == "run":
            assert query.run_id is not None
            run = self._run_index.get(query.run_id)
            return Lookup(False) if run is None else Lookup(True, runs=(run,))
        if query.kind == "job":
            for namespace, name, _ in query.candidates:
                runs = self._jobs.get(_name_key(namespace, name))
                if runs:
                    ordered = sorted(runs, key=lambda r: str(self._run_id(r)))
                    job = JobInfo(namespace, name, tuple(self._run_id(r) for r in ordered))
                    return Lookup(True, runs=tuple(ordered), job=job)
            return Lookup(False)
        for namespace, name, version in query.candidates:
            if version is None:
                nodes = self._by_name.get(_name_key(namespace, name))
                if nodes:
                    return Lookup(True, versions=tuple(sorted(nodes)))
            else:
                node = self._by_version.get(_version_name_key(namespace, name, version))
                if node is not None:
                    return Lookup(True, versions=(node,))
        return Lookup(False)

    def _run_id(self, run: int) -> UUID:
        return UUID(self._run_key[run][4:])

    # --------------------------------------------------------------------------- answers

    def answer(self, found: Lookup, depth: int, direction: Direction) -> bytes:
        """The graph JSON for a node ``lookup`` found: as ``lineage_graph`` + ``graph_json``."""
        out = _Found()
        downstream = direction in (Direction.DOWNSTREAM, Direction.BOTH)
        upstream = direction in (Direction.UPSTREAM, Direction.BOTH)
        for node in found.versions:
            self._add_version(out, node)
        for run in found.runs:
            self._add_run(out, run)
        if found.job is not None:
            job = job_key(found.job.namespace, found.job.name)
            out.heads[job] = node_head(job, NodeType.JOB, job_data_json(found.job))
            for run in found.runs:
                out.edge(job, self._run_key[run])
        if found.versions:
            if downstream:
                self._walk(out, found.versions, depth, down=True)
            if upstream:
                self._walk(out, found.versions, depth, down=False)
        elif depth > 0:
            # A run (or a job's runs) is the first run of the walk.
            for run in found.runs:
                key = self._run_key[run]
                if downstream:
                    for node in self._outputs[run]:
                        out.edge(key, self._add_version(out, node))
                if upstream:
                    for node in self._inputs[run]:
                        out.edge(self._add_version(out, node), key)
            if downstream:
                seeds = {n for r in found.runs for n in self._outputs[r]}
                self._walk(out, sorted(seeds), depth - 1, down=True)
            if upstream:
                seeds = {n for r in found.runs for n in self._inputs[r]}
                self._walk(out, sorted(seeds), depth - 1, down=False)
        return graph_json_of(
            out.heads,
            {k: sorted(v) for k, v in out.ins.items()},
            {k: sorted(v) for k, v in out.outs.items()},
        )

    def _add_version(self, out: _Found, node: int) -> str:
        key = self._key[node]
        out.heads[key] = self._head[node]
        return key

    def _add_run(self, out: _Found, run: int) -> str:
        key = self._run_key[run]
        out.heads[key] = self._run_head[run]
        return key

    def _walk(self, out: _Found, seeds: Sequence[int], depth: int, *, down: bool) -> None:
        """Every edge from ``seeds`` through at most ``depth`` runs, each version expanded
        once (at its shortest hop): the recursive CTE of ``adapters/graph.py``."""
        runs_of = self._readers if down else self._writers
        far_of = self._outputs if down else self._inputs
        seen = set(seeds)
        frontier: list[int] = sorted(seen)
        empty: array[int] = array("i")
        for _ in range(depth):
            if not frontier:
                break
            reached: list[int] = []
            for node in frontier:
                near = self._add_version(out, node)
                for run in runs_of.get(node, empty):
                    fars = far_of[run]
                    if not fars:  # no edge: a run that read nothing (or wrote nothing)
                        continue
                    run_key_ = self._add_run(out, run)
                    if down:
                        out.edge(near, run_key_)
                    else:
                        out.edge(run_key_, near)
                    for far in fars:
                        far_key = self._add_version(out, far)
                        if down:
                            out.edge(run_key_, far_key)
                        else:
                            out.edge(far_key, run_key_)
                        if far not in seen:
                            seen.add(far)
                            reached.append(far)
            frontier = reached
