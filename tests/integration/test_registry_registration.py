"""Snapshot registration at scale, on the registry as a real process and a real Postgres:
chunked uploads (re-sent chunks, bad lines, conflicts, duplicates), the one-shot NDJSON
stream, atomic seals (a crash before commit leaves nothing sealed), the subject query, the
plan of that query at volume, and idle uploads expiring."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from services.registry.adapters.snapshots import (
    VERSIONS_OF_SUBJECT_SQL,
    SnapshotRepository,
    staging_table_for,
)
from services.registry.domain.snapshots import DatasetVersionHeader, RecordRegistration, record_row
from services.registry.service.registration import PARSING_TURN_WAIT_S, open_upload_with_id
from services.runtime.db import Connection
from services.runtime.testing import ServiceProcess, StartService, migrate_service
from services.runtime.unit_of_work import unit_of_work

pytestmark = pytest.mark.integration

API = "/api/v1/dataset-versions"
CATEGORIES = ("user.content.private", "user.content.public", "user.contact")
COLLECTED = "2024-08-01T12:00:00Z"


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def record(tag: str, i: int, **overrides: Any) -> dict[str, Any]:
    body = {
        "record_id": f"{tag}-{i:06d}",
        "source_system": "inbox",
        "subject_id": f"subj-{tag}-{i % 10}",
        "category": CATEGORIES[i % 3],
        "jurisdiction": "US",
        "collected_at": COLLECTED,
        "content_digest": digest(f"{tag}-{i}"),
    }
    body.update(overrides)
    return body


def ndjson(lines: Iterable[dict[str, Any] | str]) -> bytes:
    return b"".join(
        (line if isinstance(line, str) else json.dumps(line)).encode() + b"\n" for line in lines
    )


def header(tag: str, version: str = "v1", **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "dataset": {"namespace": "s3://training", "name": f"chat/{tag}", "version": version},
        "purpose": "ai.training.generative",
        "created_at": "2024-09-01T00:00:00Z",
    }
    body.update(overrides)
    return body


def version_query(tag: str, version: str = "v1") -> dict[str, str]:
    return {"namespace": "s3://training", "name": f"chat/{tag}", "version": version}


class Registry:
    def __init__(self, service: ServiceProcess, client: httpx.AsyncClient, db: asyncpg.Pool):
        self.service = service
        self.client = client
        self.db = db

    async def put_chunk(
        self, upload_id: str, n: int, body: bytes | AsyncIterator[bytes]
    ) -> httpx.Response:
        return await self.client.put(
            f"{API}/uploads/{upload_id}/chunks/{n}",
            content=body,
            headers={"Content-Type": "application/x-ndjson"},
        )

    async def members(self, tag: str, version: str = "v1") -> set[tuple[str, str]]:
        rows = await self.db.fetch(
            """
            SELECT r.source_system, r.record_id FROM memberships m
            JOIN records r USING (record_pk)
            JOIN dataset_versions dv USING (dataset_version_id)
            WHERE dv.namespace = 's3://training' AND dv.name = $1 AND dv.version = $2
            """,
            f"chat/{tag}",
            version,
        )
        return {(r["source_system"], r["record_id"]) for r in rows}

    async def registered_chunks(self, upload_id: str) -> dict[int, bool]:
        """Whether each chunk's records were registered when it arrived."""
        rows = await self.db.fetch(
            "SELECT chunk, registered FROM dataset_upload_chunks WHERE upload_id = $1",
            uuid.UUID(upload_id),
        )
        return {r["chunk"]: r["registered"] for r in rows}

    async def registered(self, tag: str) -> set[str]:
        """The record ids of ``tag`` in ``records``, members of a version or not."""
        rows = await self.db.fetch(
            "SELECT record_id FROM records WHERE record_id LIKE $1", f"{tag}-%"
        )
        return {r["record_id"] for r in rows}

    async def staging_tables(self) -> int:
        return int(
            await self.db.fetchval(
                "SELECT count(*) FROM pg_tables WHERE schemaname = 'registry_staging'"
            )
        )


async def insert_record(conn: Connection, body: dict[str, Any]) -> None:
    """Register a record straight in the database, as a concurrent transaction would."""
    await conn.execute(
        "INSERT INTO records (source_system, record_id, subject_id, category, jurisdiction,"
        " collected_at, content_digest) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        body["source_system"],
        body["record_id"],
        body["subject_id"],
        body["category"],
        body["jurisdiction"],
        datetime.fromisoformat(body["collected_at"]),
        body["content_digest"],
    )


