"""Lineage graph queries on a real lineage process (real broker and Postgres): a small graph
reported as OpenLineage RunEvents over ``POST /api/v1/lineage``, then walked over
``GET /api/v1/lineage/graph`` (depth limits, directions, as-of excluding later edges, node
ids, 404/422) and drawn over ``graph.svg``/``graph.png`` with a flagged model marked.

The graph (times are event times, T0 = 2025-04-01 06:00Z)::

    raw#v1 ─A (etl, T0)─► clean#v1 ─B (train, T0+1h)─► clf#1 ─C (tune, T0+2h)─► clf-ft#1
       └──D (etl, T0+3h)─► clean#v2                          extra#v2 ─┘
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.openlineage import SPEC_URL
from contracts.topics import FINDINGS
from services.runtime.messages import encode_event
from services.runtime.testing import ServiceProcess, dataset_finding, migrate_service, produce

pytestmark = pytest.mark.integration

T0 = datetime(2025, 4, 1, 6, 0, tzinfo=UTC)
PRODUCER = "https://github.com/acme/ml-pipelines"
CLIENT = "https://github.com/OpenLineage/OpenLineage/tree/1.54.0/client/python"
TAG = uuid.uuid4().hex[:8]
LAKE, MODELS, JOBS = f"s3://lake-{TAG}", f"models://ml-{TAG}", f"ml-{TAG}"


def run_id(label: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{TAG}/{label}"))


RAW = f"dataset:{LAKE}:raw#v1"
CLEAN = f"dataset:{LAKE}:clean#v1"
CLEAN2 = f"dataset:{LAKE}:clean#v2"
EXTRA = f"dataset:{LAKE}:extra#v2"
CLF = f"model:{MODELS}:clf#1"
CLF_FT = f"model:{MODELS}:clf-ft#1"
A, B, C, D = (f"run:{run_id(x)}" for x in "ABCD")
JOB_ETL = f"job:{JOBS}:etl"


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


def event(
    label: str, job: str, at: datetime, inputs: list[dict[str, Any]], outputs: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "eventTime": at.isoformat().replace("+00:00", "Z"),
        "eventType": "COMPLETE",
        "producer": PRODUCER,
        "schemaURL": f"{SPEC_URL}#/$defs/RunEvent",
        "run": {"runId": run_id(label), "facets": {}},
        "job": {"namespace": JOBS, "name": job},
        "inputs": inputs,
        "outputs": outputs,
    }


def graph_events() -> list[dict[str, Any]]:
    raw, clean = dataset(LAKE, "raw", "v1"), dataset(LAKE, "clean", "v1")
    clean2, extra = dataset(LAKE, "clean", "v2"), dataset(LAKE, "extra", "v2")
    clf = dataset(MODELS, "clf", "1", model=True)
    clf_ft = dataset(MODELS, "clf-ft", "1", model=True)
    hour = timedelta(hours=1)
    return [
        event("A", "etl", T0, [raw], [clean]),
        event("B", "train", T0 + hour, [clean], [clf]),
        event("C", "tune", T0 + 2 * hour, [clf, extra], [clf_ft]),
        event("D", "etl", T0 + 3 * hour, [raw], [clean2]),
    ]


@pytest.fixture(scope="module")
def lineage(
    make_database: Callable[[str], str],
    kafka_bootstrap: str,
    kafka_idempotence: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    db = make_database("lineage_graph")
    migrate_service("lineage", db)
    service = ServiceProcess(
        "lineage",
        db,
        kafka_bootstrap,
        Path(tmp_path_factory.mktemp("lineage-graph")),
        idempotence=kafka_idempotence,
    ).start()
    try:
        service.wait_ready()
        with httpx.Client(base_url=service.url, timeout=10) as http:
            probe = http.get("/api/v1/lineage/graph")
            if probe.status_code == 404:
                pytest.fail(
                    "the lineage graph router is not mounted: add"
                    " services.lineage.entrypoints.graph_http.router to SPEC.routers in"
                    " services/lineage/app.py"
                )
            for body in graph_events():
                response = http.post("/api/v1/lineage", json=body)
                assert response.status_code in (200, 201), response.text
        yield service
    finally:
        service.stop()


async def get(
    service: ServiceProcess, path: str = "/api/v1/lineage/graph", **params: Any
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
        return await http.get(path, params=params)


async def graph(service: ServiceProcess, node: str, **params: Any) -> dict[str, dict[str, Any]]:
    response = await get(service, nodeId=node, **params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    nodes = response.json()["graph"]
    assert [n["id"] for n in nodes] == sorted(n["id"] for n in nodes)
    by_id = {n["id"]: n for n in nodes}
    for n in nodes:  # every edge is on both of its ends, inside the graph
        for e in n["outEdges"]:
            assert e["origin"] == n["id"]
            assert e in by_id[e["destination"]]["inEdges"]
        for e in n["inEdges"]:
            assert e["destination"] == n["id"]
            assert e in by_id[e["origin"]]["outEdges"]
    return by_id


def edges(nodes: dict[str, dict[str, Any]]) -> set[tuple[str, str]]:
    return {(e["origin"], e["destination"]) for n in nodes.values() for e in n["outEdges"]}


async def test_downstream_of_a_dataset_version_follows_every_run_to_the_models(
    lineage: ServiceProcess,
) -> None:
    nodes = await graph(lineage, RAW, direction="downstream")
    assert set(nodes) == {RAW, A, CLEAN, B, CLF, C, CLF_FT, D, CLEAN2}
    assert edges(nodes) == {
        (RAW, A), (A, CLEAN), (CLEAN, B), (B, CLF), (CLF, C), (C, CLF_FT), (RAW, D), (D, CLEAN2)
    }  # fmt: skip
    assert {n["type"] for n in nodes.values()} == {"DATASET", "RUN", "MODEL"}
    assert nodes[CLF]["type"] == "MODEL" and nodes[CLEAN]["type"] == "DATASET"
    assert nodes[CLF]["data"] | {"flags": [], "findings": []} == {
        "id": {"namespace": MODELS, "name": "clf", "version": "1"},
        "type": "MODEL",
        "namespace": MODELS,
        "name": "clf",
        "version": "1",
        "flagged": False,
        "flags": [],
        "findings": [],
        "status": None,
    }
    run = nodes[B]["data"]
    assert run["id"] == run_id("B") and run["job"] == {"namespace": JOBS, "name": "train"}
    assert run["jobId"] == f"job:{JOBS}:train" and run["state"] == "COMPLETE"
    assert datetime.fromisoformat(run["startedAt"]) == T0 + timedelta(hours=1)


async def test_depth_counts_runs(lineage: ServiceProcess) -> None:
    assert set(await graph(lineage, RAW, direction="downstream", depth=0)) == {RAW}
    assert set(await graph(lineage, RAW, direction="downstream", depth=1)) == {
        RAW, A, CLEAN, D, CLEAN2
    }  # fmt: skip
    two = await graph(lineage, RAW, direction="downstream", depth=2)
    assert set(two) == {RAW, A, CLEAN, D, CLEAN2, B, CLF}


async def test_upstream_and_both(lineage: ServiceProcess) -> None:
    up = await graph(lineage, CLF_FT, direction="upstream")
    assert set(up) == {CLF_FT, C, CLF, EXTRA, B, CLEAN, A, RAW}
    assert (EXTRA, C) in edges(up)
    both = await graph(lineage, CLEAN, depth=1)  # direction defaults to both
    assert set(both) == {CLEAN, A, RAW, B, CLF}
    assert edges(both) == {(RAW, A), (A, CLEAN), (CLEAN, B), (B, CLF)}


async def test_as_of_keeps_only_edges_reported_by_then(lineage: ServiceProcess) -> None:
    at = (T0 + timedelta(minutes=90)).isoformat()
    nodes = await graph(lineage, RAW, direction="downstream", asOf=at)
    assert set(nodes) == {RAW, A, CLEAN, B, CLF}
    later = await get(lineage, nodeId=RAW, asOf=(T0 - timedelta(minutes=1)).isoformat())
    assert later.status_code == 404 and "as of" in later.json()["detail"]


async def test_run_and_job_nodes(lineage: ServiceProcess) -> None:
    nodes = await graph(lineage, C, depth=1)
    assert set(nodes) == {C, CLF, EXTRA, CLF_FT}
    assert edges(nodes) == {(CLF, C), (EXTRA, C), (C, CLF_FT)}
    assert set(await graph(lineage, C, depth=0)) == {C}
    job = await graph(lineage, JOB_ETL, direction="downstream", depth=1)
    assert set(job) == {JOB_ETL, A, D, CLEAN, CLEAN2}
    assert job[JOB_ETL]["type"] == "JOB"
    assert {e["destination"] for e in job[JOB_ETL]["outEdges"]} == {A, D}
    # A dataset named without a version: every version of it.
    every = await graph(lineage, f"dataset:{LAKE}:clean", direction="downstream", depth=1)
    assert set(every) == {CLEAN, CLEAN2, B, CLF}


async def test_unknown_nodes_are_404_and_bad_parameters_422(lineage: ServiceProcess) -> None:
    for node in (f"dataset:{LAKE}:nope#v1", f"run:{uuid.uuid4()}", f"job:{JOBS}:nope"):
        response = await get(lineage, nodeId=node)
        assert response.status_code == 404, (node, response.text)
    bad: list[dict[str, Any]] = [
        {"nodeId": "table:x:y"},
        {"nodeId": "run:not-a-uuid"},
        {"nodeId": "dataset:nonamespace"},
        {"nodeId": RAW, "depth": -1},
        {"nodeId": RAW, "depth": 65},
        {"nodeId": RAW, "direction": "sideways"},
        {"nodeId": RAW, "asOf": "2025-04-01T06:00:00"},
        {},
    ]
    for params in bad:
        response = await get(lineage, **params)
        assert response.status_code == 422, (params, response.text)


async def wait_for(probe: Callable[[], Awaitable[bool]], what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not await probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.2)


async def test_flagged_models_are_marked_in_data_and_picture(
    lineage: ServiceProcess, kafka_bootstrap: str
) -> None:
    finding = dataset_finding(
        (LAKE, "raw", "v1"),
        policy_id="genai-2024",
        rule="private messages without explicit opt-in",
        affected_records=3,
    )
    message = encode_event(FINDINGS, finding, key=finding.dataset.key, source="/test/registry")
    await produce(
        kafka_bootstrap, FINDINGS.name, [(message.key, message.value, list(message.headers))]
    )

    async def flagged() -> bool:
        nodes = await graph(lineage, RAW, direction="downstream")
        return nodes[CLF]["data"]["flagged"] and nodes[CLF_FT]["data"]["flagged"]

    await wait_for(flagged, "both models flagged")
    nodes = await graph(lineage, RAW, direction="downstream")
    assert nodes[CLF]["data"]["flags"] == [
        {
            "findingId": str(finding.finding_id),
            "severity": "destroy_required",
            "reason": "improper_use",
        }
    ]
    assert nodes[RAW]["data"]["findings"][0]["severity"] == "destroy_required"
    assert not nodes[RAW]["data"]["flagged"] and not nodes[CLEAN]["data"]["flagged"]

    svg = await get(lineage, "/api/v1/lineage/graph.svg", nodeId=RAW, direction="downstream")
    png = await get(lineage, "/api/v1/lineage/graph.png", nodeId=RAW, depth=1)
    if shutil.which("dot") is None:  # the service runs on this machine: same PATH
        assert svg.status_code == 503 and "graphviz" in svg.json()["detail"].lower()
        assert png.status_code == 503
        pytest.skip("Graphviz dot is not installed: pictures answered 503 as they should")
    assert svg.status_code == 200, svg.text
    assert svg.headers["content-type"] == "image/svg+xml"
    text = svg.text
    assert "<svg" in text and "destroy_required" in text
    assert text.count('fill="#f4a6a6"') == 2  # the two flagged models, filled red
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG")
    missing = await get(lineage, "/api/v1/lineage/graph.svg", nodeId=f"run:{uuid.uuid4()}")
    assert missing.status_code == 404
