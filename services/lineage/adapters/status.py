"""Model status storage and the model-centred graph reads. Raw SQL on asyncpg.

Tables (revision ``lineage_0002``): ``model_status`` (the explicit status of a model
version, one row each), ``model_status_history`` (every change, append-only),
``model_flags`` (flags and their lifecycle), ``findings`` (the latest state of every
dataset finding received) and ``run_io`` (the graph at version level).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from contracts.base import DatasetRef, ModelRef
from contracts.events import DatasetFinding, ModelFlag, Severity
from services.lineage.adapters.repository import MAX_DEPTH
from services.lineage.domain.status import ExplicitStatus
from services.runtime.db import Connection

__all__ = ["ExplicitRow", "ModelStatusStore", "UpstreamNode"]

_STATUS_LOCK_SEED = 0x4D4F444C
"""Seed of the advisory lock key hashed from a model's key (one lock per model)."""


@dataclass(frozen=True, slots=True)
class ExplicitRow:
    status: ExplicitStatus
    actor: str
    reason: str
    changed_at: datetime


@dataclass(frozen=True, slots=True)
class UpstreamNode:
    """A dataset or model version upstream of a model, at its shortest distance in runs."""

    ref: DatasetRef
    is_model: bool
    depth: int


_UPSTREAM = f"""
    WITH RECURSIVE up(namespace, name, version, is_model, depth) AS (
        SELECT i.namespace, i.name, i.version, i.is_model, 1
        FROM run_io o JOIN run_io i ON i.run_id = o.run_id AND i.direction = 'input'
        WHERE o.direction = 'output' AND o.namespace = $1 AND o.name = $2 AND o.version = $3
        UNION
        SELECT i.namespace, i.name, i.version, i.is_model, up.depth + 1
        FROM up
        JOIN run_io o ON o.direction = 'output' AND o.namespace = up.namespace
                     AND o.name = up.name AND o.version = up.version
        JOIN run_io i ON i.run_id = o.run_id AND i.direction = 'input'
        WHERE up.depth < {MAX_DEPTH}
    )
"""
"""Every version upstream of the model ``($1, $2, $3)``: the inputs of the runs that
wrote it, then theirs, … (bounded like every traversal here, cycles included)."""


class ModelStatusStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def seen_as(self, model: ModelRef) -> bool | None:
        """True when the version was seen as a model (``datasetType: MODEL``) in a run's
        inputs or outputs, False when only as a dataset, None when never."""
        return await self._conn.fetchval(  # type: ignore[no-any-return]
            "SELECT bool_or(is_model) FROM run_io"
            " WHERE namespace = $1 AND name = $2 AND version = $3",
            model.namespace,
            model.name,
            model.version,
        )

    async def lock(self, model: ModelRef) -> None:
        """Serialize status changes of one model (until the transaction ends)."""
        await self._conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))", model.key, _STATUS_LOCK_SEED
        )

    async def explicit(self, model: ModelRef) -> ExplicitRow | None:
        row = await self._conn.fetchrow(
            "SELECT status, actor, reason, changed_at FROM model_status"
            " WHERE namespace = $1 AND name = $2 AND version = $3",
            model.namespace,
            model.name,
            model.version,
        )
        if row is None:
            return None
        return ExplicitRow(
            ExplicitStatus(row["status"]), row["actor"], row["reason"], row["changed_at"]
        )

    async def set_explicit(
        self, model: ModelRef, status: ExplicitStatus, actor: str, reason: str, at: datetime
    ) -> None:
        """The model's explicit status, and a history entry for the change."""
        await self._conn.execute(
            """
            WITH history AS (
                INSERT INTO model_status_history (namespace, name, version, status, actor,
                                                  reason, changed_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
            )
            INSERT INTO model_status (namespace, name, version, status, actor, reason,
                                      changed_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7)
            ON CONFLICT (namespace, name, version) DO UPDATE SET status = excluded.status,
                actor = excluded.actor, reason = excluded.reason,
                changed_at = excluded.changed_at
            """,
            model.namespace,
            model.name,
            model.version,
            status.value,
            actor,
            reason,
            at,
        )

    async def history(self, model: ModelRef) -> list[dict[str, Any]]:
        rows = await self._conn.fetch(
            "SELECT status, actor, reason, changed_at FROM model_status_history"
            " WHERE namespace = $1 AND name = $2 AND version = $3 ORDER BY seq",
            model.namespace,
            model.name,
            model.version,
        )
        return [dict(r) for r in rows]

    async def active_flags(self, model: ModelRef) -> list[ModelFlag]:
        rows = await self._conn.fetch(
            """
            SELECT body::text AS body FROM model_flags
            WHERE namespace = $1 AND name = $2 AND version = $3 AND status = 'active'
            ORDER BY recorded_at, flag_id
            """,
            model.namespace,
            model.name,
            model.version,
        )
        return [ModelFlag.model_validate_json(r["body"]) for r in rows]

    async def upstream(self, model: ModelRef) -> list[UpstreamNode]:
        """Every dataset and model version upstream of the model, nearest first."""
        rows = await self._conn.fetch(
            _UPSTREAM
            + """
            SELECT namespace, name, version, bool_or(is_model) AS is_model, min(depth) AS depth
            FROM up GROUP BY namespace, name, version
            ORDER BY min(depth), namespace, name, version
            """,
            model.namespace,
            model.name,
            model.version,
        )
        return [
            UpstreamNode(
                DatasetRef(namespace=r["namespace"], name=r["name"], version=r["version"]),
                r["is_model"],
                r["depth"],
            )
            for r in rows
        ]

    async def findings_upstream(
        self, model: ModelRef, severities: Sequence[Severity]
    ) -> list[DatasetFinding]:
        """Active findings of these severities on the versions upstream of the model."""
        rows = await self._conn.fetch(
            _UPSTREAM
            + """
            SELECT f.body::text AS body FROM findings f
            WHERE f.status = 'active' AND f.severity = ANY($4::text[])
              AND (f.namespace, f.name, f.version) IN (
                  SELECT namespace, name, version FROM up)
            ORDER BY f.namespace, f.name, f.version, f.finding_id
            """,
            model.namespace,
            model.name,
            model.version,
            [s.value for s in severities],
        )
        return [DatasetFinding.model_validate_json(r["body"]) for r in rows]

    async def active_severities(
        self, models: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], frozenset[Severity]]:
        """The severities of each model's active flags (models without any are absent)."""
        if not models:
            return {}
        rows = await self._conn.fetch(
            """
            SELECT f.namespace, f.name, f.version, array_agg(DISTINCT f.severity) AS severities
            FROM model_flags f
            JOIN unnest($1::text[], $2::text[], $3::text[]) AS m(namespace, name, version)
              ON (f.namespace, f.name, f.version) = (m.namespace, m.name, m.version)
            WHERE f.status = 'active'
            GROUP BY f.namespace, f.name, f.version
            """,
            [m[0] for m in models],
            [m[1] for m in models],
            [m[2] for m in models],
        )
        return {
            (r["namespace"], r["name"], r["version"]): frozenset(
                Severity(s) for s in r["severities"]
            )
            for r in rows
        }

    async def explicit_statuses(
        self, models: Sequence[tuple[str, str, str]]
    ) -> dict[tuple[str, str, str], ExplicitStatus]:
        if not models:
            return {}
        rows = await self._conn.fetch(
            """
            SELECT s.namespace, s.name, s.version, s.status FROM model_status s
            JOIN unnest($1::text[], $2::text[], $3::text[]) AS m(namespace, name, version)
              ON (s.namespace, s.name, s.version) = (m.namespace, m.name, m.version)
            """,
            [m[0] for m in models],
            [m[1] for m in models],
            [m[2] for m in models],
        )
        return {
            (r["namespace"], r["name"], r["version"]): ExplicitStatus(r["status"]) for r in rows
        }
