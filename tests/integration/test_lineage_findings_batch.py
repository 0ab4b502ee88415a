"""Lineage's findings batch handler against one-at-a-time handling, on real Postgres.

A batch holds several states of the same finding (raised, retracted, raised again) and
findings on datasets whose descendants overlap: the batch handler saves the findings, reads
their stored flags and saves the flags' changes in one round trip each, so it must carry
each finding's flags from one state to the next itself. Whatever it does, the flags stored
and published must be those of handling the same events one by one.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import asyncpg
import pytest

from contracts.envelope import Envelope
from contracts.events import DatasetFinding, FindingStatus, Severity
from contracts.topics import FINDINGS
from services.lineage.service.handlers import on_finding, on_findings
from services.runtime.db import connect_pool
from services.runtime.messages import Event
from services.runtime.settings import ServiceSettings
from services.runtime.telemetry import tracer
from services.runtime.testing import batch_against_one_at_a_time, dataset_finding, migrate_service
from services.runtime.unit_of_work import unit_of_work

pytestmark = pytest.mark.integration

SOURCE = "/consenttrace/lineage"
# (run, inputs, outputs); d = dataset, m = model. m3 descends from both d1 and d2.
GRAPH = [
    ("r1", ["d1"], ["m1"]),
    ("r2", ["m1"], ["m2"]),
    ("r3", ["d1", "d2"], ["m3"]),
    ("r4", ["m3", "m2"], ["m4"]),
]


async def build(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for run, inputs, outputs in GRAPH:
            run_id = uuid.uuid5(uuid.NAMESPACE_URL, run)
            await conn.execute(
                "INSERT INTO runs (run_id, job_namespace, job_name, state)"
                " VALUES ($1, 'jobs', $2, 'COMPLETE')",
                run_id,
                run,
            )
            for direction, names in (("input", inputs), ("output", outputs)):
                for name in names:
                    await conn.execute(
                        "INSERT INTO run_io (run_id, direction, namespace, name, version,"
                        " is_model, seen_at) VALUES ($1, $2, 's3://lake', $3, 'v1', $4, now())",
                        run_id, direction, name, name.startswith("m"),
                    )  # fmt: skip


def finding(
    finding_id: uuid.UUID,
    dataset: str,
    status: FindingStatus,
    severity: Severity,
    trace_id: str | None = None,
) -> Event[DatasetFinding]:
    body = dataset_finding(
        ("s3://lake", dataset, "v1"),
        finding_id=finding_id,
        status=status,
        severity=severity,
        detected_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    envelope = Envelope.new(type=FINDINGS.event_type, source="/test", subject=body.dataset.key)
    headers = (("traceparent", f"00-{trace_id}-{'1' * 16}-01".encode()),) if trace_id else ()
    return Event(envelope, body, FINDINGS.name, 0, 0, None, headers=headers)


async def outcome(pool: asyncpg.Pool) -> tuple[list[tuple[object, ...]], list[tuple[str, str]]]:
    flags = await pool.fetch(
        "SELECT flag_id, finding_id, namespace, name, version, severity, status, body"
        " FROM model_flags ORDER BY flag_id"
    )
    published = await pool.fetch("SELECT value FROM outbox ORDER BY id")
    return (
        [tuple(r) for r in flags],
        [(json.loads(r["value"])["flag_id"], json.loads(r["value"])["status"]) for r in published],
    )


async def test_a_batch_flags_and_publishes_what_one_at_a_time_does(
    make_database: Callable[[str], str],
) -> None:
    f1, f2, f3 = (uuid.uuid4() for _ in range(3))
    active, retracted = FindingStatus.ACTIVE, FindingStatus.RETRACTED
    events = [
        finding(f1, "d1", active, Severity.DESTROY_REQUIRED),
        finding(f2, "d2", active, Severity.RETRAIN_REQUIRED),
        finding(f1, "d1", retracted, Severity.DESTROY_REQUIRED),
        finding(f3, "d1", active, Severity.EXCLUDE_FROM_FUTURE),  # flags no model
        finding(f1, "d1", active, Severity.REVIEW),  # raised again, another severity
        finding(f2, "d2", retracted, Severity.RETRAIN_REQUIRED),
    ]
    results = await batch_against_one_at_a_time(
        make_database,
        "lineage",
        events,
        batch_handler=on_findings,
        handler=on_finding,
        outcome=outcome,
        before=build,
    )
    (batch_flags, batch_published), (single_flags, single_published) = results
    assert batch_flags == single_flags
    assert batch_published == single_published
    # And what they agree on is right: f1 flags m1, m2, m3, m4 again (review), f2 nothing.
    active_flags = {(r[1], r[3]) for r in batch_flags if r[6] == "active"}
    assert active_flags == {(f1, "m1"), (f1, "m2"), (f1, "m3"), (f1, "m4")}
    assert {r[1] for r in batch_flags} == {f1, f2}
    # f1 raised (4 models), f2 raised (m3, m4), f1 retracted, f1 raised again, f2 retracted.
    assert len(batch_published) == 4 + 2 + 4 + 4 + 2


async def test_each_flag_carries_the_trace_of_the_finding_that_changed_it(
    make_database: Callable[[str], str],
) -> None:
    """The batch's own span only links to its events' traces: a flag row and its message
    must still say which finding's trace they belong to (evidence follows one trace)."""
    traces = {name: uuid.uuid4().hex for name in ("d1", "d2")}
    events = [
        finding(uuid.uuid4(), name, FindingStatus.ACTIVE, Severity.DESTROY_REQUIRED, trace)
        for name, trace in traces.items()
    ]
    database = make_database("lineage_batch_traces")
    migrate_service("lineage", database)
    pool = await connect_pool(ServiceSettings(database_url=database))
    try:
        await build(pool)
        with tracer().start_as_current_span("a batch of two"):
            async with unit_of_work(pool, SOURCE) as uow:
                await on_findings(events, uow)
        rows = await pool.fetch("SELECT finding_id, name, trace_id FROM model_flags")
        messages = await pool.fetch("SELECT value, header_names, header_values FROM outbox")
    finally:
        await pool.close()
    by_finding = {e.body.finding_id: traces[e.body.dataset.name] for e in events}
    assert len(rows) == 4 + 2  # d1: m1-m4; d2: m3, m4
    assert all(r["trace_id"] == by_finding[r["finding_id"]] for r in rows)
    assert len(messages) == len(rows)
    for message in messages:
        headers = dict(zip(message["header_names"], message["header_values"], strict=True))
        finding_id = uuid.UUID(json.loads(message["value"])["finding_id"])
        assert headers["traceparent"].decode().split("-")[1] == by_finding[finding_id]
