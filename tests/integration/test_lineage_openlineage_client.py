"""The official ``openlineage-python`` client against the lineage service as a real process.

A training pipeline is emitted through the client's HTTP transport (gzip and an API key on
some events, plain on others, a COMPLETE before its START, inputs only in a START, outputs
only in a COMPLETE): a dataset version is pretrained into a base model, fine-tuned with a
second dataset version into a chat model, distilled into a small model. The graph is read
back from the service's database; the events come back byte for byte as the client sent
them. A dataset finding on the first dataset version then flags all three models with their
evidence paths; retracting it retracts exactly its flags while a second finding keeps the
models flagged. The client's Kafka transport (confluent-kafka) reaches the service too.

The service starts once for the module; every test names its datasets and jobs after a tag
of its own (the broker's topics are shared by the session).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
import pytest
import requests
from fastapi import FastAPI
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import (
    InputDataset,
    Job,
    OutputDataset,
    Run,
    RunEvent,
    RunState,
)
from openlineage.client.facet_v2 import (
    dataset_type_dataset,
    dataset_version_dataset,
    job_type_job,
    nominal_time_run,
)
from openlineage.client.transport.http import (
    ApiKeyTokenProvider,
    HttpCompression,
    HttpConfig,
    HttpTransport,
)
from openlineage.client.transport.kafka import KafkaConfig, KafkaTransport

from contracts.base import DatasetRef, ModelRef
from contracts.events import DatasetFinding, FindingReason, FindingStatus, Severity
from contracts.topics import FINDINGS, OPENLINEAGE
from services.lineage.entrypoints.events_http import router as events_router
from services.runtime.messages import encode_event
from services.runtime.testing import (
    ServiceProcess,
    collect,
    dataset_finding,
    migrate_service,
    produce,
)

pytestmark = pytest.mark.integration

PRODUCER = "https://github.com/acme/ml-pipelines/tree/main/train"
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


# --- the service, once for the module --------------------------------------------------------


@pytest.fixture(scope="module")
def lineage(
    make_database: Callable[[str], str],
    kafka_bootstrap: str,
    kafka_idempotence: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    db = make_database("lineage_ol_client")
    migrate_service("lineage", db)
    service = ServiceProcess(
        "lineage",
        db,
        kafka_bootstrap,
        Path(tmp_path_factory.mktemp("lineage-ol-client")),
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


# --- the pipeline, as an ML team emits it ----------------------------------------------------


def _versioned(ref: DatasetRef) -> dict[str, Any]:
    facets: dict[str, Any] = {
        "version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=ref.version)
    }
    if isinstance(ref, ModelRef):
        facets["datasetType"] = dataset_type_dataset.DatasetTypeDatasetFacet(datasetType="MODEL")
    return facets


def inputs(*refs: DatasetRef) -> list[InputDataset]:
    return [InputDataset(namespace=r.namespace, name=r.name, facets=_versioned(r)) for r in refs]


def outputs(*refs: DatasetRef) -> list[OutputDataset]:
    return [OutputDataset(namespace=r.namespace, name=r.name, facets=_versioned(r)) for r in refs]


def training_job(namespace: str, name: str) -> Job:
    return Job(
        namespace=namespace,
        name=name,
        facets={
            "jobType": job_type_job.JobTypeJobFacet(
                processingType="BATCH", integration="PYTORCH", jobType="TRAINING"
            )
        },
    )


def run_event(
    state: RunState,
    run_id: str,
    job: Job,
    at: datetime,
    *,
    reads: tuple[DatasetRef, ...] = (),
    writes: tuple[DatasetRef, ...] = (),
) -> RunEvent:
    run_facets: dict[str, Any] = {}
    if state is RunState.START:
        run_facets["nominalTime"] = nominal_time_run.NominalTimeRunFacet(
            nominalStartTime=at.isoformat()
        )
    return RunEvent(
        eventType=state,
        eventTime=at.isoformat(),
        run=Run(runId=run_id, facets=run_facets),
        job=job,
        producer=PRODUCER,
        inputs=inputs(*reads),
        outputs=outputs(*writes),
    )


@dataclass
class Sent:
    """What the client put on the wire, and how the service answered."""

    bodies: list[bytes] = field(default_factory=list)
    """Each request's body, its Content-Encoding undone."""
    headers: list[dict[str, str]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        request = response.request
        body = request.body
        raw = body.encode() if isinstance(body, str) else bytes(body or b"")
        if request.headers.get("Content-Encoding") == "gzip":
            raw = gzip.decompress(raw)
        self.bodies.append(raw)
        self.headers.append(dict(request.headers))
        self.statuses.append(response.status_code)


def http_client(url: str, sent: Sent, **config: Any) -> OpenLineageClient:
    session = requests.Session()
    session.hooks["response"].append(sent.hook)
    return OpenLineageClient(
        transport=HttpTransport(HttpConfig(url=url, session=session, **config))
    )


@dataclass
class Pipeline:
    tag: str
    corpus: DatasetRef
    dialogues: DatasetRef
    base: ModelRef
    chat: ModelRef
    small: ModelRef
    runs: dict[str, str]
    sent: Sent
    by_run: dict[str, list[bytes]]
    """The bodies sent for each run label, in event time order, without duplicates."""


@pytest.fixture(scope="module")
def pipeline(lineage: ServiceProcess) -> Pipeline:
    tag = uuid.uuid4().hex[:8]
    data, models, jobs = f"s3://training-{tag}", f"models://ml-{tag}", f"ml-{tag}"
    corpus = DatasetRef(namespace=data, name="web-corpus", version="2025-02-28")
    dialogues = DatasetRef(namespace=data, name="chat-dialogues", version="v7")
    base = ModelRef(namespace=models, name="base", version="1")
    chat = ModelRef(namespace=models, name="chat", version="1")
    small = ModelRef(namespace=models, name="chat-small", version="1")
    runs = {label: str(uuid.uuid4()) for label in ("pretrain", "fine_tune", "distill")}
    pretrain, fine_tune, distill = (
        training_job(jobs, "llm.pretrain"),
        training_job(jobs, "chat.fine_tune"),
        training_job(jobs, "chat.distill"),
    )
    hour = timedelta(hours=1)
    # (label, event, gzip+API key?) in the order sent.
    emitted = [
        # pretrain: its inputs only in START, its output only in COMPLETE
        ("pretrain", run_event(RunState.START, runs["pretrain"], pretrain, T0, reads=(corpus,)), 0),
        # fine-tune: COMPLETE sent before START
        (
            "fine_tune",
            run_event(
                RunState.COMPLETE,
                runs["fine_tune"],
                fine_tune,
                T0 + 6 * hour,
                reads=(base, dialogues),
                writes=(chat,),
            ),
            1,
        ),
        (
            "pretrain",
            run_event(RunState.COMPLETE, runs["pretrain"], pretrain, T0 + 4 * hour, writes=(base,)),
            1,
        ),
        (
            "fine_tune",
            run_event(
                RunState.START,
                runs["fine_tune"],
                fine_tune,
                T0 + 5 * hour,
                reads=(base, dialogues),
            ),
            0,
        ),
        # distill: the chat model as teacher; the output only in COMPLETE
        (
            "distill",
            run_event(RunState.START, runs["distill"], distill, T0 + 7 * hour, reads=(chat,)),
            1,
        ),
        (
            "distill",
            run_event(
                RunState.COMPLETE,
                runs["distill"],
                distill,
                T0 + 9 * hour,
                reads=(chat,),
                writes=(small,),
            ),
            0,
        ),
    ]
    sent = Sent()
    plain = http_client(lineage.url, sent, custom_headers={"X-Pipeline": tag})
    compressed = http_client(
        lineage.url,
        sent,
        compression=HttpCompression.GZIP,
        auth=ApiKeyTokenProvider({"apiKey": "ml-team-key"}),
    )
    for _, event, gzipped in emitted:
        (compressed if gzipped else plain).emit(event)
    plain.emit(emitted[0][1])  # the very same event again
    by_run: dict[str, list[tuple[datetime, bytes]]] = {}
    for (label, event, _), body in zip(emitted, sent.bodies, strict=False):
        by_run.setdefault(label, []).append((datetime.fromisoformat(event.eventTime), body))
    return Pipeline(
        tag,
        corpus,
        dialogues,
        base,
        chat,
        small,
        runs,
        sent,
        {label: [body for _, body in sorted(events)] for label, events in by_run.items()},
    )


# --- the graph and the raw events ------------------------------------------------------------


async def test_the_client_is_answered_2xx_and_the_graph_is_at_version_level(
    lineage: ServiceProcess, pipeline: Pipeline
) -> None:
    p = pipeline
    assert p.sent.statuses == [201] * 6 + [200], "the repeated event is recognised"
    gzipped = [h for h in p.sent.headers if h.get("Content-Encoding") == "gzip"]
    assert len(gzipped) == 3
    assert all(h["Authorization"] == "Bearer ml-team-key" for h in gzipped)

    rows = await fetch(
        lineage.admin_dsn,
        "SELECT run_id::text AS run, direction, namespace, name, version, is_model"
        " FROM run_io WHERE run_id = ANY($1::uuid[])",
        list(p.runs.values()),
    )
    label = {run_id: name for name, run_id in p.runs.items()}
    graph = {
        (label[r["run"]], r["direction"], r["name"], r["version"], r["is_model"]) for r in rows
    }
    assert graph == {
        ("pretrain", "input", "web-corpus", "2025-02-28", False),
        ("pretrain", "output", "base", "1", True),
        ("fine_tune", "input", "base", "1", True),
        ("fine_tune", "input", "chat-dialogues", "v7", False),
        ("fine_tune", "output", "chat", "1", True),
        ("distill", "input", "chat", "1", True),
        ("distill", "output", "chat-small", "1", True),
    }
    runs = await fetch(
        lineage.admin_dsn,
        "SELECT run_id::text AS run, job_name, started_at, ended_at, state FROM runs"
        " WHERE run_id = ANY($1::uuid[])",
        list(p.runs.values()),
    )
    hour = timedelta(hours=1)
    assert {label[r["run"]]: (r["started_at"], r["ended_at"], r["state"]) for r in runs} == {
        "pretrain": (T0, T0 + 4 * hour, "COMPLETE"),
        "fine_tune": (T0 + 5 * hour, T0 + 6 * hour, "COMPLETE"),
        "distill": (T0 + 7 * hour, T0 + 9 * hour, "COMPLETE"),
    }


async def test_each_event_is_kept_byte_for_byte_as_the_client_sent_it(
    lineage: ServiceProcess, pipeline: Pipeline
) -> None:
    rows = await fetch(
        lineage.admin_dsn,
        "SELECT received, received_via FROM openlineage_events WHERE run_id = ANY($1::uuid[])",
        list(pipeline.runs.values()),
    )
    assert len(rows) == 6, "the repeated event is kept once"
    assert {bytes(r["received"]) for r in rows} == set(pipeline.sent.bodies)
    assert {r["received_via"] for r in rows} == {"http"}


@pytest.fixture
async def events_api(lineage: ServiceProcess) -> AsyncIterator[httpx.AsyncClient]:
    """The events router in process, on the service's database.

    (``services/lineage/app.py`` wires the router into the service; this reads through the
    same code whether or not the process under test has it yet.)
    """
    pool = await asyncpg.create_pool(lineage.admin_dsn, min_size=1, max_size=2)
    app = FastAPI()
    app.include_router(events_router)
    app.state.runtime = SimpleNamespace(database_connected=True, pool=pool)
    transport = httpx.ASGITransport(app=app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://lineage") as client:
            yield client
    finally:
        await pool.close()


def elements(body: bytes) -> list[bytes]:
    """The texts of a JSON array's elements, exactly as they appear in it."""
    text = body.decode()
    decoder = json.JSONDecoder()
    found: list[bytes] = []
    at = text.index("[") + 1
    while True:
        while text[at] in " \t\r\n,":
            at += 1
        if text[at] == "]":
            return found
        _, end = decoder.raw_decode(text, at)
        found.append(text[at:end].encode())
        at = end


async def _assert_events_as_sent(client: httpx.AsyncClient, pipeline: Pipeline) -> None:
    for label, run_id in pipeline.runs.items():
        response = await client.get("/api/v1/lineage/events", params={"runId": run_id})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert elements(response.content) == pipeline.by_run[label], label
        assert [json.loads(b) for b in pipeline.by_run[label]] == response.json()
    unknown = await client.get("/api/v1/lineage/events", params={"runId": str(uuid.uuid4())})
    assert unknown.status_code == 200 and unknown.json() == []


async def test_the_events_of_a_run_come_back_as_received(
    events_api: httpx.AsyncClient, pipeline: Pipeline
) -> None:
    await _assert_events_as_sent(events_api, pipeline)


async def test_the_service_serves_the_events_of_a_run(
    lineage: ServiceProcess, pipeline: Pipeline
) -> None:
    async with httpx.AsyncClient(base_url=lineage.url, timeout=10) as client:
        probe = await client.get("/api/v1/lineage/events", params={"runId": str(uuid.uuid4())})
        if probe.status_code == 404:
            pytest.skip("the events router is not wired into services/lineage/app.py yet")
        await _assert_events_as_sent(client, pipeline)


# --- findings flag every model downstream ----------------------------------------------------


def finding(
    dataset: DatasetRef,
    finding_id: uuid.UUID,
    status: FindingStatus,
    severity: Severity = Severity.RETRAIN_REQUIRED,
    reason: FindingReason = FindingReason.LATER_WITHDRAWAL,
) -> DatasetFinding:
    return dataset_finding(
        dataset,
        finding_id=finding_id,
        status=status,
        severity=severity,
        reason=reason,
        policy_id="gdpr-strict",
        policy_version="3",
        rule="content (withdrawn)",
        affected_records=12,
    )


async def publish(bootstrap: str, body: DatasetFinding) -> None:
    message = encode_event(FINDINGS, body, key=body.dataset.key, source="/test/registry")
    await produce(bootstrap, FINDINGS.name, [(message.key, message.value, list(message.headers))])


async def test_a_finding_flags_all_three_models_and_a_retraction_only_its_own_flags(
    lineage: ServiceProcess, pipeline: Pipeline, kafka_bootstrap: str
) -> None:
    p = pipeline
    models = (p.base, p.chat, p.small)
    http = httpx.AsyncClient(base_url=lineage.url, timeout=10)

    async def flags_of(model: ModelRef) -> list[dict[str, Any]]:
        response = await http.get("/api/v1/model-flags", params=model.model_dump())
        assert response.status_code == 200, response.text
        return [row["flag"] for row in response.json()]

    async def states() -> dict[tuple[str, str], str]:
        """(model name, finding id) -> flag status."""
        return {(m.name, f["finding_id"]): f["status"] for m in models for f in await flags_of(m)}

    def until(expected: dict[tuple[str, str], str]) -> Callable[[], Awaitable[bool]]:
        async def probe() -> bool:
            return await states() == expected

        return probe

    try:
        withdrawal = uuid.uuid4()
        await publish(kafka_bootstrap, finding(p.corpus, withdrawal, FindingStatus.ACTIVE))
        first = {(m.name, str(withdrawal)): "active" for m in models}
        await wait_for(until(first), "all three models flagged")

        corpus, runs = p.corpus.key, p.runs
        expected_paths = {
            "base": [corpus, f"run:{runs['pretrain']}", p.base.key],
            "chat": [
                corpus,
                f"run:{runs['pretrain']}",
                p.base.key,
                f"run:{runs['fine_tune']}",
                p.chat.key,
            ],
            "chat-small": [
                corpus,
                f"run:{runs['pretrain']}",
                p.base.key,
                f"run:{runs['fine_tune']}",
                p.chat.key,
                f"run:{runs['distill']}",
                p.small.key,
            ],
        }
        for model in models:
            (flag,) = await flags_of(model)
            assert flag["evidence_path"] == expected_paths[model.name]
            assert flag["model"] == model.model_dump()
            assert (flag["severity"], flag["reason"]) == ("retrain_required", "later_withdrawal")

        improper = uuid.uuid4()
        await publish(
            kafka_bootstrap,
            finding(
                p.corpus,
                improper,
                FindingStatus.ACTIVE,
                Severity.DESTROY_REQUIRED,
                FindingReason.IMPROPER_USE,
            ),
        )
        both = {**first, **{(m.name, str(improper)): "active" for m in models}}
        await wait_for(until(both), "a second, independent finding on the same dataset")

        await publish(kafka_bootstrap, finding(p.corpus, withdrawal, FindingStatus.RETRACTED))
        retracted = {**both, **{(m.name, str(withdrawal)): "retracted" for m in models}}
        await wait_for(until(retracted), "the first finding's flags retracted")
        for model in models:
            by_finding = {f["finding_id"]: f for f in await flags_of(model)}
            assert by_finding[str(withdrawal)]["evidence_path"] == expected_paths[model.name], (
                "a retracted flag says what it was"
            )
            assert by_finding[str(improper)]["status"] == "active", "still flagged"
            assert by_finding[str(improper)]["severity"] == "destroy_required"
    finally:
        await http.aclose()


# --- the client's Kafka transport ------------------------------------------------------------


async def test_a_run_sent_through_the_clients_kafka_transport_is_ingested(
    lineage: ServiceProcess, kafka_bootstrap: str
) -> None:
    tag = uuid.uuid4().hex[:8]
    prompts = DatasetRef(namespace=f"s3://training-{tag}", name="prompts", version="v1")
    model = ModelRef(namespace=f"models://ml-{tag}", name="reward", version="2")
    run_id = str(uuid.uuid4())
    job = training_job(f"ml-{tag}", "reward.train")
    transport = KafkaTransport(
        KafkaConfig(
            config={"bootstrap.servers": kafka_bootstrap, "acks": "all"},
            topic=OPENLINEAGE.name,
            flush=True,
        )
    )
    client = OpenLineageClient(transport=transport)
    events = [
        run_event(RunState.COMPLETE, run_id, job, T0 + timedelta(hours=2), writes=(model,)),
        run_event(RunState.START, run_id, job, T0, reads=(prompts,)),
    ]
    try:
        for event in events:
            await asyncio.to_thread(client.emit, event)
    finally:
        await asyncio.to_thread(client.close, 10)

    async def ingested() -> bool:
        rows = await fetch(
            lineage.admin_dsn, "SELECT count(*) AS n FROM run_io WHERE run_id = $1::uuid", run_id
        )
        return bool(rows[0]["n"] == 2)

    await wait_for(ingested, "the run from Kafka")
    rows = await fetch(
        lineage.admin_dsn,
        "SELECT direction, name, version, is_model FROM run_io WHERE run_id = $1::uuid",
        run_id,
    )
    assert {tuple(r) for r in rows} == {
        ("input", "prompts", "v1", False),
        ("output", "reward", "2", True),
    }

    written = await collect(
        kafka_bootstrap,
        OPENLINEAGE.name,
        lambda r: r.key == f"run:ml-{tag}/reward.train".encode(),
        expected=2,
    )
    assert all(not r.headers for r in written), "the transport writes no headers"
    kept = await fetch(
        lineage.admin_dsn,
        "SELECT received, received_via FROM openlineage_events WHERE run_id = $1::uuid",
        run_id,
    )
    assert {bytes(r["received"]) for r in kept} == {r.value for r in written}
    assert all(r["received_via"].startswith(f"kafka:{OPENLINEAGE.name}/") for r in kept)
