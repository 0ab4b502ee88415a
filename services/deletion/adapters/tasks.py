"""Execution storage: frozen targets, tasks and their acknowledgements, webhook systems and
deliveries, verification, and the case's ``execution`` summary. SQL only.

Callers that change a case's tasks or verification hold the case's row lock
(``CaseRepository.status_for_update``), as every evidence entry needs it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from services.deletion.domain.execution import PlannedTask, TaskState, iso, task_id_for
from services.runtime.db import Connection

__all__ = ["DELIVERY_CHANNEL", "VERIFICATION_CHANNEL", "TaskStore"]

DELIVERY_CHANNEL = "deletion_deliveries"
"""NOTIFY: a webhook delivery may be due (tasks sent, re-sent, a case released)."""
VERIFICATION_CHANNEL = "deletion_verifications"
"""NOTIFY: a case entered verification."""

_TASK_COLUMNS = """task_id, case_id, target_system, action, targets, parameters, state, attempt,
    issued_at, acknowledged_at, executor, outcome, reason, deliveries, next_delivery_at,
    delivered_at, last_error"""


class TaskStore:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    # --- the case -----------------------------------------------------------------------

    async def case(self, case_id: UUID) -> dict[str, Any] | None:
        row = await self._conn.fetchrow(
            "SELECT case_id, kind, state, scope, targets, requester FROM cases WHERE case_id = $1",
            case_id,
        )
        return dict(row) if row else None

    async def freeze(self, case_id: UUID, targets: dict[str, Any]) -> None:
        await self._conn.execute(
            "UPDATE cases SET targets = $2, version = version + 1, updated_at = now()"
            " WHERE case_id = $1",
            case_id,
            targets,
        )

    async def set_progress(self, case_id: UUID, execution: dict[str, Any]) -> None:
        await self._conn.execute(
            "UPDATE cases SET execution = $2 WHERE case_id = $1", case_id, execution
        )

    # --- tasks --------------------------------------------------------------------------

    async def insert(
        self, case_id: UUID, planned: Sequence[PlannedTask], now: datetime
    ) -> list[dict[str, Any]]:
        """Insert the tasks not there yet (first attempt); returns the new rows."""
        created = []
        for task in planned:
            row = await self._conn.fetchrow(
                f"""
                INSERT INTO tasks (task_id, case_id, target_system, action, targets, parameters,
                                   state, attempt, issued_at, executor, next_delivery_at)
                VALUES ($1, $2, $3, $4, $5, $6, 'pending', 1, $7, $8,
                        CASE WHEN $8 = 'webhook' THEN $7::timestamptz END)
                ON CONFLICT (case_id, target_system, action) DO NOTHING
                RETURNING {_TASK_COLUMNS}
                """,
                task_id_for(case_id, task.system, task.action, 1),
                case_id,
                task.system,
                task.action,
                list(task.targets),
                task.parameters,
                now,
                task.executor,
            )
            if row is not None:
                created.append(dict(row))
        return created

    async def tasks(self, case_id: UUID) -> list[dict[str, Any]]:
        rows = await self._conn.fetch(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE case_id = $1 ORDER BY target_system, action",
            case_id,
        )
        return [dict(r) for r in rows]

    async def task(self, task_id: UUID) -> dict[str, Any] | None:
        row = await self._conn.fetchrow(
            f"SELECT {_TASK_COLUMNS} FROM tasks WHERE task_id = $1", task_id
        )
        return dict(row) if row else None

    async def acknowledge(
        self,
        task_id: UUID,
        state: TaskState,
        *,
        reason: str,
        at: datetime,
        result: dict[str, Any],
    ) -> None:
        await self._conn.execute(
            "UPDATE tasks SET state = $2, outcome = $2, reason = $3, acknowledged_at = $4,"
            " result = $5, next_delivery_at = NULL WHERE task_id = $1",
            task_id,
            state.value,
            reason,
            at,
            result,
        )

    async def resend(self, task: dict[str, Any], now: datetime) -> dict[str, Any]:
        """The task's next attempt: a new id, pending again, deliveries from zero."""
        attempt = int(task["attempt"]) + 1
        row = await self._conn.fetchrow(
            f"""
            UPDATE tasks SET task_id = $2, attempt = $3, state = 'pending', outcome = NULL,
                reason = '', acknowledged_at = NULL, result = NULL, issued_at = $4,
                deliveries = 0, delivered_at = NULL, last_error = NULL,
                next_delivery_at = CASE WHEN executor = 'webhook' THEN $4::timestamptz END
            WHERE task_id = $1
            RETURNING {_TASK_COLUMNS}
            """,
            task["task_id"],
            task_id_for(task["case_id"], task["target_system"], task["action"], attempt),
            attempt,
            now,
        )
        assert row is not None
        return dict(row)

    # --- webhook deliveries -------------------------------------------------------------

    async def claim_delivery(self, now: datetime) -> dict[str, Any] | None:
        """A due delivery of an executing case, with the task and the case locked (the
        case stays locked while the caller delivers, so no hold can slip in between)."""
        row = await self._conn.fetchrow(
            """
            SELECT t.task_id, t.case_id, t.target_system, t.action, t.targets, t.parameters,
                   t.attempt, t.issued_at, t.deliveries, w.url, w.secret
            FROM tasks t
            JOIN cases c ON c.case_id = t.case_id
            JOIN webhook_systems w ON w.system = t.target_system
            WHERE t.executor = 'webhook' AND t.state = 'pending' AND t.delivered_at IS NULL
              AND t.next_delivery_at <= $1 AND c.state = 'executing'
            ORDER BY t.next_delivery_at
            LIMIT 1
            FOR UPDATE OF t, c SKIP LOCKED
            """,
            now,
        )
        return dict(row) if row else None

    async def record_delivery(
        self,
        task: dict[str, Any],
        *,
        delivery: int,
        at: datetime,
        status_code: int | None,
        error: str | None,
        answer: Any,
        duration_ms: int,
    ) -> None:
        await self._conn.execute(
            "INSERT INTO task_deliveries (task_id, case_id, target_system, task_attempt,"
            " delivery, at, status_code, error, answer, duration_ms)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            task["task_id"],
            task["case_id"],
            task["target_system"],
            task["attempt"],
            delivery,
            at,
            status_code,
            error,
            answer,
            duration_ms,
        )

    async def delivered(self, task_id: UUID, *, at: datetime, deliveries: int) -> None:
        await self._conn.execute(
            "UPDATE tasks SET delivered_at = $2, deliveries = $3, next_delivery_at = NULL,"
            " last_error = NULL WHERE task_id = $1",
            task_id,
            at,
            deliveries,
        )

    async def retry_later(
        self, task_id: UUID, *, at: datetime | None, deliveries: int, error: str
    ) -> None:
        await self._conn.execute(
            "UPDATE tasks SET next_delivery_at = $2, deliveries = $3, last_error = $4"
            " WHERE task_id = $1",
            task_id,
            at,
            deliveries,
            error,
        )

    async def deliveries(self, case_id: UUID) -> list[dict[str, Any]]:
        rows = await self._conn.fetch(
            "SELECT task_id, target_system, task_attempt, delivery, at, status_code, error,"
            " answer, duration_ms FROM task_deliveries WHERE case_id = $1 ORDER BY delivery_id",
            case_id,
        )
        return [dict(r) for r in rows]

    # --- webhook systems ----------------------------------------------------------------

    async def upsert_system(
        self,
        system: str,
        *,
        url: str,
        secret: str,
        case_kinds: Sequence[str],
        enabled: bool,
        actor: str,
        at: datetime,
    ) -> bool:
        """Register or replace the system; True when it is new."""
        return bool(
            await self._conn.fetchval(
                """
                INSERT INTO webhook_systems (system, url, secret, case_kinds, enabled,
                                             registered_by, registered_at, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
                ON CONFLICT (system) DO UPDATE SET url = EXCLUDED.url, secret = EXCLUDED.secret,
                    case_kinds = EXCLUDED.case_kinds, enabled = EXCLUDED.enabled,
                    registered_by = EXCLUDED.registered_by, updated_at = EXCLUDED.updated_at
                RETURNING xmax = 0
                """,
                system,
                url,
                secret,
                sorted(set(case_kinds)),
                enabled,
                actor,
                at,
            )
        )

    async def systems(self) -> list[dict[str, Any]]:
        """Every system, without its secret."""
        rows = await self._conn.fetch(
            "SELECT system, url, case_kinds, enabled, registered_by, registered_at, updated_at"
            " FROM webhook_systems ORDER BY system"
        )
        return [dict(r) for r in rows]

    async def secret(self, system: str) -> str | None:
        value = await self._conn.fetchval(
            "SELECT secret FROM webhook_systems WHERE system = $1", system
        )
        return str(value) if value is not None else None

    async def systems_for_kind(self, kind: str) -> list[str]:
        rows = await self._conn.fetch(
            "SELECT system FROM webhook_systems WHERE enabled AND $1 = ANY(case_kinds)"
            " ORDER BY system",
            kind,
        )
        return [r["system"] for r in rows]

    # --- verification -------------------------------------------------------------------

    async def schedule_verification(self, case_id: UUID, at: datetime) -> None:
        await self._conn.execute(
            "INSERT INTO case_verifications (case_id, next_check_at) VALUES ($1, $2)"
            " ON CONFLICT (case_id) DO UPDATE SET next_check_at = EXCLUDED.next_check_at",
            case_id,
            at,
        )

    async def claim_verification(self, now: datetime, lease_until: datetime) -> UUID | None:
        """A case in verification whose check is due; its next check is pushed to
        ``lease_until`` so that another worker leaves it alone meanwhile."""
        value = await self._conn.fetchval(
            """
            WITH due AS (
                SELECT v.case_id FROM case_verifications v JOIN cases c USING (case_id)
                WHERE c.state = 'verifying' AND v.next_check_at <= $1
                ORDER BY v.next_check_at LIMIT 1
                FOR UPDATE OF v SKIP LOCKED
            )
            UPDATE case_verifications v SET next_check_at = $2 FROM due
            WHERE v.case_id = due.case_id
            RETURNING v.case_id
            """,
            now,
            lease_until,
        )
        return value if isinstance(value, UUID) else None

    async def verification(self, case_id: UUID) -> dict[str, Any] | None:
        row = await self._conn.fetchrow(
            "SELECT attempts, next_check_at, checked_at, confirmed, results"
            " FROM case_verifications WHERE case_id = $1",
            case_id,
        )
        return dict(row) if row else None

    async def store_verification(
        self,
        case_id: UUID,
        *,
        at: datetime,
        confirmed: bool,
        results: dict[str, Any],
        next_at: datetime,
    ) -> int:
        """Store a verification's results; returns the attempts so far."""
        return int(
            await self._conn.fetchval(
                "UPDATE case_verifications SET attempts = attempts + 1, checked_at = $2,"
                " confirmed = $3, results = $4, next_check_at = $5 WHERE case_id = $1"
                " RETURNING attempts",
                case_id,
                at,
                confirmed,
                results,
                next_at,
            )
        )

    # --- waking workers -----------------------------------------------------------------

    async def notify(self, channel: str) -> None:
        """Delivered at commit (nothing when the transaction rolls back)."""
        await self._conn.execute("SELECT pg_notify($1, '')", channel)


def task_json(row: dict[str, Any]) -> dict[str, Any]:
    """A task as ``cases.execution`` and the execution view show it."""
    return {
        "task_id": str(row["task_id"]),
        "system": row["target_system"],
        "action": row["action"],
        "executor": row["executor"],
        "state": row["state"],
        "attempt": row["attempt"],
        "targets": len(row["targets"]),
        "reason": row["reason"],
        "issued_at": iso(row["issued_at"]),
        "acknowledged_at": iso(row["acknowledged_at"]),
        "deliveries": row["deliveries"],
        "delivered_at": iso(row["delivered_at"]),
        "next_delivery_at": iso(row["next_delivery_at"]),
        "last_error": row["last_error"],
    }
