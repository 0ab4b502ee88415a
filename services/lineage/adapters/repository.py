"""Lineage storage: raw SQL on asyncpg; SQL lives only in this module."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Self
from uuid import UUID

from pydantic import PrivateAttr

from contracts.base import ModelRef
from contracts.events import DatasetFinding, ModelFlag
from contracts.openlineage import RunEvent
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
        """Active findings on the run's inputs or anywhere upstream of them."""
        rows = await self._conn.fetch(
            f"""
            WITH RECURSIVE up(namespace, name, version, depth) AS (
                SELECT namespace, name, version, 0 FROM run_io
                WHERE run_id = $1 AND direction = 'input'
                UNION
                SELECT i.namespace, i.name, i.version, up.depth + 1
                FROM up
                JOIN run_io o ON o.direction = 'output' AND o.namespace = up.namespace
                             AND o.name = up.name AND o.version = up.version
                JOIN run_io i ON i.run_id = o.run_id AND i.direction = 'input'
                WHERE up.depth < {MAX_DEPTH}
            )
            SELECT f.body::text AS body FROM findings f
            WHERE f.status = 'active' AND (f.namespace, f.name, f.version) IN (
                SELECT namespace, name, version FROM up)
            ORDER BY f.finding_id
            """,
            run_id,
        )
        return [DatasetFinding.model_validate_json(r["body"]) for r in rows]

    async def save_finding(self, finding: DatasetFinding) -> None:
        """The finding's latest state (its messages arrive in order: one key per dataset)."""
        await self._conn.execute(
            """
            INSERT INTO findings (finding_id, namespace, name, version, severity, status, body)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (finding_id) DO UPDATE SET status = excluded.status,
                body = excluded.body, severity = excluded.severity, updated_at = now()
            """,
            finding.finding_id,
            finding.dataset.namespace,
            finding.dataset.name,
            finding.dataset.version,
            finding.severity.value,
            finding.status.value,
            finding.model_dump(mode="json"),
        )

    async def flags_of_finding(self, finding_id: UUID) -> dict[UUID, ModelFlag]:
        rows = await self._conn.fetch(
            "SELECT body::text AS body FROM model_flags WHERE finding_id = $1", finding_id
        )
        flags = (ModelFlag.model_validate_json(r["body"]) for r in rows)
        return {f.flag_id: f for f in flags}

    async def downstream_edges(self, namespace: str, name: str, version: str) -> list[LineageEdge]:
        """Every run edge reachable downstream of one dataset version."""
        rows = await self._conn.fetch(
            """
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
            """,
            namespace,
            name,
            version,
            MAX_DEPTH,
        )
        return [
            LineageEdge(
                Node(r["s_ns"], r["s_name"], r["s_ver"], r["s_model"]),
                r["run_id"],
                Node(r["t_ns"], r["t_name"], r["t_ver"], r["t_model"]),
            )
            for r in rows
        ]

    async def save_flags(self, flags: Sequence[ModelFlag], trace_id: str | None) -> None:
        """Store each flag's current state (new, new path, retracted, active again)."""
        await self._conn.executemany(
            """
            INSERT INTO model_flags (flag_id, namespace, name, version, finding_id,
                                     severity, status, body, trace_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
            ON CONFLICT (flag_id) DO UPDATE SET status = excluded.status, body = excluded.body,
                severity = excluded.severity, trace_id = excluded.trace_id, updated_at = now()
            """,
            [
                (
                    flag.flag_id,
                    flag.model.namespace,
                    flag.model.name,
                    flag.model.version,
                    flag.finding_id,
                    flag.severity.value,
                    flag.status.value,
                    flag.model_dump(mode="json"),
                    trace_id,
                )
                for flag in flags
            ],
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
