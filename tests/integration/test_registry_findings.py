"""Findings on a real broker and Postgres, the registry as a real process: a withdrawal
reaches exactly the right dataset versions; a snapshot sealed after a withdrawal is an
improper use; a policy re-reading the past brings new findings and retractions; duplicates
and replays change nothing, and rebuilding from the topics yields the same findings.

Every test uses its own purpose (``test.<tag>``) and policy id: the registry reads every
policy and consent event on the session's broker, and only this test's policy speaks to
this test's purpose.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import ConsumerRecord

from contracts.events import (
    ConsentEvent,
    ConsentEvidence,
    ConsentMechanism,
    ConsentState,
    PolicyChange,
)
from contracts.policy import LawfulBasis, PolicyDocument, PolicyRule, WithdrawalEffect
from contracts.policy import WithdrawalRequires as Requires
from contracts.topics import CONSENT_EVENTS, FINDINGS, POLICIES
from services.runtime.messages import encode_event
from services.runtime.testing import ServiceProcess, StartService, collect, produce

pytestmark = pytest.mark.integration

T0 = datetime(2024, 1, 1, tzinfo=UTC)
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


class Scenario:
    """One test's world: its purpose, policy, subjects and the registry it talks to."""

    def __init__(self, registry: ServiceProcess, bootstrap: str) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.purpose = f"test.t{self.tag}"
        self.policy_id = f"findings-{self.tag}"
        self.registry = registry
        self.bootstrap = bootstrap
        self.http = httpx.AsyncClient(base_url=registry.url, timeout=30)

    def subject(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def policy(
        self, version: str, *, content_bases: tuple[ConsentMechanism, ...]
    ) -> PolicyDocument:
        def rule(rule_id: str, category: str, requires: Requires, bases: Any) -> PolicyRule:
            return PolicyRule(
                id=rule_id,
                jurisdictions=("*",),
                purposes=(self.purpose,),
                data_categories=(category,),
                lawful_bases=tuple(LawfulBasis(mechanism=m) for m in bases),
                withdrawal=WithdrawalEffect(requires=requires),
            )

        return PolicyDocument(
            policy_id=self.policy_id,
            version=version,
            valid_from=T0,
            rules=(
                rule("content", "user.content", Requires.RETRAIN, content_bases),
                rule(
                    "private",
                    "user.content.private",
                    Requires.DESTROY,
                    (ConsentMechanism.EXPLICIT_OPT_IN,),
                ),
            ),
        )

    async def publish_policy(self, document: PolicyDocument, published_at: datetime) -> None:
        change = PolicyChange(policy=document, published_at=published_at)
        await self._produce(POLICIES.name, self.policy_id, change, str(uuid.uuid4()))
        await self.until(
            lambda: self._scalar(
                "SELECT count(*) = 1 FROM policy_versions WHERE policy_id = $1 AND version = $2",
                self.policy_id,
                document.version,
            ),
            f"policy {document.version} projected",
        )

    def consent(
        self,
        subject: str,
        state: ConsentState,
        *,
        mechanism: ConsentMechanism = ConsentMechanism.EXPLICIT_OPT_IN,
        categories: tuple[str, ...] = ("user.content",),
        effective_at: datetime | None = None,
    ) -> ConsentEvent:
        at = effective_at or datetime.now(UTC)
        return ConsentEvent(
            consent_event_id=uuid.uuid4(),
            subject_id=self.subject(subject),
            jurisdiction="DE",
            purpose=self.purpose,
            data_categories=categories,
            state=state,
            mechanism=mechanism,
            policy_version="1",
            effective_at=at,
            recorded_at=max(at, T0 + timedelta(days=1)),
            source_system="test",
            evidence=ConsentEvidence(collection_point="test"),
        )

    async def send_consent(self, *events: ConsentEvent, event_id: str | None = None) -> None:
        for e in events:
            await self._produce(
                CONSENT_EVENTS.name, e.subject_id, e, event_id or str(e.consent_event_id)
            )
        ids = [e.consent_event_id for e in events]
        await self.until(
            lambda: self._scalar(
                "SELECT count(*) = $2 FROM consent_projection WHERE consent_event_id = ANY($1)",
                ids,
                len(set(ids)),
            ),
            "consent events projected",
        )

    async def register(self, name: str, records: dict[str, list[str]]) -> dict[str, str]:
        """Seal a dataset version holding, per subject, records of the given categories;
        wait until the registry has evaluated it."""
        dataset = {"namespace": "s3://findings", "name": f"{self.tag}/{name}", "version": "1"}
        body = {
            "dataset": dataset,
            "purpose": self.purpose,
            "created_at": "2024-06-01T00:00:00Z",
            "records": [
                {
                    "record_id": f"{name}-{subject}-{i}",
                    "source_system": f"src-{self.tag}",
                    "subject_id": self.subject(subject),
                    "category": category,
                    "jurisdiction": "DE",
                    "collected_at": "2024-05-01T00:00:00Z",
                    "content_digest": "sha256:"
                    + hashlib.sha256(f"{name}{subject}{i}".encode()).hexdigest(),
                }
                for subject, categories in records.items()
                for i, category in enumerate(categories)
            ],
        }
        response = await self.http.post("/api/v1/dataset-versions", json=body)
        assert response.status_code == 201, response.text
        await self.evaluated(dataset)
        return dataset

    async def evaluated(self, dataset: dict[str, str]) -> None:
        await self.until(
            lambda: self._scalar(
                "SELECT evaluated_at IS NOT NULL AND NOT EXISTS ("
                "  SELECT 1 FROM evaluation_jobs j"
                "  WHERE j.dataset_version_id = dv.dataset_version_id)"
                " FROM dataset_versions dv WHERE (namespace, name, version) = ($1, $2, $3)",
                dataset["namespace"],
                dataset["name"],
                dataset["version"],
            ),
            f"{dataset['name']} evaluated",
        )

    async def handled_everything(self, registry: ServiceProcess) -> None:
        """Wait until ``registry`` has handled every consent event and policy version on
        the topics so far, and worked off the evaluations they asked for."""
        await self.until(
            lambda: registry.caught_up(CONSENT_EVENTS.name, POLICIES.name),
            "consent events and policies handled",
        )
        await self.jobs_done()

    async def jobs_done(self) -> None:
        await self.until(
            lambda: self._scalar("SELECT count(*) = 0 FROM evaluation_jobs"), "jobs worked off"
        )

    async def findings(self, **params: str) -> list[dict[str, Any]]:
        response = await self.http.get("/api/v1/findings", params=params)
        assert response.status_code == 200, response.text
        return [
            row["finding"]
            for row in response.json()
            if row["finding"]["policy_id"] == self.policy_id
        ]

    async def published_findings(self, expected: int) -> list[ConsumerRecord[bytes, bytes]]:
        """This test's records on the findings topic (keys name its datasets)."""
        return await collect(
            self.bootstrap,
            FINDINGS.name,
            lambda r: r.key is not None and self.tag in r.key.decode(),
            expected=expected,
            within=30,
        )

    async def until(self, probe: Callable[[], Awaitable[object]], what: str) -> None:
        deadline = time.monotonic() + 60
        while not await probe():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.1)

    async def _scalar(self, query: str, *args: object) -> object:
        conn = await asyncpg.connect(self.registry.admin_dsn)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    async def _produce(self, topic: str, key: str, body: Any, event_id: str) -> None:
        topic_def = POLICIES if topic == POLICIES.name else CONSENT_EVENTS
        message = encode_event(topic_def, body, key=key, source="/test", event_id=event_id)
        record: Record = (message.key, message.value, list(message.headers))
        await produce(self.bootstrap, topic, [record])


