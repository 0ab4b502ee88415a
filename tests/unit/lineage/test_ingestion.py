"""Ingestion of OpenLineage events, without a database or a broker.

What the official ``openlineage-python`` client sends, captured at its transports' edges
(the HTTP transport's prepared request, the Kafka transport's ``produce`` call), is parsed
by the service's decoding and kept byte for byte; bad events are refused with the field
named. The HTTP refusals are checked on the real route, in process: they answer before the
route needs its database.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import requests
from fastapi import FastAPI
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import (
    DatasetEvent,
    InputDataset,
    Job,
    JobEvent,
    OutputDataset,
    Run,
    RunEvent,
    RunState,
    StaticDataset,
)
from openlineage.client.facet_v2 import dataset_type_dataset, dataset_version_dataset
from openlineage.client.transport.http import (
    ApiKeyTokenProvider,
    HttpCompression,
    HttpConfig,
    HttpTransport,
)
from openlineage.client.transport.kafka import KafkaConfig, KafkaTransport
from requests.adapters import HTTPAdapter

from contracts.openlineage import parse_openlineage_event
from contracts.topics import OPENLINEAGE
from services.lineage.adapters.repository import ReceivedRunEvent
from services.lineage.entrypoints.events_http import router as events_router
from services.lineage.entrypoints.http import MAX_EVENT_BYTES, decode_content, router
from services.lineage.entrypoints.kafka import EventRejected, decode_openlineage, parse_run_event
from services.runtime.errors import ContractViolation

PRODUCER = "https://github.com/acme/ml-pipelines"
RUN_ID = "0190f2b0-7c1e-7d2a-9b3c-4d5e6f708192"


# --- events as the client builds them ---------------------------------------------------------


def _version(v: str) -> dict[str, Any]:
    return {"version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=v)}


def _model(name: str, version: str) -> dict[str, Any]:
    return {
        **_version(version),
        "datasetType": dataset_type_dataset.DatasetTypeDatasetFacet(datasetType="MODEL"),
    }


def fine_tune(state: RunState = RunState.START, run_id: str = RUN_ID) -> RunEvent:
    return RunEvent(
        eventType=state,
        eventTime="2024-11-05T09:30:00.123456+00:00",
        run=Run(runId=run_id),
        job=Job(namespace="ml", name="chat.fine_tune"),
        producer=PRODUCER,
        inputs=[
            InputDataset(namespace="models://ml", name="base", facets=_model("base", "1")),
            InputDataset(namespace="s3://training", name="dialogues", facets=_version("v3")),
        ],
        outputs=[OutputDataset(namespace="models://ml", name="chat", facets=_model("chat", "1"))],
    )


def static_dataset() -> DatasetEvent:
    return DatasetEvent(
        eventTime="2024-11-05T09:30:00Z",
        producer=PRODUCER,
        dataset=StaticDataset(namespace="s3://training", name="dialogues"),
    )


def static_job() -> JobEvent:
    return JobEvent(
        eventTime="2024-11-05T09:30:00Z",
        producer=PRODUCER,
        job=Job(namespace="ml", name="chat.fine_tune"),
        inputs=[InputDataset(namespace="s3://training", name="dialogues")],
    )


class _Captured(HTTPAdapter):
    """The HTTP transport's requests, answered 201 without any network."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[requests.PreparedRequest] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        self.sent.append(request)
        response = requests.Response()
        response.status_code = 201
        response.raw = io.BytesIO(b"")
        response.request = request
        return response


def sent_over_http(event: Any, **config: Any) -> requests.PreparedRequest:
    adapter = _Captured()
    transport = HttpTransport(HttpConfig(url="http://lineage:8003", adapter=adapter, **config))
    OpenLineageClient(transport=transport).emit(event)
    (request,) = adapter.sent
    return request


class _CapturingKafkaTransport(KafkaTransport):
    """The client's KafkaTransport with ``produce`` captured instead of a librdkafka producer."""

    produced: list[dict[str, Any]]

    def _setup_producer(self, config: dict[str, Any]) -> None:
        self.produced = []
        transport = self

        class Producer:
            def produce(self, **kwargs: Any) -> None:
                transport.produced.append(kwargs)

            def flush(self, timeout: float = -1) -> int:
                return 0

        self.producer = Producer()  # type: ignore[assignment]


