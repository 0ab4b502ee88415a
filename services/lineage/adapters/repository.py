"""Lineage storage: raw SQL on asyncpg; SQL lives only in this module."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from contracts.base import ModelRef
from contracts.events import ModelFlag
from contracts.openlineage import RunEvent
from services.lineage.domain.propagation import LineageEdge, Node
from services.runtime.db import Connection

__all__ = ["LineageRepository"]

MAX_DEPTH = 64


class LineageRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def record_run_event(self, event: RunEvent) -> bool:
        """Keep the raw event and merge its inputs/outputs into the run; False if seen."""
        raw = event.model_dump(mode="json", by_alias=True, exclude_none=True)
        digest = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()
        inserted = await self._conn.fetchval(
            "INSERT INTO openlineage_events (event_digest, run_id, event_type, event_time, raw)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING RETURNING true",
            digest,
            event.run.run_id,
            event.event_type.value if event.event_type else None,
            event.event_time,
            raw,
        )
        if not inserted:
            return False
        await self._conn.execute(
            "INSERT INTO runs (run_id, job_namespace, job_name) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING",
            event.run.run_id,
            event.job.namespace,
            event.job.name,
        )
        io = [("input", d) for d in event.inputs or ()] + [
            ("output", d) for d in event.outputs or ()
        ]
        await self._conn.executemany(
            "INSERT INTO run_io (run_id, direction, namespace, name, version, is_model)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            [
                (event.run.run_id, direction, d.namespace, d.name, d.version or "", d.is_model)
                for direction, d in io
            ],
        )
        return True

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

    async def save_flags(self, flags: Sequence[ModelFlag], trace_id: str | None) -> list[ModelFlag]:
        """Store flags; returns the new ones (a known flag id changes nothing)."""
        new = []
        for flag in flags:
            inserted = await self._conn.fetchval(
                """
                INSERT INTO model_flags (flag_id, namespace, name, version, finding_id,
                                         severity, status, body, trace_id)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                ON CONFLICT (flag_id) DO NOTHING RETURNING true
                """,
                flag.flag_id,
                flag.model.namespace,
                flag.model.name,
                flag.model.version,
                flag.finding_id,
                flag.severity.value,
                flag.status.value,
                json.loads(flag.model_dump_json()),
                trace_id,
            )
            if inserted:
                new.append(flag)
        return new

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