def summary(findings: list[dict[str, Any]]) -> set[tuple[str, str, str, str, int]]:
    return {
        (
            f["dataset"]["name"].split("/", 1)[1],
            f["reason"],
            f["severity"],
            f["status"],
            f["affected_records"],
        )
        for f in findings
    }


@pytest.fixture
async def world(start_service: StartService, kafka_bootstrap: str) -> AsyncIterator[Scenario]:
    registry = start_service("registry")
    await asyncio.to_thread(registry.wait_ready)
    scenario = Scenario(registry, kafka_bootstrap)
    yield scenario
    if registry.proc is not None and registry.proc.poll() is None:
        # Every scenario here is valid input: a batch that fell back to one event at a time
        # would be a defect of the batch path, hidden by the fallback's right answers.
        metrics = (await scenario.http.get("/metrics")).text
        assert 'kind="batch_fallback"' not in metrics, "a consent batch failed as a whole"


OPT_IN = ConsentState.GRANTED


async def test_a_withdrawal_reaches_exactly_the_dataset_versions_holding_the_subject(
    world: Scenario,
) -> None:
    await world.publish_policy(
        world.policy("1", content_bases=(ConsentMechanism.EXPLICIT_OPT_IN,)), T0
    )
    grants = [
        world.consent(s, OPT_IN, categories=("user",), effective_at=T0 + timedelta(days=2))
        for s in ("ann", "bob")
    ]
    await world.send_consent(*grants)
    both = await world.register(
        "both",
        {
            "ann": ["user.content.public", "user.content.public", "user.content.private"],
            "bob": ["user.content.public"],
        },
    )
    await world.register("bob-only", {"bob": ["user.content.public", "user.content.private"]})
    assert await world.findings() == [], "every use was eligible"

    withdrawal = world.consent("ann", ConsentState.WITHDRAWN, mechanism=ConsentMechanism.OPT_OUT)
    await world.send_consent(withdrawal)

    found = await world.findings()
    assert summary(found) == {
        ("both", "later_withdrawal", "retrain_required", "active", 2),
        ("both", "later_withdrawal", "destroy_required", "active", 1),
    }
    assert all(f["cause_event_ids"] == [str(withdrawal.consent_event_id)] for f in found)
    assert all(f["affected_subjects"] == 1 for f in found)
    by_subject = await world.findings(subject_id=world.subject("ann"))
    assert {f["finding_id"] for f in by_subject} == {f["finding_id"] for f in found}
    assert await world.findings(subject_id=world.subject("bob")) == []
    assert len(await world.findings(severity="destroy_required", **both)) == 1

    published = await world.published_findings(2)
    assert {r.key.decode() for r in published if r.key} == {
        f"dataset:{both['namespace']}:{both['name']}#{both['version']}"
    }