async def wait_for_api(service: ServiceProcess, within: float = 30) -> None:
    """The HTTP API answers once the database is connected (no need to wait for Kafka)."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=service.url, timeout=2) as client:
        while True:
            try:
                if (await client.get("/api/v1/policy-versions")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"registry API not up; log: {service.log_path}")
            await asyncio.sleep(0.1)


@asynccontextmanager
async def running_registry(
    start_service: StartService, extra_env: dict[str, str] | None = None
) -> AsyncIterator[Registry]:
    service = start_service("registry", extra_env=extra_env)
    await wait_for_api(service)
    db = await asyncpg.create_pool(service.admin_dsn, min_size=1, max_size=3)
    try:
        async with httpx.AsyncClient(base_url=service.url, timeout=60) as client:
            yield Registry(service, client, db)
    finally:
        await db.close()


@pytest.fixture
async def registry(start_service: StartService) -> AsyncIterator[Registry]:
    async with running_registry(start_service) as running:
        yield running


async def test_chunked_upload_resend_seal_and_query(registry: Registry) -> None:
    tag = uuid.uuid4().hex[:8]
    client = registry.client
    training = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    opened = await client.post(
        f"{API}/uploads", json=header(tag, training_started_at=training.isoformat())
    )
    assert opened.status_code == 201, opened.text
    upload = opened.json()
    upload_id = upload["upload_id"]
    assert upload["state"] == "open" and upload["chunks"] == []

    # The name is reserved at once.
    again = await client.post(f"{API}/uploads", json=header(tag))
    assert again.status_code == 409 and "already registered" in again.json()["detail"]

    # Three chunks of 100; chunk 1 is sent twice, the second time with other records.
    for n in range(3):
        sent = await registry.put_chunk(
            upload_id, n, ndjson(record(tag, i) for i in range(n * 100, n * 100 + 100))
        )
        assert sent.status_code == 201, sent.text
        assert sent.json() == {
            "upload_id": upload_id,
            "chunk": n,
            "records": 100,
            "replaced": False,
        }
    resent = await registry.put_chunk(
        upload_id, 1, ndjson(record(tag, i) for i in range(1000, 1050))
    )
    assert resent.status_code == 200 and resent.json()["replaced"] is True
    expected = {
        ("inbox", f"{tag}-{i:06d}") for i in [*range(100), *range(200, 300), *range(1000, 1050)]
    }

    # A bad line: 422 naming line and field, and nothing of that chunk kept ...
    bad = [record(tag, i) for i in range(2000, 2010)]
    bad[4] = record(tag, 2004, subject_id="not a subject!")
    refused = await registry.put_chunk(upload_id, 3, ndjson(bad))
    assert refused.status_code == 422
    [error] = refused.json()["detail"]
    assert (error["line"], error["field"], error["chunk"]) == (5, "subject_id", 3)
    assert error["loc"] == ["body", "line", 5, "subject_id"]
    # A big body refused early is read to its end first, so the client gets the answer.
    big = [record(tag, i) for i in range(10_000, 60_000)]
    big[2] = record(tag, 10_002, record_id="nul\x00inside")  # Postgres cannot store NUL
    refused = await registry.put_chunk(upload_id, 3, ndjson(big))
    assert refused.status_code == 422
    assert (refused.json()["detail"][0]["line"], refused.json()["detail"][0]["field"]) == (
        3,
        "record_id",
    )
    # ... nor does a bad re-send of chunk 1 disturb the chunk 1 already staged.
    bad_resend = ndjson([record(tag, 3000), "{not json", record(tag, 3001)])
    refused = await registry.put_chunk(upload_id, 1, bad_resend)
    assert refused.status_code == 422 and refused.json()["detail"][0]["line"] == 2
    assert refused.json()["detail"][0]["field"] is None
    state = (await client.get(f"{API}/uploads/{upload_id}")).json()
    assert [(c["chunk"], c["records"]) for c in state["chunks"]] == [(0, 100), (1, 50), (2, 100)]
    assert state["records"] == 250

    # Unsealed: invisible to every query.
    subject = f"subj-{tag}-1"
    assert (await client.get(API, params={"subject_id": subject})).json() == []
    assert (
        await client.get("/api/v1/dataset-version", params=version_query(tag))
    ).status_code == 404
    assert await registry.members(tag) == set()

    sealed = await client.post(f"{API}/uploads/{upload_id}/seal")
    assert sealed.status_code == 200, sealed.text
    version = sealed.json()
    assert version["record_count"] == 250 and version["upload_id"] == upload_id
    assert datetime.fromisoformat(version["used_at"]) == training  # a later training start
    assert await registry.members(tag) == expected
    assert await registry.staging_tables() == 0

    # Sealed is final.
    assert (await client.post(f"{API}/uploads/{upload_id}/seal")).status_code == 409
    late = await registry.put_chunk(upload_id, 4, ndjson([record(tag, 5000)]))
    assert late.status_code == 409 and "sealed" in late.json()["detail"]
    assert (await client.get(f"{API}/uploads/{upload_id}")).json()["state"] == "sealed"
    missing = f"{API}/uploads/{uuid.uuid4()}"
    assert (await client.post(f"{missing}/seal")).status_code == 404
    assert (await registry.put_chunk(missing.rsplit("/", 1)[1], 0, b"")).status_code == 404

    # The subject query: subj-<tag>-1 owns i ≡ 1 (mod 10) of the 250 members.
    owned = [i for i in [*range(100), *range(200, 300), *range(1000, 1050)] if i % 10 == 1]
    [found] = (await client.get(API, params={"subject_id": subject})).json()
    assert found["dataset"] == version_query(tag) and found["subject_records"] == len(owned)
    by_category = {c["category"]: c["records"] for c in found["categories"]}
    assert by_category == {
        cat: sum(1 for i in owned if CATEGORIES[i % 3] == cat) for cat in CATEGORIES
    }
    content = (
        await client.get(API, params={"subject_id": subject, "category": "user.content"})
    ).json()
    assert {c["category"] for c in content[0]["categories"]} == {
        "user.content.private",
        "user.content.public",
    }
    contact = (
        await client.get(API, params={"subject_id": subject, "category": "user.contact"})
    ).json()
    assert [c["category"] for c in contact[0]["categories"]] == ["user.contact"]
    before = (datetime.fromisoformat(version["sealed_at"]) - timedelta(seconds=1)).isoformat()
    assert (await client.get(API, params={"subject_id": subject, "as_of": before})).json() == []
    after = version["sealed_at"]
    assert len((await client.get(API, params={"subject_id": subject, "as_of": after})).json()) == 1

    meta = (await client.get("/api/v1/dataset-version", params=version_query(tag))).json()
    assert meta == version


async def test_a_conflicting_or_duplicate_record_seals_nothing(registry: Registry) -> None:
    tag = uuid.uuid4().hex[:8]
    client = registry.client
    first = await client.post(
        f"{API}/stream", content=ndjson([header(tag, "v1"), *(record(tag, i) for i in range(20))])
    )
    assert first.status_code == 201, first.text

    upload_id = (await client.post(f"{API}/uploads", json=header(tag, "v2"))).json()["upload_id"]
    # v2 re-registers record 7 with another subject, beside new records.
    changed = [record(tag, i) for i in range(100, 110)]
    changed[3] = record(tag, 7, subject_id="someone-else")
    assert (
        await registry.put_chunk(upload_id, 0, ndjson(record(tag, i) for i in range(10, 20)))
    ).status_code == 201
    assert (await registry.put_chunk(upload_id, 1, ndjson(changed))).status_code == 201
    # Chunk 0 (known records) registered as it arrived; chunk 1 conflicts, so it is left to
    # the seal, which refuses it.
    assert await registry.registered_chunks(upload_id) == {0: True, 1: False}
    refused = await client.post(f"{API}/uploads/{upload_id}/seal")
    assert refused.status_code == 409
    assert refused.json()["records"] == [
        {
            "source_system": "inbox",
            "record_id": f"{tag}-000007",
            "chunk": 1,
            "line": 4,
            "fields": ["subject_id"],
        }
    ]
    # Nothing sealed, nothing registered, the upload still open.
    assert (
        await client.get("/api/v1/dataset-version", params=version_query(tag, "v2"))
    ).status_code == 404
    assert await registry.members(tag, "v2") == set()
    assert not await registry.db.fetchval(
        "SELECT count(*) FROM records WHERE record_id = $1", f"{tag}-000100"
    )
    assert (await client.get(API, params={"subject_id": "someone-else"})).json() == []

    # The same record in two chunks: 422 naming both occurrences.
    assert (
        await registry.put_chunk(upload_id, 1, ndjson([record(tag, 100), record(tag, 15)]))
    ).status_code == 200
    assert await registry.registered_chunks(upload_id) == {0: True, 1: True}
    duplicate = await client.post(f"{API}/uploads/{upload_id}/seal")
    assert duplicate.status_code == 422
    assert duplicate.json()["records"] == [
        {
            "source_system": "inbox",
            "record_id": f"{tag}-000015",
            "occurrences": [{"chunk": 0, "line": 6}, {"chunk": 1, "line": 2}],
        }
    ]

    # Fixed, it seals: old records are shared with v1, new ones registered.
    assert (await registry.put_chunk(upload_id, 1, ndjson([record(tag, 100)]))).status_code == 200
    sealed = await client.post(f"{API}/uploads/{upload_id}/seal")
    assert sealed.status_code == 200 and sealed.json()["record_count"] == 11
    assert await registry.members(tag, "v2") == {
        ("inbox", f"{tag}-{i:06d}") for i in [*range(10, 20), 100]
    }
    assert len((await client.get(API, params={"subject_id": f"subj-{tag}-3"})).json()) == 2

    # A concurrent registration of a record a chunk registers: the chunk waits for it,
    # then shares the record (same facts) instead of failing on its key.
    racing = (await client.post(f"{API}/uploads", json=header(tag, "v4"))).json()["upload_id"]
    contested = record(tag, 700)
    async with registry.db.acquire() as other, other.transaction():
        await insert_record(other, contested)
        put = asyncio.create_task(
            registry.put_chunk(racing, 0, ndjson([record(tag, 701), contested]))
        )
        await asyncio.sleep(0.5)
        assert not put.done()
    assert (await put).status_code == 201
    assert await registry.registered_chunks(racing) == {0: True}
    raced = await client.post(f"{API}/uploads/{racing}/seal")
    assert raced.status_code == 200 and raced.json()["record_count"] == 2
    assert await registry.members(tag, "v4") == {
        ("inbox", f"{tag}-000701"),
        ("inbox", f"{tag}-000700"),
    }

    # An abandoned upload frees its name.
    abandoned = (await client.post(f"{API}/uploads", json=header(tag, "v3"))).json()["upload_id"]
    await registry.put_chunk(abandoned, 0, ndjson([record(tag, 900)]))
    assert (await client.delete(f"{API}/uploads/{abandoned}")).status_code == 204
    assert (await client.get(f"{API}/uploads/{abandoned}")).status_code == 404
    assert (await client.post(f"{API}/uploads", json=header(tag, "v3"))).status_code == 201
    assert (await client.delete(f"{API}/uploads/{upload_id}")).status_code == 409


async def test_records_are_registered_as_chunks_arrive(registry: Registry) -> None:
    """Each chunk registers its records in its own transaction; only the seal makes them
    members of the version. Registered records outlive a replaced chunk or an abandoned
    upload, members of nothing."""
    tag = uuid.uuid4().hex[:8]
    client = registry.client
    shared = await client.post(
        f"{API}/stream", content=ndjson([header(tag, "v1"), *(record(tag, i) for i in range(10))])
    )
    assert shared.status_code == 201, shared.text

    upload_id = (await client.post(f"{API}/uploads", json=header(tag, "v2"))).json()["upload_id"]
    assert (
        await registry.put_chunk(upload_id, 0, ndjson(record(tag, i) for i in range(100, 200)))
    ).status_code == 201
    # Known records (0 … 4, from v1) beside new ones: checked, then shared.
    mixed = [*(record(tag, i) for i in range(5)), *(record(tag, i) for i in range(200, 250))]
    assert (await registry.put_chunk(upload_id, 1, ndjson(mixed))).status_code == 201
    # One known record (7, from v1) among 1,000 new ones, where the sample taken to choose
    # how to register the chunk does not look: the plain INSERT meets it, and the chunk
    # is registered the general way.
    mostly_new = [record(tag, i) for i in range(1000, 2000)]
    mostly_new[6] = record(tag, 7)
    assert (await registry.put_chunk(upload_id, 2, ndjson(mostly_new))).status_code == 201
    assert await registry.registered_chunks(upload_id) == {0: True, 1: True, 2: True}
    assert await registry.registered(tag) == {
        f"{tag}-{i:06d}" for i in [*range(10), *range(100, 250), *range(1000, 2000)] if i != 1006
    }
    # Registered, yet members of nothing and invisible until the seal.
    assert await registry.members(tag, "v2") == set()
    [only_v1] = (await client.get(API, params={"subject_id": f"subj-{tag}-1"})).json()
    assert only_v1["dataset"] == version_query(tag, "v1")
    assert only_v1["subject_records"] == 1

    # A replaced chunk: its records stay registered, but are not members of the seal.
    replaced = await registry.put_chunk(
        upload_id, 1, ndjson(record(tag, i) for i in range(300, 310))
    )
    assert replaced.status_code == 200 and replaced.json()["replaced"] is True
    assert await registry.registered_chunks(upload_id) == {0: True, 1: True, 2: True}
    sealed = await client.post(f"{API}/uploads/{upload_id}/seal")
    assert sealed.status_code == 200, sealed.text
    assert sealed.json()["record_count"] == 1110
    assert await registry.members(tag, "v2") == {
        ("inbox", f"{tag}-{i:06d}")
        for i in [*range(100, 200), *range(300, 310), 7, *range(1000, 2000)]
        if i != 1006
    }
    assert f"{tag}-000200" in await registry.registered(tag)
    assert await registry.staging_tables() == 0

    # An abandoned upload leaves its records registered and no membership at all.
    abandoned = (await client.post(f"{API}/uploads", json=header(tag, "v3"))).json()["upload_id"]
    assert (
        await registry.put_chunk(abandoned, 0, ndjson(record(tag, i) for i in range(400, 420)))
    ).status_code == 201
    version_id = await registry.db.fetchval(
        "SELECT dataset_version_id FROM dataset_uploads WHERE upload_id = $1",
        uuid.UUID(abandoned),
    )
    assert (await client.delete(f"{API}/uploads/{abandoned}")).status_code == 204
    assert {f"{tag}-{i:06d}" for i in range(400, 420)} <= await registry.registered(tag)
    assert not await registry.db.fetchval(
        "SELECT count(*) FROM memberships WHERE dataset_version_id = $1", version_id
    )
    assert not await registry.db.fetchval(
        "SELECT count(*) FROM memberships m JOIN records r USING (record_pk)"
        " WHERE r.record_id BETWEEN $1 AND $2",
        f"{tag}-000400",
        f"{tag}-000419",
    )
    assert await registry.staging_tables() == 0


async def test_a_chunk_the_seal_must_register(registry: Registry) -> None:
    """Chunks that could not register their records as they arrived (a record staged twice
    with other facts, or a chunk staged by a path that does not register) are registered
    by the seal, under the same rules; and a record staged twice is refused either way."""
    tag = uuid.uuid4().hex[:8]
    client = registry.client

    # The same record twice in one chunk, with other facts: left to the seal, which names
    # both occurrences (a duplicate, not a conflict with itself).
    upload_id = (await client.post(f"{API}/uploads", json=header(tag))).json()["upload_id"]
    twice = [record(tag, 1), record(tag, 2), record(tag, 1, category="user.behavior")]
    assert (await registry.put_chunk(upload_id, 0, ndjson(twice))).status_code == 201
    assert await registry.registered_chunks(upload_id) == {0: False}
    assert await registry.registered(tag) == set()
    refused = await client.post(f"{API}/uploads/{upload_id}/seal")
    assert refused.status_code == 422
    assert refused.json()["records"][0]["occurrences"] == [
        {"chunk": 0, "line": 1},
        {"chunk": 0, "line": 3},
    ]
    # The same record twice with the same facts: registered once, refused at the seal.
    same = [record(tag, 1), record(tag, 2), record(tag, 1)]
    assert (await registry.put_chunk(upload_id, 0, ndjson(same))).status_code == 200
    assert await registry.registered_chunks(upload_id) == {0: True}
    refused = await client.post(f"{API}/uploads/{upload_id}/seal")
    assert refused.status_code == 422
    assert refused.json()["records"][0]["record_id"] == f"{tag}-000001"

    # A chunk staged without registering it, as before revision registry_0004; a record of
    # it is being registered by another transaction when the seal comes: the seal waits,
    # then shares the record.
    contested = record(tag, 700)
    async with registry.db.acquire() as conn, conn.transaction():
        repo = SnapshotRepository(conn)
        upload = await repo.upload(uuid.UUID(upload_id))
        assert upload is not None
        await repo.claim_chunk(uuid.UUID(upload_id), 0, datetime.now(UTC))
        await repo.delete_staged_chunk(upload["staging_table"], 0)
        rows = [
            record_row(RecordRegistration.model_validate(body), 0, n)
            for n, body in enumerate([record(tag, 701), contested], start=1)
        ]
        await repo.copy_rows(upload["staging_table"], rows)
        await repo.set_chunk_records(uuid.UUID(upload_id), 0, 2)
    assert await registry.registered_chunks(upload_id) == {0: False}
    async with registry.db.acquire() as other, other.transaction():
        await insert_record(other, contested)
        seal = asyncio.create_task(client.post(f"{API}/uploads/{upload_id}/seal"))
        await asyncio.sleep(0.5)
        assert not seal.done()
    raced = await seal
    assert raced.status_code == 200 and raced.json()["record_count"] == 2
    assert await registry.members(tag) == {("inbox", f"{tag}-000701"), ("inbox", f"{tag}-000700")}


async def test_a_stalled_chunk_does_not_hold_up_the_others(registry: Registry) -> None:
    """Chunks of one upload are parsed in turn (so that one is parsed while the one before
    is registered); a chunk whose sender stalls holds the next one up for at most
    ``PARSING_TURN_WAIT_S``."""
    tag = uuid.uuid4().hex[:8]
    client = registry.client
    upload_id = (await client.post(f"{API}/uploads", json=header(tag))).json()["upload_id"]

    async def stalled() -> AsyncIterator[bytes]:
        yield ndjson(record(tag, i) for i in range(10))
        await asyncio.sleep(60)

    first = asyncio.create_task(registry.put_chunk(upload_id, 0, stalled()))
    await asyncio.sleep(0.5)  # chunk 0 has its turn, and waits for the rest of its body
    started = time.monotonic()
    second = await registry.put_chunk(upload_id, 1, ndjson(record(tag, i) for i in range(10, 20)))
    waited = time.monotonic() - started
    assert second.status_code == 201, second.text
    assert PARSING_TURN_WAIT_S <= waited < PARSING_TURN_WAIT_S + 10
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    # The service notices the sender is gone, and nothing of chunk 0 is kept.
    sealed = await client.post(f"{API}/uploads/{upload_id}/seal")
    assert sealed.status_code == 200, sealed.text
    assert sealed.json()["record_count"] == 10
    assert await registry.members(tag) == {("inbox", f"{tag}-{i:06d}") for i in range(10, 20)}


async def test_lost_staged_rows_refuse_the_seal(registry: Registry) -> None:
    """A Postgres crash empties the unlogged staging tables, the keys of registered chunks
    with them: the seal names the chunks to send again, and seals once they are."""
    tag = uuid.uuid4().hex[:8]
    client = registry.client
    upload_id = (await client.post(f"{API}/uploads", json=header(tag))).json()["upload_id"]
    chunks = [ndjson(record(tag, i) for i in range(n * 10, n * 10 + 10)) for n in range(3)]
    for n, body in enumerate(chunks):
        assert (await registry.put_chunk(upload_id, n, body)).status_code == 201
    staging = f"registry_staging.upload_{uuid.UUID(upload_id).hex}"
    await registry.db.execute(f"TRUNCATE {staging}, {staging}_pks")  # what a crash does
    await registry.put_chunk(upload_id, 1, chunks[1])  # chunk 1 sent again
    lost = await client.post(f"{API}/uploads/{upload_id}/seal")
    assert lost.status_code == 409
    assert lost.json()["chunks"] == [
        {"chunk": 0, "records": 10, "staged": 0},
        {"chunk": 2, "records": 10, "staged": 0},
    ]
    assert await registry.members(tag) == set()
    for n in (0, 2):
        assert (await registry.put_chunk(upload_id, n, chunks[n])).status_code == 200
    sealed = await client.post(f"{API}/uploads/{upload_id}/seal")
    assert sealed.status_code == 200 and sealed.json()["record_count"] == 30
    assert len(await registry.members(tag)) == 30


async def test_the_one_shot_stream(registry: Registry) -> None:
    tag = uuid.uuid4().hex[:8]
    client = registry.client

    async def body() -> AsyncIterator[bytes]:  # sent in pieces that cut lines anywhere
        data = ndjson([header(tag), *(record(tag, i) for i in range(3000))])
        for start in range(0, len(data), 7777):
            yield data[start : start + 7777]

    created = await client.post(f"{API}/stream", content=body())
    assert created.status_code == 201, created.text
    assert created.json()["record_count"] == 3000
    assert created.json()["used_at"] == created.json()["sealed_at"]
    assert len(await registry.members(tag)) == 3000
    assert (await client.post(f"{API}/stream", content=body())).status_code == 409

    bad_header = await client.post(
        f"{API}/stream", content=ndjson([header(tag, "v2", purpose="Bad Purpose"), record(tag, 1)])
    )
    assert bad_header.status_code == 422
    assert (bad_header.json()["detail"][0]["line"], bad_header.json()["detail"][0]["field"]) == (
        1,
        "purpose",
    )

    lines: list[dict[str, Any] | str] = [header(tag, "v2"), *(record(tag, i) for i in range(10))]
    lines[6] = record(tag, 5, collected_at="2024-08-01T12:00:00")  # no offset
    bad_line = await client.post(f"{API}/stream", content=ndjson(lines))
    assert bad_line.status_code == 422
    [error] = bad_line.json()["detail"]
    assert (error["line"], error["field"], error["type"]) == (7, "collected_at", "timezone_aware")
    long_line = await client.post(
        f"{API}/stream", content=ndjson([header(tag, "v2"), "x" * 20_000])
    )
    assert long_line.status_code == 422
    assert long_line.json()["detail"][0]["type"] == "line_too_long"
    assert long_line.json()["detail"][0]["line"] == 2
    empty = await client.post(f"{API}/stream", content=ndjson([header(tag, "v2")]))
    assert empty.status_code == 422
    # Nothing of the refused streams was kept: the name is free.
    assert (
        await client.post(f"{API}/stream", content=ndjson([header(tag, "v2"), record(tag, 1)]))
    ).status_code == 201
    assert await registry.staging_tables() == 0

    # The JSON form still registers as it did, and obeys the same immutability.
    small = {**header(tag, "v3"), "records": [record(tag, 1), record(tag, 99_999)]}
    posted = await client.post(API, json=small)
    assert posted.status_code == 201
    assert posted.json() == {"dataset": version_query(tag, "v3"), "records": 2, "sealed": True}
    clash = {**header(tag, "v4"), "records": [record(tag, 2, category="user.behavior")]}
    refused = await client.post(API, json=clash)
    assert refused.status_code == 409 and refused.json()["records"][0]["fields"] == ["category"]


async def test_a_crash_before_commit_leaves_nothing_sealed(registry: Registry) -> None:
    tag = uuid.uuid4().hex[:8]
    client, db, service = registry.client, registry.db, registry.service
    upload_id = (await client.post(f"{API}/uploads", json=header(tag))).json()["upload_id"]
    for n in range(2):
        chunk = ndjson(record(tag, i) for i in range(n * 500, n * 500 + 500))
        assert (await registry.put_chunk(upload_id, n, chunk)).status_code == 201

    # Hold the version row, so that the seal stops at its last statement with every record
    # and membership written but not committed; then kill the service there.
    async with db.acquire() as blocker, blocker.transaction():
        await blocker.execute(
            "SELECT 1 FROM dataset_versions WHERE name = $1 FOR UPDATE", f"chat/{tag}"
        )
        seal = asyncio.create_task(client.post(f"{API}/uploads/{upload_id}/seal"))
        for _ in range(200):
            waiting = await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%UPDATE dataset_versions SET sealed_at%'"
                " AND datname = current_database() AND pid <> pg_backend_pid()"
            )
            if waiting:
                break
            await asyncio.sleep(0.05)
        assert waiting, "the seal never reached its last statement"
        await asyncio.to_thread(service.kill)
        with pytest.raises(httpx.HTTPError):
            await seal
    # The server noticed its client vanished and rolled the transaction back.
    for _ in range(100):
        if not await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%UPDATE dataset_versions%'"
            " AND datname = current_database() AND pid <> pg_backend_pid()"
        ):
            break
        await asyncio.sleep(0.05)
    sealed_at = await db.fetchval(
        "SELECT sealed_at FROM dataset_versions WHERE name = $1", f"chat/{tag}"
    )
    assert sealed_at is None
    assert await registry.members(tag) == set()
    # The chunks registered their records when they arrived; none is a member of anything.
    assert len(await registry.registered(tag)) == 1000
    assert not await db.fetchval(
        "SELECT count(*) FROM memberships m JOIN records r USING (record_pk)"
        " WHERE r.record_id LIKE $1",
        f"{tag}-%",
    )

    # Restarted, the service seals the same upload: the staged chunks survived.
    await asyncio.to_thread(service.start)
    await wait_for_api(service)
    sealed = await client.post(f"{API}/uploads/{upload_id}/seal")
    assert sealed.status_code == 200 and sealed.json()["record_count"] == 1000

    # And a stream cut by the crash leaves nothing, not even its reserved name.
    async def endless() -> AsyncIterator[bytes]:
        yield ndjson([header(tag, "v2"), *(record(tag, i) for i in range(5000, 5100))])
        await asyncio.sleep(60)

    stream = asyncio.create_task(client.post(f"{API}/stream", content=endless()))
    for _ in range(200):
        if await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%'"
            " AND datname = current_database() AND pid <> pg_backend_pid()"
        ):
            break
        await asyncio.sleep(0.05)
    await asyncio.to_thread(service.kill)
    stream.cancel()
    await asyncio.gather(stream, return_exceptions=True)
    for _ in range(100):
        if not await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'COPY%'"
            " AND datname = current_database() AND pid <> pg_backend_pid()"
        ):
            break
        await asyncio.sleep(0.05)
    assert not await db.fetchval(
        "SELECT count(*) FROM dataset_versions WHERE version = 'v2' AND name = $1", f"chat/{tag}"
    )
    assert await registry.staging_tables() == 0


async def test_the_subject_lookup_is_an_index_lookup(
    make_database: Callable[[str], str],
) -> None:
    """At volume (300k memberships, 100k subjects, 3,000 versions), with fresh statistics:
    index scans on records, memberships and dataset versions, and no sequential scan.
    (``bench/snapshot_registration.py`` shows the same plan at 11M memberships.)"""
    dsn = make_database("registry_plan")
    await asyncio.to_thread(migrate_service, "registry", dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            INSERT INTO dataset_versions (namespace, name, version, purpose, created_at,
                                          sealed_at, used_at, record_count)
            SELECT 's3://training', 'bulk', 'v' || v, 'ai.training', now(), now(), now(), 100
            FROM generate_series(1, 3000) v;
            INSERT INTO records (source_system, record_id, subject_id, category, jurisdiction,
                                 collected_at, content_digest)
            SELECT 'gen', 'r' || g, 'subject-' || (g % 100000),
                   (ARRAY['user.content.private', 'user.content.public',
                          'user.contact'])[1 + g % 3],
                   'US', now(), 'sha256:' || md5(g::text) || md5(g::text)
            FROM generate_series(1, 300000) g;
            INSERT INTO memberships (dataset_version_id, record_pk)
            SELECT 1 + (record_pk % 3000), record_pk FROM records;
            ANALYZE records; ANALYZE memberships; ANALYZE dataset_versions;
            """
        )
        for category in (None, "user.content"):
            [[plan]] = await conn.fetch(
                "EXPLAIN (FORMAT JSON) " + VERSIONS_OF_SUBJECT_SQL,
                "subject-4242",
                category,
                None,
                20,
            )
            nodes = list(_plan_nodes(json.loads(plan)[0]["Plan"]))
            scans = {
                (n["Node Type"], n.get("Index Name")) for n in nodes if "Scan" in n["Node Type"]
            }
            assert not any(kind == "Seq Scan" for kind, _ in scans), scans
            assert any(index == "records_subject_category" for _, index in scans), scans
            assert any(index == "memberships_pkey" for _, index in scans), scans
            assert any(index == "dataset_versions_pkey" for _, index in scans), scans
        rows = await conn.fetch(VERSIONS_OF_SUBJECT_SQL, "subject-4242", None, None, 20)
        assert sum(r["subject_records"] for r in rows) == 3
    finally:
        await conn.close()


