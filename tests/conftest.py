"""Session fixtures for integration and e2e tests: a Kafka-protocol broker and Postgres.

Kafka: ``KAFKA_BOOTSTRAP_SERVERS`` when set; else a testcontainers Kafka (KRaft) when a Docker
engine answers; else an embedded Tansu broker for the session (see ``shared/BROKER.md``).
Postgres: the server of ``DATABASE_URL`` when set; else 127.0.0.1:5432 when it answers; else a
testcontainers PostgreSQL when Docker answers; else the session fails with what to do.
"""

from __future__ import annotations

import functools
import itertools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from services.runtime import embedded


class KafkaTarget(NamedTuple):
    """Where the session's broker is and whether idempotent producers work against it."""

    bootstrap: str
    idempotence: bool


@functools.cache
def docker_available() -> bool:
    """True when a Docker engine answers a ping within ~2 s (cheap checks first)."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        import docker  # type: ignore[import-untyped, unused-ignore]

        client = docker.from_env(timeout=2)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@pytest.fixture(scope="session")
def _kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaTarget]:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip()
    if bootstrap:
        yield KafkaTarget(
            bootstrap, embedded.env_flag(os.environ, "KAFKA_ENABLE_IDEMPOTENCE", True)
        )
    elif docker_available():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield KafkaTarget(kafka.get_bootstrap_server(), True)
    else:
        log = tmp_path_factory.mktemp("tansu") / "tansu.log"
        with embedded.TansuBroker(log_path=log) as broker:
            yield KafkaTarget(broker.bootstrap_servers, False)


@pytest.fixture(scope="session")
def kafka_bootstrap(_kafka: KafkaTarget) -> str:
    """``bootstrap_servers`` of the session's Kafka-protocol broker."""
    return _kafka.bootstrap


@pytest.fixture(scope="session")
def kafka_idempotence(_kafka: KafkaTarget) -> bool:
    """Whether to enable idempotent producers (False for Tansu, which rejects them)."""
    return _kafka.idempotence


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A Postgres server URL (its database part is ``postgres``; see ``make_database``)."""
    explicit = os.environ.get("DATABASE_URL", "").strip()
    if explicit:
        if not embedded.postgres_reachable(explicit, timeout=5.0):
            pytest.fail(f"DATABASE_URL={explicit} does not answer")
        yield embedded.database_url_for(explicit, "postgres")
    elif embedded.postgres_reachable(embedded.DEFAULT_SERVER_URL):
        yield embedded.DEFAULT_SERVER_URL
    elif docker_available():
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver=None) as pg:
            yield embedded.database_url_for(pg.get_connection_url(), "postgres")
    else:
        pytest.fail(
            "No PostgreSQL: set DATABASE_URL=postgresql://USER@HOST:PORT/postgres, run one at "
            "127.0.0.1:5432 (apt-get install postgresql && service postgresql start), "
            "or make a Docker engine available."
        )


@pytest.fixture(scope="session")
def make_database(postgres_server_url: str) -> Iterator[Callable[[str], str]]:
    """Factory: ``make_database("consent")`` creates a fresh database and returns its URL.

    Names are ``ct_test_<pid>_<n>_<label>``; every one is dropped ``WITH (FORCE)`` at the end
    of the session.
    """
    counter = itertools.count(1)
    created: list[str] = []

    def make(label: str = "db") -> str:
        clean = re.sub(r"[^a-z0-9_]", "_", label.lower())
        name = f"ct_test_{os.getpid()}_{next(counter)}_{clean}"[:63]
        created.append(name)
        return embedded.create_databases_sync(postgres_server_url, [name])[0]

    yield make
    if created:
        embedded.drop_databases_sync(postgres_server_url, created, force=True)