async def test_a_snapshot_sealed_after_a_withdrawal_is_an_improper_use(world: Scenario) -> None:
    await world.publish_policy(
        world.policy("1", content_bases=(ConsentMechanism.EXPLICIT_OPT_IN,)), T0
    )
    early = T0 + timedelta(days=2)
    await world.send_consent(
        world.consent("ann", OPT_IN, effective_at=early),
        world.consent("bob", OPT_IN, effective_at=early),
    )
    withdrawal = world.consent(
        "ann",
        ConsentState.WITHDRAWN,
        mechanism=ConsentMechanism.OPT_OUT,
        effective_at=early + timedelta(days=1),
    )
    await world.send_consent(withdrawal)

    await world.register("after", {"ann": ["user.content.public"] * 3, "bob": ["user.content"]})

    (finding,) = await world.findings()
    assert (finding["reason"], finding["severity"]) == ("improper_use", "destroy_required")
    assert finding["rule"].startswith("content (not eligible: withdrawn)")
    assert finding["affected_records"] == 3 and finding["affected_subjects"] == 1
    assert finding["cause_event_ids"] == [str(withdrawal.consent_event_id)]
    assert finding["sample_record_ids"] == [f"after-ann-{i}" for i in range(3)]


async def test_only_a_grant_effective_by_the_time_of_use_changes_an_improper_use(
    world: Scenario,
) -> None:
    """A grant effective after every time of use is projected and judges nothing (the
    registry skips it); one recorded as late but effective before the use makes the use
    eligible then, and the improper use is retracted."""
    await world.publish_policy(
        world.policy("1", content_bases=(ConsentMechanism.EXPLICIT_OPT_IN,)), T0
    )
    await world.register("unconsented", {"ann": ["user.content.public"] * 2})
    improper = {("unconsented", "improper_use", "destroy_required", "active", 2)}
    assert summary(await world.findings()) == improper

    await world.send_consent(world.consent("ann", OPT_IN))  # effective now: after the use
    assert summary(await world.findings()) == improper

    await world.send_consent(world.consent("ann", OPT_IN, effective_at=T0 + timedelta(days=2)))
    assert summary(await world.findings()) == {
        ("unconsented", "improper_use", "destroy_required", "retracted", 2)
    }


