"""Ingestion on a real broker and Postgres, the lineage service as a real process: the same
events in any order, duplicated, concurrently, over HTTP or Kafka, give the same graph; bad
events are refused over HTTP with the problem named, and dead-lettered over Kafka while the
consumer goes on.

The service starts once for the module; each scenario names its datasets, jobs and runs
after a tag of its own.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from contracts.openlineage import SPEC_URL
from contracts.topics import OPENLINEAGE
from services.runtime.testing import (
    ServiceProcess,
    collect,
    header,
    migrate_service,
    produce,
)

pytestmark = pytest.mark.integration

T0 = datetime(2025, 4, 1, 6, 0, tzinfo=UTC)
PRODUCER = "https://github.com/acme/ml-pipelines"
CLIENT = "https://github.com/OpenLineage/OpenLineage/tree/1.54.0/client/python"
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


@pytest.fixture(scope="module")
def lineage(
    make_database: Callable[[str], str],
    kafka_bootstrap: str,
    kafka_idempotence: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    db = make_database("lineage_ingestion")
    migrate_service("lineage", db)
    service = ServiceProcess(
        "lineage",
        db,
        kafka_bootstrap,
        Path(tmp_path_factory.mktemp("lineage-ingestion")),
        idempotence=kafka_idempotence,
    ).start()
    try:
        service.wait_ready()
        yield service
    finally:
        service.stop()


async def fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


async def wait_for(probe: Callable[[], Awaitable[bool]], what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not await probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.1)


# --- one small pipeline, instantiated under a tag --------------------------------------------


def _facet(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "_producer": CLIENT,
        "_schemaURL": f"https://openlineage.io/spec/facets/1-0-1/{name}.json#/$defs/{name}",
        **fields,
    }


def dataset(namespace: str, name: str, version: str, *, model: bool = False) -> dict[str, Any]:
    facets = {"version": _facet("DatasetVersionDatasetFacet", datasetVersion=version)}
    if model:
        facets["datasetType"] = _facet("DatasetTypeDatasetFacet", datasetType="MODEL")
    return {"namespace": namespace, "name": name, "facets": facets}


def pipeline_events(tag: str) -> list[dict[str, Any]]:
    """Two runs (snapshot → base model → tuned model), their io spread over their events."""
    data, models, jobs = f"s3://lake-{tag}", f"models://{tag}", f"ml-{tag}"
    snapshot = dataset(data, "snapshot", "v1")
    extra = dataset(data, "instructions", "v2")
    base = dataset(models, "base", "1", model=True)
    tuned = dataset(models, "tuned", "1", model=True)
    pretrain = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}/pretrain"))
    tune = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}/tune"))

    def event(
        state: str, run: str, job: str, minutes: int, **io: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "eventTime": (T0 + timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z"),
            "eventType": state,
            "producer": PRODUCER,
            "schemaURL": f"{SPEC_URL}#/$defs/RunEvent",
            "run": {"runId": run, "facets": {}},
            "job": {"namespace": jobs, "name": job},
            "inputs": io.get("inputs", []),
            "outputs": io.get("outputs", []),
        }

    return [
        event("START", pretrain, "pretrain", 0, inputs=[snapshot]),
        event("RUNNING", pretrain, "pretrain", 30, outputs=[base]),
        event("COMPLETE", pretrain, "pretrain", 60, inputs=[snapshot], outputs=[base]),
        event("START", tune, "tune", 90, inputs=[base]),
        event("RUNNING", tune, "tune", 100, inputs=[extra]),
        event("COMPLETE", tune, "tune", 120, outputs=[tuned]),
    ]


def run_ids(tag: str) -> list[str]:
    return [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}/{label}")) for label in ("pretrain", "tune")]


async def graph(service: ServiceProcess, tag: str) -> dict[str, set[tuple[Any, ...]]]:
    """The run's rows with the tag and run ids replaced by placeholders."""
    ids = run_ids(tag)
    labels = dict(zip(ids, ("pretrain", "tune"), strict=True))

    def plain(value: Any) -> Any:
        if isinstance(value, str):
            return labels.get(value, value.replace(tag, "TAG"))
        return value

    io = await fetch(
        service.admin_dsn,
        "SELECT run_id::text, direction, namespace, name, version, is_model, seen_at"
        " FROM run_io WHERE run_id = ANY($1::uuid[])",
        ids,
    )
    runs = await fetch(
        service.admin_dsn,
        "SELECT run_id::text, job_namespace, job_name, started_at, ended_at, state"
        " FROM runs WHERE run_id = ANY($1::uuid[])",
        ids,
    )
    events = await fetch(
        service.admin_dsn,
        "SELECT run_id::text, event_type, event_time FROM openlineage_events"
        " WHERE run_id = ANY($1::uuid[])",
        ids,
    )
    return {
        name: {tuple(plain(v) for v in row.values()) for row in rows}
        for name, rows in (("run_io", io), ("runs", runs), ("events", events))
    }


