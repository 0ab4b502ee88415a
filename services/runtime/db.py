"""asyncpg pool creation that waits for Postgres instead of crashing."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg

from services.runtime.backoff import backoff_delays
from services.runtime.errors import is_transient
from services.runtime.settings import ServiceSettings

__all__ = ["Connection", "Pool", "connect_pool", "init_connection", "keep_session"]

log = logging.getLogger(__name__)
Pool = asyncpg.Pool

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Connection: TypeAlias = asyncpg.Connection[Any] | PoolConnectionProxy[Any]
    """A connection, pooled or not: what repositories take."""
else:
    Connection = asyncpg.Connection


async def init_connection(conn: asyncpg.Connection) -> None:
    """What every connection of a service gets: JSON codecs for ``json`` and ``jsonb``."""
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


async def keep_session(conn: asyncpg.Connection) -> None:
    """What a connection gets on its way back to the pool: nothing beyond asyncpg's own
    rollback of an open transaction.

    asyncpg's default sends ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *;
    RESET ALL`` on every release: one more round trip per unit of work (~60 us of Python
    and ~45 us of Postgres here). The services keep no session state on pooled connections:
    settings are ``SET LOCAL``, advisory locks, cursors and temporary tables the
    transaction's, and the one ``LISTEN`` (``worker.py``) is undone before its connection
    is released."""


async def connect_pool(settings: ServiceSettings) -> asyncpg.Pool:
    """Open the pool, retrying with capped backoff while Postgres is unreachable."""
    delays = backoff_delays(settings.retry_initial_backoff_s, settings.retry_max_backoff_s)
    while True:
        try:
            pool = await asyncpg.create_pool(
                settings.dsn,
                min_size=settings.db_pool_min,
                max_size=settings.db_pool_max,
                init=init_connection,
                reset=keep_session,
                timeout=5,
                # Short statements: compiling a plan with LLVM costs more than running it
                # (20-140 ms on the findings totals query, for a few ms of execution).
                server_settings={"jit": "off"},
            )
        except Exception as exc:
            if not is_transient(exc):
                raise
            delay = next(delays)
            log.warning("postgres unreachable (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
        else:
            return pool
