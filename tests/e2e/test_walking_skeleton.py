"""One consent withdrawal walks consent → registry → lineage → deletion, four real processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.runtime.testing import ServiceProcess, migrate_service
from services.runtime.walkthrough import Stack, run

pytestmark = pytest.mark.e2e

NAMES = ("consent", "registry", "lineage", "deletion")


@pytest.fixture
def stack(
    make_database: Callable[[str], str],
    kafka_bootstrap: str,
    kafka_idempotence: bool,
    tmp_path: Path,
) -> Iterator[Stack]:
    services = []
    for name in NAMES:
        database = make_database(name)
        migrate_service(name, database)
        services.append(
            ServiceProcess(name, database, kafka_bootstrap, tmp_path, idempotence=kafka_idempotence)
        )
    try:
        for service in services:
            service.start()
        for service in services:
            service.wait_ready()
        yield Stack(*(s.url for s in services))
    finally:
        for service in services:
            service.stop()


async def test_a_withdrawal_reaches_every_service_under_one_trace(stack: Stack) -> None:
    lines: list[str] = []
    result = await asyncio.wait_for(run(stack, lines.append), timeout=60)

    trace_id = result["trace_id"]
    finding, flag, case = result["finding"], result["flag"], result["case"]
    assert finding["finding"]["severity"] == "destroy_required"
    assert finding["finding"]["reason"] == "later_withdrawal"
    assert finding["finding"]["affected_records"] == 1
    assert flag["flag"]["finding_id"] == finding["finding"]["finding_id"]
    path = flag["flag"]["evidence_path"]
    assert path[0].startswith("dataset:s3://training:messages-") and path[1].startswith("run:")
    assert (
        path[-1] == f"model:{flag['flag']['model']['namespace']}:{flag['flag']['model']['name']}#1"
    )
    assert case["kind"] == "model_destruction" and case["state"] == "received"
    assert case["scope"]["flag_ids"] == [flag["flag"]["flag_id"]]
    assert finding["trace_id"] == flag["trace_id"] == case["trace_id"] == trace_id
    assert any("one trace across the four services: True" in line for line in lines)
