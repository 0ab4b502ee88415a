"""Read-only use cases: a dataset version's composition and subjects, and the what-if of a
withdrawal. Nothing here writes or publishes: each runs in a read-only transaction
(Postgres itself refuses a write there)."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from contracts.base import DatasetRef
from contracts.events import Severity
from services.registry.adapters.composition import CompositionStore, WhatIfReads
from services.registry.adapters.repository import RegistryRepository
from services.registry.domain.findings import PolicyBook
from services.registry.domain.whatif import (
    SEVERITY_RANK,
    Scope,
    VersionOutcome,
    group_keys,
    judge_what_if,
    summarize,
)
from services.runtime.db import Connection

__all__ = [
    "MAX_SUBJECTS_WITH_HISTORY",
    "WhatIfAnswer",
    "composition",
    "subjects_page",
    "what_if_withdrawal",
]

MAX_SUBJECTS_WITH_HISTORY = 5_000
"""Subjects with a consent history judged one by one in a what-if, by default (two
judgements per use, ~80 µs each on the loaded test machine); past it the answer says
``truncated``. Subjects without history cost nothing per subject (aggregated)."""


COMPOSITION_CACHE_SIZE = 1024
_COMPOSITIONS: OrderedDict[tuple[int, datetime, int], dict[str, Any]] = OrderedDict()
"""Compositions of sealed versions, most recently used last. A sealed version's
memberships never change (only a seal writes them), so its composition is computed once
per process; the key holds its seal time and record count as well, so that a version
purged one day (``record_count`` changed) would be computed again."""


async def composition(conn: Connection, dataset: DatasetRef) -> dict[str, Any] | None:
    """A sealed version's records and distinct subjects, in total, per category and per
    jurisdiction; None when no sealed version has that name."""
    async with conn.transaction(readonly=True):
        store = CompositionStore(conn)
        version = await store.sealed_version(dataset)
        if version is None:
            return None
        key = (version["dataset_version_id"], version["sealed_at"], version["record_count"])
        figures = _COMPOSITIONS.get(key)
        if figures is None:
            figures = await store.composition(version["dataset_version_id"])
            _COMPOSITIONS[key] = figures
            if len(_COMPOSITIONS) > COMPOSITION_CACHE_SIZE:
                _COMPOSITIONS.popitem(last=False)
        else:
            _COMPOSITIONS.move_to_end(key)
    return {
        "dataset": dataset.model_dump(),
        "purpose": version["purpose"],
        "sealed_at": version["sealed_at"],
        "used_at": version["used_at"],
        **figures,
    }


async def subjects_page(
    conn: Connection, dataset: DatasetRef, *, after: str | None, limit: int
) -> dict[str, Any] | None:
    """Up to ``limit`` distinct subject ids of a sealed version after ``after`` (byte
    order), and the cursor of the next page (None on the last)."""
    async with conn.transaction(readonly=True):
        store = CompositionStore(conn)
        version = await store.sealed_version(dataset)
        if version is None:
            return None
        subjects = await store.subjects(
            version["dataset_version_id"], version["record_count"], after=after, limit=limit
        )
    return {
        "dataset": dataset.model_dump(),
        "subjects": subjects,
        "next_after": subjects[-1] if len(subjects) == limit else None,
    }


@dataclass(frozen=True)
class WhatIfAnswer:
    scope: Scope
    purpose: str | None
    at: datetime
    with_history: int
    judged_individually: int
    without_history: int
    versions: list[VersionOutcome]
    current: dict[int, list[Severity]]

    @property
    def truncated(self) -> bool:
        return self.judged_individually < self.with_history

    def as_json(self) -> dict[str, Any]:
        return {
            "scope": {self.scope.kind.value: self.scope.value},
            "purpose": self.purpose,
            "at": self.at,
            "truncated": self.truncated,
            "subjects": {
                "with_history": self.with_history,
                "judged_individually": self.judged_individually,
                "not_judged": self.with_history - self.judged_individually,
                "without_history": self.without_history,
            },
            "dataset_versions": [self._version(v) for v in self.versions],
        }

    def _version(self, v: VersionOutcome) -> dict[str, Any]:
        current = self.current.get(v.dataset_version_id, [])
        return {
            "dataset": v.dataset.model_dump(),
            "purpose": v.purpose,
            "used_at": v.used_at,
            "severity": v.severity.value,
            "current_severity": max(current, key=SEVERITY_RANK.__getitem__).value
            if current
            else None,
            "records": v.records,
            "subjects": v.subjects,
            "findings": [
                {
                    "policy_id": f.kind.policy_id,
                    "policy_version": f.kind.policy_version,
                    "reason": f.kind.reason.value,
                    "severity": f.kind.severity.value,
                    "rule_id": f.kind.rule_id,
                    "rule": f.kind.rule,
                    "records": f.records,
                    "subjects": f.subjects,
                }
                for f in v.findings
            ],
        }


async def what_if_withdrawal(
    conn: Connection,
    scope: Scope,
    *,
    purpose: str | None = None,
    at: datetime | None = None,
    max_subjects: int = MAX_SUBJECTS_WITH_HISTORY,
) -> WhatIfAnswer:
    """Which dataset versions would get new or more severe findings if the scope withdrew
    at ``at`` (default now), for ``purpose`` (default every purpose of their uses).

    One read-only, repeatable-read transaction: every read sees the same state, and
    nothing can be written. The judging runs in a thread (it is CPU only).
    """
    now = datetime.now(UTC)
    at = at or now
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        reads = WhatIfReads(conn, scope, purpose)
        await reads.tune()
        repo = RegistryRepository(conn)
        subjects, with_history = await reads.subjects_with_history(max_subjects)
        uses = await reads.uses_of(subjects)
        histories = await repo.histories(subjects)
        groups = await reads.groups_without_history()
        book = PolicyBook(await repo.policies())
        changes = await asyncio.to_thread(
            judge_what_if,
            scope,
            uses=uses,
            histories=histories,
            groups=groups,
            book=book,
            purpose=purpose,
            at=at,
            recorded_at=now,
        )
        kinds = sorted({c.kind for c in changes}, key=lambda k: k.order)
        counts, without_history = await reads.subjects_without_history(group_keys(changes, kinds))
        versions = summarize(changes, kinds, counts)
        current = await reads.current_severities([v.dataset_version_id for v in versions])
    return WhatIfAnswer(
        scope=scope,
        purpose=purpose,
        at=at,
        with_history=with_history,
        judged_individually=len(subjects),
        without_history=without_history,
        versions=versions,
        current=current,
    )
