"""The embedded helpers against a real Tansu broker and a real PostgreSQL."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from contracts.topics import CONSENT_EVENTS, TOPIC_PARTITIONS
from services.runtime import embedded
from services.runtime.embedded import EmbeddedError, TansuBroker

pytestmark = pytest.mark.integration


def test_free_port_and_wait_for_port() -> None:
    port = embedded.free_port()
    assert 1024 <= port <= 65535
    assert not embedded.port_open("127.0.0.1", port)
    with pytest.raises(TimeoutError):
        embedded.wait_for_port("127.0.0.1", port, timeout=0.3)
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        embedded.wait_for_port("127.0.0.1", port, timeout=2.0)
        assert embedded.port_open("127.0.0.1", port)


async def test_tansu_round_trip_with_headers(tmp_path: Path) -> None:
    log = tmp_path / "tansu.log"
    topic = f"embedded-{uuid.uuid4().hex[:8]}"
    headers = [("trace-id", b"abc"), ("empty", b""), ("dup", b"1"), ("dup", b"2")]
    with TansuBroker(log_path=log) as broker:
        assert broker.running
        assert embedded.port_open(broker.host, broker.port)
        producer = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap_servers, enable_idempotence=False
        )
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"hello", key=b"subject-1", headers=headers)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=broker.bootstrap_servers,
            group_id=None,  # no group: a Tansu rebalance takes ~5 s
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            msg = await asyncio.wait_for(consumer.getone(), timeout=30)
        finally:
            await consumer.stop()
        port = broker.port
    assert (msg.key, msg.value) == (b"subject-1", b"hello")
    assert list(msg.headers) == headers
    assert not broker.running
    assert not embedded.port_open("127.0.0.1", port)
    assert "listening on" in log.read_text()
    broker.stop()  # idempotent


async def test_tansu_starts_with_every_contract_topic_and_its_partitions() -> None:
    """Left to its first client, a topic gets one partition (FastStream declaring it for a
    subscriber) or four (Tansu's default, for a producer): as compose's ``kafka-init``,
    the embedded broker starts with every contract topic at its partitions."""
    with TansuBroker() as broker:
        producer = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap_servers, enable_idempotence=False
        )
        await producer.start()
        try:
            found = {t: len(await producer.partitions_for(t)) for t in TOPIC_PARTITIONS}
        finally:
            await producer.stop()
        assert found == TOPIC_PARTITIONS
        assert found[CONSENT_EVENTS.name] > 1 and found[CONSENT_EVENTS.dlq] == 1
        # Again on a broker that has them: nothing created, nothing changed.
        assert await embedded.create_topics(broker.bootstrap_servers, TOPIC_PARTITIONS) == []
        created = await embedded.create_topics(broker.bootstrap_servers, {"extra.v1": 2})
        assert created == ["extra.v1"]


def test_tansu_refuses_a_busy_port() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with pytest.raises(EmbeddedError, match="already in use"):
            TansuBroker(server.getsockname()[1]).start()


def test_missing_tansu_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(EmbeddedError, match="Tansu"):
        TansuBroker().start()


def test_database_url_for() -> None:
    assert (
        embedded.database_url_for("postgresql://u:p@h:5432/postgres?sslmode=disable", "x")
        == "postgresql://u:p@h:5432/x?sslmode=disable"
    )
    assert embedded.database_url_for("postgresql://postgres@/postgres?host=/s", "y") == (
        "postgresql://postgres@/y?host=/s"
    )
    with pytest.raises(ValueError):
        embedded.database_url_for("mysql://h/db", "x")


async def test_create_databases_is_idempotent_and_connectable(postgres_server_url: str) -> None:
    name = f"ct_test_embedded_{uuid.uuid4().hex[:10]}"
    try:
        (url,) = await embedded.create_databases(postgres_server_url, [name])
        assert await embedded.create_databases(postgres_server_url, [name]) == [url]
        assert url.endswith(f"/{name}")
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT current_database()") == name
        finally:
            await conn.close()
        assert embedded.postgres_reachable(url)
    finally:
        await embedded.drop_databases(postgres_server_url, [name])
    assert not await embedded.postgres_reachable_async(url)


def test_postgres_unreachable_is_false() -> None:
    url = f"postgresql://postgres@127.0.0.1:{embedded.free_port()}/postgres"
    assert not embedded.postgres_reachable(url, timeout=1.0)


async def test_make_database_fixture(make_database: Callable[[str], str]) -> None:
    url = make_database("Embedded Test")
    assert "/ct_test_" in url and url.endswith("_embedded_test")
    conn = await asyncpg.connect(url)
    await conn.close()


def test_pgserver_fallback(tmp_path: Path) -> None:
    pytest.importorskip("pgserver")
    pg = embedded.start_pgserver(tmp_path / "pgdata")
    try:
        (url,) = embedded.create_databases_sync(pg.server_url, ["ct_pgserver"])
        assert embedded.postgres_reachable(url)
    finally:
        pg.stop()
    assert not embedded.postgres_reachable(pg.server_url, timeout=1.0)