async def test_a_policy_re_reading_the_past_brings_new_findings_and_retracts_old_ones(
    world: Scenario,
) -> None:
    lenient = world.policy(
        "1", content_bases=(ConsentMechanism.OPT_OUT, ConsentMechanism.EXPLICIT_OPT_IN)
    )
    await world.publish_policy(lenient, T0)
    early = T0 + timedelta(days=2)
    await world.send_consent(
        world.consent("cat", OPT_IN, mechanism=ConsentMechanism.OPT_OUT, effective_at=early),
        world.consent("dan", OPT_IN, effective_at=early),
    )
    snapshot = await world.register(
        "chat", {"cat": ["user.content.public"] * 2, "dan": ["user.content.public"]}
    )
    await world.send_consent(
        world.consent("cat", ConsentState.WITHDRAWN, mechanism=ConsentMechanism.OPT_OUT)
    )
    (later,) = await world.findings()
    assert (later["reason"], later["policy_version"]) == ("later_withdrawal", "1")
    before_rereading = datetime.now(UTC)

    # "An opt-out was never a lawful basis for content": the same valid_from, published now.
    strict = world.policy("1-reread", content_bases=(ConsentMechanism.EXPLICIT_OPT_IN,))
    await world.publish_policy(strict, datetime.now(UTC))
    await world.jobs_done()
    await world.evaluated(snapshot)

    found = {f["finding_id"]: f for f in await world.findings()}
    assert found[later["finding_id"]]["status"] == "retracted"
    assert found[later["finding_id"]]["affected_records"] == 2, "a retraction says what it was"
    (improper,) = [f for f in found.values() if f["status"] == "active"]
    assert (improper["reason"], improper["policy_version"]) == ("improper_use", "1-reread")
    assert (improper["affected_records"], improper["affected_subjects"]) == (2, 1)
    assert improper["rule"].startswith("content (not eligible: basis_not_lawful)")

    active = await world.findings(status="active")
    assert [f["finding_id"] for f in active] == [improper["finding_id"]]
    as_before = await world.findings(as_of=before_rereading.isoformat())
    assert [(f["finding_id"], f["status"]) for f in as_before] == [(later["finding_id"], "active")]

    published = await world.published_findings(3)
    states = [(b["finding_id"], b["status"]) for b in (json.loads(r.value) for r in published)]
    assert states[0] == (later["finding_id"], "active")
    assert sorted(states[1:]) == sorted(
        [(later["finding_id"], "retracted"), (improper["finding_id"], "active")]
    )


async def test_duplicates_and_replays_change_nothing_and_a_rebuild_yields_the_same_findings(
    world: Scenario, kafka_bootstrap: str
) -> None:
    await world.publish_policy(
        world.policy("1", content_bases=(ConsentMechanism.EXPLICIT_OPT_IN,)), T0
    )
    early = T0 + timedelta(days=2)
    grants = [world.consent(s, OPT_IN, effective_at=early) for s in ("eve", "fay", "gus")]
    await world.send_consent(*grants)
    opted_out_early = world.consent(
        "gus",
        ConsentState.WITHDRAWN,
        mechanism=ConsentMechanism.OPT_OUT,
        effective_at=early + timedelta(days=1),
    )
    await world.send_consent(opted_out_early)
    await world.register(
        "s1",
        {"eve": ["user.content.public"], "fay": ["user.content.public"], "gus": ["user.content"]},
    )
    withdrawals = [
        world.consent(s, ConsentState.WITHDRAWN, mechanism=ConsentMechanism.OPT_OUT)
        for s in ("eve", "fay")
    ]
    await world.send_consent(*withdrawals)
    first = sorted(await world.findings(), key=lambda f: f["finding_id"])
    assert (
        summary(first)
        == {
            ("s1", "improper_use", "destroy_required", "active", 1),
            ("s1", "later_withdrawal", "retrain_required", "active", 1),
        }
        and len(first) == 3
    )
    history_rows = await world._scalar("SELECT count(*) FROM finding_events")

    # The same deliveries again, and the same facts under new delivery ids.
    await world.send_consent(*withdrawals, *grants)
    for e in withdrawals:
        await world.send_consent(e, event_id=str(uuid.uuid4()))
    await world.handled_everything(world.registry)
    assert sorted(await world.findings(), key=lambda f: f["finding_id"]) == first
    assert await world._scalar("SELECT count(*) FROM finding_events") == history_rows

    # Rebuild: forget everything learnt from the topics, replay them from the beginning.
    world.registry.stop()
    conn = await asyncpg.connect(world.registry.admin_dsn)
    try:
        await conn.execute(
            "TRUNCATE consent_projection, policy_versions, findings, finding_contributions,"
            " finding_events, evaluation_jobs, inbox, outbox"
        )
    finally:
        await conn.close()
    replayed = ServiceProcess(
        "registry",
        world.registry.database_url,
        kafka_bootstrap,
        world.registry.log_dir,
        port=world.registry.port,
    ).start()
    try:
        await asyncio.to_thread(replayed.wait_ready)

        await world.handled_everything(replayed)
        again = sorted(await world.findings(status="active"), key=lambda f: f["finding_id"])
        assert again == first
    finally:
        replayed.stop()


