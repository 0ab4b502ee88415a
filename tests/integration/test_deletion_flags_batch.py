"""Deletion's model-flag batch handler against one-at-a-time handling, on real Postgres.

A batch holds flags for a model whose case is already open, several flags for one new
model, flags that open nothing (exclude from future use, review) and flags for other
models. The batch handler looks the open cases up in one query and opens the rest in
order; the cases, their history and evidence chains, the messages published and the
traces they belong to must be those of handling the same flags one by one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from contracts.base import DatasetRef, ModelRef
from contracts.envelope import Envelope
from contracts.events import FindingReason, FindingStatus, ModelFlag, Severity
from contracts.topics import MODEL_FLAGS
from services.deletion.service.handlers import on_model_flag, on_model_flags
from services.runtime.db import connect_pool
from services.runtime.messages import Event
from services.runtime.settings import ServiceSettings
from services.runtime.testing import batch_against_one_at_a_time, migrate_service
from services.runtime.unit_of_work import unit_of_work

pytestmark = pytest.mark.integration

SOURCE = "/consenttrace/deletion"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
POSTS = DatasetRef(namespace="s3://lake", name="posts", version="v1")


def model(name: str) -> ModelRef:
    return ModelRef(namespace="models", name=name, version="1")


def flag_event(
    name: str,
    minute: int,
    severity: Severity = Severity.DESTROY_REQUIRED,
    status: FindingStatus = FindingStatus.ACTIVE,
) -> Event[ModelFlag]:
    body = ModelFlag(
        flag_id=uuid.uuid4(),
        status=status,
        model=model(name),
        finding_id=uuid.uuid4(),
        severity=severity,
        reason=FindingReason.LATER_WITHDRAWAL,
        evidence_path=(POSTS.key, f"run:{name}", model(name).key),
        flagged_at=T0 + timedelta(minutes=minute),
    )
    envelope = Envelope.new(type=MODEL_FLAGS.event_type, source="/test", subject=body.model.key)
    trace = uuid.uuid4().hex
    headers = (("traceparent", f"00-{trace}-{'1' * 16}-01".encode()),)
    return Event(envelope, body, MODEL_FLAGS.name, 0, minute, None, headers=headers)


async def outcome(pool: asyncpg.Pool) -> dict[str, list[tuple[Any, ...]]]:
    queries = {
        "cases": "SELECT case_id, kind, state, cause_key, received_at, deadline, scope::text,"
        " trace_id FROM cases ORDER BY case_id",
        "history": "SELECT case_id, seq, from_state, to_state, actor, reason, at"
        " FROM case_history ORDER BY case_id, seq",
        "evidence": "SELECT case_id, seq, hash FROM case_evidence ORDER BY case_id, seq",
        "outbox": "SELECT topic, key, value, header_names, header_values FROM outbox ORDER BY id",
    }
    rows = {name: [tuple(r) for r in await pool.fetch(sql)] for name, sql in queries.items()}
    rows["outbox"] = [_message(*row) for row in rows["outbox"]]
    return rows


def _message(
    topic: str, key: bytes, value: bytes, names: list[str], values: list[bytes]
) -> tuple[object, ...]:
    """A published message, but for what differs between two runs by design: its time
    (``ce_time``) and its span's own id (the trace id stays)."""
    headers = dict(zip(names, values, strict=True))
    del headers["ce_time"]
    headers["traceparent"] = headers["traceparent"].split(b"-")[1]
    return topic, key, value, sorted(headers.items())


async def test_a_batch_opens_the_cases_one_at_a_time_would(
    make_database: Callable[[str], str],
) -> None:
    before = flag_event("already-flagged", 0)
    batch = [
        flag_event("already-flagged", 1),  # its case is open: nothing new
        flag_event("llm", 2),  # opens the llm case, with this flag in its scope
        flag_event("llm", 3, Severity.RETRAIN_REQUIRED),  # the same case: nothing new
        flag_event("ranker", 4, Severity.EXCLUDE_FROM_FUTURE),  # opens no case
        flag_event("ranker", 5, Severity.RETRAIN_REQUIRED),  # opens the ranker case
        flag_event("already-flagged", 6, Severity.RETRAIN_REQUIRED),
        flag_event("tagger", 7, Severity.REVIEW),  # opens no case
    ]

    async def open_the_first(pool: asyncpg.Pool) -> None:
        async with unit_of_work(pool, SOURCE) as uow:
            await on_model_flag(before, uow)

    batched_outcome, single_outcome = await batch_against_one_at_a_time(
        make_database,
        "deletion",
        batch,
        batch_handler=on_model_flags,
        handler=on_model_flag,
        outcome=outcome,
        before=open_the_first,
    )
    assert batched_outcome == single_outcome
    # And what both did is right: one case per model that must go, opened by its first flag.
    cases = {row[3]: row for row in batched_outcome["cases"]}
    assert set(cases) == {f"model:{model(n).key}" for n in ("already-flagged", "llm", "ranker")}
    llm = cases[f"model:{model('llm').key}"]
    assert json.loads(str(llm[6]))["flag_ids"] == [str(batch[1].body.flag_id)]
    assert llm[4] == batch[1].body.flagged_at
    assert llm[7] == _trace(batch[1])  # the case is in the trace of the flag that opened it
    # One "opened" message per case, in the trace of the flag that opened it.
    assert [dict(m[3])["traceparent"].decode() for m in batched_outcome["outbox"]] == [
        _trace(e) for e in (before, batch[1], batch[4])
    ]
    assert len(batched_outcome["history"]) == len(batched_outcome["evidence"]) == 3


async def test_a_batch_without_a_flag_that_opens_a_case_writes_nothing(
    make_database: Callable[[str], str],
) -> None:
    database = make_database("deletion_flags_none")
    migrate_service("deletion", database)
    pool = await connect_pool(ServiceSettings(database_url=database))
    try:
        async with unit_of_work(pool, SOURCE) as uow:
            await on_model_flags(
                [
                    flag_event("a", 0, Severity.EXCLUDE_FROM_FUTURE),
                    flag_event("b", 1, Severity.REVIEW),
                ],
                uow,
            )
        assert (await outcome(pool)) == {"cases": [], "history": [], "evidence": [], "outbox": []}
    finally:
        await pool.close()


def _trace(event: Event[ModelFlag]) -> str:
    headers = dict(event.headers)
    value = headers["traceparent"]
    assert value is not None
    return value.decode().split("-")[1]