async def stored_events(service: ServiceProcess, tag: str) -> int:
    rows = await fetch(
        service.admin_dsn,
        "SELECT count(*) AS n FROM openlineage_events WHERE run_id = ANY($1::uuid[])",
        run_ids(tag),
    )
    n: int = rows[0]["n"]
    return n


def _bytes(event: dict[str, Any]) -> bytes:
    return json.dumps(event, sort_keys=True).encode()


def transport_record(event: dict[str, Any]) -> Record:
    """What the openlineage-python KafkaTransport writes: key ``run:<ns>/<name>``, the JSON
    value, no headers."""
    key = f"run:{event['job']['namespace']}/{event['job']['name']}".encode()
    return key, _bytes(event), []


# --- out of order, duplicated, concurrent: the same graph ------------------------------------


async def test_any_order_with_duplicates_over_any_path_yields_the_same_graph(
    lineage: ServiceProcess, kafka_bootstrap: str
) -> None:
    rng = random.Random(20250401)
    events = range(len(pipeline_events("x")))
    orders: list[tuple[str, list[int]]] = [
        ("http", list(events)),
        ("http", list(reversed(events))),
        ("http", rng.sample(events, len(events))),
        ("http", [*rng.sample(events, len(events)), 5, 0, 3]),  # with duplicates
        ("http-concurrent", [*rng.sample(events, len(events)), *events]),
        ("kafka", [*rng.sample(events, len(events)), 2, 2]),
    ]
    graphs: list[dict[str, set[tuple[Any, ...]]]] = []
    async with httpx.AsyncClient(base_url=lineage.url, timeout=30) as http:
        for how, order in orders:
            tag = uuid.uuid4().hex[:8]
            sequence = [pipeline_events(tag)[i] for i in order]
            if how == "kafka":
                await produce(
                    kafka_bootstrap, OPENLINEAGE.name, [transport_record(e) for e in sequence]
                )

                async def all_stored(tag: str = tag) -> bool:
                    return await stored_events(lineage, tag) == len(events)

                await wait_for(all_stored, "the events from Kafka")
            else:
                posts = [
                    http.post(
                        "/api/v1/lineage",
                        content=_bytes(e),
                        headers={"Content-Type": "application/json"},
                    )
                    for e in sequence
                ]
                if how == "http-concurrent":
                    responses = await asyncio.gather(*posts)
                else:
                    responses = [await post for post in posts]
                codes = [r.status_code for r in responses]
                assert sorted(codes) == sorted([201] * len(events) + [200] * (len(order) - 6))
            assert await stored_events(lineage, tag) == len(events), how
            graphs.append(await graph(lineage, tag))

    first = graphs[0]
    assert all(g == first for g in graphs[1:]), [g for g in graphs if g != first][:1]
    assert {row[:6] for row in first["run_io"]} == {
        ("pretrain", "input", "s3://lake-TAG", "snapshot", "v1", False),
        ("pretrain", "output", "models://TAG", "base", "1", True),
        ("tune", "input", "models://TAG", "base", "1", True),
        ("tune", "input", "s3://lake-TAG", "instructions", "v2", False),
        ("tune", "output", "models://TAG", "tuned", "1", True),
    }
    seen = {(row[0], row[3]): row[6] for row in first["run_io"]}
    assert seen[("pretrain", "base")] == T0 + timedelta(minutes=30), "first event naming it"
    assert seen[("tune", "instructions")] == T0 + timedelta(minutes=100)
    assert {row[0]: row[3:] for row in first["runs"]} == {
        "pretrain": (T0, T0 + timedelta(minutes=60), "COMPLETE"),
        "tune": (T0 + timedelta(minutes=90), T0 + timedelta(minutes=120), "COMPLETE"),
    }


async def test_a_run_without_a_terminal_event_takes_the_state_of_its_latest_event(
    lineage: ServiceProcess,
) -> None:
    states: set[str] = set()
    async with httpx.AsyncClient(base_url=lineage.url, timeout=30) as http:
        for order in ((0, 1), (1, 0)):
            tag = uuid.uuid4().hex[:8]
            start, running = pipeline_events(tag)[:2]
            for i in order:
                response = await http.post("/api/v1/lineage", content=_bytes((start, running)[i]))
                assert response.status_code == 201, response.text
            rows = await fetch(
                lineage.admin_dsn, "SELECT state FROM runs WHERE run_id = $1::uuid", run_ids(tag)[0]
            )
            states.add(rows[0]["state"])
    assert states == {"RUNNING"}