def _plan_nodes(node: dict[str, Any]) -> Iterable[dict[str, Any]]:
    yield node
    for child in node.get("Plans", ()):
        yield from _plan_nodes(child)


# --- idle uploads expire ---------------------------------------------------------------
# The staged rows are dropped, the name is free again, a client coming back is told why
# (410); an upload with a chunk in flight, one kept busy, and one over Kafka stay.

IDLE_S = 1.5


@pytest.fixture
async def idle_registry(start_service: StartService) -> AsyncIterator[Registry]:
    async with running_registry(start_service, {"UPLOAD_IDLE_TIMEOUT_S": str(IDLE_S)}) as running:
        yield running


async def open_idle_upload(registry: Registry, tag: str) -> dict[str, object]:
    response = await registry.client.post(f"{API}/uploads", json=header(tag))
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


async def staging_names(registry: Registry) -> set[str]:
    rows = await registry.db.fetch(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'registry_staging'"
    )
    return {r["tablename"] for r in rows}


def upload_tables(upload: dict[str, object]) -> set[str]:
    """An upload's staging tables: its rows, and the keys of its registered records."""
    table = staging_table_for(uuid.UUID(str(upload["upload_id"])))
    return {table, f"{table}_pks"}


async def until_gone(registry: Registry, upload_id: str, within: float) -> httpx.Response:
    deadline = time.monotonic() + within
    while True:
        response = await registry.client.get(f"{API}/uploads/{upload_id}")
        if response.status_code != 200 or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.1)


