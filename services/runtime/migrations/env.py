"""Alembic environment shared by every service: raw-SQL revisions, asyncpg, one lock.

The runtime's own tables (outbox, inbox) are the ``runtime`` branch; each service adds
its branch through ``version_locations`` (see :mod:`services.runtime.migrate`).
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

# Replicas may start together: only one migrates at a time.
_LOCK_ID = 0x0C0175E27


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        connection.execute(text(f"SELECT pg_advisory_xact_lock({_LOCK_ID})"))
        context.run_migrations()


async def _main() -> None:
    engine = create_async_engine(
        context.config.get_main_option("sqlalchemy.url") or "", poolclass=NullPool
    )
    async with engine.connect() as connection:
        await connection.run_sync(_run)
    await engine.dispose()


asyncio.run(_main())