def sent_over_kafka(event: Any) -> dict[str, Any]:
    config = KafkaConfig(config={"bootstrap.servers": "unused:9092"}, topic=OPENLINEAGE.name)
    transport = _CapturingKafkaTransport(config)
    OpenLineageClient(transport=transport).emit(event)
    (record,) = transport.produced
    return record


def _body(request: requests.PreparedRequest) -> bytes:
    body = request.body
    return body.encode("utf-8") if isinstance(body, str) else bytes(body or b"")


# --- the HTTP transport ----------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, HttpCompression.GZIP])
def test_what_the_http_transport_sends_is_parsed_and_kept_byte_for_byte(
    compression: HttpCompression | None,
) -> None:
    request = sent_over_http(
        fine_tune(),
        compression=compression,
        auth=ApiKeyTokenProvider({"apiKey": "s3cr3t"}),
    )
    assert request.method == "POST"
    assert request.url == "http://lineage:8003/api/v1/lineage"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["Authorization"] == "Bearer s3cr3t"
    assert request.headers.get("Content-Encoding") == (compression and "gzip")

    received = decode_content(request.headers.get("Content-Encoding"), _body(request))
    event = parse_run_event(received, via="http")

    assert isinstance(event, ReceivedRunEvent)
    assert event.received == received and event.received_via == "http"
    assert event.model_dump(mode="json", by_alias=True, exclude_none=True) == json.loads(received)
    assert [(d.name, d.version, d.is_model) for d in event.inputs or ()] == [
        ("base", "1", True),
        ("dialogues", "v3", False),
    ]
    assert [(d.name, d.version, d.is_model) for d in event.outputs or ()] == [("chat", "1", True)]


def test_decode_content_undoes_gzip_members_and_identity() -> None:
    text = b'{"a": 1}'
    assert decode_content(None, text) == text
    assert decode_content("identity", text) == text
    assert decode_content("GZIP", gzip.compress(text)) == text
    assert decode_content("x-gzip", gzip.compress(text)) == text
    assert decode_content("gzip, gzip", gzip.compress(gzip.compress(text))) == text
    assert decode_content("gzip", gzip.compress(text[:4]) + gzip.compress(text[4:])) == text


# --- the Kafka transport ---------------------------------------------------------------------


def test_what_the_kafka_transport_writes_is_decoded_with_its_digest_as_id() -> None:
    record = sent_over_kafka(fine_tune(RunState.COMPLETE))
    assert record["topic"] == OPENLINEAGE.name
    assert record["key"] == "run:ml/chat.fine_tune"
    assert "headers" not in record, "the transport sends no headers"
    value: bytes = record["value"]

    event = decode_openlineage(
        OPENLINEAGE,
        value=value,
        headers=[],
        partition=3,
        offset=42,
        key=record["key"].encode(),
    )

    assert event.id == "ol:" + hashlib.sha256(value).hexdigest()
    assert event.envelope.source == PRODUCER
    assert isinstance(event.body, ReceivedRunEvent)
    assert event.body.received == value
    assert event.body.received_via == f"kafka:{OPENLINEAGE.name}/3@42"
    assert str(event.body.run.run_id) == RUN_ID
    assert event.body.model_dump(mode="json", by_alias=True, exclude_none=True) == json.loads(value)


def _decode(value: bytes | None) -> Any:
    return decode_openlineage(OPENLINEAGE, value=value, headers=[], partition=0, offset=0, key=None)


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (None, "tombstone"),
        (b"\xff not json", "Invalid JSON"),
        (b"[]", "Input should be an object"),
        (
            json.dumps({**json.loads(sent_over_kafka(fine_tune())["value"]), "run": {}}).encode(),
            "run.runId: Field required",
        ),
        (sent_over_kafka(static_dataset())["value"], "a DatasetEvent (OpenLineage static lineage)"),
        (sent_over_kafka(static_job())["value"], "a JobEvent (OpenLineage static lineage)"),
    ],
)
def test_a_bad_kafka_record_is_a_contract_violation_naming_the_problem(
    value: bytes | None, named: str
) -> None:
    with pytest.raises(ContractViolation, match=re.escape(named)):
        _decode(value)