async def test_an_idle_upload_expires_and_frees_its_name(idle_registry: Registry) -> None:
    registry = idle_registry
    idle = await open_idle_upload(registry, "idle")
    busy = await open_idle_upload(registry, "busy")
    never_sent = await open_idle_upload(registry, "empty")
    assert (
        await registry.put_chunk(
            str(idle["upload_id"]), 0, ndjson(record("idle", i) for i in range(30))
        )
    ).status_code == 201
    shown = (await registry.client.get(f"{API}/uploads/{idle['upload_id']}")).json()
    expires_at = datetime.fromisoformat(shown["expires_at"])
    received = datetime.fromisoformat(shown["chunks"][0]["received_at"])
    assert timedelta(seconds=IDLE_S) <= expires_at - received < timedelta(seconds=IDLE_S + 1)
    assert upload_tables(idle) | upload_tables(never_sent) <= await staging_names(registry)

    # The busy upload gets a chunk more often than the timeout, for longer than it.
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 3 * IDLE_S:
        response = await registry.put_chunk(str(busy["upload_id"]), n, ndjson([record("busy", n)]))
        assert response.status_code == 201, response.text
        n += 1
        await asyncio.sleep(IDLE_S / 4)

    gone = await until_gone(registry, str(idle["upload_id"]), within=5 * IDLE_S)
    assert gone.status_code == 410, gone.text
    detail = gone.json()["detail"]
    assert "expired" in detail and "1 staged chunk(s) (30 records)" in detail
    assert header("idle")["dataset"]["name"] in detail
    assert (await until_gone(registry, str(never_sent["upload_id"]), 5 * IDLE_S)).status_code == 410
    # Every verb on it says so, the same way.
    put = await registry.put_chunk(str(idle["upload_id"]), 1, ndjson([record("idle", 99)]))
    seal = await registry.client.post(f"{API}/uploads/{idle['upload_id']}/seal")
    delete = await registry.client.delete(f"{API}/uploads/{idle['upload_id']}")
    assert [put.status_code, seal.status_code, delete.status_code] == [410, 410, 410]
    assert put.json()["detail"] == detail
    # Its staging tables (and those of the one never sent to) are dropped; the busy one's
    # stay. (Other uploads may be here too: earlier tests' registrations over Kafka, which
    # this registry consumed from the shared topic, and which never expire.)
    staged = await staging_names(registry)
    assert upload_tables(busy) <= staged
    assert not (upload_tables(idle) | upload_tables(never_sent)) & staged
    # The name is free: a new upload of the same version opens, and seals.
    again = await open_idle_upload(registry, "idle")
    assert (
        await registry.put_chunk(
            str(again["upload_id"]), 0, ndjson(record("idle", i) for i in range(5))
        )
    ).status_code == 201
    sealed = await registry.client.post(f"{API}/uploads/{again['upload_id']}/seal")
    assert sealed.status_code == 200, sealed.text
    assert sealed.json()["record_count"] == 5
    # The busy upload survived it all and seals with every chunk it was sent.
    sealed = await registry.client.post(f"{API}/uploads/{busy['upload_id']}/seal")
    assert sealed.status_code == 200, sealed.text
    assert sealed.json()["record_count"] == n
    assert (
        await registry.client.get("/api/v1/dataset-version", params=version_query("busy"))
    ).status_code == 200
    metrics = (await registry.client.get("/metrics")).text
    assert "consenttrace_registry_uploads_expired_total 2.0" in metrics
    # A month on, the note is forgotten: a plain 404 (as for an id that never existed).
    await registry.db.execute(
        "UPDATE expired_uploads SET expired_at = expired_at - interval '31 days'"
        " WHERE upload_id = $1",
        uuid.UUID(str(never_sent["upload_id"])),
    )
    deadline = time.monotonic() + 5 * IDLE_S
    while True:
        forgotten = await registry.client.get(f"{API}/uploads/{never_sent['upload_id']}")
        if forgotten.status_code != 410 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert forgotten.status_code == 404, forgotten.text
    assert (await registry.client.get(f"{API}/uploads/{idle['upload_id']}")).status_code == 410
    # An id that never existed is still a plain 404.
    assert (await registry.client.get(f"{API}/uploads/{uuid.uuid4()}")).status_code == 404


