"""Settings from the environment, shared by every service (documented in README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ServiceSettings"]


class ServiceSettings(BaseSettings):
    """One process's configuration. Every field maps to an upper-case env variable."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True)

    service_name: str = Field(default="consenttrace", pattern=r"^[a-z][a-z0-9-]*$")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    """A libpq URL: ``postgresql://USER[:PASSWORD]@HOST[:PORT]/DB``, or for a Unix socket
    ``postgresql://USER@/DB?host=/var/run/postgresql``."""
    db_pool_min: int = Field(default=1, ge=0)
    db_pool_max: int = Field(default=10, ge=1)

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_enable_idempotence: bool = True
    """Idempotent producer. Apache Kafka: keep on. Tansu 0.6 rejects the handshake: off."""
    kafka_create_topics: bool = True
    """A subscriber creates its topic when it is missing, with the partitions
    ``contracts.topics`` gives it and one replica: for development and compose. Off where
    topics are provisioned (Kubernetes: Strimzi's ``KafkaTopic``), so that a service
    starting first never creates one with a single replica, which would stay so."""
    kafka_group_prefix: str = "consenttrace"
    kafka_session_timeout_ms: int = Field(default=10_000, ge=1_000)
    kafka_heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    kafka_consumers: int = Field(default=1, ge=1, le=64)
    """Consumers per topic in this process, members of the one group (the topic's
    partitions are split among them): while one waits on Postgres or on its offset commit,
    another works. Each holds its own partitions, so a key's events stay in order. A topic
    gets at most as many as ``contracts.topics`` gives it partitions (one for
    ``consent.policies.v1``). Handlers must be safe to run side by side, as they are across
    replicas."""
    kafka_max_poll_records: int = Field(default=500, ge=1)
    """Records per fetched batch: one transaction and one offset commit each."""
    kafka_fetch_max_wait_ms: int = Field(default=50, ge=0)
    """How long a fetch waits for data at the broker (Kafka answers as soon as data comes)."""
    kafka_poll_timeout_ms: int = Field(default=10, ge=1)
    """How long the consume loop waits for records in one poll. FastStream's batch
    subscriber sleeps as long again after an empty poll, so a record arriving then waits up
    to twice this: at 50 ms a lone Kafka hop took 31 ms p50 (Tansu, one record per 100 ms),
    at 10 ms 9.7 ms p50, 15 ms p90. The cost is empty polls when idle, a few % of a CPU for
    the stack: withdrawal → model flag at 20/s (bench/withdrawal_latency.py, 3 runs each)
    had p99 50-64 ms at 10 against 79-84 ms at 50, and p50 31-35 against 24-25 ms."""

    kafka_background_fetch_max_wait_ms: int = Field(default=500, ge=0)
    kafka_background_poll_timeout_ms: int = Field(default=100, ge=1)
    """The same two for background subscriptions (``Subscription.background``: policies,
    registrations, OpenLineage, deletion tasks and their results), off the path a
    withdrawal takes to a model flag. Seven of a stack's eleven consumers are idle most of
    the time, and each empty fetch and poll costs the broker and the process: the idle
    stack used 39 % of a CPU with every consumer at 50 / 10 ms, 8 % with all at 500 /
    100 ms (Tansu alone 18.9 % against 3.1 %). A background record may wait up to about
    the fetch wait on Tansu, which does not answer a waiting fetch when data arrives;
    Apache Kafka does, so there only the poll adds up to twice its timeout."""

    gc_young_threshold: int = Field(default=50_000, ge=700)
    """Net allocations between two young-generation runs of Python's cycle collector
    (CPython's default: 700). A consumer batch keeps its objects alive until it ends, so at
    700 they are scanned again and again and pushed into the old generation, whose full
    scans cost ~100 ms each: a registry batch of 500 withdrawals spent 330-480 ms in the
    collector at 700 and 31-39 ms at 50,000 (bench/consent_findings.py, in-process). What
    is alive at start is frozen out of the scans (``gc.freeze``) as well."""

    outbox_batch_size: int = Field(default=500, ge=1)
    outbox_poll_interval_s: float = Field(default=1.0, gt=0)
    """Fallback poll when no NOTIFY arrives (a missed notification is never lost work)."""
    outbox_retention_s: float = Field(default=86_400, ge=0)
    inbox_retention_s: float = Field(default=604_800, ge=0)
    """How long a consumed event's id is kept to recognise it if it comes again (0: for
    ever). Kafka redelivers what a consumer had not committed, seconds or minutes old; an
    event older than this arriving again (a group reset to an old offset) is processed
    again, as on a replay into empty databases."""

    http_keep_alive_s: float = Field(default=65.0, gt=0)
    """Idle HTTP keep-alive; above common client/proxy expiries (5 s races httpx's)."""

    max_request_body_bytes: int = Field(default=32 * 1024 * 1024, ge=0)
    """A larger request body is refused with 413 (0: no limit); routes that stream their
    body with limits of their own set theirs (see ``services.runtime.guards``)."""

    retry_initial_backoff_s: float = Field(default=0.1, gt=0)
    retry_max_backoff_s: float = Field(default=10.0, gt=0)
    handler_max_attempts: int = Field(default=5, ge=1)
    """Attempts for an unexpected handler error before it is dead-lettered.

    Transient errors (database or broker unreachable) are retried without limit."""

    otel_exporter_otlp_endpoint: str | None = None

    registry_url: str | None = None
    """Base URL of the registry's HTTP API (e.g. ``http://127.0.0.1:8002``), for the
    lineage service's reads: model inputs' composition and what-if. Unset: those answer 503."""

    graph_cache: bool = True
    """Lineage service: answer lineage graph queries (without ``asOf``) from an in-memory
    copy of the graph kept current from the database's change log; off: every answer walks
    the graph in SQL."""
    graph_cache_max_versions: int = Field(default=300_000, ge=0)
    """Lineage service: past this many dataset/model versions the copy is not loaded and
    answers stay on SQL. Size it to the memory the process may use: measured, about 4.1 KiB
    per version with its run (200,000 versions, 190,000 runs, 757,216 inputs and outputs:
    +806 MiB of RSS; each node keeps its answer JSON with all its edges written out)."""

    upload_idle_timeout_s: float = Field(default=86_400, gt=0)
    """Registry service: a chunked upload that received nothing for this long expires: its
    staged rows are dropped and its dataset version's name is free again; a client coming
    back gets 410 saying so. Uploads registered over Kafka never expire (``registry_0007``)."""

    lineage_url: str | None = None
    """Base URL of the lineage service's HTTP API (e.g. ``http://127.0.0.1:8003``), for the
    deletion service's reads: scoping (models downstream) and verification (model status).
    Unset: scoping fails with that reason, verification waits."""

    # --- access (services/runtime/auth.py) ---
    auth_mode: Literal["api_keys", "off"] = "api_keys"
    """``api_keys``: every API call needs a key whose roles the route allows (health,
    metrics and the API docs stay open). ``off``: nobody is authenticated (development and
    tests only; the process says so in its log)."""
    api_keys_file: Path | None = None
    """A JSON or YAML key list: per key its SHA-256, principal name and roles."""
    api_keys: str | None = None
    """The same list inline (e.g. from a secret); added to the file's keys."""
    service_api_key: SecretStr | None = None
    """The key this service presents when it calls another service's API (lineage → registry:
    a key with role ``ml_reader``)."""

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        """A PostgreSQL URL naming a host or a socket directory (SQLAlchemy's
        ``postgresql+asyncpg://`` is accepted and stored without the driver)."""
        value = value.strip().replace("postgresql+asyncpg://", "postgresql://", 1)
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 -- parses it: a bad port raises here
        except ValueError as exc:
            raise ValueError(f"not a valid URL ({exc})") from None
        if parts.scheme not in {"postgresql", "postgres"}:
            raise ValueError("must start with postgresql:// (or postgres://)")
        if not parts.hostname and not parse_qs(parts.query).get("host"):
            raise ValueError(
                "names no host: postgresql://USER@HOST:PORT/DB, or for a Unix socket"
                " postgresql://USER@/DB?host=/socket/directory"
            )
        return value

    @property
    def dsn(self) -> str:
        """The plain libpq URL asyncpg takes."""
        return self.database_url

    def consumer_group(self, topic: str) -> str:
        """One group per (service, topic): subscribers never rebalance each other."""
        return f"{self.kafka_group_prefix}.{self.service_name}.{topic}"
