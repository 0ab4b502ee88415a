"""Lineage storage: raw SQL on asyncpg; SQL lives only in this module."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self
from uuid import UUID

from pydantic import PrivateAttr

from contracts.base import ModelRef
from contracts.events import DatasetFinding, ModelFlag
from contracts.openlineage import RunEvent
from services.lineage.adapters.graph import INFINITY, GraphRepository
from services.lineage.domain.propagation import LineageEdge, Node
from services.runtime.db import Connection

__all__ = ["LineageRepository", "ReceivedRunEvent", "RunRecorded"]

MAX_DEPTH = 64
_GRAPH_LOCK = 0x4C494E45_00000001


@dataclass(frozen=True, slots=True)
class RunRecorded:
    new_event: bool
    """False when the very same event was received before."""
    new_io: int
    """Inputs and outputs the run did not have yet (the graph grew)."""


class ReceivedRunEvent(RunEvent):
    """A RunEvent with the exact bytes it arrived as, which ``record_run_event`` keeps.

    The bytes are the HTTP body once its ``Content-Encoding`` is undone, or the Kafka
    record's value; ``received_via`` says which (``http``, ``kafka:<topic>/<p>@<offset>``).
    """

    _received: bytes = PrivateAttr(default=b"")
    _received_via: str = PrivateAttr(default="")

    @classmethod
    def of(cls, payload: Mapping[str, Any], *, received: bytes, via: str) -> Self:
        """Validate ``payload`` (the JSON object ``received`` holds) by the spec's names."""
        event = cls.model_validate(payload, by_alias=True, by_name=False)
        event._received = received
        event._received_via = via
        return event

    @property
    def received(self) -> bytes:
        return self._received

    @property
    def received_via(self) -> str:
        return self._received_via


class LineageRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def lock_graph(self) -> None:
        """Serialize changes of the graph and its flags (see ``service.handlers``)."""
        await self._conn.execute("SELECT pg_advisory_xact_lock($1)", _GRAPH_LOCK)

    async def record_run_event(self, event: RunEvent) -> RunRecorded:
        """Keep the raw event and merge its inputs/outputs into the run.

        Kept twice: canonical (``raw``, whose digest decides what is a duplicate, so the
        first receipt of an event is the one kept) and, for a ``ReceivedRunEvent``, byte for
        byte as received (``received``), for audit.

        Events of one run may come in any order (COMPLETE before START, inputs in a later
        event): each adds what it names, so the run converges to the union of its events,
        and its times and state are functions of that set, not of the order.
        """
        raw = event.model_dump(mode="json", by_alias=True, exclude_none=True)
        digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()
        received = event if isinstance(event, ReceivedRunEvent) else None
        inserted = await self._conn.fetchval(
            "INSERT INTO openlineage_events (event_digest, run_id, event_type, event_time, raw,"
            " received, received_via)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING true",
            digest,
            event.run.run_id,
            event.event_type.value if event.event_type else None,
            event.event_time,
            raw,
            received.received if received else None,
            received.received_via if received else None,
        )
        if not inserted:
            return RunRecorded(new_event=False, new_io=0)
        state = event.event_type.value if event.event_type else None
        terminal = state in ("COMPLETE", "FAIL", "ABORT")
        await self._conn.execute(
            """
            INSERT INTO runs (run_id, job_namespace, job_name, started_at, ended_at, state)
            VALUES ($1, $2, $3, $4, $5, $6)
            ON CONFLICT (run_id) DO UPDATE SET
                started_at = LEAST(runs.started_at, excluded.started_at),
                ended_at = GREATEST(runs.ended_at, excluded.ended_at),
                -- The state of the run's events, whatever their order of arrival: a terminal
                -- one over the others, then the latest; ties broken by the content.
                state = (
                    SELECT e.event_type FROM openlineage_events e
                    WHERE e.run_id = excluded.run_id AND e.event_type IS NOT NULL
                    ORDER BY e.event_type IN ('COMPLETE', 'FAIL', 'ABORT') DESC,
                             e.event_time DESC, e.event_type, e.event_digest
                    LIMIT 1)
            """,
            event.run.run_id,
            event.job.namespace,
            event.job.name,
            event.event_time,
            event.event_time if terminal else None,
            state,
        )
        io = [("input", d) for d in event.inputs or ()] + [
            ("output", d) for d in event.outputs or ()
        ]
        if not io:
            return RunRecorded(new_event=True, new_io=0)
        rows = await self._conn.fetch(
            """
            INSERT INTO run_io AS io (run_id, direction, namespace, name, version, is_model,
                                      seen_at)
            SELECT $1, d, ns, n, v, m, $7
            FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::boolean[])
                 AS u(d, ns, n, v, m)
            ON CONFLICT (run_id, direction, namespace, name, version) DO UPDATE
                SET seen_at = LEAST(io.seen_at, excluded.seen_at)
            RETURNING (xmax = 0) AS inserted
            """,
            event.run.run_id,
            [direction for direction, _ in io],
            [d.namespace for _, d in io],
            [d.name for _, d in io],
            [d.version or "" for _, d in io],
            [d.is_model for _, d in io],
            event.event_time,
        )
        return RunRecorded(new_event=True, new_io=sum(1 for r in rows if r["inserted"]))

    async def received_events(self, run_id: UUID) -> list[bytes]:
        """The run's events as received, in event time order (then order of receipt).

        An event recorded without its received bytes (before ``lineage_0003``, or built
        in-process) comes back in its canonical form.
        """
        rows = await self._conn.fetch(
            """
            SELECT coalesce(received, convert_to(raw::text, 'UTF8')) AS text
            FROM openlineage_events WHERE run_id = $1
            ORDER BY event_time, received_at, event_digest
            """,
            run_id,
        )
        return [bytes(r["text"]) for r in rows]

    async def findings_upstream_of_run(self, run_id: UUID) -> list[DatasetFinding]:
        """Active findings on the run's inputs or anywhere upstream of them (within
        ``MAX_DEPTH`` runs): a breadth-first walk over ``lineage_edges``, each version once
        (see ``adapters.graph``)."""
        graph = GraphRepository(self._conn)
        await graph.tune_reads()
        inputs = [n for _, side, n in await graph.run_io([run_id], INFINITY) if side == "input"]
        if not inputs:
            return []
        edges = await graph.walk(inputs, "upstream", MAX_DEPTH, INFINITY)
        versions = sorted({*inputs, *edges.srcs})
        rows = await self._conn.fetch(
            """
            SELECT f.body::text AS body
            FROM findings f JOIN lineage_nodes n
              ON n.namespace = f.namespace AND n.name = f.name AND n.version = f.version
            WHERE f.status = 'active' AND n.node_id = ANY($1::int[])
            ORDER BY f.finding_id
            """,
            versions,
        )
        return [DatasetFinding.model_validate_json(r["body"]) for r in rows]

    async def save_findings(self, findings: Sequence[DatasetFinding]) -> None:
        """Each finding's latest state (its messages arrive in order: one key per dataset;
        a batch may hold several states of one finding, of which the last is stored).

        One statement for the batch: the graph log's triggers are per statement, and ran
        twice per row when each row was its own (~110 us of Postgres per finding)."""
        latest = list({finding.finding_id: finding for finding in findings}.values())
        if not latest:
            return
        await self._conn.execute(
            """
            INSERT INTO findings (finding_id, namespace, name, version, severity, status, body)
            SELECT id, namespace, name, version, severity, status, body::jsonb
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                        $6::text[], $7::text[])
                 AS t(id, namespace, name, version, severity, status, body)
            ON CONFLICT (finding_id) DO UPDATE SET status = excluded.status,
                body = excluded.body, severity = excluded.severity, updated_at = now()
            """,
            [f.finding_id for f in latest],
            [f.dataset.namespace for f in latest],
            [f.dataset.name for f in latest],
            [f.dataset.version for f in latest],
            [f.severity.value for f in latest],
            [f.status.value for f in latest],
            [f.model_dump_json() for f in latest],
        )

    async def flags_of_findings(
        self, finding_ids: Iterable[UUID]
    ) -> dict[UUID, dict[UUID, ModelFlag]]:
        """The stored flags of each finding, by flag id (an empty dict for one without)."""
        wanted = sorted(set(finding_ids))
        rows = await self._conn.fetch(
            "SELECT finding_id, body::text AS body FROM model_flags"
            " WHERE finding_id = ANY($1::uuid[])",
            wanted,
        )
        out: dict[UUID, dict[UUID, ModelFlag]] = {finding_id: {} for finding_id in wanted}
        for row in rows:
            flag = ModelFlag.model_validate_json(row["body"])
            out[row["finding_id"]][flag.flag_id] = flag
        return out

    async def downstream_edges(self, namespace: str, name: str, version: str) -> list[LineageEdge]:
        """Every run edge reachable downstream of one dataset version (within ``MAX_DEPTH``
        runs): a breadth-first walk over ``lineage_edges``, each version expanded once
        (see ``adapters.graph``); ``is_model`` on each end as its ``run_io`` row says."""
        graph = GraphRepository(self._conn)
        await graph.tune_reads()
        start = await graph.node_id(namespace, name, version)
        if start is None:
            return []
        edges = await graph.walk([start], "downstream", MAX_DEPTH, INFINITY)
        names = await graph.names(sorted({*edges.srcs, *edges.dsts}))
        nodes: dict[tuple[int, bool], Node] = {}

        def node(node_id: int, is_model: bool) -> Node:
            found = nodes.get((node_id, is_model))
            if found is None:
                found = nodes[(node_id, is_model)] = Node(*names[node_id], is_model)
            return found

        return [
            LineageEdge(node(src, src_model), run_id, node(dst, dst_model))
            for src, run_id, dst, src_model, dst_model in edges
        ]

    async def save_flags(self, flags: Sequence[tuple[ModelFlag, str | None]]) -> None:
        """Store each flag's current state (new, new path, retracted, active again), with
        the trace id of what changed it: the last of a batch's states of one flag. One
        statement, as ``save_findings``."""
        latest = list({flag.flag_id: (flag, trace_id) for flag, trace_id in flags}.values())
        if not latest:
            return
        await self._conn.execute(
            """
            INSERT INTO model_flags (flag_id, namespace, name, version, finding_id,
                                     severity, status, body, trace_id)
            SELECT id, namespace, name, version, finding_id, severity, status, body::jsonb,
                   trace_id
            FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::uuid[],
                        $6::text[], $7::text[], $8::text[], $9::text[])
                 AS t(id, namespace, name, version, finding_id, severity, status, body,
                      trace_id)
            ON CONFLICT (flag_id) DO UPDATE SET status = excluded.status, body = excluded.body,
                severity = excluded.severity, trace_id = excluded.trace_id, updated_at = now()
            """,
            [flag.flag_id for flag, _ in latest],
            [flag.model.namespace for flag, _ in latest],
            [flag.model.name for flag, _ in latest],
            [flag.model.version for flag, _ in latest],
            [flag.finding_id for flag, _ in latest],
            [flag.severity.value for flag, _ in latest],
            [flag.status.value for flag, _ in latest],
            [flag.model_dump_json() for flag, _ in latest],
            [trace_id for _, trace_id in latest],
        )

    async def flags(self, model: ModelRef | None) -> list[dict[str, Any]]:
        rows = await self._conn.fetch(
            """
            SELECT body, trace_id FROM model_flags
            WHERE $1::text IS NULL OR (namespace = $1 AND name = $2 AND version = $3)
            ORDER BY recorded_at, flag_id
            """,
            model.namespace if model else None,
            model.name if model else None,
            model.version if model else None,
        )
        return [{"flag": r["body"], "trace_id": r["trace_id"]} for r in rows]
