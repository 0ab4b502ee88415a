"""The lineage graph "now", in memory: walks and answers without a database round trip.

A copy of what the lineage tables say at one database snapshot: versions (their id, kind
and ``data``), runs (their ``data``, inputs and outputs) and jobs (their runs). The service
keeps it current by applying what changed since (``service/graph_cache.py``); answers
for an ``asOf`` time are not served from here (the copy has no past).

It answers exactly what the SQL walk (``adapters/graph.py``) and ``build_graph`` +
``graph_json`` answer, byte for byte (tested): breadth first, each version expanded once,
at its shortest hop; a version's readers and their outputs are one run away downstream, its
writers and their inputs one run away upstream.

Why it is fast (an answer of a few thousand nodes is megabytes of JSON): each node keeps
its whole JSON as it appears when *all* its edges are in the answer (its **fragment**,
UTF-8 bytes). A walk works on sets, a level at a time (the loops run in C), and yields
three sets per direction: versions reached, versions expanded, runs reached. From these,
set algebra alone tells which nodes have all their edges in the answer (in a downstream
walk, a version with one writer, a run with one input; upstream, a version with one
reader, a run with one output); their fragments are copied as they are. Only the others
(the start, the depth boundary, runs reading several versions of which the walk reached
some…) have their edge lists worked out and their JSON written from their fragment: of a
node reached by one walk only, just the partial side (a run's inputs downstream, a version's
readers upstream). The answer is the fragments joined in node id order.

Which edges a node has in an answer (D/U: the downstream/upstream walk; E: versions it
expanded, R: runs it reached; a run is reached only if it has something on the far side):

- version: in = its writers in R_D, and all its writers that read something if it is in
  E_U; out = all its readers that wrote something if it is in E_D, and its readers in R_U;
- run: in = its inputs in E_D if it is in R_D, all its inputs if in R_U; out = all its
  outputs if in R_D, its outputs in E_U if in R_U;
- plus, when the start is a run (or a job's runs), its own inputs and outputs, and the
  job's edges to its runs.

A fragment's edges are a node's *full* lists: a version's writers that read something and
readers that wrote something; a run's inputs if it wrote something, its outputs if it read
something. Pure: no I/O.

**Compiled writer.** For a walk from versions (what ML teams ask), ``_graph_answer.c`` does
the walk and writes the answer from the same fragments, by the same rules, byte for byte
(tested against this module on random and on large graphs); this module stays the
reference, answers run and job starts, and answers everything where the extension is not
built (``ACCELERATED``). Per-node Python work was most of an answer of a few thousand nodes
(the bench graph, 1,000-4,999 descendants: 14 ms at the median in Python, 5 in C); what
C spends is reaching the nodes' objects, so each node keeps its parts in one tuple
(``_rows``, ``_run_rows``).

Memory: no Python object per edge. A version's readers and writers and a run's inputs and
outputs are ``array('i')`` (untracked by the garbage collector), runs are numbered densely,
fragments are ``bytes``.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass
from itertools import chain
from json.encoder import encode_basestring
from uuid import UUID

from services.lineage.domain.graph import (
    Direction,
    JobInfo,
    NodeQuery,
    NodeType,
    RunInfo,
    VersionInfo,
    job_data_json,
    job_key,
    node_head,
    node_json,
    run_data_json,
    run_key,
    version_data_json,
)

try:  # the compiled answer writer for walks from versions (setup.py; optional)
    from services.lineage.domain import _graph_answer
except ImportError:  # pragma: no cover - a machine without a C compiler
    _graph_answer = None  # type: ignore[assignment]

__all__ = ["ACCELERATED", "GraphIndex", "Lookup", "RunIO"]

ACCELERATED = _graph_answer is not None
"""Whether answers for walks from versions are written by ``_graph_answer.c``."""

_DENSE = 4
"""The compiled writer keeps a row and a byte per node id up to the largest: used while node
ids are at most about this many times as many as the versions (they come from one
sequence, so they stay dense)."""

RunIO = tuple[UUID, bool, int]
"""(run, is output, version node id): one ``run_io`` row."""

_IN_EDGES = b'"inEdges":['
_OUT_EDGES = b'],"outEdges":['
_EMPTY: array[int] = array("i")
_NONE: frozenset[int] = frozenset()
_HAS_INPUTS, _HAS_OUTPUTS = 1, 2
_Row = tuple[str, bytes, bytes, bytes, bytes, tuple[bytes, ...], tuple[bytes, ...]]


def _name_key(namespace: str, name: str) -> str:
    return f"{namespace}\x00{name}"


def _version_name_key(namespace: str, name: str, version: str) -> str:
    return f"{namespace}\x00{name}\x00{version}"


def _head_of(fragment: bytes) -> bytes:
    """A fragment's head (``node_head``): everything up to its in-edges. Edge objects hold
    no raw ``]`` and no raw ``"inEdges":[`` (quotes inside ids are escaped), so the last
    occurrences are the node's own."""
    return fragment[: fragment.rfind(_IN_EDGES, 0, fragment.rfind(_OUT_EDGES)) + len(_IN_EDGES)]


def _ends(ends: array[int], every: bool, those_in: Set[int] | None) -> list[int]:
    """A run's edge ends in an answer: all of them, those in a set, or none."""
    if every:
        return list(ends)
    return [] if those_in is None else [n for n in ends if n in those_in]


def _sort(ends: array[int], key: Callable[[int], str]) -> None:
    """Edge ends in the order of the other node's id, as an answer lists them."""
    if len(ends) > 1:
        ends[:] = array("i", sorted(ends, key=key))


def _quoted(key: str) -> bytes:
    """A node id as a JSON string, as ``graph.node_json`` writes it."""
    return encode_basestring(key).encode()


def _node_bytes(head: bytes, me: bytes, origins: list[bytes], destinations: list[bytes]) -> bytes:
    """As ``graph.node_json``, from quoted ids in bytes (the other ends, in id order)."""
    return head + _in_edges(me, origins) + _OUT_EDGES + _out_edges(me, destinations) + b"]}"


def _in_edges(me: bytes, origins: list[bytes]) -> bytes:
    if not origins:
        return b""
    return (
        b'{"origin":'
        + (b',"destination":' + me + b'},{"origin":').join(origins)
        + b',"destination":' + me + b"}"
    )  # fmt: skip


def _out_edges(me: bytes, destinations: list[bytes]) -> bytes:
    if not destinations:
        return b""
    return (
        b'{"origin":' + me + b',"destination":'
        + (b'},{"origin":' + me + b',"destination":').join(destinations)
        + b"}"
    )  # fmt: skip


def _with_in_edges(fragment: bytes, me: bytes, origins: list[bytes]) -> bytes:
    """A fragment with other in-edges, its out-edges kept (no rewriting of what stays)."""
    mid = fragment.rfind(_OUT_EDGES)
    cut = fragment.rfind(_IN_EDGES, 0, mid) + len(_IN_EDGES)
    return fragment[:cut] + _in_edges(me, origins) + fragment[mid:]


def _with_out_edges(fragment: bytes, me: bytes, destinations: list[bytes]) -> bytes:
    """A fragment with other out-edges, its in-edges kept."""
    cut = fragment.rfind(_OUT_EDGES) + len(_OUT_EDGES)
    return fragment[:cut] + _out_edges(me, destinations) + b"]}"


@dataclass(frozen=True, slots=True)
class Lookup:
    """What a node id names in the index: ``known`` False means nothing (HTTP 404)."""

    known: bool
    versions: tuple[int, ...] = ()
    runs: tuple[int, ...] = ()
    job: JobInfo | None = None


@dataclass(frozen=True, slots=True)
class _Walk:
    """One direction's walk: versions reached (seeds included), expanded, runs reached."""

    reached: Set[int] = _NONE
    expanded: Set[int] = _NONE
    runs: Set[int] = _NONE


class GraphIndex:
    """Versions by node id, runs by dense index, jobs by name; see the module docstring."""

    def __init__(self, *, accelerated: bool = True) -> None:
        self.accelerated = accelerated and ACCELERATED
        """Walks from versions answered by the compiled writer (False: by this module's,
        as benches and tests compare them)."""
        self._key: dict[int, str] = {}
        self._quoted: dict[int, bytes] = {}
        self._fragment: dict[int, bytes] = {}
        self._by_version: dict[str, int] = {}
        self._by_name: dict[str, array[int]] = {}
        self._readers: dict[int, array[int]] = {}
        self._writers: dict[int, array[int]] = {}
        self._run_index: dict[UUID, int] = {}
        self._run_key: list[str] = []
        self._run_quoted: list[bytes] = []
        self._run_fragment: list[bytes] = []
        self._inputs: list[array[int]] = []
        self._outputs: list[array[int]] = []
        # For the compiled writer, whose cost is reaching scattered objects: each node's
        # row, written with its fragment (``refresh``): one tuple of (key, quoted,
        # fragment, its readers' and writers' ids (a run: inputs, outputs) as bytes, and
        # their quoted ids in the same order), so that a node and its edges' far ends are
        # written from it alone. Versions by node id while ids are dense (``_DENSE``; else
        # None), runs by index. Also each fragment's head length, and by run, 1 if it has
        # inputs, 2 if it has outputs.
        self._rows: list[_Row | None] | None = []
        self._version_heads: array[int] = array("i")
        self._run_rows: list[_Row] = []
        self._run_heads: array[int] = array("i")
        self._run_sides = bytearray()
        self._jobs: dict[str, array[int]] = {}
        # What the set algebra of ``answer`` needs to know without looking at edges.
        self._no_inputs: set[int] = set()
        self._no_outputs: set[int] = set()
        self._many_writers: set[int] = set()
        self._many_readers: set[int] = set()
        self._many_inputs: set[int] = set()
        self._many_outputs: set[int] = set()
        # Fragments to write again (``refresh``), with new heads where the data changed.
        self._stale_versions: dict[int, bytes | None] = {}
        self._stale_runs: dict[int, bytes | None] = {}

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
            known = self._key.get(node)
            if known is None:
                self._by_version[_version_name_key(info.namespace, info.name, info.version)] = node
                self._by_name.setdefault(_name_key(info.namespace, info.name), array("i")).append(
                    node
                )
            elif known != key:  # a dataset became a model: its runs' fragments name it
                for run in chain(self._readers.get(node, _EMPTY), self._writers.get(node, _EMPTY)):
                    self._stale_runs.setdefault(run, None)
            self._key[node] = key
            self._quoted[node] = _quoted(key)
            self._stale_versions[node] = node_head(key, kind, version_data_json(info)).encode()

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
                self._run_quoted.append(_quoted(key))
                self._run_fragment.append(b"")
                job = _name_key(info.job_namespace, info.job_name)
                self._inputs.append(array("i"))
                self._outputs.append(array("i"))
                self._run_rows.append((key, self._run_quoted[index], b"", b"", b"", (), ()))
                self._run_sides.append(0)
                self._run_heads.append(0)
                self._jobs.setdefault(job, array("i")).append(index)
                self._no_inputs.add(index)
                self._no_outputs.add(index)
            self._stale_runs[index] = head.encode()

    def put_run_io(self, rows: Iterable[RunIO]) -> None:
        """Add ``run_io`` rows (runs and versions must be known; rows already there are
        ignored: ``run_io`` only grows)."""
        stale_versions, stale_runs = self._stale_versions, self._stale_runs
        for run_id, is_output, node in rows:
            run = self._run_index[run_id]
            if is_output:
                mine, theirs, others = self._outputs[run], self._writers, self._inputs[run]
                empty, many_mine, many_theirs = (
                    self._no_outputs,
                    self._many_outputs,
                    self._many_writers,
                )
                side = _HAS_OUTPUTS
            else:
                mine, theirs, others = self._inputs[run], self._readers, self._outputs[run]
                empty, many_mine, many_theirs = (
                    self._no_inputs,
                    self._many_inputs,
                    self._many_readers,
                )
                side = _HAS_INPUTS
            if node in mine:
                continue
            if not mine:
                # The run now counts on the far side of each node of its other side.
                empty.discard(run)
                self._run_sides[run] |= side
                for other in others:
                    stale_versions.setdefault(other, None)
            mine.append(node)
            if len(mine) > 1:
                many_mine.add(run)
            runs = theirs.get(node)
            if runs is None:
                theirs[node] = array("i", (run,))
            else:
                runs.append(run)
                many_theirs.add(node)
            stale_runs.setdefault(run, None)
            stale_versions.setdefault(node, None)

    def _set_row(
        self, node: int, fragment: bytes, readers: array[int], writers: array[int]
    ) -> bool:
        """Write a version's row for the compiled writer; False once ids are sparse."""
        rows = self._rows
        if rows is None:
            return False
        if node >= len(rows):
            if node > _DENSE * (len(self._key) + 1) + 65_536:
                self._rows = None  # the writer would need a byte per id up to this one
                return False
            grow = node + 1 - len(rows)
            rows.extend([None] * grow)
            self._version_heads.frombytes(bytes(4 * grow))
        quoted = self._run_quoted
        rows[node] = (
            self._key[node],
            self._quoted[node],
            fragment,
            readers.tobytes(),
            writers.tobytes(),
            tuple([quoted[r] for r in readers]),
            tuple([quoted[r] for r in writers]),
        )
        return True

    def has_run(self, run_id: UUID) -> bool:
        return run_id in self._run_index

    def has_version(self, node_id: int) -> bool:
        return node_id in self._key

    def refresh(self, limit: int | None = None) -> bool:
        """Sort the changed nodes' edge ends in id order and write their fragments again
        (``answer`` does it first if needed; callers may do it earlier, off the answer).
        With ``limit``, at most that many nodes now; returns whether some are left."""
        key, run_key_ = self._key, self._run_key
        quoted, run_quoted = self._quoted, self._run_quoted
        no_inputs, no_outputs = self._no_inputs, self._no_outputs
        by_run_key, by_key = run_key_.__getitem__, key.__getitem__
        stale_versions, stale_runs = self._stale_versions, self._stale_runs
        budget = len(stale_versions) + len(stale_runs) if limit is None else limit
        while stale_versions and budget > 0:
            node, head = stale_versions.popitem()
            budget -= 1
            writers = self._writers.get(node, _EMPTY)
            readers = self._readers.get(node, _EMPTY)
            _sort(writers, by_run_key)
            _sort(readers, by_run_key)
            if head is None:
                head = _head_of(self._fragment[node])
            self._fragment[node] = fragment = _node_bytes(
                head,
                quoted[node],
                [run_quoted[r] for r in writers if r not in no_inputs],
                [run_quoted[r] for r in readers if r not in no_outputs],
            )
            if self._set_row(node, fragment, readers, writers):
                self._version_heads[node] = len(head)
        while stale_runs and budget > 0:
            run, head = stale_runs.popitem()
            budget -= 1
            inputs, outputs = self._inputs[run], self._outputs[run]
            _sort(inputs, by_key)
            _sort(outputs, by_key)
            if head is None:
                head = _head_of(self._run_fragment[run])
            self._run_heads[run] = len(head)
            self._run_fragment[run] = fragment = _node_bytes(
                head,
                run_quoted[run],
                [quoted[n] for n in inputs] if outputs else [],
                [quoted[n] for n in outputs] if inputs else [],
            )
            self._run_rows[run] = (
                run_key_[run],
                run_quoted[run],
                fragment,
                inputs.tobytes(),
                outputs.tobytes(),
                tuple([quoted[n] for n in inputs]),
                tuple([quoted[n] for n in outputs]),
            )
        if stale_versions or stale_runs:
            return True
        # A set keeps its table when emptied (all runs start here and most leave at once):
        # copies are sized to what they hold, for the walk's set algebra.
        self._no_inputs, self._no_outputs = set(no_inputs), set(no_outputs)
        return False

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
        if self._stale_versions or self._stale_runs:
            self.refresh()
        downstream = direction in (Direction.DOWNSTREAM, Direction.BOTH)
        upstream = direction in (Direction.UPSTREAM, Direction.BOTH)
        if self.accelerated and found.versions and self._rows is not None:
            return _graph_answer.answer(
                found.versions,
                depth,
                downstream,
                upstream,
                self._rows,
                self._version_heads,
                self._run_rows,
                self._run_heads,
                self._run_sides,
            )
        start_runs = frozenset(found.runs)
        # A run (or a job's runs) is the first run of the walk: its own inputs and outputs
        # are the walk's seeds, one run less deep.
        own_io = bool(start_runs) and depth > 0
        own_down, own_up = own_io and downstream, own_io and upstream
        if found.versions:
            down_seeds = up_seeds = frozenset(found.versions)
            walk_depth = depth
        else:
            down_seeds = frozenset(self._far(found.runs, down=True)) if own_down else _NONE
            up_seeds = frozenset(self._far(found.runs, down=False)) if own_up else _NONE
            walk_depth = depth - 1
        down = self._walk(down_seeds, walk_depth, down=True) if downstream else _Walk()
        up = self._walk(up_seeds, walk_depth, down=False) if upstream else _Walk()

        # Nodes sure to have every edge of their fragment in the answer (module docstring).
        whole_versions: set[int] = set()
        whole_runs: set[int] = set()
        if downstream:
            whole_versions |= down.expanded - self._many_writers - up.reached
            whole_runs |= down.runs - self._many_inputs - up.runs
        if upstream:
            whole_versions |= up.expanded - self._many_readers - down.reached
            whole_runs |= up.runs - self._many_outputs - down.runs
        whole_versions -= down_seeds | up_seeds | set(found.versions)
        whole_runs -= start_runs

        versions = set(found.versions) | down.reached | up.reached
        runs = down.runs | up.runs | start_runs
        written: dict[int, bytes] = {}
        for node in versions - whole_versions:
            written[node] = self._version_json(node, down, up, start_runs, own_down, own_up)
        written_runs: dict[int, bytes] = {}
        job = job_key(found.job.namespace, found.job.name) if found.job is not None else None
        for run in runs - whole_runs:
            written_runs[run] = self._run_json(run, down, up, start_runs, own_down, own_up, job)

        key, fragment = self._key, self._fragment
        ordered = sorted(versions, key=key.__getitem__)
        pieces = [written[n] if n in written else fragment[n] for n in ordered]
        if found.job is not None and job is not None:
            head = node_head(job, NodeType.JOB, job_data_json(found.job))
            runs_of_job = sorted(self._run_key[r] for r in found.runs)
            at = bisect_left(ordered, job, key=key.__getitem__)
            pieces.insert(at, node_json(job, head, (), runs_of_job).encode())
        run_fragment = self._run_fragment
        pieces += [
            written_runs[r] if r in written_runs else run_fragment[r]
            for r in sorted(runs, key=self._run_key.__getitem__)
        ]
        return b'{"graph":[' + b",".join(pieces) + b"]}"

    def _far(self, runs: Iterable[int], *, down: bool) -> Iterable[int]:
        far = self._outputs if down else self._inputs
        return chain.from_iterable(far[r] for r in runs)

    def _walk(self, seeds: frozenset[int], depth: int, *, down: bool) -> _Walk:
        """Breadth first through at most ``depth`` runs, each version expanded once (at its
        shortest hop): the recursive CTE of ``adapters/graph.py``, a level at a time."""
        near_runs = self._readers if down else self._writers
        far_of = self._outputs if down else self._inputs
        barren = self._no_outputs if down else self._no_inputs  # reached, they add nothing
        reached, expanded, runs = set(seeds), set[int](), set[int]()
        frontier: set[int] = set(seeds)
        for _ in range(depth):
            if not frontier:
                break
            expanded |= frontier
            # ``a - b`` walks the smaller side; ``a -= b`` would walk all of ``b``.
            new_runs = set(chain.from_iterable([near_runs.get(v, _EMPTY) for v in frontier]))
            new_runs = new_runs - runs - barren
            runs |= new_runs
            frontier = set(chain.from_iterable(map(far_of.__getitem__, new_runs))) - reached
            reached |= frontier
        return _Walk(reached, expanded, runs)

    def _version_json(
        self,
        node: int,
        down: _Walk,
        up: _Walk,
        start_runs: Set[int],
        own_down: bool,
        own_up: bool,
    ) -> bytes:
        """The node's fragment if all its edges are in the answer, else its JSON written
        with the edges that are (writers and readers are kept in id order)."""
        writers = self._writers.get(node, _EMPTY)
        readers = self._readers.get(node, _EMPTY)
        no_inputs, no_outputs = self._no_inputs, self._no_outputs
        all_in, all_out = node in up.expanded, node in down.expanded
        if not (own_down or own_up):
            # Expanded by one walk only: that side is whole; the other is a subset.
            if all_out and node not in up.reached:
                ins = [r for r in writers if r in down.runs]
                if ins == [r for r in writers if r not in no_inputs]:
                    return self._fragment[node]
                quoted_runs = self._run_quoted
                return _with_in_edges(
                    self._fragment[node], self._quoted[node], [quoted_runs[r] for r in ins]
                )
            if all_in and node not in down.reached:
                outs = [r for r in readers if r in up.runs]
                if outs == [r for r in readers if r not in no_outputs]:
                    return self._fragment[node]
                quoted_runs = self._run_quoted
                return _with_out_edges(
                    self._fragment[node], self._quoted[node], [quoted_runs[r] for r in outs]
                )
        down_runs, up_runs = down.runs, up.runs
        # A start run's own edges: downstream its outputs, upstream its inputs.
        ins = [
            r
            for r in writers
            if r in down_runs or (all_in and r not in no_inputs) or (own_down and r in start_runs)
        ]
        outs = [
            r
            for r in readers
            if r in up_runs or (all_out and r not in no_outputs) or (own_up and r in start_runs)
        ]
        fragment = self._fragment[node]
        if ins == [r for r in writers if r not in no_inputs] and outs == [
            r for r in readers if r not in no_outputs
        ]:
            return fragment
        quoted = self._run_quoted
        return _node_bytes(
            _head_of(fragment),
            self._quoted[node],
            [quoted[r] for r in ins],
            [quoted[r] for r in outs],
        )

    def _run_json(
        self,
        run: int,
        down: _Walk,
        up: _Walk,
        start_runs: Set[int],
        own_down: bool,
        own_up: bool,
        job: str | None,
    ) -> bytes:
        """As ``_version_json``, for a run; a job's runs have the job's edge too."""
        inputs, outputs = self._inputs[run], self._outputs[run]
        in_down, in_up, start = run in down.runs, run in up.runs, run in start_runs
        if in_down != in_up and not start:
            # Reached by one walk only (so it has inputs and outputs): downstream its
            # outputs are whole and its inputs those expanded; upstream the other way.
            quoted = self._quoted
            if in_down:
                expanded = down.expanded
                ins = [n for n in inputs if n in expanded]
                if len(ins) == len(inputs):
                    return self._run_fragment[run]
                return _with_in_edges(
                    self._run_fragment[run], self._run_quoted[run], [quoted[n] for n in ins]
                )
            expanded = up.expanded
            outs = [n for n in outputs if n in expanded]
            if len(outs) == len(outputs):
                return self._run_fragment[run]
            return _with_out_edges(
                self._run_fragment[run], self._run_quoted[run], [quoted[n] for n in outs]
            )
        ins = _ends(inputs, in_up or (own_up and start), down.expanded if in_down else None)
        outs = _ends(outputs, in_down or (own_down and start), up.expanded if in_up else None)
        fragment = self._run_fragment[run]
        whole_ins = list(inputs) if outputs else []
        whole_outs = list(outputs) if inputs else []
        if ins == whole_ins and outs == whole_outs and not (job is not None and start):
            return fragment
        quoted = self._quoted
        origins = [quoted[n] for n in ins]
        if job is not None and start:
            at = bisect_left([self._key[n] for n in ins], job)
            origins.insert(at, _quoted(job))
        return _node_bytes(
            _head_of(fragment), self._run_quoted[run], origins, [quoted[n] for n in outs]
        )
