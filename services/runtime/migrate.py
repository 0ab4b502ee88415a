"""Schema migrations with Alembic (raw SQL revisions, no ORM models)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from alembic import command
from alembic.config import Config

from services.runtime.errors import is_transient

__all__ = ["alembic_config", "upgrade"]

log = logging.getLogger(__name__)
RUNTIME_MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(service_versions: Path, dsn: str) -> Config:
    """The runtime branch plus the service's own branch, against ``dsn``."""
    config = Config()
    config.set_main_option("script_location", str(RUNTIME_MIGRATIONS))
    config.set_main_option("path_separator", "space")
    config.set_main_option(
        "version_locations", f"{RUNTIME_MIGRATIONS / 'versions'} {service_versions}"
    )
    url = dsn.replace("postgresql://", "postgresql+asyncpg://", 1)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(service_versions: Path, dsn: str, *, wait_s: float = 120.0) -> None:
    """Upgrade to every head, waiting up to ``wait_s`` for Postgres to answer."""
    deadline = time.monotonic() + wait_s
    delay = 0.2
    while True:
        try:
            command.upgrade(alembic_config(service_versions, dsn), "heads")
            return
        except Exception as exc:
            if not _caused_by_transient(exc) or time.monotonic() > deadline:
                raise
            log.warning("postgres not reachable for migrations (%s); retrying", exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def _caused_by_transient(exc: BaseException | None) -> bool:
    while exc is not None:
        if is_transient(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def execute_script(sql: str) -> None:
    """Run a multi-statement SQL script inside a revision (asyncpg's simple protocol).

    ``op.execute`` prepares the statement, and a prepared statement holds one command;
    revisions are written as plain SQL scripts, so they go through this instead.
    """
    from alembic import op

    dbapi_connection = op.get_bind().connection.dbapi_connection
    assert dbapi_connection is not None
    dbapi_connection.run_async(lambda conn: conn.execute(sql))