async def test_a_chunk_streaming_past_the_timeout_keeps_its_upload(idle_registry: Registry) -> None:
    registry = idle_registry
    upload = await open_idle_upload(registry, "slow")

    async def slow_body() -> AsyncIterator[bytes]:
        for i in range(8):  # 8 times 0.4 s: over twice the timeout
            yield ndjson([record("slow", i)])
            await asyncio.sleep(0.4)

    response = await registry.put_chunk(str(upload["upload_id"]), 0, slow_body())
    assert response.status_code == 201, response.text
    sealed = await registry.client.post(f"{API}/uploads/{upload['upload_id']}/seal")
    assert sealed.status_code == 200, sealed.text
    assert sealed.json()["record_count"] == 8


async def test_an_upload_over_kafka_never_expires(idle_registry: Registry) -> None:
    """Its batches may wait in the topic while the registry is behind: its idle time on
    the registry's clock says nothing of the producer."""
    registry = idle_registry
    upload_id = uuid.uuid4()
    head = DatasetVersionHeader.model_validate(header("kafka"))
    async with unit_of_work(registry.db, "test") as uow:
        await open_upload_with_id(uow, head, upload_id, now=datetime.now(UTC) - timedelta(days=2))
    shown = await registry.client.get(f"{API}/uploads/{upload_id}")
    assert shown.status_code == 200 and shown.json()["expires_at"] is None
    # An HTTP upload opened after it expires in the meantime: the worker did look.
    idle = await open_idle_upload(registry, "witness")
    assert (await until_gone(registry, str(idle["upload_id"]), 5 * IDLE_S)).status_code == 410
    assert (await registry.client.get(f"{API}/uploads/{upload_id}")).status_code == 200
