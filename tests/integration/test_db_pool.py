"""The services' connection pool on real Postgres: what a released connection keeps."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from services.runtime.db import connect_pool
from services.runtime.settings import ServiceSettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def pool(make_database: Callable[[str], str]) -> AsyncIterator[asyncpg.Pool]:
    database = make_database("pool")
    # One connection, so the next acquire gets the connection just released.
    pool = await connect_pool(ServiceSettings(database_url=database, db_pool_min=1, db_pool_max=1))
    await pool.execute("CREATE TABLE t (n int)")
    yield pool
    await pool.close()


async def test_a_transaction_left_open_is_rolled_back_on_release(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("BEGIN")
        await conn.execute("INSERT INTO t VALUES (1)")
    async with pool.acquire() as conn:
        assert not conn.is_in_transaction()
        assert await conn.fetchval("SELECT count(*) FROM t") == 0


async def test_sessions_are_not_reset_on_release_so_state_must_be_the_transactions(
    pool: asyncpg.Pool,
) -> None:
    """The pool skips asyncpg's reset query (a round trip per unit of work, ``db.py``).
    Services therefore keep settings and locks transaction-scoped (``SET LOCAL``,
    ``pg_advisory_xact_lock``); this shows why a session-level one would leak."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL application_name = 'in a transaction'")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SHOW application_name") != "in a transaction"
        await conn.execute("SET application_name = 'session level'")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SHOW application_name") == "session level"
