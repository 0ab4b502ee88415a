"""``DATABASE_URL``: the libpq forms operators write are accepted, the rest refused clearly."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.runtime.settings import ServiceSettings


@pytest.mark.parametrize(
    ("given", "dsn"),
    [
        (
            "postgresql://postgres@127.0.0.1:5432/postgres",
            "postgresql://postgres@127.0.0.1:5432/postgres",
        ),
        ("postgres://app:s3cret@db.internal/consent", "postgres://app:s3cret@db.internal/consent"),
        ("postgresql://u:p@[::1]:5432/db", "postgresql://u:p@[::1]:5432/db"),
        # SQLAlchemy's driver suffix, as the migrations' own URLs are written.
        (
            "postgresql+asyncpg://postgres@127.0.0.1:5432/x",
            "postgresql://postgres@127.0.0.1:5432/x",
        ),
        # A Unix socket directory: libpq's own form, which PostgresDsn refused (empty host).
        (
            "postgresql://postgres@/consent?host=/var/run/postgresql",
            "postgresql://postgres@/consent?host=/var/run/postgresql",
        ),
        (
            " postgresql://postgres@/x?host=/tmp/pg&port=5433 ",
            "postgresql://postgres@/x?host=/tmp/pg&port=5433",
        ),
    ],
)
def test_postgres_urls_are_accepted_as_libpq_reads_them(given: str, dsn: str) -> None:
    assert ServiceSettings(database_url=given).dsn == dsn


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("mysql://root@127.0.0.1/x", "must start with postgresql://"),
        ("127.0.0.1:5432", "must start with postgresql://"),
        ("postgresql:///consent", "names no host"),
        ("postgresql://postgres@/consent?sslmode=require", "names no host"),
        ("postgresql://postgres@db:99999/x", "not a valid URL"),
        ("postgresql://postgres@db:port/x", "not a valid URL"),
    ],
)
def test_a_url_that_names_no_server_is_refused_with_the_reason(given: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ServiceSettings(database_url=given)


def test_the_environment_variable_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@/ct?host=/var/run/postgresql")
    assert ServiceSettings().dsn == "postgresql://postgres@/ct?host=/var/run/postgresql"
    monkeypatch.setenv("DATABASE_URL", "postgresql:///ct")
    with pytest.raises(ValidationError, match="names no host"):
        ServiceSettings()
