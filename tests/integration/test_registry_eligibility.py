"""The registry's eligibility API on the real service process, broker and Postgres: the
pre-flight filter (eligible lines byte for byte, the summary, bad lines) and one record
explained (decisions, rules, deciding events, ``known_at``, the dataset-version form, 404s).

One registry process serves the module. Policies and consent events go through Kafka, as
in production; the broker is shared with other tests, so every policy, purpose and subject
here carries this module's tag (its purposes sit under a root no other test uses, so no
other test's policy speaks to them).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from contracts.events import ConsentEvent, ConsentEvidence, PolicyChange
from contracts.policy import DefaultConsent, LawfulBasis, PolicyDocument, PolicyRule
from contracts.topics import CONSENT_EVENTS, POLICIES
from contracts.vocabulary import ConsentMechanism, ConsentState
from services.runtime.messages import encode_event
from services.runtime.testing import ServiceProcess, migrate_service, produce

pytestmark = pytest.mark.integration

FILTER = "/api/v1/eligibility/filter"
NDJSON = {"Content-Type": "application/x-ndjson"}
T0 = datetime(2024, 1, 1, tzinfo=UTC)
GRANTED_AT = datetime(2025, 1, 1, tzinfo=UTC)
BETWEEN = datetime(2025, 1, 15, tzinfo=UTC)
WITHDRAWN_AT = datetime(2025, 2, 1, tzinfo=UTC)
REREAD_AT = datetime(2025, 3, 1, tzinfo=UTC)
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


@dataclass
class World:
    """What the module published and registered, and a client on the registry."""

    tag: str
    purpose: str
    policy_a: str
    policy_b: str
    events: dict[str, ConsentEvent]
    client: httpx.AsyncClient
    db: asyncpg.Pool
    service: ServiceProcess

    def subject(self, name: str) -> str:
        return f"{self.tag}-{name}"


def record(
    world_tag: str,
    record_id: str,
    subject: str,
    category: str = "user.content",
    jurisdiction: str = "US",
) -> dict[str, Any]:
    return {
        "record_id": f"{world_tag}-{record_id}",
        "source_system": "inbox",
        "subject_id": f"{world_tag}-{subject}",
        "category": category,
        "jurisdiction": jurisdiction,
        "collected_at": "2024-08-01T12:00:00Z",
        "content_digest": "sha256:" + hashlib.sha256(record_id.encode()).hexdigest(),
    }


def policies(tag: str, purpose: str) -> list[tuple[PolicyDocument, datetime]]:
    """Policy A: US default-on (v1, and v2 a re-reading published later); the EU needs an
    explicit opt-in. Policy B: allows by default, except contact data (no lawful basis)."""

    def a(version: str, note: str) -> PolicyDocument:
        return PolicyDocument(
            policy_id=f"pre-{tag}-a",
            version=version,
            valid_from=T0,
            rules=(
                PolicyRule(
                    id="us-default-on",
                    jurisdictions=("US",),
                    purposes=(purpose,),
                    data_categories=("user",),
                    lawful_bases=(
                        LawfulBasis(mechanism=ConsentMechanism.EXPLICIT_OPT_IN),
                        LawfulBasis(mechanism=ConsentMechanism.DEFAULT_SETTING),
                    ),
                    default=DefaultConsent(),
                    description=f"US: on unless opted out ({note})",
                ),
                PolicyRule(
                    id="eu-opt-in",
                    jurisdictions=("EU",),
                    purposes=(purpose,),
                    data_categories=("user",),
                    lawful_bases=(LawfulBasis(mechanism=ConsentMechanism.EXPLICIT_OPT_IN),),
                    description="EU: explicit opt-in only",
                ),
            ),
        )

    b = PolicyDocument(
        policy_id=f"pre-{tag}-b",
        version="1",
        valid_from=T0,
        rules=(
            PolicyRule(
                id="anything-by-default",
                jurisdictions=("*",),
                purposes=(purpose,),
                data_categories=("user",),
                lawful_bases=(
                    LawfulBasis(mechanism=ConsentMechanism.EXPLICIT_OPT_IN),
                    LawfulBasis(mechanism=ConsentMechanism.DEFAULT_SETTING),
                ),
                default=DefaultConsent(),
            ),
            PolicyRule(
                id="no-contact-data",
                jurisdictions=("*",),
                purposes=(purpose,),
                data_categories=("user.contact",),
                description="contact data is never used for this",
            ),
        ),
    )
    return [(a("1", "first reading"), T0), (a("2", "re-read"), REREAD_AT), (b, T0)]


def consent(
    tag: str, subject: str, state: ConsentState, at: datetime, purpose: str, n: int
) -> ConsentEvent:
    return ConsentEvent(
        consent_event_id=uuid.uuid5(uuid.NAMESPACE_URL, f"{tag}-{n}"),
        subject_id=f"{tag}-{subject}",
        jurisdiction="US",
        purpose=purpose,
        data_categories=("user",),
        state=state,
        mechanism=ConsentMechanism.EXPLICIT_OPT_IN
        if state is ConsentState.GRANTED
        else ConsentMechanism.OPT_OUT,
        policy_version="1",
        effective_at=at,
        recorded_at=at,
        source_system="test",
        evidence=ConsentEvidence(collection_point="test"),
    )


def kafka_record(topic: Any, body: Any, key: str) -> Record:
    message = encode_event(topic, body, key=key, source="/test")
    return message.key, message.value, list(message.headers)


async def wait_for(probe: Callable[[], Any], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def world(
    make_database: Callable[[str], str],
    kafka_bootstrap: str,
    kafka_idempotence: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[World]:
    tag = f"el{uuid.uuid4().hex[:8]}"
    purpose = f"{tag}.training"
    db_url = make_database("registry")
    migrate_service("registry", db_url)
    log_dir: Path = tmp_path_factory.mktemp("registry-eligibility")
    service = ServiceProcess(
        "registry", db_url, kafka_bootstrap, log_dir, idempotence=kafka_idempotence
    ).start()
    try:
        versions = policies(tag, purpose)
        events = {
            "grant": consent(tag, "gone", ConsentState.GRANTED, GRANTED_AT, purpose, 1),
            "withdrawal": consent(tag, "gone", ConsentState.WITHDRAWN, WITHDRAWN_AT, purpose, 2),
            "opt-in": consent(tag, "de-yes", ConsentState.GRANTED, GRANTED_AT, purpose, 3),
        }
        await produce(
            kafka_bootstrap,
            POLICIES.name,
            [
                kafka_record(POLICIES, PolicyChange(policy=d, published_at=p), d.policy_id)
                for d, p in versions
            ],
        )
        await produce(
            kafka_bootstrap,
            CONSENT_EVENTS.name,
            [kafka_record(CONSENT_EVENTS, e, e.subject_id) for e in events.values()],
        )
        db = await asyncpg.create_pool(db_url, min_size=1, max_size=2)

        async def projected() -> bool:
            known_policies = await db.fetchval(
                "SELECT count(*) FROM policy_versions WHERE policy_id LIKE $1", f"pre-{tag}-%"
            )
            known_events = await db.fetchval(
                "SELECT count(*) FROM consent_projection WHERE subject_id LIKE $1", f"{tag}-%"
            )
            return bool(known_policies == len(versions) and known_events == len(events))

        try:
            await wait_for(projected, 90, f"the registry to project (log: {service.log_path})")
            async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
                yield World(
                    tag=tag,
                    purpose=purpose,
                    policy_a=f"pre-{tag}-a",
                    policy_b=f"pre-{tag}-b",
                    events=events,
                    client=client,
                    db=db,
                    service=service,
                )
        finally:
            await db.close()
    finally:
        service.stop()


def line(body: dict[str, Any], *, spaced: bool = False) -> bytes:
    """A record as one NDJSON line; ``spaced``: keys reversed and loose whitespace, to see
    that the answer echoes the bytes sent, not a re-serialisation."""
    if spaced:
        return (
            "{ " + " , ".join(f'"{k}" : {json.dumps(v)}' for k, v in reversed(body.items())) + " }"
        ).encode()
    return json.dumps(body).encode()


async def in_pieces(data: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# --- the pre-flight filter --------------------------------------------------------------


def mixed(tag: str, copies: int = 1) -> tuple[list[bytes], list[bytes], dict[str, int]]:
    """(lines, the eligible ones, excluded counts by reason)."""
    lines: list[bytes] = []
    eligible: list[bytes] = []
    excluded: dict[str, int] = {}
    for i in range(copies):
        cases: list[tuple[dict[str, Any], str | None]] = [
            (record(tag, f"us-{i}", f"plain-{i}"), None),  # US default-on, both agree
            (record(tag, f"gone-{i}", "gone"), "withdrawn"),
            (record(tag, f"de-{i}", f"de-plain-{i}", jurisdiction="DE"), "no_consent"),
            (record(tag, f"de-yes-{i}", "de-yes", jurisdiction="DE"), None),
            (record(tag, f"contact-{i}", f"plain-{i}", "user.contact"), "no_lawful_basis"),
            (record(tag, f"gb-{i}", f"gb-{i}", jurisdiction="GB"), "no_rule"),  # A: no GB rule
        ]
        for n, (body, reason) in enumerate(cases):
            raw = line(body, spaced=(n + i) % 2 == 1)
            lines.append(raw)
            if reason is None:
                eligible.append(raw)
            else:
                excluded[reason] = excluded.get(reason, 0) + 1
    return lines, eligible, excluded


async def test_the_filter_returns_exactly_the_eligible_lines_byte_for_byte(world: World) -> None:
    lines, eligible, excluded = mixed(world.tag, copies=50)
    assert eligible[0] == lines[0]
    lines[0] = eligible[0] = lines[0] + b"\r"  # a CRLF line is echoed as sent
    body = b"\n".join(lines[:3]) + b"\n\n   \n" + b"\n".join(lines[3:])  # no final newline
    answer = await world.client.post(
        FILTER, params={"purpose": world.purpose}, content=in_pieces(body), headers=NDJSON
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    assert answer.content == b"".join(x + b"\n" for x in eligible)
    assert answer.headers["x-records"] == str(len(lines))
    assert answer.headers["x-eligible"] == str(len(eligible))
    assert answer.headers["x-excluded"] == str(sum(excluded.values()))


async def test_the_summary_counts(world: World) -> None:
    lines, eligible, excluded = mixed(world.tag, copies=30)
    answer = await world.client.post(
        FILTER,
        params={"purpose": world.purpose, "report": "summary", "at": "2025-06-01T00:00:00Z"},
        content=b"\n".join(lines) + b"\n",
        headers=NDJSON,
    )
    assert answer.status_code == 200, answer.text
    summary = answer.json()
    assert summary["purpose"] == world.purpose
    assert datetime.fromisoformat(summary["at"]) == datetime(2025, 6, 1, tzinfo=UTC)
    assert summary["policies"] == [
        {"policy_id": world.policy_a, "version": "2"},
        {"policy_id": world.policy_b, "version": "1"},
    ]
    assert (summary["records"], summary["eligible"], summary["excluded"]) == (
        len(lines),
        len(eligible),
        len(lines) - len(eligible),
    )
    assert summary["excluded_by_reason"] == excluded
    sample = summary["sample_excluded"]
    assert len(sample) == 20
    assert sample[0] == {
        "source_system": "inbox",
        "record_id": f"{world.tag}-gone-0",
        "subject_id": world.subject("gone"),
        "category": "user.content",
        "jurisdiction": "US",
        "reason": "withdrawn",
        "policy_id": world.policy_a,
        "rule_id": "us-default-on",
    }
    contact = next(s for s in sample if s["reason"] == "no_lawful_basis")
    assert (contact["policy_id"], contact["rule_id"]) == (world.policy_b, "no-contact-data")

    # Before the withdrawal, the withdrawn subject's record was eligible.
    before = await world.client.post(
        FILTER,
        params={"purpose": world.purpose, "at": BETWEEN.isoformat().replace("+00:00", "Z")},
        content=line(record(world.tag, "gone-0", "gone")),
        headers=NDJSON,
    )
    assert (
        before.status_code == 200
        and before.content == line(record(world.tag, "gone-0", "gone")) + b"\n"
    )


async def test_no_policy_speaking_means_nothing_is_eligible(world: World) -> None:
    lines, _, _ = mixed(world.tag)
    answer = await world.client.post(
        FILTER,
        params={"purpose": f"{world.tag}.analytics", "report": "summary"},
        content=b"\n".join(lines),
        headers=NDJSON,
    )
    assert answer.status_code == 200, answer.text
    summary = answer.json()
    assert summary["policies"] == [] and summary["eligible"] == 0
    assert summary["excluded_by_reason"] == {"no_policy": len(lines)}
    assert summary["sample_excluded"][0]["policy_id"] is None
    streamed = await world.client.post(
        FILTER, params={"purpose": f"{world.tag}.analytics"}, content=b"\n".join(lines)
    )
    assert streamed.status_code == 200 and streamed.content == b""


async def test_a_bad_line_is_a_422_naming_it(world: World) -> None:
    lines, _, _ = mixed(world.tag, copies=5000)  # 30,000 lines: the bad one is in block 3
    bad = record(world.tag, "bad", "x", jurisdiction="Germany")
    lines.insert(25_000, json.dumps(bad).encode())
    answer = await world.client.post(
        FILTER,
        params={"purpose": world.purpose},
        content=in_pieces(b"\n".join(lines), 65536),
        headers=NDJSON,
    )
    assert answer.status_code == 422, answer.text[:500]
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", "line", 25_001, "jurisdiction"]
    assert (error["line"], error["field"], error["chunk"]) == (25_001, "jurisdiction", None)
    assert error["type"] == "string_pattern_mismatch" and error["msg"]

    not_json = await world.client.post(
        FILTER, params={"purpose": world.purpose}, content=lines[0] + b"\n{oops\n"
    )
    assert not_json.status_code == 422
    assert not_json.json()["detail"][0]["line"] == 2

    too_long = await world.client.post(
        FILTER, params={"purpose": world.purpose}, content=lines[0] + b"\n" + b"x" * 20_000
    )
    assert too_long.status_code == 422
    assert too_long.json()["detail"][0]["type"] == "line_too_long"
    assert too_long.json()["detail"][0]["line"] == 2

    for params in (
        {},
        {"purpose": "Not A Purpose"},
        {"purpose": world.purpose, "at": "2025-01-01T00:00:00"},
    ):
        refused = await world.client.post(FILTER, params=params, content=lines[0])
        assert refused.status_code == 422, params


# --- one record explained ---------------------------------------------------------------


def eligibility_path(tag: str, record_id: str) -> str:
    return f"/api/v1/records/inbox/{quote(f'{tag}-{record_id}', safe='')}/eligibility"


async def register(world: World, name: str, records: list[dict[str, Any]]) -> dict[str, Any]:
    answer = await world.client.post(
        "/api/v1/dataset-versions",
        json={
            "dataset": {"namespace": "s3://training", "name": name, "version": "v1"},
            "purpose": world.purpose,
            "created_at": "2025-01-01T00:00:00Z",
            "records": records,
        },
    )
    assert answer.status_code == 201, answer.text
    version = await world.client.get(
        "/api/v1/dataset-version",
        params={"namespace": "s3://training", "name": name, "version": "v1"},
    )
    assert version.status_code == 200, version.text
    body: dict[str, Any] = version.json()
    return body


def event_json(event: ConsentEvent) -> dict[str, Any]:
    return event.model_dump(mode="json")


async def test_explain_names_the_decisions_rules_and_events(world: World) -> None:
    gone = record(world.tag, "explain-gone", "gone")
    plain = record(world.tag, "explain/plain", "explain-plain")  # a record id with a slash
    await register(world, f"{world.tag}/explain", [gone, plain])

    answer = await world.client.get(
        eligibility_path(world.tag, "explain-gone"), params={"purpose": world.purpose}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["record"] == {k: v for k, v in gone.items() if k != "content_digest"} | {
        "collected_at": "2024-08-01T12:00:00Z"
    }
    assert body["use"]["purpose"] == world.purpose and body["use"]["known_at"] is None
    assert body["eligible"] is False and body["reason"] == "withdrawn"
    a, b = body["decisions"]
    withdrawal = event_json(world.events["withdrawal"])
    assert (a["policy_id"], a["policy_version"], a["rule_id"]) == (
        world.policy_a,
        "2",
        "us-default-on",
    )
    assert datetime.fromisoformat(a["published_at"]) == REREAD_AT
    assert a["rule_description"] == "US: on unless opted out (re-read)"
    assert (a["eligible"], a["reason"], a["mechanism"]) == (False, "withdrawn", "opt_out")
    assert a["consent_events"] == [withdrawal]
    assert str(world.events["withdrawal"].consent_event_id) in a["explanation"]
    assert (b["policy_id"], b["rule_id"], b["reason"]) == (
        world.policy_b,
        "anything-by-default",
        "withdrawn",
    )
    assert body["consent_history"] == [event_json(world.events["grant"]), withdrawal]

    # As known between the grant and the withdrawal (and before the re-reading).
    then = await world.client.get(
        eligibility_path(world.tag, "explain-gone"),
        params={"purpose": world.purpose, "known_at": BETWEEN.isoformat()},
    )
    assert then.status_code == 200, then.text
    body = then.json()
    assert body["eligible"] is True and body["reason"] == "consented"
    assert datetime.fromisoformat(body["use"]["known_at"]) == BETWEEN
    a, b = body["decisions"]
    assert (a["policy_version"], a["rule_description"]) == (
        "1",
        "US: on unless opted out (first reading)",
    )
    assert a["consent_events"] == [event_json(world.events["grant"])]
    assert body["consent_history"] == [event_json(world.events["grant"])]

    # Nobody recorded anything: the default decides, with no event.
    default = await world.client.get(
        eligibility_path(world.tag, "explain/plain"), params={"purpose": world.purpose}
    )
    assert default.status_code == 200, default.text
    body = default.json()
    assert body["eligible"] is True and body["reason"] == "default_consent"
    assert [d["mechanism"] for d in body["decisions"]] == ["default_setting"] * 2
    assert all(d["consent_events"] == [] for d in body["decisions"])
    assert body["consent_history"] == []


async def test_explain_the_use_of_a_dataset_version(world: World) -> None:
    held = record(world.tag, "in-version", "gone")
    other = record(world.tag, "elsewhere", "gone")
    name = f"{world.tag}/versioned"
    version = await register(world, name, [held])
    await register(world, f"{world.tag}/other", [other])
    dataset = {"namespace": "s3://training", "name": name, "version": "v1"}

    answer = await world.client.get(eligibility_path(world.tag, "in-version"), params=dataset)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["use"]["purpose"] == world.purpose
    assert datetime.fromisoformat(body["use"]["at"]) == datetime.fromisoformat(version["used_at"])
    assert body["use"]["dataset"] == dataset
    assert body["eligible"] is False and body["reason"] == "withdrawn"

    # The version's defaults give way to what is asked.
    earlier = await world.client.get(
        eligibility_path(world.tag, "in-version"), params={**dataset, "at": BETWEEN.isoformat()}
    )
    assert earlier.json()["eligible"] is True
    elsewhere = await world.client.get(
        eligibility_path(world.tag, "in-version"),
        params={**dataset, "purpose": f"{world.tag}.analytics"},
    )
    assert elsewhere.json()["reason"] == "no_policy" and elsewhere.json()["decisions"] == []

    not_held = await world.client.get(eligibility_path(world.tag, "elsewhere"), params=dataset)
    assert not_held.status_code == 404
    assert "does not hold record" in not_held.json()["detail"]
    assert f"{world.tag}-elsewhere" in not_held.json()["detail"]
    missing = await world.client.get(
        eligibility_path(world.tag, "in-version"), params={**dataset, "version": "v9"}
    )
    assert missing.status_code == 404 and "no sealed dataset version" in missing.json()["detail"]


async def test_explain_refuses_what_it_cannot_answer(world: World) -> None:
    unknown = await world.client.get(
        eligibility_path(world.tag, "never-registered"), params={"purpose": world.purpose}
    )
    assert unknown.status_code == 404
    assert unknown.json()["detail"] == (
        f"no registered record '{world.tag}-never-registered' of source system 'inbox'"
    )
    await register(world, f"{world.tag}/refusals", [record(world.tag, "r1", "plain-r1")])
    no_purpose = await world.client.get(eligibility_path(world.tag, "r1"))
    assert no_purpose.status_code == 422 and "purpose" in no_purpose.json()["detail"]
    partial = await world.client.get(
        eligibility_path(world.tag, "r1"), params={"namespace": "s3://training"}
    )
    assert partial.status_code == 422
    naive = await world.client.get(
        eligibility_path(world.tag, "r1"),
        params={"purpose": world.purpose, "known_at": "2025-01-01"},
    )
    assert naive.status_code == 422