# --- bad events --------------------------------------------------------------------------------


async def test_a_bad_event_over_http_is_refused_with_the_problem_named(
    lineage: ServiceProcess,
) -> None:
    tag = uuid.uuid4().hex[:8]
    good = pipeline_events(tag)[0]
    static = {k: v for k, v in good.items() if k not in ("run", "eventType", "job")}
    static = {
        **static,
        "schemaURL": f"{SPEC_URL}#/$defs/DatasetEvent",
        "dataset": {"namespace": f"s3://lake-{tag}", "name": "snapshot"},
    }
    cases: list[tuple[bytes, dict[str, str], int, list[Any] | None, str]] = [
        (_bytes({**good, "run": {"runId": "run-1"}}), {}, 422, ["body", "run", "runId"], "UUID"),
        (_bytes({**good, "eventTime": "yesterday"}), {}, 422, ["body", "eventTime"], "RFC 3339"),
        (_bytes({**good, "inputs": [{"name": "x"}]}), {}, 422, None, "namespace"),
        (_bytes(static), {}, 422, ["body"], "DatasetEvent"),
        (
            gzip.compress(_bytes({**good, "producer": "not a uri"})),
            {"Content-Encoding": "gzip"},
            422,
            ["body", "producer"],
            "absolute URI",
        ),
        (b"\x1f\x8b garbage", {"Content-Encoding": "gzip"}, 400, None, "not valid gzip"),
        (_bytes(good), {"Content-Encoding": "zstd"}, 415, None, "'zstd' is not supported"),
    ]
    async with httpx.AsyncClient(base_url=lineage.url, timeout=30) as http:
        for body, headers, status, loc, says in cases:
            response = await http.post(
                "/api/v1/lineage",
                content=body,
                headers={"Content-Type": "application/json", **headers},
            )
            assert response.status_code == status, (says, response.text)
            detail = response.json()["detail"]
            assert says in json.dumps(detail), (says, detail)
            if loc is not None:
                assert [e["loc"] for e in detail] == [loc], detail
    assert await stored_events(lineage, tag) == 0, "nothing of a refused event is kept"


async def test_a_bad_event_over_kafka_is_dead_lettered_and_the_consumer_goes_on(
    lineage: ServiceProcess, kafka_bootstrap: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    start, running, complete = pipeline_events(tag)[:3]
    key = f"run:ml-{tag}/pretrain".encode()
    static_job = {k: v for k, v in start.items() if k not in ("run", "eventType")}
    bad: list[tuple[Record, str]] = [
        ((key + b"/json", b"\xff{not json", []), "Invalid JSON"),
        ((key + b"/uuid", _bytes({**start, "run": {"runId": "r1"}}), []), "run.runId"),
        (
            (key + b"/job", _bytes({**static_job, "schemaURL": f"{SPEC_URL}#/$defs/JobEvent"}), []),
            "a JobEvent (OpenLineage static lineage) is not accepted",
        ),
        ((key + b"/tombstone", None, []), "tombstone"),
    ]
    await produce(
        kafka_bootstrap,
        OPENLINEAGE.name,
        [transport_record(start), *(record for record, _ in bad), transport_record(complete)],
    )

    async def both_good_ones_stored() -> bool:
        return await stored_events(lineage, tag) == 2

    await wait_for(both_good_ones_stored, "the good events around the bad ones")
    dead = await collect(
        kafka_bootstrap,
        OPENLINEAGE.dlq,
        lambda r: (
            (r.key or b"").startswith(key)
            and header(r, "dlq_consumer_group")
            == f"{lineage.group_prefix}.lineage.{OPENLINEAGE.name}"
        ),
        expected=len(bad),
    )
    by_key = {r.key: r for r in dead}
    assert set(by_key) == {record[0] for record, _ in bad} and len(dead) == len(bad)
    for (record_key, value, _), says in bad:
        letter = by_key[record_key]
        assert letter.value == (value or b""), "the original bytes are kept"
        assert header(letter, "dlq_reason") == "contract_violation"
        assert header(letter, "dlq_source_topic") == OPENLINEAGE.name
        assert says in (header(letter, "dlq_error") or ""), header(letter, "dlq_error")

    # The consumer went on past the dead letters: the next event is ingested too.
    await produce(kafka_bootstrap, OPENLINEAGE.name, [transport_record(running)])

    async def third_stored() -> bool:
        return await stored_events(lineage, tag) == 3

    await wait_for(third_stored, "an event after the dead letters")
