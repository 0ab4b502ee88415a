"""What Postgres alone can write of withdrawals' findings: the floor under ``consent_findings.py``.

    python bench/findings_write_floor.py [--withdrawals W] [--versions V] [--connections C]

A withdrawal whose subject is in ``V`` sealed dataset versions writes, in the registry, ``V``
later-withdrawal findings (DESIGN §4; identity includes the withdrawal event), and for each:
a contribution row (``finding_contributions``), the finding (``findings``), its history row
(``finding_events``) and its outbox message (``outbox``): ``4 V`` rows, with their indexes.
This script writes exactly those rows for ``W`` withdrawals into a freshly migrated registry
database, by ``COPY`` (the cheapest way Postgres takes rows: no SQL per row, no round trip
per batch), on ``C`` connections at once, one transaction per 500 withdrawals per
connection, and prints withdrawals/s. No service, no Kafka, no judging: whatever the code
above it does, the registry cannot turn withdrawals into findings faster than this on this
machine's Postgres. Beside it, the same with one finding per (version, batch) instead of
one per withdrawal (what aggregating later withdrawals would write: the contribution rows
stay, one per subject and version, so that "findings of subject S" and retractions work).
Medians of ``--runs``. Not a test: nothing here asserts. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
from _common import log, postgres_server_url

from services.runtime import embedded
from services.runtime.testing import migrate_service

BATCH = 500
"""Withdrawals per transaction (the registry's consumer batch)."""

_BODY = (
    '{"finding_id":"%s","dataset":{"namespace":"s3://training","name":"chat/messages",'
    '"version":"v%d"},"status":"active","reason":"later_withdrawal","severity":'
    '"retrain_required","policy_id":"walkthrough","policy_version":"2025-11-03","rule":'
    '"EU members: legitimate interest from 3 Nov 2025; objection honoured; retraining '
    'required on withdrawal","affected_records":1,"affected_subjects":1,"sample_record_ids":'
    '["msg-000001"],"cause_event_ids":["%s"],"detected_at":"2026-11-26T12:00:00Z"}'
)
"""A later-withdrawal finding's body, about the size of a real one (~560 bytes)."""


def rows_for(
    withdrawals: range, versions: int, aggregated: bool
) -> dict[str, list[tuple[Any, ...]]]:
    now = datetime.now(UTC)
    contributions: list[tuple[Any, ...]] = []
    findings: list[tuple[Any, ...]] = []
    history: list[tuple[Any, ...]] = []
    outbox: list[tuple[Any, ...]] = []
    shared = {v: uuid.uuid4() for v in range(versions)}  # one finding per version and batch
    for w in withdrawals:
        event = uuid.uuid4()
        for v in range(versions):
            finding = shared[v] if aggregated else uuid.uuid4()
            contributions.append(
                (f"member-{w:09d}", v, finding, "user.content.private", 1, [f"msg-{w}"], [event])
            )
            if aggregated and w != withdrawals[0]:
                continue
            body = _BODY % (finding, v, event)
            findings.append(
                (
                    finding,
                    "s3://training",
                    "chat/messages",
                    f"v{v}",
                    "active",
                    "retrain_required",
                    "later_withdrawal",
                    body,
                    None,
                    v,
                    "walkthrough",
                    "2025-11-03",
                    1,
                    1,
                    now,
                )
            )
            history.append((finding, "active", body))
            outbox.append(
                (
                    "registry.findings.v1",
                    f"dataset:s3://training:chat/messages#v{v}".encode(),
                    body.encode(),
                    ["ce_id", "ce_type", "traceparent"],
                    [str(uuid.uuid4()).encode(), b"consenttrace.finding.v1", b"00-" + b"0" * 50],
                )
            )
    return {
        "finding_contributions": contributions,
        "findings": findings,
        "finding_events": history,
        "outbox": outbox,
    }


COLUMNS = {
    "finding_contributions": [
        "subject_id",
        "dataset_version_id",
        "finding_id",
        "category",
        "records",
        "sample",
        "events",
    ],
    "findings": [
        "finding_id",
        "namespace",
        "name",
        "version",
        "status",
        "severity",
        "reason",
        "body",
        "trace_id",
        "dataset_version_id",
        "policy_id",
        "policy_version",
        "affected_records",
        "affected_subjects",
        "detected_at",
    ],
    "finding_events": ["finding_id", "status", "body"],
    "outbox": ["topic", "key", "value", "header_names", "header_values"],
}


async def write(pool: asyncpg.Pool, batches: list[dict[str, list[tuple[Any, ...]]]]) -> None:
    async with pool.acquire() as conn:
        for batch in batches:
            async with conn.transaction():
                for table, rows in batch.items():
                    if rows:
                        await conn.copy_records_to_table(
                            table, records=rows, columns=COLUMNS[table]
                        )


async def one_run(
    url: str, withdrawals: int, versions: int, connections: int, aggregated: bool
) -> tuple[float, int]:
    batches = [
        rows_for(range(start, min(start + BATCH, withdrawals)), versions, aggregated)
        for start in range(0, withdrawals, BATCH)
    ]
    rows = sum(len(r) for b in batches for r in b.values())
    pool = await asyncpg.create_pool(url, min_size=connections, max_size=connections)
    try:
        await pool.execute(
            "TRUNCATE finding_contributions, findings, finding_events, outbox; CHECKPOINT"
        )
        started = time.perf_counter()
        await asyncio.gather(*(write(pool, batches[i::connections]) for i in range(connections)))
        elapsed = time.perf_counter() - started
    finally:
        await pool.close()
    return withdrawals / elapsed, rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--withdrawals", "-w", type=int, default=20_000)
    parser.add_argument("--versions", "-v", type=int, default=10)
    parser.add_argument("--connections", "-c", type=int, default=2)
    parser.add_argument("--runs", "-k", type=int, default=3)
    args = parser.parse_args()
    server = postgres_server_url()
    name = f"bench_floor_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = embedded.database_url_for(server, name)
    try:
        migrate_service("registry", url)
        for aggregated in (False, True):
            rates: list[float] = []
            for run in range(args.runs):
                rate, rows = await one_run(
                    url, args.withdrawals, args.versions, args.connections, aggregated
                )
                rates.append(rate)
                log(
                    f"{'aggregated' if aggregated else 'one per withdrawal'} run {run + 1}:"
                    f" {rate:,.0f} withdrawals/s ({rows:,} rows)"
                )
            label = (
                "one finding per version and batch (aggregated)"
                if aggregated
                else "one finding per withdrawal and version (today)"
            )
            print(
                f"{label:<50} {statistics.median(rates):>9,.0f} withdrawals/s"
                f"  ({' / '.join(f'{r:,.0f}' for r in rates)})"
            )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
