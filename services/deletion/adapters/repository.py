"""Deletion storage: raw SQL on asyncpg; SQL lives only in this module."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from services.deletion.domain.cases import Case
from services.runtime.db import Connection

__all__ = ["CaseRepository"]


class CaseRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def open(self, case: Case, trace_id: str | None) -> bool:
        """Insert the case unless its cause already opened one; True when new."""
        inserted = await self._conn.fetchval(
            """
            INSERT INTO cases (case_id, kind, state, cause_key, legal_basis, regime, requester,
                               received_at, deadline, scope, trace_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
            ON CONFLICT DO NOTHING RETURNING true
            """,
            case.case_id,
            case.kind.value,
            case.state.value,
            case.cause_key,
            case.legal_basis,
            case.regime.value,
            case.requester,
            case.received_at,
            case.deadline,
            case.scope,
            trace_id,
        )
        if inserted:
            await self._conn.execute(
                "INSERT INTO case_history (case_id, seq, from_state, to_state, actor, reason, at)"
                " VALUES ($1, 1, NULL, $2, $3, $4, $5)",
                case.case_id,
                case.state.value,
                case.requester,
                f"opened: {case.cause_key}",
                case.received_at,
            )
        return bool(inserted)

    async def list(self, now: datetime) -> list[dict[str, Any]]:
        """Open cases first, nearest deadline first."""
        rows = await self._conn.fetch(
            """
            SELECT *, (deadline - $1) AS time_left FROM cases
            ORDER BY state IN ('completed', 'rejected', 'canceled'), deadline, case_id
            """,
            now,
        )
        return [_case(r) for r in rows]

    async def get(self, case_id: UUID, now: datetime) -> dict[str, Any] | None:
        row = await self._conn.fetchrow(
            "SELECT *, (deadline - $2) AS time_left FROM cases WHERE case_id = $1", case_id, now
        )
        if row is None:
            return None
        history = await self._conn.fetch(
            "SELECT from_state, to_state, actor, reason, at FROM case_history"
            " WHERE case_id = $1 ORDER BY seq",
            case_id,
        )
        return {**_case(row), "history": [dict(h) for h in history]}


def _case(row: Any) -> dict[str, Any]:
    data = dict(row)
    data["days_left"] = data.pop("time_left").days
    data.pop("created_at", None)
    return data
