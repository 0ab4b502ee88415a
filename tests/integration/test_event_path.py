"""The event path's guarantees, on a real broker and real Postgres, with the deletion service
as a real process: duplicates change nothing, bad messages are dead-lettered and the
consumer goes on, SIGKILL loses and doubles nothing, Postgres outages are waited out."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from contracts.events import (
    ConsentEvent,
    ConsentEvidence,
    ConsentMechanism,
    ConsentState,
)
from contracts.topics import CASES, CONSENT_EVENTS, TOPIC_PARTITIONS
from services.runtime.messages import encode_event
from services.runtime.testing import (
    PostgresProxy,
    ServiceProcess,
    StartService,
    StartStack,
    collect,
    header,
    produce,
)

pytestmark = pytest.mark.integration

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


def erasure(subject: str, *, event_id: str | None = None) -> tuple[ConsentEvent, Record]:
    """A withdrawal with an erasure request: the deletion service opens one case for it."""
    body = ConsentEvent(
        consent_event_id=uuid.uuid5(uuid.NAMESPACE_URL, subject),
        subject_id=subject,
        jurisdiction="DE",
        purpose="ai.training",
        data_categories=("user.content",),
        state=ConsentState.WITHDRAWN,
        mechanism=ConsentMechanism.ERASURE_REQUEST,
        policy_version="1",
        effective_at=datetime(2025, 1, 1, tzinfo=UTC),
        recorded_at=datetime(2025, 1, 2, tzinfo=UTC),
        source_system="test",
        evidence=ConsentEvidence(collection_point="test"),
        erasure_requested=True,
    )
    message = encode_event(
        CONSENT_EVENTS,
        body,
        key=subject,
        source="/test",
        event_id=event_id or str(body.consent_event_id),
    )
    return body, (message.key, message.value, list(message.headers))


async def wait_for(probe: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.1)


async def fetchval(dsn: str, query: str, *args: object) -> object:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


async def cases_for(service: ServiceProcess, tag: str) -> int:
    count = await fetchval(
        service.admin_dsn, "SELECT count(*) FROM cases WHERE cause_key LIKE $1", f"erasure:{tag}%"
    )
    assert isinstance(count, int)
    return count


async def produce_erasures(bootstrap: str, tag: str, count: int) -> None:
    """``count`` erasures of distinct subjects ``<tag>-0000`` on: one case each."""
    records = [erasure(f"{tag}-{i:04}")[1] for i in range(count)]
    await produce(bootstrap, CONSENT_EVENTS.name, records)


async def case_histories_for(service: ServiceProcess, tag: str) -> object:
    return await fetchval(
        service.admin_dsn,
        "SELECT count(*) FROM case_history JOIN cases USING (case_id) WHERE cause_key LIKE $1",
        f"erasure:{tag}%",
    )


async def ready(service: ServiceProcess) -> None:
    await asyncio.to_thread(service.wait_ready)


async def test_duplicate_events_change_nothing(
    start_service: StartService, kafka_bootstrap: str
) -> None:
    service = start_service("deletion")
    await ready(service)
    tag = f"dup-{uuid.uuid4().hex[:8]}"
    subject = f"{tag}-s1"
    body, record = erasure(subject)
    replay_id = str(uuid.uuid4())
    _, replayed = erasure(subject, event_id=replay_id)  # the same fact, another delivery id
    await produce(kafka_bootstrap, CONSENT_EVENTS.name, [record, record, replayed])

    async def all_three_seen() -> bool:
        seen = await fetchval(
            service.admin_dsn,
            "SELECT count(*) FROM inbox WHERE event_id = ANY($1)",
            [str(body.consent_event_id), replay_id],
        )
        return seen == 2

    await wait_for(all_three_seen, 60, "the deletion service to consume the events")
    dsn = service.admin_dsn
    assert await cases_for(service, tag) == 1
    case_id = await fetchval(
        dsn, "SELECT case_id FROM cases WHERE cause_key LIKE $1", f"erasure:{tag}%"
    )
    assert await fetchval(dsn, "SELECT count(*) FROM case_history WHERE case_id = $1", case_id) == 1
    outbox = "SELECT count(*) FROM outbox WHERE topic = $1 AND key = $2"
    assert await fetchval(dsn, outbox, CASES.name, str(case_id).encode()) == 1
    published = await collect(
        kafka_bootstrap, CASES.name, lambda r: r.key == str(case_id).encode(), expected=1
    )
    assert len(published) == 1


async def test_bad_messages_go_to_the_dead_letter_topic_and_the_consumer_goes_on(
    start_service: StartService, kafka_bootstrap: str
) -> None:
    service = start_service("deletion")
    await ready(service)
    tag = f"dlq-{uuid.uuid4().hex[:8]}"
    good_body, good = erasure(f"{tag}-good")
    _, valid_headers = erasure(f"{tag}-x")
    headers = valid_headers[2]
    wrong_type = [(k, b"io.example.other" if k == "ce_type" else v) for k, v in headers]
    bad: list[Record] = [
        (f"{tag}-notjson".encode(), b"\xff\xfenot json", headers),
        (f"{tag}-contract".encode(), json.dumps({"subject_id": "x"}).encode(), headers),
        (f"{tag}-noheaders".encode(), good[1], []),
        (f"{tag}-type".encode(), good[1], wrong_type),
    ]
    await produce(kafka_bootstrap, CONSENT_EVENTS.name, [*bad, good])

    async def good_processed() -> bool:
        return await cases_for(service, f"{tag}-good") == 1

    await wait_for(good_processed, 60, "the good message after the bad ones")
    dead = await collect(
        kafka_bootstrap,
        CONSENT_EVENTS.dlq,
        lambda r: (
            (r.key or b"").startswith(tag.encode())
            and header(r, "dlq_consumer_group")
            == f"{service.group_prefix}.deletion.{CONSENT_EVENTS.name}"
        ),
        expected=4,
    )
    by_key = {r.key: r for r in dead}
    assert len(dead) == 4 and set(by_key) == {key for key, _, _ in bad}
    for key, value, original_headers in bad:
        record = by_key[key]
        assert record.value == value, "the original bytes are kept"
        assert all(h in (record.headers or ()) for h in original_headers)
        assert header(record, "dlq_reason") == "contract_violation"
        assert header(record, "dlq_source_topic") == CONSENT_EVENTS.name
        assert header(record, "dlq_source_offset") is not None
        assert header(record, "dlq_error")
    assert "ce_type" in (header(by_key[f"{tag}-type".encode()], "dlq_error") or "")
    assert "ce_id" in (header(by_key[f"{tag}-noheaders".encode()], "dlq_error") or "")
    assert good_body.subject_id.startswith(tag)


async def test_consumers_of_one_process_share_the_partitions_and_double_nothing(
    start_stack: StartStack, kafka_bootstrap: str
) -> None:
    """``KAFKA_CONSUMERS=2``: two members of the one group, each with its own partitions of
    the topic (all of them between the two); every event processed once."""
    label = f"members_{uuid.uuid4().hex[:8]}"
    with start_stack(["deletion"], label, {"KAFKA_CONSUMERS": "2"}) as stack:
        service = stack["deletion"]
        tag = f"members-{uuid.uuid4().hex[:8]}"
        count = 300
        await produce_erasures(kafka_bootstrap, tag, count)

        async def all_processed() -> bool:
            return await cases_for(service, tag) >= count

        await wait_for(all_processed, 90, "every case")
        await asyncio.sleep(1.0)  # anything doubled would show up now
        assert await cases_for(service, tag) == count
        assert await case_histories_for(service, tag) == count
        # aiokafka logs each member's assignment; the last two for the group are the two
        # members' shares of the final generation.
        group = f".deletion.{CONSENT_EVENTS.name}"
        shares = [
            {int(p) for p in re.findall(r"partition=(\d+)", line)}
            for line in service.log_path.read_text().splitlines()
            if "Setting newly assigned partitions" in line and group in line
        ][-2:]
        assert len(shares) == 2 and all(shares), shares
        assert shares[0].isdisjoint(shares[1])
        assert shares[0] | shares[1] == set(range(TOPIC_PARTITIONS[CONSENT_EVENTS.name]))


async def test_sigkill_mid_stream_loses_nothing_and_doubles_nothing(
    start_service: StartService, kafka_bootstrap: str
) -> None:
    service = start_service("deletion")
    await ready(service)
    tag = f"kill-{uuid.uuid4().hex[:8]}"
    count = 3000
    await produce_erasures(kafka_bootstrap, tag, count)

    async def some_processed() -> bool:
        return await cases_for(service, tag) >= 60

    await wait_for(some_processed, 60, "the first cases")
    service.kill()
    at_kill = await cases_for(service, tag)
    assert at_kill < count, "the kill must land mid-stream for this test to mean anything"
    service.start()

    async def all_processed() -> bool:
        return await cases_for(service, tag) >= count

    await wait_for(all_processed, 120, "every case after the restart")
    await asyncio.sleep(1.0)  # anything doubled would show up now
    dsn = service.admin_dsn
    mine = f"erasure:{tag}%"
    assert await cases_for(service, tag) == count
    assert await case_histories_for(service, tag) == count
    case_ids = {
        str(r)
        for r in await _fetch_column(dsn, "SELECT case_id FROM cases WHERE cause_key LIKE $1", mine)
    }
    outbox = "SELECT count(*) FROM outbox WHERE topic = $1 AND convert_from(key, 'UTF8') = ANY($2)"
    assert await fetchval(dsn, outbox, CASES.name, list(case_ids)) == count
    published = await collect(
        kafka_bootstrap,
        CASES.name,
        lambda r: (r.key or b"").decode() in case_ids,
        expected=count,
        within=60,
    )
    event_ids = [header(r, "ce_id") for r in published]
    assert set(event_ids) == {f"case:{c}:1" for c in case_ids}, "every case event published"
    # The relay is at-least-once: a kill between publish and mark may resend a batch, which
    # consumers drop by ce_id. Nothing else may be doubled.
    assert len(event_ids) - len(set(event_ids)) <= 500


async def _fetch_column(dsn: str, query: str, *args: object) -> list[object]:
    conn = await asyncpg.connect(dsn)
    try:
        return [row[0] for row in await conn.fetch(query, *args)]
    finally:
        await conn.close()


async def test_started_without_postgres_it_becomes_ready_and_waits_out_outages(
    start_service: StartService, kafka_bootstrap: str, postgres_server_url: str
) -> None:
    target = urlsplit(postgres_server_url)
    proxy = PostgresProxy(target.hostname or "127.0.0.1", target.port or 5432)
    service = start_service("deletion", via=proxy)
    tag = f"pg-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(base_url=service.url, timeout=2) as client:

        async def live() -> bool:
            try:
                return (await client.get("/health/live")).status_code == 200
            except httpx.HTTPError:
                return False

        await wait_for(live, 30, "liveness while Postgres is unreachable")
        await asyncio.sleep(1.0)
        assert (await client.get("/health/ready")).status_code == 503
        assert (await client.get("/api/v1/cases")).status_code == 503
        await produce(
            kafka_bootstrap, CONSENT_EVENTS.name, [erasure(f"{tag}-a{i}")[1] for i in range(30)]
        )

        await proxy.open()
        await ready(service)
        await wait_for(lambda: _has(service, f"{tag}-a", 30), 60, "the backlog")

        await proxy.cut()  # Postgres vanishes while the service runs
        await produce(
            kafka_bootstrap, CONSENT_EVENTS.name, [erasure(f"{tag}-b{i}")[1] for i in range(30)]
        )
        await asyncio.sleep(3.0)
        assert (await client.get("/health/ready")).status_code == 503
        assert await cases_for(service, f"{tag}-b") == 0
        await proxy.open()
        await wait_for(lambda: _has(service, f"{tag}-b", 30), 60, "processing after the outage")
    dead = await collect(
        kafka_bootstrap,
        CONSENT_EVENTS.dlq,
        lambda r: (r.key or b"").startswith(tag.encode()),
        expected=0,
        within=3,
    )
    assert dead == [], "a transient failure is retried, never dead-lettered"
    await proxy.cut()


async def _has(service: ServiceProcess, tag: str, n: int) -> bool:
    return await cases_for(service, tag) == n


async def test_a_request_meeting_a_postgres_outage_answers_503_not_500(
    start_service: StartService, postgres_server_url: str
) -> None:
    """Found by the fault scenario (tests/integration/test_faults.py): while Postgres restarts
    under a running service, API calls answered 500 with a traceback. A transient outage is
    a 503 with Retry-After, which clients retry; the service answers again once it is back."""
    target = urlsplit(postgres_server_url)
    proxy = PostgresProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.open()
    service = start_service("deletion", via=proxy)
    await ready(service)
    async with httpx.AsyncClient(base_url=service.url, timeout=10) as client:
        assert (await client.get("/api/v1/cases")).status_code == 200
        await proxy.cut()  # pooled connections break, new ones are refused
        answers = [await client.get("/api/v1/cases") for _ in range(3)]
        assert [a.status_code for a in answers] == [503, 503, 503], [a.text for a in answers]
        assert all(a.headers.get("Retry-After") == "1" for a in answers)
        assert "temporarily unavailable" in answers[0].json()["detail"]
        await proxy.open()

        async def answers_again() -> bool:
            return (await client.get("/api/v1/cases")).status_code == 200

        await wait_for(answers_again, 30, "the API after the outage")
    await proxy.cut()
