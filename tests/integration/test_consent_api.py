"""The consent service as a real process on a fresh database and the session's broker:
single and batch intake, idempotency, GPC, bitemporal reads, the legal export, and the
events on ``consent.events.v1``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from contracts.topics import CONSENT_EVENTS
from services.runtime.testing import ServiceProcess, StartService, collect, header

pytestmark = pytest.mark.integration

T0 = datetime(2024, 8, 1, tzinfo=UTC)
GPC = {"Sec-GPC": "1"}


def change(subject: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subject_id": subject,
        "jurisdiction": "US-CA",
        "purpose": "ai.training.generative",
        "data_categories": ["user.content.public"],
        "state": "granted",
        "mechanism": "explicit_opt_in",
        "policy_version": "it:1",
        "effective_at": T0.isoformat(),
        "source_system": "settings",
        "evidence": {"collection_point": "settings/genai", "channel": "web"},
    }
    body.update(overrides)
    return body


def policy(policy_id: str, version: str = "1") -> dict[str, Any]:
    """US-CA: a GPC signal withdraws sale/sharing of all data and generative training on
    public content; elsewhere GPC has no effect.

    The id is the test's own: every test of the session shares the broker, and the other
    services read ``consent.policies.v1`` from the beginning.
    """
    return {
        "policy_id": policy_id,
        "version": version,
        "valid_from": "2024-01-01T00:00:00Z",
        "rules": [
            {
                "id": "us-content",
                "jurisdictions": ["US"],
                "purposes": ["ai.training"],
                "data_categories": ["user.content"],
                "lawful_bases": [{"mechanism": "explicit_opt_in"}],
            }
        ],
        "gpc": [
            {
                "jurisdictions": ["US-CA"],
                "purposes": ["marketing.advertising.sharing"],
                "data_categories": ["user"],
            },
            {
                "jurisdictions": ["US-CA"],
                "purposes": ["ai.training.generative"],
                "data_categories": ["user.content.public"],
            },
        ],
    }


@pytest.fixture
async def consent(start_service: StartService) -> AsyncIterator[tuple[ServiceProcess, Any]]:
    service = await asyncio.to_thread(lambda: start_service("consent").wait_ready())
    db = await asyncpg.connect(service.admin_dsn)
    try:
        yield service, db
    finally:
        await db.close()


async def rows(db: Any, subject: str) -> int:
    return int(
        await db.fetchval("SELECT count(*) FROM consent_events WHERE subject_id = $1", subject)
    )


async def test_intake_single_and_batch_all_or_nothing_and_idempotent(
    consent: tuple[ServiceProcess, Any], kafka_bootstrap: str
) -> None:
    service, db = consent
    subject = f"it-{uuid.uuid4().hex[:10]}"
    async with httpx.AsyncClient(base_url=service.url, timeout=20) as client:
        single = await client.post("/api/v1/consent-events", json=change(subject))
        assert single.status_code == 201, single.text
        assert single.json()["gpc_withdrawals"] == []

        batch = {
            "changes": [
                change(subject, purpose="analytics", data_categories=["user.behavior"]),
                change(subject, state="withdrawn", mechanism="opt_out", data_categories=["user"]),
                change(subject, purpose="marketing.advertising", data_categories=["user.contact"]),
            ]
        }
        key = {"Idempotency-Key": f"batch-{uuid.uuid4()}"}
        first = await client.post("/api/v1/consent-events/batch", json=batch, headers=key)
        assert first.status_code == 201, first.text
        assert first.json()["count"] == 3 and first.json()["replayed"] is False
        ids = [e["consent_event_id"] for e in first.json()["events"]]
        assert await rows(db, subject) == 4

        replay = await client.post("/api/v1/consent-events/batch", json=batch, headers=key)
        assert replay.status_code == 200, replay.text
        assert replay.json()["replayed"] is True
        assert [e["consent_event_id"] for e in replay.json()["events"]] == ids
        assert await rows(db, subject) == 4  # nothing recorded twice

        other = {"changes": batch["changes"][:2]}
        conflict = await client.post("/api/v1/consent-events/batch", json=other, headers=key)
        assert conflict.status_code == 409, conflict.text
        assert "already used for a different batch" in conflict.json()["detail"]

        bad = {
            "changes": [
                change(subject, purpose="analytics"),
                change(subject, data_categories=["user.contents"]),
                change(subject, jurisdiction="california"),
                change(subject, effective_at=(datetime.now(UTC) + timedelta(hours=1)).isoformat()),
            ]
        }
        invalid = await client.post("/api/v1/consent-events/batch", json=bad)
        assert invalid.status_code == 422, invalid.text
        errors = {e["index"]: e["reason"] for e in invalid.json()["detail"]["errors"]}
        assert sorted(errors) == [1, 2, 3]
        assert "unknown data category 'user.contents'" in errors[1]
        assert "did you mean 'user.content'" in errors[1]
        assert errors[2].startswith("jurisdiction:")
        assert "in the future" in errors[3]
        assert "nothing was recorded" in invalid.json()["detail"]["message"]
        assert await rows(db, subject) == 4

        unknown = await client.post(
            "/api/v1/consent-events", json=change(subject, purpose="ai.trainingx")
        )
        assert unknown.status_code == 422
        assert "unknown purpose 'ai.trainingx'" in unknown.json()["detail"]
        future = await client.post(
            "/api/v1/consent-events",
            json=change(subject, effective_at=(datetime.now(UTC) + timedelta(days=1)).isoformat()),
        )
        assert future.status_code == 422 and "in the future" in future.json()["detail"]
        too_many = await client.post(
            "/api/v1/consent-events/batch", json={"changes": [change(subject)] * 1001}
        )
        assert too_many.status_code == 422 and "1 to 1000" in too_many.json()["detail"]["message"]
        with_gpc = await client.post("/api/v1/consent-events/batch", json=batch, headers=GPC)
        assert with_gpc.status_code == 400
        assert await rows(db, subject) == 4

    records = await collect(
        kafka_bootstrap,
        CONSENT_EVENTS.name,
        lambda r: r.key == subject.encode(),
        expected=4,
        within=20,
        settle=0.5,
    )
    assert len(records) == 4
    assert {header(r, "ce_id") for r in records} == {single.json()["consent_event_id"], *ids}
    assert all(header(r, "ce_subject") == subject for r in records)


async def test_gpc_bitemporal_state_and_export(consent: tuple[ServiceProcess, Any]) -> None:
    service, db = consent
    subject = f"it-{uuid.uuid4().hex[:10]}"
    async with httpx.AsyncClient(base_url=service.url, timeout=20) as client:
        policy_id = f"it-gpc-{uuid.uuid4().hex[:8]}"
        published = await client.post("/api/v1/policies", json=policy(policy_id))
        assert published.status_code == 201, published.text
        misspelt = policy(policy_id, version="2")
        misspelt["gpc"][0]["data_categories"] = ["user.contents"]
        refused = await client.post("/api/v1/policies", json=misspelt)
        assert refused.status_code == 422 and "gpc[0]" in refused.json()["detail"]

        # A grant, then the same subject's browser request carrying Sec-GPC: 1.
        grant = await client.post("/api/v1/consent-events", json=change(subject))
        assert grant.status_code == 201, grant.text
        known_before_gpc = datetime.now(UTC)
        key = {"Idempotency-Key": f"gpc-{uuid.uuid4()}"}
        withdraw = change(
            subject,
            purpose="analytics",
            data_categories=["user.behavior"],
            state="withdrawn",
            mechanism="opt_out",
            effective_at=datetime.now(UTC).isoformat(),
            evidence={"collection_point": "banner", "user_agent": "Firefox/128.0"},
        )
        with_gpc = await client.post(
            "/api/v1/consent-events", json=withdraw, headers={**GPC, **key}
        )
        assert with_gpc.status_code == 201, with_gpc.text
        gpc_events = with_gpc.json()["gpc_withdrawals"]
        assert sorted((e["purpose"], tuple(e["data_categories"])) for e in gpc_events) == [
            ("ai.training.generative", ("user.content.public",)),
            ("marketing.advertising.sharing", ("user",)),
        ]
        assert all(e["mechanism"] == "gpc_signal" and e["state"] == "withdrawn" for e in gpc_events)
        assert all(e["evidence"]["channel"] == "gpc" for e in gpc_events)
        assert all(e["evidence"]["user_agent"] == "Firefox/128.0" for e in gpc_events)
        assert all(e["policy_version"] == f"{policy_id}:1" for e in gpc_events)
        assert await rows(db, subject) == 4
        again = await client.post("/api/v1/consent-events", json=withdraw, headers={**GPC, **key})
        assert again.status_code == 200
        assert [e["consent_event_id"] for e in again.json()["gpc_withdrawals"]] == [
            e["consent_event_id"] for e in gpc_events
        ]
        assert await rows(db, subject) == 4

        # The GPC endpoint: the header is required; outside US-CA nothing is covered.
        body = {"jurisdiction": "US-CA", "source_system": "edge", "evidence": {"user_agent": "UA"}}
        missing = await client.post(f"/api/v1/subjects/{subject}/gpc", json=body)
        assert missing.status_code == 400 and "Sec-GPC: 1" in missing.json()["detail"]
        wrong = await client.post(
            f"/api/v1/subjects/{subject}/gpc", json=body, headers={"Sec-GPC": "0"}
        )
        assert wrong.status_code == 400
        elsewhere = await client.post(
            f"/api/v1/subjects/{subject}/gpc", json={**body, "jurisdiction": "DE"}, headers=GPC
        )
        assert elsewhere.status_code == 200, elsewhere.text
        assert elsewhere.json()["covered"] is False and elsewhere.json()["withdrawals"] == []
        assert "nothing was recorded" in elsewhere.json()["message"]
        edge_key = {**GPC, "Idempotency-Key": f"edge-{uuid.uuid4()}"}
        signal = await client.post(f"/api/v1/subjects/{subject}/gpc", json=body, headers=edge_key)
        assert signal.status_code == 201, signal.text
        assert signal.json()["covered"] is True and len(signal.json()["withdrawals"]) == 2
        assert signal.json()["policies"] == [f"{policy_id}:1"]
        assert await rows(db, subject) == 6
        retry = await client.post(f"/api/v1/subjects/{subject}/gpc", json=body, headers=edge_key)
        assert retry.status_code == 200 and retry.json()["replayed"] is True
        assert retry.json()["withdrawals"] == signal.json()["withdrawals"]
        assert await rows(db, subject) == 6

        # Bitemporal: before the GPC request was recorded, the grant was in force.
        state_url = f"/api/v1/subjects/{subject}/consent"
        valid = datetime.now(UTC).isoformat()
        then = await client.get(
            state_url, params={"valid_at": valid, "known_at": known_before_gpc.isoformat()}
        )
        now = await client.get(state_url, params={"valid_at": valid})
        assert then.status_code == now.status_code == 200, then.text

        def genai(response: httpx.Response) -> dict[str, Any]:
            return next(
                c
                for c in response.json()["consents"]
                if (c["purpose"], c["data_category"])
                == ("ai.training.generative", "user.content.public")
            )

        assert genai(then)["state"] == "granted"
        assert genai(now)["state"] == "withdrawn" and genai(now)["mechanism"] == "gpc_signal"
        assert grant.json()["consent_event_id"] in genai(now)["superseded"]
        assert "gpc_signal" in genai(now)["explanation"]
        naive = await client.get(state_url, params={"valid_at": "2024-09-01T00:00:00"})
        assert naive.status_code == 422 and "no UTC offset" in naive.text
        plus_lost = await client.get(f"{state_url}?valid_at=2024-09-01T00:00:00+00:00")
        assert plus_lost.status_code == 200, plus_lost.text

        history = await client.get(
            f"/api/v1/subjects/{subject}/consent-events",
            params={"known_at": known_before_gpc.isoformat()},
        )
        assert [e["consent_event_id"] for e in history.json()] == [grant.json()["consent_event_id"]]
        everything = await client.get(f"/api/v1/subjects/{subject}/consent-events")
        assert len(everything.json()) == 6
        valid_times = [e["effective_at"] for e in everything.json()]
        assert valid_times == sorted(valid_times, key=datetime.fromisoformat)

        # The export for legal.
        export = await client.get(f"/api/v1/subjects/{subject}/export")
        assert export.status_code == 200, export.text
        document = export.json()
        assert document["subject_id"] == subject and len(document["events"]) == 6
        assert [(p["policy_id"], p["version"]) for p in document["policy_versions"]] == [
            (policy_id, "1")
        ]
        assert document["state"] and document["generated_at"]
        page = await client.get(f"/api/v1/subjects/{subject}/export", params={"format": "html"})
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert subject in page.text and "gpc_signal" in page.text and "<table>" in page.text
        missing_subject = await client.get("/api/v1/subjects/nobody-here/export")
        assert missing_subject.status_code == 404

        openapi = (await client.get("/openapi.json")).json()
        schemas = openapi["components"]["schemas"]
        for name in ("ConsentBatchRequest", "ConsentChangeRequest", "GpcResponse"):
            assert name in schemas
        refs = {
            ref.rsplit("/", 1)[1]
            for ref in _refs(openapi)
            if ref.startswith("#/components/schemas/")
        }
        assert refs <= set(schemas)


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []
