"""The registry's composition, subjects and what-if APIs on the real service process, broker
and Postgres: what a dataset version holds; which versions a withdrawal of a subject, a
category or a jurisdiction would give new or more severe findings (subjects with a consent
history judged one by one, the others aggregated); and that asking changes nothing.

One registry process serves the module. Policies and consent events go through Kafka; the
broker is shared with other tests, so the policy, purpose and subjects carry this module's
tag (its purpose sits under a root no other test uses).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from contracts.events import ConsentEvent, ConsentEvidence, PolicyChange
from contracts.policy import (
    DefaultConsent,
    LawfulBasis,
    PolicyDocument,
    PolicyRule,
    WithdrawalEffect,
    WithdrawalRequires,
)
from contracts.topics import CONSENT_EVENTS, POLICIES
from contracts.vocabulary import ConsentMechanism, ConsentState
from services.runtime.messages import encode_event
from services.runtime.testing import ServiceProcess, migrate_service, produce

pytestmark = pytest.mark.integration

T0 = datetime(2024, 1, 1, tzinfo=UTC)
GRANTED_AT = datetime(2024, 1, 2, tzinfo=UTC)
WHAT_IF = "/api/v1/what-if/withdrawal"
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]

HISTORY = ("ann", "bob", "cat")
"""Subjects who opted in (to everything under ``user``) before the snapshots."""
POSTS = {
    "ann": ["user.content.public", "user.content.public", "user.content.private"],
    "bob": ["user.content.public"],
    "cat": ["user.contact"],
    **{f"nox{i}": ["user.content.public"] for i in range(1, 6)},
    **{f"usa{i}": ["user.content.public"] for i in range(1, 3)},
}
CHATS = {"bob": ["user.content.public", "user.content.private"], "nox1": ["user.content.public"]}


@dataclass
class World:
    tag: str
    purpose: str
    policy_id: str
    client: httpx.AsyncClient
    db: asyncpg.Pool
    service: ServiceProcess
    bootstrap: str

    def subject(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def dataset(self, name: str) -> dict[str, str]:
        return {"namespace": "s3://whatif", "name": f"{self.tag}/{name}", "version": "1"}

    async def what_if(self, status: int = 200, **body: Any) -> Any:
        response = await self.client.post(WHAT_IF, json=body)
        assert response.status_code == status, response.text
        return response.json()

    def versions(self, answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {v["dataset"]["name"].split("/", 1)[1]: v for v in answer["dataset_versions"]}

    async def settled_counts(self) -> dict[str, int]:
        """``counts`` once two readings a second apart agree: the registry may still be
        consuming what other tests left on the shared broker."""
        deadline = time.monotonic() + 60
        previous = await self.counts()
        while True:
            await asyncio.sleep(1)
            current = await self.counts()
            if current == previous or time.monotonic() > deadline:
                return current
            previous = current

    async def counts(self) -> dict[str, int]:
        """Rows of every table: what a what-if must leave as it found it."""
        async with self.db.acquire() as conn:
            tables = await conn.fetch(
                "SELECT schemaname, tablename FROM pg_tables"
                " WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
            )
            return {
                f"{t['schemaname']}.{t['tablename']}": await conn.fetchval(
                    f'SELECT count(*) FROM "{t["schemaname"]}"."{t["tablename"]}"'
                )
                for t in tables
            }


def policy(tag: str, purpose: str) -> PolicyDocument:
    both = (
        LawfulBasis(mechanism=ConsentMechanism.EXPLICIT_OPT_IN),
        LawfulBasis(mechanism=ConsentMechanism.DEFAULT_SETTING),
    )

    def rule(rule_id: str, category: str, requires: WithdrawalRequires, **kw: Any) -> PolicyRule:
        return PolicyRule(
            id=rule_id,
            jurisdictions=kw.pop("jurisdictions", ("*",)),
            purposes=(purpose,),
            data_categories=(category,),
            withdrawal=WithdrawalEffect(requires=requires),
            **kw,
        )

    return PolicyDocument(
        policy_id=f"wi-{tag}",
        version="1",
        valid_from=T0,
        rules=(
            rule(
                "content",
                "user.content",
                WithdrawalRequires.RETRAIN,
                lawful_bases=both,
                default=DefaultConsent(),
            ),
            rule(
                "private", "user.content.private", WithdrawalRequires.DESTROY, lawful_bases=both[:1]
            ),
            rule(
                "contact",
                "user.contact",
                WithdrawalRequires.EXCLUDE_FROM_FUTURE,
                lawful_bases=both,
                default=DefaultConsent(),
            ),
            rule(
                "us-content",
                "user.content",
                WithdrawalRequires.NONE,
                jurisdictions=("US",),
                lawful_bases=both,
                default=DefaultConsent(),
            ),
        ),
    )


def consent(
    tag: str, subject: str, state: ConsentState, at: datetime, purpose: str
) -> ConsentEvent:
    return ConsentEvent(
        consent_event_id=uuid.uuid4(),
        subject_id=f"{tag}-{subject}",
        jurisdiction="DE",
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


async def register(world: World, name: str, holdings: dict[str, list[str]]) -> None:
    records = [
        {
            "record_id": f"{name}-{subject}-{i}",
            "source_system": f"src-{world.tag}",
            "subject_id": world.subject(subject),
            "category": category,
            "jurisdiction": "US" if subject.startswith("usa") else "DE",
            "collected_at": "2024-05-01T00:00:00Z",
            "content_digest": "sha256:"
            + hashlib.sha256(f"{name}{subject}{i}".encode()).hexdigest(),
        }
        for subject, categories in holdings.items()
        for i, category in enumerate(categories)
    ]
    dataset = world.dataset(name)
    response = await world.client.post(
        "/api/v1/dataset-versions",
        json={
            "dataset": dataset,
            "purpose": world.purpose,
            "created_at": "2024-06-01T00:00:00Z",
            "records": records,
        },
    )
    assert response.status_code == 201, response.text

    async def evaluated() -> bool:
        return bool(
            await world.db.fetchval(
                "SELECT evaluated_at IS NOT NULL AND NOT EXISTS (SELECT 1 FROM evaluation_jobs j"
                " WHERE j.dataset_version_id = dv.dataset_version_id)"
                " FROM dataset_versions dv WHERE (namespace, name, version) = ($1, $2, $3)",
                *dataset.values(),
            )
        )

    await wait_for(evaluated, 60, f"{name} evaluated")


@pytest.fixture(scope="module")
async def world(
    make_database: Callable[[str], str],
    kafka_bootstrap: str,
    kafka_idempotence: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[World]:
    tag = f"wi{uuid.uuid4().hex[:8]}"
    purpose = f"{tag}.training"
    db_url = make_database("registry")
    migrate_service("registry", db_url)
    log_dir: Path = tmp_path_factory.mktemp("registry-whatif")
    service = ServiceProcess(
        "registry", db_url, kafka_bootstrap, log_dir, idempotence=kafka_idempotence
    ).start()
    try:
        document = policy(tag, purpose)
        grants = [consent(tag, s, ConsentState.GRANTED, GRANTED_AT, purpose) for s in HISTORY]
        await produce(
            kafka_bootstrap,
            POLICIES.name,
            [kafka_record(POLICIES, PolicyChange(policy=document, published_at=T0), f"wi-{tag}")],
        )
        await produce(
            kafka_bootstrap,
            CONSENT_EVENTS.name,
            [kafka_record(CONSENT_EVENTS, e, e.subject_id) for e in grants],
        )
        db = await asyncpg.create_pool(db_url, min_size=1, max_size=2)
        try:

            async def projected() -> bool:
                policies = await db.fetchval(
                    "SELECT count(*) FROM policy_versions WHERE policy_id = $1", f"wi-{tag}"
                )
                events = await db.fetchval(
                    "SELECT count(*) FROM consent_projection WHERE subject_id LIKE $1", f"{tag}-%"
                )
                return bool(policies == 1 and events == len(grants))

            await asyncio.to_thread(service.wait_ready)
            await wait_for(projected, 90, f"the registry to project (log: {service.log_path})")
            async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
                w = World(tag, purpose, f"wi-{tag}", client, db, service, kafka_bootstrap)
                await register(w, "posts", POSTS)
                await register(w, "chats", CHATS)
                yield w
        finally:
            await db.close()
    finally:
        service.stop()


# --- composition and subjects ----------------------------------------------------------------


async def test_the_composition_of_a_version(world: World) -> None:
    response = await world.client.get(
        "/api/v1/dataset-version/composition", params=world.dataset("posts")
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dataset"] == world.dataset("posts") and body["purpose"] == world.purpose
    assert (body["records"], body["subjects"]) == (12, 10)
    assert body["categories"] == [
        {"category": "user.contact", "records": 1, "subjects": 1},
        {"category": "user.content.private", "records": 1, "subjects": 1},
        {"category": "user.content.public", "records": 10, "subjects": 9},
    ]
    assert body["jurisdictions"] == [
        {"jurisdiction": "DE", "records": 10, "subjects": 8},
        {"jurisdiction": "US", "records": 2, "subjects": 2},
    ]
    missing = {**world.dataset("posts"), "version": "2"}
    response = await world.client.get("/api/v1/dataset-version/composition", params=missing)
    assert response.status_code == 404
    assert (
        response.json()["detail"]
        == f"no sealed dataset version dataset:s3://whatif:{world.tag}/posts#2"
    )


async def test_the_subjects_of_a_version_page_by_page(world: World) -> None:
    pages, after = [], None
    while True:
        params = {**world.dataset("posts"), "limit": "3", **({"after": after} if after else {})}
        response = await world.client.get("/api/v1/dataset-version/subjects", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["subjects"])
        after = body["next_after"]
        if after is None:
            break
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    subjects = [s for p in pages for s in p]
    assert subjects == sorted(world.subject(s) for s in POSTS)


# --- what-if ------------------------------------------------------------------------------


async def test_what_if_one_subject_withdrew(world: World) -> None:
    answer = await world.what_if(subject_id=world.subject("ann"))
    assert answer["truncated"] is False
    assert answer["subjects"] == {
        "with_history": 1,
        "judged_individually": 1,
        "not_judged": 0,
        "without_history": 0,
    }
    (posts,) = answer["dataset_versions"]
    assert posts["dataset"] == world.dataset("posts")
    assert (posts["severity"], posts["current_severity"]) == ("destroy_required", None)
    assert (posts["records"], posts["subjects"]) == (3, 1)
    assert [
        (f["rule_id"], f["reason"], f["severity"], f["records"]) for f in posts["findings"]
    ] == [
        ("private", "later_withdrawal", "destroy_required", 1),
        ("content", "later_withdrawal", "retrain_required", 2),
    ]
    assert all(f["policy_id"] == world.policy_id for f in posts["findings"])

    # A subject without consent history (default consent): judged as its group.
    answer = await world.what_if(subject_id=world.subject("nox1"))
    assert answer["subjects"]["without_history"] == 1
    assert {n: (v["severity"], v["subjects"]) for n, v in world.versions(answer).items()} == {
        "posts": ("retrain_required", 1),
        "chats": ("retrain_required", 1),
    }
    # Had it withdrawn before the snapshots, their use would have been improper.
    answer = await world.what_if(subject_id=world.subject("nox1"), at="2024-01-01T00:00:00Z")
    assert {v["findings"][0]["reason"] for v in answer["dataset_versions"]} == {"improper_use"}
    assert {v["severity"] for v in answer["dataset_versions"]} == {"destroy_required"}
    # Another purpose than the snapshots': nothing.
    answer = await world.what_if(subject_id=world.subject("ann"), purpose=f"{world.tag}.other")
    assert answer["dataset_versions"] == []


async def test_what_if_a_category_or_a_jurisdiction_withdrew(world: World) -> None:
    # This test's purpose only: the registry also holds versions other tests registered
    # over the shared broker's registration topic.
    answer = await world.what_if(category="user.content", purpose=world.purpose)
    assert answer["subjects"] == {
        "with_history": 2,
        "judged_individually": 2,
        "not_judged": 0,
        "without_history": 7,
    }
    versions = world.versions(answer)
    posts, chats = versions["posts"], versions["chats"]
    assert (posts["severity"], posts["records"], posts["subjects"]) == ("destroy_required", 9, 7)
    assert [(f["rule_id"], f["records"], f["subjects"]) for f in posts["findings"]] == [
        ("private", 1, 1),
        ("content", 8, 7),
    ], "US subjects: a withdrawal of content requires nothing there"
    assert (chats["severity"], chats["records"], chats["subjects"]) == ("destroy_required", 3, 2)

    truncated = await world.what_if(category="user.content", max_subjects=1, purpose=world.purpose)
    assert truncated["truncated"] is True
    assert truncated["subjects"]["not_judged"] == 1

    assert (await world.what_if(jurisdiction="US", purpose=world.purpose))["dataset_versions"] == []
    eu = world.versions(await world.what_if(jurisdiction="EU", purpose=world.purpose))
    assert {f["severity"] for f in eu["posts"]["findings"]} == {
        "destroy_required",
        "retrain_required",
        "exclude_from_future",
    }
    assert eu["posts"]["subjects"] == 8


async def test_a_subject_who_withdrew_adds_nothing_and_asking_changes_nothing(
    world: World,
) -> None:
    withdrawal = consent(world.tag, "bob", ConsentState.WITHDRAWN, datetime.now(UTC), world.purpose)
    await produce(
        world.bootstrap,
        CONSENT_EVENTS.name,
        [kafka_record(CONSENT_EVENTS, withdrawal, withdrawal.subject_id)],
    )

    async def found() -> bool:
        return bool(
            await world.db.fetchval(
                "SELECT count(*) = 3 FROM findings WHERE status = 'active' AND policy_id = $1",
                world.policy_id,
            )
        )

    await wait_for(found, 60, "bob's findings")
    before = await world.settled_counts()
    assert (await world.what_if(subject_id=world.subject("bob")))["dataset_versions"] == []
    posts = world.versions(await world.what_if(category="user.content"))["posts"]
    assert posts["current_severity"] == "retrain_required"
    assert (posts["records"], posts["subjects"]) == (8, 6), "bob is already counted"
    await world.what_if(jurisdiction="DE")
    await world.what_if(subject_id=world.subject("nox2"), at="2024-01-01T00:00:00Z")
    assert await world.counts() == before


async def test_a_what_if_names_exactly_one_scope(world: World) -> None:
    body = await world.what_if(422, purpose=world.purpose)
    assert "give exactly one of subject_id, category, jurisdiction" in str(body)
    body = await world.what_if(422, subject_id="x", category="user")
    assert "(got subject_id, category)" in str(body)
    body = await world.what_if(422, jurisdiction="Europe")
    assert "'Europe' is not a jurisdiction" in str(body)
