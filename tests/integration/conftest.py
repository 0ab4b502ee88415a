"""Fixtures that run services as real processes against the session's broker and Postgres."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path

import asyncpg
import pytest

from services.runtime.db import init_connection
from services.runtime.embedded import database_url_for
from services.runtime.testing import (
    PostgresProxy,
    ServiceProcess,
    StartService,
    StartStack,
    migrate_service,
    running_stack,
)


@pytest.fixture(scope="session")
def start_stack(
    make_database: Callable[[str], str],
    kafka_bootstrap: str,
    kafka_idempotence: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> StartStack:
    """Factory: ``running_stack`` of these services on the session's broker and Postgres,
    logs in a directory of their own; ``label`` names their databases."""

    def start(
        names: Iterable[str], label: str, extra_env: Mapping[str, str] | None = None
    ) -> AbstractContextManager[dict[str, ServiceProcess]]:
        return running_stack(
            names,
            make_database,
            kafka_bootstrap,
            Path(tmp_path_factory.mktemp(label)),
            idempotence=kafka_idempotence,
            label=label,
            extra_env=extra_env,
        )

    return start


@pytest.fixture
def start_service(
    make_database: Callable[[str], str],
    kafka_bootstrap: str,
    kafka_idempotence: bool,
    tmp_path: Path,
) -> Iterator[StartService]:
    """Factory: a fresh migrated database and the service process on it (not yet ready).

    With ``via``, the service reaches Postgres only through that proxy.
    """
    started: list[ServiceProcess] = []

    def start(
        name: str,
        *,
        via: PostgresProxy | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> ServiceProcess:
        db = make_database(name)
        migrate_service(name, db)
        service_db = db
        if via is not None:
            dbname = db.rsplit("/", 1)[1]
            service_db = database_url_for(f"postgresql://postgres@127.0.0.1:{via.port}", dbname)
        service = ServiceProcess(
            name,
            service_db,
            kafka_bootstrap,
            tmp_path,
            idempotence=kafka_idempotence,
            direct_database_url=db,
            extra_env=extra_env or {},
        )
        started.append(service.start())
        return service

    yield start
    for service in started:
        service.stop()


@pytest.fixture
async def registry_conn(make_database: Callable[[str], str]) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a fresh, migrated registry database, with the services' JSON codecs,
    for tests of the registry's storage without the service."""
    database = make_database("registry_storage")
    migrate_service("registry", database)
    connection = await asyncpg.connect(database)
    await init_connection(connection)
    try:
        yield connection
    finally:
        await connection.close()
