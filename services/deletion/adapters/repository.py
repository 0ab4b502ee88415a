"""Deletion storage: raw SQL on asyncpg; SQL lives only in this module."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any
from uuid import UUID

from contracts.events import CaseState
from services.deletion.domain.cases import Case
from services.deletion.domain.evidence import new_entry
from services.deletion.domain.workflow import CaseStatus
from services.runtime.db import Connection

__all__ = ["CaseRepository"]


class CaseRepository:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def existing(self, case_ids: Iterable[UUID]) -> set[UUID]:
        """Which of these cases are already open (any state): one round trip for a batch."""
        rows = await self._conn.fetch(
            "SELECT case_id FROM cases WHERE case_id = ANY($1::uuid[])", list(case_ids)
        )
        return {r["case_id"] for r in rows}

    async def open(self, case: Case, trace_id: str | None) -> bool:
        """Insert the case unless its cause already opened one; True when new."""
        inserted = await self._conn.fetchval(
            """
            INSERT INTO cases (case_id, kind, state, cause_key, legal_basis, regime, requester,
                               received_at, deadline, original_deadline, scope, trace_id)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11)
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

    async def all_cases(self, now: datetime) -> list[dict[str, Any]]:
        """Every case with its days left (the caller orders them by urgency)."""
        rows = await self._conn.fetch(
            "SELECT *, (deadline - $1) AS time_left FROM cases ORDER BY deadline, case_id", now
        )
        return [_case(r) for r in rows]

    async def status_for_update(self, case_id: UUID) -> tuple[CaseStatus, int] | None:
        """The case's workflow status and version, locked until the transaction ends."""
        row = await self._conn.fetchrow(
            "SELECT state, requester, held_from, failed_step, irreversible_started,"
            " approved_by, version FROM cases WHERE case_id = $1 FOR UPDATE",
            case_id,
        )
        if row is None:
            return None
        status = CaseStatus(
            state=CaseState(row["state"]),
            requester=row["requester"],
            held_from=CaseState(row["held_from"]) if row["held_from"] else None,
            failed_step=CaseState(row["failed_step"]) if row["failed_step"] else None,
            irreversible_started=row["irreversible_started"],
            approved_by=row["approved_by"],
        )
        return status, int(row["version"])

    async def save_status(
        self,
        case_id: UUID,
        previous: CaseState,
        status: CaseStatus,
        *,
        actor: str,
        reason: str,
        at: datetime,
    ) -> int:
        """Store the new status and its history row; returns the case's new version."""
        row = await self._conn.fetchrow(
            """
            UPDATE cases SET state = $2, held_from = $3, failed_step = $4,
                irreversible_started = $5, approved_by = $6, version = version + 1,
                updated_at = $7
            WHERE case_id = $1
            RETURNING version
            """,
            case_id,
            status.state.value,
            status.held_from.value if status.held_from else None,
            status.failed_step.value if status.failed_step else None,
            status.irreversible_started,
            status.approved_by,
            at,
        )
        assert row is not None
        await self._conn.execute(
            """
            INSERT INTO case_history (case_id, seq, from_state, to_state, actor, reason, at)
            SELECT $1, coalesce(max(seq), 0) + 1, $2, $3, $4, $5, $6
            FROM case_history WHERE case_id = $1
            """,
            case_id,
            previous.value,
            status.state.value,
            actor,
            reason,
            at,
        )
        return int(row["version"])

    async def extend(self, case_id: UUID, new_deadline: datetime, reason: str) -> None:
        await self._conn.execute(
            "UPDATE cases SET deadline = $2, extension_reason = $3, version = version + 1,"
            " updated_at = now() WHERE case_id = $1",
            case_id,
            new_deadline,
            reason,
        )

    async def record_evidence(
        self, case_id: UUID, *, at: datetime, kind: str, actor: str, data: dict[str, Any]
    ) -> dict[str, Any]:
        """Append one entry to the case's hash chain (callers hold the case's row lock)."""
        last = await self._conn.fetchval(
            "SELECT entry::text FROM case_evidence WHERE case_id = $1 ORDER BY seq DESC LIMIT 1",
            case_id,
        )
        entry = new_entry(
            json.loads(last) if last else None,
            case_id=str(case_id),
            at=at,
            kind=kind,
            actor=actor,
            data=data,
        )
        await self._conn.execute(
            "INSERT INTO case_evidence (case_id, seq, hash, entry) VALUES ($1, $2, $3, $4)",
            case_id,
            entry["seq"],
            entry["hash"],
            entry,
        )
        return entry

    async def evidence(self, case_id: UUID) -> list[dict[str, Any]]:
        rows = await self._conn.fetch(
            "SELECT entry::text FROM case_evidence WHERE case_id = $1 ORDER BY seq", case_id
        )
        return [json.loads(r[0]) for r in rows]

    async def get(self, case_id: UUID, now: datetime) -> dict[str, Any] | None:
        """The case, its history, and the head of its evidence log."""
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
        head = await self._conn.fetchrow(
            "SELECT seq, hash FROM case_evidence WHERE case_id = $1 ORDER BY seq DESC LIMIT 1",
            case_id,
        )
        return {
            **_case(row),
            "history": [dict(h) for h in history],
            "evidence": {"entries": head["seq"], "head": head["hash"]} if head else None,
        }


def _case(row: Any) -> dict[str, Any]:
    data = dict(row)
    data["days_left"] = data.pop("time_left").days
    for private in ("created_at", "version", "held_from", "failed_step", "updated_at"):
        data.pop(private, None)
    data["version"] = row["version"]
    data["held_from"], data["failed_step"] = row["held_from"], row["failed_step"]
    return data
