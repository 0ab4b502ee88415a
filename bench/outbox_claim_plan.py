"""The outbox relay's claim with a plan cached on an empty outbox, against a fresh plan.

    python bench/outbox_claim_plan.py [--pending 2000] [--batch 500] [--idle-polls 8]

On a scratch database with the runtime's ``outbox`` table and indexes: one connection runs
the relay's claim (``services.runtime.outbox._CLAIM``) ``--idle-polls`` times on an empty
outbox, as an idle relay does (asyncpg caches the prepared statement, Postgres may keep a
generic plan made for an empty table); then ``--pending`` rows are inserted and that
connection claims one batch, then another; a fresh connection without a statement cache
claims one too. Prints the seconds of each. The slow plan (``EXPLAIN ANALYZE``) is in the
replay section of ``bench/README.md``. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Sequence

import asyncpg
from _common import log, postgres_server_url

from services.runtime import embedded
from services.runtime.outbox import _CLAIM, _FRESH_PLAN, _MARK_PUBLISHED

DDL = """
CREATE TABLE outbox (
    id bigserial PRIMARY KEY, topic text NOT NULL, key bytea, value bytea NOT NULL,
    header_names text[] NOT NULL, header_values bytea[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(), published_at timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_pending_by_key ON outbox (topic, key, id) WHERE published_at IS NULL;
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;
"""
"""As ``services/runtime/migrations/versions/runtime_0001_outbox_inbox.py`` creates it."""


async def claim(conn: asyncpg.Connection, batch: int, *, fresh_plan: bool) -> tuple[int, float]:
    """One relay step without the produce: claim, mark published; (rows, seconds).
    ``fresh_plan``: as the relay does it (``_FRESH_PLAN`` first), else the claim alone."""
    started = time.perf_counter()
    async with conn.transaction():
        if fresh_plan:
            await conn.execute(_FRESH_PLAN)
        rows = await conn.fetch(_CLAIM, batch)
        await conn.execute(_MARK_PUBLISHED, [r["id"] for r in rows])
    return len(rows), time.perf_counter() - started


async def measure(dsn: str, args: argparse.Namespace) -> None:
    for fresh_plan in (False, True):
        label = (
            "as the relay claims (plan_cache_mode=force_custom_plan)"
            if fresh_plan
            else ("the claim alone (Postgres's plan cache)")
        )
        cached = await asyncpg.connect(dsn)
        try:
            await cached.execute("DROP TABLE IF EXISTS outbox; " + DDL)
            for _ in range(args.idle_polls):
                await claim(cached, args.batch, fresh_plan=fresh_plan)
            await cached.executemany(
                "INSERT INTO outbox (topic, key, value, header_names, header_values)"
                " VALUES ($1, $2, $3, $4, $5)",
                [
                    ("consent.events.v1", f"subject-{i}".encode(), b"x" * 300, ["ce_id"], [b"1"])
                    for i in range(args.pending)
                ],
            )
            for step in (1, 2):
                rows, seconds = await claim(cached, args.batch, fresh_plan=fresh_plan)
                print(f"{label}, claim {step}: {rows} rows in {seconds:.2f} s", flush=True)
        finally:
            await cached.close()
    fresh = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        rows, seconds = await claim(fresh, args.batch, fresh_plan=False)
        print(f"fresh connection, no statement cache: {rows} rows in {seconds:.2f} s")
    finally:
        await fresh.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--pending", type=int, default=2000, help="rows inserted (2000)")
    parser.add_argument("--batch", type=int, default=500, help="rows per claim (500)")
    parser.add_argument("--idle-polls", type=int, default=8, help="claims on the empty outbox")
    args = parser.parse_args(argv)
    server = postgres_server_url()
    name = f"bench_claim_{os.getpid()}"
    embedded.create_databases_sync(server, [name])
    try:
        log(f"scratch database {name} …")
        asyncio.run(measure(embedded.database_url_for(server, name), args))
    finally:
        embedded.drop_databases_sync(server, [name], force=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