# --- parsing: precise reasons ----------------------------------------------------------------


def client_json(event: Any) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(sent_over_kafka(event)["value"])
    return loaded


def _rejected(payload: Any) -> list[dict[str, Any]]:
    with pytest.raises(EventRejected) as caught:
        parse_run_event(json.dumps(payload).encode(), via="test")
    return caught.value.errors


def test_each_error_names_its_field_by_the_spec_names() -> None:
    event = client_json(fine_tune())

    bad_run_id = {**event, "run": {"runId": "not-a-uuid"}}
    assert _rejected(bad_run_id) == [
        {
            "loc": ["run", "runId"],
            "msg": "Value error, must be a UUID string (8-4-4-4-12 hex digits)",
            "type": "value_error",
        }
    ]

    no_job = {k: v for k, v in event.items() if k != "job"}
    assert [(e["loc"], e["type"]) for e in _rejected(no_job)] == [(["job"], "missing")]

    bad_time = {**event, "eventTime": "2024-11-05 09:30"}
    (error,) = _rejected(bad_time)
    assert error["loc"] == ["eventTime"] and "RFC 3339" in error["msg"]

    facet = event["inputs"][0]["facets"]["version"]
    no_producer = {k: v for k, v in facet.items() if k != "_producer"}
    inputs = [{**event["inputs"][0], "facets": {"version": no_producer}}, event["inputs"][1]]
    (error,) = _rejected({**event, "inputs": inputs})
    assert error["loc"] == ["inputs", 0, "facets"]
    assert "facet 'version' lacks the required '_producer'" in error["msg"]


def test_snake_case_names_are_not_the_spec_and_are_refused() -> None:
    event = client_json(fine_tune())
    snake = {**event, "run": {"run_id": RUN_ID}}
    assert [(e["loc"], e["type"]) for e in _rejected(snake)] == [(["run", "runId"], "missing")]


def test_static_lineage_is_refused_with_its_kind_named() -> None:
    for event, kind in ((static_dataset(), "DatasetEvent"), (static_job(), "JobEvent")):
        (error,) = _rejected(client_json(event))
        assert error["type"] == "unsupported_event_kind"
        assert error["msg"].startswith(f"a {kind} (OpenLineage static lineage) is not accepted")


def test_a_dataset_event_may_carry_a_run_and_is_still_static_lineage() -> None:
    event = {**client_json(static_dataset()), "run": {"runId": RUN_ID}}
    assert type(parse_openlineage_event(event)).__name__ == "DatasetEvent"
    (error,) = _rejected(event)
    assert error["type"] == "unsupported_event_kind" and "DatasetEvent" in error["msg"]


def _variants() -> Iterator[dict[str, Any]]:
    run = client_json(fine_tune())
    dataset = client_json(static_dataset())
    job = client_json(static_job())
    for base in (run, dataset, job):
        yield base
        for key in base:
            yield {k: v for k, v in base.items() if k != key}
        yield {**base, "run": run["run"]}
        yield {**base, "job": run["job"]}
        yield {**base, "dataset": dataset["dataset"]}
        yield {k: v for k, v in {**base, "dataset": dataset["dataset"]}.items() if k != "job"}


@pytest.mark.parametrize("payload", list(_variants()))
def test_a_run_event_is_accepted_exactly_when_the_spec_oneof_says_run_event(
    payload: dict[str, Any],
) -> None:
    try:
        expected: str | None = type(parse_openlineage_event(payload)).__name__
    except ValueError:
        expected = None
    try:
        parse_run_event(json.dumps(payload).encode(), via="test")
    except EventRejected as rejected:
        assert expected != "RunEvent", rejected
        if expected is not None and rejected.errors[0]["type"] == "unsupported_event_kind":
            assert expected in rejected.errors[0]["msg"]
    else:
        assert expected == "RunEvent"


