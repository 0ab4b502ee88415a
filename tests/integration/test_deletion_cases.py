"""Legal's case API on the deletion service as a real process and real Postgres: opening
(idempotently), the workflow with its refusals (four eyes, holds, stale versions), deadline
extensions, urgency order, and an evidence bundle that verifies offline and fails tampered."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from services.deletion import verify_evidence
from services.runtime.testing import StartService

pytestmark = pytest.mark.integration

REQUESTER, APPROVER = "legal:ann", "legal:bob"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def api(start_service: StartService) -> AsyncIterator[httpx.AsyncClient]:
    service = start_service("deletion")
    await asyncio.to_thread(service.wait_ready)
    async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
        yield client


def erasure(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "subject_erasure",
        "legal_basis": "GDPR Art. 17",
        "regime": "gdpr",
        "requester": REQUESTER,
        "scope": {"subject_ids": [f"member-{uuid.uuid4().hex[:8]}"]},
    }
    body.update(overrides)
    return body


async def do(
    api: httpx.AsyncClient, case_id: str, command: str, actor: str, reason: str = "r"
) -> httpx.Response:
    return await api.post(
        f"/api/v1/cases/{case_id}/actions",
        json={"command": command, "actor": actor, "reason": reason},
    )


async def test_a_case_walks_its_workflow_and_refuses_what_it_must(
    api: httpx.AsyncClient,
) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    opened = await api.post("/api/v1/cases", json=erasure(), headers=key)
    assert opened.status_code == 201, opened.text
    case = opened.json()
    again = await api.post("/api/v1/cases", json=erasure(), headers=key)
    assert again.status_code == 200 and again.json()["case_id"] == case["case_id"]
    case_id = case["case_id"]
    assert case["state"] == "received" and 28 <= case["days_left"] <= 31

    for command, actor in (("start_scoping", REQUESTER), ("submit_scope", REQUESTER)):
        assert (await do(api, case_id, command, actor)).status_code == 200
    refused = await do(api, case_id, "approve", REQUESTER)
    assert refused.status_code == 409 and "four eyes" in refused.json()["detail"]

    held = await do(api, case_id, "hold", "legal:counsel", "litigation hold #12")
    assert held.json()["state"] == "on_hold"
    blocked = await do(api, case_id, "approve", APPROVER)
    assert blocked.status_code == 409 and "on hold" in blocked.json()["detail"]
    released = await do(api, case_id, "release", "legal:counsel")
    assert released.json()["state"] == "awaiting_approval"

    stale = await api.post(
        f"/api/v1/cases/{case_id}/actions",
        json={"command": "approve", "actor": APPROVER, "expected_version": 1},
    )
    assert stale.status_code == 409 and "version" in stale.json()["detail"]
    approved = await do(api, case_id, "approve", APPROVER)
    assert approved.json()["state"] == "approved" and approved.json()["approved_by"] == APPROVER

    detail = (await api.get(f"/api/v1/cases/{case_id}")).json()
    assert [h["to_state"] for h in detail["history"]] == [
        "received",
        "scoping",
        "awaiting_approval",
        "on_hold",
        "awaiting_approval",
        "approved",
    ]
    assert detail["evidence"]["entries"] == 6


async def test_the_deadline_extends_once_as_the_regime_allows(api: httpx.AsyncClient) -> None:
    received = datetime(2026, 1, 31, 10, tzinfo=UTC)
    case = (await api.post("/api/v1/cases", json=erasure(received_at=received.isoformat()))).json()
    assert case["deadline"].startswith("2026-02-28")
    path = f"/api/v1/cases/{case['case_id']}/extension"
    no_reason = await api.post(path, json={"actor": REQUESTER, "reason": " "})
    assert no_reason.status_code == 409 and "reason" in no_reason.json()["detail"]
    extended = await api.post(path, json={"actor": REQUESTER, "reason": "complex request"})
    assert extended.status_code == 200 and extended.json()["deadline"].startswith("2026-04-28")
    twice = await api.post(path, json={"actor": REQUESTER, "reason": "again"})
    assert twice.status_code == 409 and "once" in twice.json()["detail"]


async def test_overdue_and_near_due_cases_come_first(api: httpx.AsyncClient) -> None:
    now = datetime.now(UTC)
    later = (await api.post("/api/v1/cases", json=erasure())).json()
    near = (
        await api.post(
            "/api/v1/cases",
            json=erasure(regime="ccpa", received_at=(now - timedelta(days=40)).isoformat()),
        )
    ).json()
    overdue = (
        await api.post(
            "/api/v1/cases", json=erasure(received_at=(now - timedelta(days=40)).isoformat())
        )
    ).json()
    order = [c["case_id"] for c in (await api.get("/api/v1/cases")).json()]
    ids = [overdue["case_id"], near["case_id"], later["case_id"]]
    assert [i for i in order if i in ids] == ids
    assert overdue["days_left"] < 0 <= near["days_left"] <= 7


async def test_bad_requests_say_what_is_wrong(api: httpx.AsyncClient) -> None:
    missing = await api.post("/api/v1/cases", json=erasure(kind="dataset_purge"))
    assert missing.status_code == 422 and "scope.dataset" in missing.text
    unknown = await do(api, str(uuid.uuid4()), "approve", APPROVER)
    assert unknown.status_code == 404


async def test_the_evidence_bundle_verifies_offline_and_tampering_is_caught(
    api: httpx.AsyncClient, tmp_path: Path
) -> None:
    case_id = (await api.post("/api/v1/cases", json=erasure())).json()["case_id"]
    for command, actor in (("start_scoping", REQUESTER), ("reject", APPROVER)):
        assert (await do(api, case_id, command, actor, "out of scope")).status_code == 200
    bundle = await api.get(f"/api/v1/cases/{case_id}/evidence/bundle")
    assert bundle.status_code == 200
    assert "attachment" in bundle.headers["content-disposition"]
    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_bytes(bundle.content)
    bad.write_bytes(bundle.content.replace(b"out of scope", b"out of scopE"))
    script = Path(verify_evidence.__file__)

    def verify(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-I", str(script), str(path)],
            capture_output=True,
            text=True,
            check=False,
        )

    assert verify(good).returncode == 0
    assert verify(bad).returncode == 1
    entries = (await api.get(f"/api/v1/cases/{case_id}/evidence")).json()
    assert [e["kind"] for e in entries] == ["opened", "start_scoping", "reject"]