async def test_versions_holding_records_of_a_category_answer_what_a_purge_reaches(
    world: Scenario,
) -> None:
    chat = await world.register(
        "chat", {"ann": ["user.content.private", "user.content.public"], "bob": ["user.contact"]}
    )
    await world.register("posts", {"bob": ["user.content.public"]})

    async def holding(**params: Any) -> list[tuple[str, int, int]]:
        response = await world.http.get("/api/v1/dataset-versions/holding", params=params)
        assert response.status_code == 200, response.text
        return [
            (row["dataset"]["name"].split("/", 1)[1], row["records"], row["subjects"])
            for row in response.json()
            if row["dataset"]["name"].startswith(world.tag)
        ]

    assert await holding(category="user.content") == [("chat", 2, 1), ("posts", 1, 1)]
    assert await holding(category="user.content.private") == [("chat", 1, 1)]
    assert await holding(category=["user.contact", "user.content.private"]) == [("chat", 2, 2)]
    assert await holding(category="user.content", jurisdiction="FR") == []
    assert await holding(category="user.content", jurisdiction="DE") != []
    assert await holding(category="user.content", collected_until="2024-05-01T00:00:00Z") == []
    assert await holding(category="user.content", collected_from="2024-05-01T00:00:00Z") != []
    refused = await world.http.get("/api/v1/dataset-versions/holding")
    assert refused.status_code == 422
    assert chat["name"].endswith("/chat")


async def test_each_finding_carries_the_trace_of_the_withdrawal_that_caused_it(
    world: Scenario, kafka_bootstrap: str
) -> None:
    """Two withdrawals sent together (one fetch, as a rule): each finding is stored and
    published in its own withdrawal's trace, not in the batch's, so an operator following
    one withdrawal finds what it caused in every service."""
    await world.publish_policy(
        world.policy("1", content_bases=(ConsentMechanism.EXPLICIT_OPT_IN,)), T0
    )
    grants = [world.consent(s, OPT_IN, effective_at=T0 + timedelta(days=2)) for s in ("ann", "bob")]
    await world.send_consent(*grants)
    datasets = {
        s: await world.register(f"{s}-set", {s: ["user.content.public"]}) for s in ("ann", "bob")
    }
    traces = {"ann": uuid.uuid4().hex, "bob": uuid.uuid4().hex}
    records: list[Record] = []
    for subject, trace in traces.items():
        withdrawal = world.consent(
            subject, ConsentState.WITHDRAWN, mechanism=ConsentMechanism.OPT_OUT
        )
        message = encode_event(
            CONSENT_EVENTS, withdrawal, key=withdrawal.subject_id, source="/test"
        )
        traceparent = ("traceparent", f"00-{trace}-{'2' * 16}-01".encode())
        headers = [h for h in message.headers if h[0] != "traceparent"] + [traceparent]
        records.append((message.key, message.value, headers))
    await produce(kafka_bootstrap, CONSENT_EVENTS.name, records)

    async def both_found() -> bool:
        return len(await world.findings()) == 2

    await world.until(both_found, "a finding per withdrawal")
    response = await world.http.get("/api/v1/findings")
    rows = [r for r in response.json() if r["finding"]["policy_id"] == world.policy_id]
    trace_of = {r["finding"]["dataset"]["name"]: r["trace_id"] for r in rows}
    assert trace_of == {datasets[s]["name"]: traces[s] for s in traces}

    published = await world.published_findings(2)
    for record in published:
        sent = dict(record.headers)
        name = json.loads(record.value)["dataset"]["name"]
        subject = next(s for s in traces if datasets[s]["name"] == name)
        assert sent["traceparent"].decode().split("-")[1] == traces[subject]