def test_a_run_event_that_lost_its_run_is_told_so_not_called_a_job_event() -> None:
    event = client_json(fine_tune())
    without_run = {k: v for k, v in event.items() if k != "run"}
    (error,) = _rejected(without_run)
    assert error["loc"] == ["run"] and error["type"] == "missing"
    assert "meant as a RunEvent" in error["msg"]


def test_the_message_lists_at_most_ten_errors() -> None:
    errors = [
        {"loc": ["inputs", i, "name"], "msg": "Field required", "type": "missing"}
        for i in range(12)
    ]
    rejected = EventRejected(errors)
    assert str(rejected).count("Field required") == 10 and str(rejected).endswith("2 more")


# --- the HTTP route's refusals, in process ---------------------------------------------------


@pytest.fixture
def app() -> Iterator[FastAPI]:
    """The lineage routers with a runtime that has nothing: refusals never need it."""
    application = FastAPI()
    application.state.runtime = SimpleNamespace(database_connected=True)
    application.include_router(router)
    application.include_router(events_router)
    yield application


async def post(app: FastAPI, body: bytes, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://lineage") as client:
        return await client.post(
            "/api/v1/lineage",
            content=body,
            headers={"Content-Type": "application/json", **headers},
        )


def _json(payload: Any) -> bytes:
    return json.dumps(payload).encode()


async def test_a_bad_event_is_a_422_whose_loc_names_the_field(app: FastAPI) -> None:
    event = client_json(fine_tune())
    response = await post(app, _json({**event, "run": {"runId": "x"}}))
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "run", "runId"]
    assert "UUID" in error["msg"]

    gzipped = await post(
        app, gzip.compress(_json({**event, "job": {}})), **{"Content-Encoding": "gzip"}
    )
    assert gzipped.status_code == 422
    assert {tuple(e["loc"]) for e in gzipped.json()["detail"]} == {
        ("body", "job", "namespace"),
        ("body", "job", "name"),
    }


@pytest.mark.parametrize(
    ("body", "headers", "status", "says"),
    [
        (b"{", {}, 422, "Invalid JSON"),
        (b"[]", {}, 422, "Input should be an object"),
        (_json(client_json(static_dataset())), {}, 422, "DatasetEvent"),
        (_json(client_json(static_job())), {}, 422, "JobEvent"),
        (b"not gzip", {"Content-Encoding": "gzip"}, 400, "not valid gzip"),
        (gzip.compress(b"{}")[:-6], {"Content-Encoding": "gzip"}, 400, "ends before its end"),
        (b"{}", {"Content-Encoding": "br"}, 415, "'br' is not supported"),
        (b"{}", {"Content-Type": "text/plain"}, 415, "must be application/json"),
        (
            gzip.compress(b" " * (MAX_EVENT_BYTES + 1)),
            {"Content-Encoding": "gzip"},
            413,
            "larger than",
        ),
        (b" " * (MAX_EVENT_BYTES + 1), {}, 413, "larger than"),
    ],
)
async def test_refusals_say_why(
    app: FastAPI, body: bytes, headers: dict[str, str], status: int, says: str
) -> None:
    response = await post(app, body, **headers)
    assert response.status_code == status, response.text
    assert says in json.dumps(response.json()["detail"])
    if status == 415 and "Content-Encoding" in headers:
        assert response.headers["Accept-Encoding"] == "gzip, identity"


async def test_the_events_of_a_run_need_a_uuid_run_id(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://lineage") as client:
        missing = await client.get("/api/v1/lineage/events")
        bad = await client.get("/api/v1/lineage/events", params={"runId": "nope"})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["query", "runId"]
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "runId"]


def test_the_openapi_document_describes_the_body_as_a_run_event(app: FastAPI) -> None:
    body = app.openapi()["paths"]["/api/v1/lineage"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert {"eventTime", "producer", "schemaURL", "run", "job"} <= set(schema["required"])
    assert "$ref" not in json.dumps(schema), "self-contained: no $defs to resolve"
