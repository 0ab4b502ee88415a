"""Models on the real registry and lineage processes, broker and Postgres: status (derived
from flags, overridden by ML teams and the deletion service, transitions refused with 409),
"is it clean?" with its causes and notes, what went into a model (the registry's
composition of every upstream dataset version, over HTTP), and what-if impact (which models
a withdrawal would flag) — which changes nothing in either service.

One registry and one lineage process serve the module (lineage gets ``REGISTRY_URL``).
The broker is shared with other tests: the policy, purpose, subjects, datasets and models
carry this module's tag.

The graph::

    posts ── pretrain ──► base ──┐
                                 ├── finetune ──► chat
    chats ───────────────────────┘
    raw (not in the registry) ── train ──► other
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
from contracts.topics import CONSENT_EVENTS, MODEL_FLAGS, POLICIES
from contracts.vocabulary import ConsentMechanism, ConsentState
from services.runtime.messages import encode_event
from services.runtime.testing import ServiceProcess, collect, migrate_service, produce

pytestmark = pytest.mark.integration

T0 = datetime(2024, 1, 1, tzinfo=UTC)
GRANTED_AT = datetime(2024, 1, 2, tzinfo=UTC)
PRODUCER = "https://github.com/OpenLineage/OpenLineage/tree/1.0.0/client/python"
Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]

HISTORY = ("ann", "bob", "cat", "dan")
POSTS = {
    "ann": ["user.content.public", "user.content.private"],
    "bob": ["user.content.public"],
    "cat": ["user.contact"],
}
CHATS = {
    "bob": ["user.content.public"],
    "dan": ["user.content.private"],
    "nox": ["user.content.public"],
}


@dataclass
class World:
    tag: str
    purpose: str
    registry: ServiceProcess
    lineage: ServiceProcess
    reg: httpx.AsyncClient
    lin: httpx.AsyncClient
    reg_db: asyncpg.Pool
    lin_db: asyncpg.Pool
    bootstrap: str

    def subject(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def dataset(self, name: str) -> dict[str, str]:
        return {"namespace": "s3://models-test", "name": f"{self.tag}/{name}", "version": "1"}

    def model(self, name: str) -> dict[str, str]:
        return {"namespace": "models://ml", "name": f"{self.tag}-{name}", "version": "1"}

    async def status(self, name: str, code: int = 200) -> Any:
        response = await self.lin.get("/api/v1/model-status", params=self.model(name))
        assert response.status_code == code, response.text
        return response.json()

    async def put(self, name: str, status: str, code: int = 200) -> Any:
        response = await self.lin.put(
            "/api/v1/model-status",
            params=self.model(name),
            json={"status": status, "actor": "ml-team", "reason": f"to {status}"},
        )
        assert response.status_code == code, response.text
        return response.json()

    async def what_if(self, code: int = 200, **params: str) -> Any:
        response = await self.lin.get("/api/v1/what-if", params=params)
        assert response.status_code == code, response.text
        return response.json()

    def models(self, answer: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {m["model"]["name"].removeprefix(f"{self.tag}-"): m for m in answer["models"]}


def policy(tag: str, purpose: str) -> PolicyDocument:
    both = (
        LawfulBasis(mechanism=ConsentMechanism.EXPLICIT_OPT_IN),
        LawfulBasis(mechanism=ConsentMechanism.DEFAULT_SETTING),
    )

    def rule(rule_id: str, category: str, requires: WithdrawalRequires, **kw: Any) -> PolicyRule:
        return PolicyRule(
            id=rule_id,
            jurisdictions=("*",),
            purposes=(purpose,),
            data_categories=(category,),
            withdrawal=WithdrawalEffect(requires=requires),
            **kw,
        )

    return PolicyDocument(
        policy_id=f"lm-{tag}",
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
        ),
    )


def consent(
    world_tag: str,
    subject: str,
    state: ConsentState,
    at: datetime,
    purpose: str,
    categories: tuple[str, ...] = ("user",),
) -> ConsentEvent:
    return ConsentEvent(
        consent_event_id=uuid.uuid4(),
        subject_id=f"{world_tag}-{subject}",
        jurisdiction="DE",
        purpose=purpose,
        data_categories=categories,
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


def ol_dataset(ref: dict[str, str], kind: str) -> dict[str, Any]:
    return {
        "namespace": ref["namespace"],
        "name": ref["name"],
        "facets": {
            "version": {
                "_producer": PRODUCER,
                "_schemaURL": "https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json",
                "datasetVersion": ref["version"],
            },
            "datasetType": {
                "_producer": PRODUCER,
                "_schemaURL": "https://openlineage.io/spec/facets/1-0-0/DatasetTypeDatasetFacet.json",
                "datasetType": kind,
            },
        },
    }


async def run(world: World, job: str, inputs: list[Any], output: dict[str, str]) -> None:
    response = await world.lin.post(
        "/api/v1/lineage",
        json={
            "eventType": "COMPLETE",
            "eventTime": datetime.now(UTC).isoformat(),
            "producer": PRODUCER,
            "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
            "run": {"runId": str(uuid.uuid4())},
            "job": {"namespace": "ml-pipelines", "name": f"{world.tag}-{job}"},
            "inputs": inputs,
            "outputs": [ol_dataset(output, "MODEL")],
        },
    )
    assert response.status_code == 201, response.text


async def register(world: World, name: str, holdings: dict[str, list[str]]) -> None:
    dataset = world.dataset(name)
    response = await world.reg.post(
        "/api/v1/dataset-versions",
        json={
            "dataset": dataset,
            "purpose": world.purpose,
            "created_at": "2024-06-01T00:00:00Z",
            "records": [
                {
                    "record_id": f"{name}-{subject}-{i}",
                    "source_system": f"src-{world.tag}",
                    "subject_id": world.subject(subject),
                    "category": category,
                    "jurisdiction": "DE",
                    "collected_at": "2024-05-01T00:00:00Z",
                    "content_digest": "sha256:"
                    + hashlib.sha256(f"{name}{subject}{i}".encode()).hexdigest(),
                }
                for subject, categories in holdings.items()
                for i, category in enumerate(categories)
            ],
        },
    )
    assert response.status_code == 201, response.text

    async def evaluated() -> bool:
        return bool(
            await world.reg_db.fetchval(
                "SELECT evaluated_at IS NOT NULL FROM dataset_versions"
                " WHERE (namespace, name, version) = ($1, $2, $3)",
                *dataset.values(),
            )
        )

    await wait_for(evaluated, 60, f"{name} evaluated")


async def counts(db: asyncpg.Pool) -> dict[str, int]:
    async with db.acquire() as conn:
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


async def settled_counts(*dbs: asyncpg.Pool) -> list[dict[str, int]]:
    """``counts`` of each database once two readings a second apart agree: the services
    may still be consuming what other tests left on the shared broker."""
    deadline = time.monotonic() + 60
    previous = [await counts(db) for db in dbs]
    while True:
        await asyncio.sleep(1)
        current = [await counts(db) for db in dbs]
        if current == previous or time.monotonic() > deadline:
            return current
        previous = current


@pytest.fixture(scope="module")
async def world(
    make_database: Callable[[str], str],
    kafka_bootstrap: str,
    kafka_idempotence: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[World]:
    tag = f"lm{uuid.uuid4().hex[:8]}"
    purpose = f"{tag}.training"
    log_dir: Path = tmp_path_factory.mktemp("lineage-models")
    databases = {}
    for name in ("registry", "lineage"):
        databases[name] = make_database(name)
        migrate_service(name, databases[name])
    registry = ServiceProcess(
        "registry", databases["registry"], kafka_bootstrap, log_dir, idempotence=kafka_idempotence
    )
    lineage = ServiceProcess(
        "lineage",
        databases["lineage"],
        kafka_bootstrap,
        log_dir,
        idempotence=kafka_idempotence,
        extra_env={"REGISTRY_URL": registry.url},
    )
    registry.start()
    lineage.start()
    try:
        await produce(
            kafka_bootstrap,
            POLICIES.name,
            [
                kafka_record(
                    POLICIES,
                    PolicyChange(policy=policy(tag, purpose), published_at=T0),
                    f"lm-{tag}",
                )
            ],
        )
        grants = [consent(tag, s, ConsentState.GRANTED, GRANTED_AT, purpose) for s in HISTORY]
        await produce(
            kafka_bootstrap,
            CONSENT_EVENTS.name,
            [kafka_record(CONSENT_EVENTS, e, e.subject_id) for e in grants],
        )
        reg_db = await asyncpg.create_pool(databases["registry"], min_size=1, max_size=2)
        lin_db = await asyncpg.create_pool(databases["lineage"], min_size=1, max_size=2)
        try:
            await asyncio.gather(
                asyncio.to_thread(registry.wait_ready), asyncio.to_thread(lineage.wait_ready)
            )

            async def projected() -> bool:
                events = await reg_db.fetchval(
                    "SELECT count(*) FROM consent_projection WHERE subject_id LIKE $1", f"{tag}-%"
                )
                policies = await reg_db.fetchval(
                    "SELECT count(*) FROM policy_versions WHERE policy_id = $1", f"lm-{tag}"
                )
                return bool(events == len(grants) and policies == 1)

            await wait_for(projected, 90, f"the registry to project (log: {registry.log_path})")
            async with (
                httpx.AsyncClient(base_url=registry.url, timeout=30) as reg,
                httpx.AsyncClient(base_url=lineage.url, timeout=30) as lin,
            ):
                w = World(
                    tag, purpose, registry, lineage, reg, lin, reg_db, lin_db, kafka_bootstrap
                )
                await register(w, "posts", POSTS)
                await register(w, "chats", CHATS)
                await run(
                    w, "pretrain", [ol_dataset(w.dataset("posts"), "DATASET")], w.model("base")
                )
                await run(
                    w,
                    "finetune",
                    [
                        ol_dataset(w.model("base"), "MODEL"),
                        ol_dataset(w.dataset("chats"), "DATASET"),
                    ],
                    w.model("chat"),
                )
                raw = {"namespace": "s3://models-test", "name": f"{tag}/raw", "version": "1"}
                await run(w, "train", [ol_dataset(raw, "DATASET")], w.model("other"))
                yield w
        finally:
            await reg_db.close()
            await lin_db.close()
    finally:
        lineage.stop()
        registry.stop()


async def flags_of(world: World, model: str) -> list[dict[str, Any]]:
    response = await world.lin.get("/api/v1/model-flags", params=world.model(model))
    assert response.status_code == 200, response.text
    return [r["flag"] for r in response.json() if r["flag"]["status"] == "active"]


# --- status, clean, causes, notes ----------------------------------------------------------


async def test_a_model_is_clean_until_a_withdrawal_flags_it(world: World) -> None:
    base = await world.status("base")
    assert base["model"] == world.model("base")
    assert (base["status"], base["explicit_status"], base["clean"]) == ("active", None, True)
    assert base["causes"] == base["notes"] == base["history"] == []

    # ann withdraws everything (retrain for her posts, destroy for her private messages);
    # cat withdraws contact data (exclude_from_future: flags no model, a note).
    now = datetime.now(UTC)
    events = [
        consent(world.tag, "ann", ConsentState.WITHDRAWN, now, world.purpose),
        consent(world.tag, "cat", ConsentState.WITHDRAWN, now, world.purpose, ("user.contact",)),
    ]
    await produce(
        world.bootstrap,
        CONSENT_EVENTS.name,
        [kafka_record(CONSENT_EVENTS, e, e.subject_id) for e in events],
    )

    async def flagged() -> bool:
        return len(await flags_of(world, "base")) == 2 and len(await flags_of(world, "chat")) == 2

    await wait_for(flagged, 60, "base and chat flagged")

    async def noted() -> bool:
        return len((await world.status("base"))["notes"]) == 1

    await wait_for(noted, 30, "the exclude_from_future finding reaching lineage")
    base = await world.status("base")
    assert (base["status"], base["clean"]) == ("flagged", False)
    assert sorted(c["severity"] for c in base["causes"]) == ["destroy_required", "retrain_required"]
    flags = {f["finding_id"]: f for f in await flags_of(world, "base")}
    for cause in base["causes"]:
        assert cause["evidence_path"] == flags[cause["finding_id"]]["evidence_path"]
        assert cause["evidence_path"][0] == f"dataset:s3://models-test:{world.tag}/posts#1"
        assert cause["evidence_path"][-1] == f"model:models://ml:{world.tag}-base#1"
        assert cause["reason"] == "later_withdrawal"
    (note,) = base["notes"]
    assert (note["severity"], note["dataset"]) == ("exclude_from_future", world.dataset("posts"))
    chat = await world.status("chat")
    assert chat["status"] == "flagged" and len(chat["causes"]) == 2
    assert [n["finding_id"] for n in chat["notes"]] == [note["finding_id"]], "upstream via base"
    other = await world.status("other")
    assert (other["status"], other["clean"], other["causes"]) == ("active", True, [])


async def test_status_transitions_and_refusals(world: World) -> None:
    other = await world.put("other", "superseded")
    assert (other["status"], other["explicit_status"], other["clean"]) == (
        "superseded",
        "superseded",
        True,
    )
    assert (await world.put("other", "quarantined"))["clean"] is False
    assert (await world.put("other", "active"))["status"] == "active"
    other = await world.put("other", "active")
    assert [h["status"] for h in other["history"]] == ["superseded", "quarantined", "active"], (
        "the same status again records nothing"
    )
    assert other["history"][0]["actor"] == "ml-team"
    assert other["history"][0]["reason"] == "to superseded"
    destroyed = await world.put("other", "destroyed")
    assert (destroyed["status"], destroyed["clean"]) == ("destroyed", False)
    refused = await world.put("other", "active", 409)
    assert refused["detail"] == (
        f"model:models://ml:{world.tag}-other#1: cannot change destroyed → active: the model"
        " is destroyed, and destruction is final: no status can follow it"
    )
    await world.put("other", "superseded", 409)
    assert len((await world.put("other", "destroyed"))["history"]) == 4, "destroying again: no-op"

    body = await world.put("other", "flagged", 422)
    assert "'flagged' cannot be set: it is derived from the model's active flags" in str(body)
    body = await world.put("other", "deleted", 422)
    assert "unknown status 'deleted'" in str(body)
    missing = await world.lin.put(
        "/api/v1/model-status",
        params={**world.model("other"), "version": "9"},
        json={"status": "quarantined", "actor": "a", "reason": "r"},
    )
    assert missing.status_code == 404
    assert "has never seen" in missing.json()["detail"]
    dataset = await world.lin.get("/api/v1/model-status", params=world.dataset("posts"))
    assert dataset.status_code == 404 and "only as a dataset" in dataset.json()["detail"]


async def test_a_model_that_must_be_destroyed_cannot_be_released(world: World) -> None:
    await wait_for(lambda: _has_destroy_flag(world, "base"), 60, "base flagged destroy_required")
    assert (await world.put("base", "quarantined"))["status"] == "quarantined"
    refused = await world.put("base", "active", 409)
    assert refused["detail"] == (
        f"model:models://ml:{world.tag}-base#1: cannot change quarantined → active: the model"
        " has 1 active destroy_required flag(s), so its quarantine ends only in destroyed"
        " (or when they are retracted)"
    )
    refused = await world.put("base", "superseded", 409)
    assert "its quarantine ends only in destroyed" in refused["detail"]
    base = await world.put("base", "destroyed")
    assert (base["status"], base["clean"]) == ("destroyed", False)
    assert len(base["causes"]) == 2, "the flags stay: they say why"
    chat = await world.status("chat")
    assert chat["status"] == "flagged", "a destroyed model's descendants keep their own flags"


async def _has_destroy_flag(world: World, model: str) -> bool:
    return any(f["severity"] == "destroy_required" for f in await flags_of(world, model))


# --- inputs ---------------------------------------------------------------------------------


async def test_what_went_into_a_model(world: World) -> None:
    response = await world.lin.get("/api/v1/model-inputs", params=world.model("chat"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(d["dataset"], d["depth"], d["registered"]) for d in body["datasets"]] == [
        (world.dataset("chats"), 1, True),
        (world.dataset("posts"), 2, True),
    ]
    assert body["models"] == [{"model": world.model("base"), "depth": 1}]
    chats, posts = (d["composition"] for d in body["datasets"])
    assert (chats["records"], chats["subjects"]) == (3, 3)
    assert (posts["records"], posts["subjects"]) == (4, 3)
    assert posts["categories"] == [
        {"category": "user.contact", "records": 1, "subjects": 1},
        {"category": "user.content.private", "records": 1, "subjects": 1},
        {"category": "user.content.public", "records": 2, "subjects": 2},
    ]
    assert posts["jurisdictions"] == [{"jurisdiction": "DE", "records": 4, "subjects": 3}]
    assert body["categories"] == ["user.contact", "user.content.private", "user.content.public"]

    response = await world.lin.get("/api/v1/model-inputs", params=world.model("other"))
    (raw,) = response.json()["datasets"]
    assert (raw["registered"], raw["composition"]) == (False, None)
    missing = await world.lin.get(
        "/api/v1/model-inputs", params={**world.model("other"), "version": "9"}
    )
    assert missing.status_code == 404


# --- what-if --------------------------------------------------------------------------------


async def test_what_if_changes_nothing_anywhere(world: World) -> None:
    await wait_for(lambda: _has_destroy_flag(world, "chat"), 60, "chat flagged")
    published = await collect(
        world.bootstrap,
        MODEL_FLAGS.name,
        lambda r: r.key is not None and world.tag in r.key.decode(),
        expected=4,
        within=30,
    )
    before = await settled_counts(world.reg_db, world.lin_db)

    # bob: his public posts would need base and chat retrained: both are already flagged
    # retrain_required (ann's withdrawal), and more severely.
    answer = await world.what_if(subject_id=world.subject("bob"))
    assert {v["dataset"]["name"] for v in answer["dataset_versions"]} == {
        f"{world.tag}/posts",
        f"{world.tag}/chats",
    }
    models = world.models(answer)
    assert set(models) == {"base", "chat"}
    base, chat = models["base"], models["chat"]
    assert base["severity"] == "retrain_required"
    assert base["evidence_path"][0] == f"dataset:s3://models-test:{world.tag}/posts#1"
    assert (base["already_flagged"], base["current_severity"], base["escalates"]) == (
        True,
        "destroy_required",
        False,
    )
    assert base["status"] == "destroyed"
    assert chat["evidence_path"][0] == f"dataset:s3://models-test:{world.tag}/chats#1", "shortest"
    assert len(chat["evidence_path"]) == 3
    assert {v["dataset"]["name"] for v in chat["via"]} == {
        f"{world.tag}/posts",
        f"{world.tag}/chats",
    }

    # Everybody's private messages: dan's in chats would require destroying chat (already
    # flagged so, through base); ann's in posts are withdrawn already: nothing new there.
    answer = await world.what_if(category="user.content.private")
    assert [v["dataset"]["name"] for v in answer["dataset_versions"]] == [f"{world.tag}/chats"]
    (chat,) = answer["models"]
    assert (chat["model"], chat["severity"], chat["already_flagged"]) == (
        world.model("chat"),
        "destroy_required",
        True,
    )

    # All content: nox (no consent history, default on) is judged with its group.
    answer = await world.what_if(category="user.content", purpose=world.purpose)
    assert answer["subjects"]["without_history"] == 1
    chats = next(v for v in answer["dataset_versions"] if v["dataset"] == world.dataset("chats"))
    assert (chats["severity"], chats["records"], chats["subjects"]) == ("destroy_required", 3, 3)

    # Contact data: exclude_from_future only, no model flagged.
    answer = await world.what_if(jurisdiction="DE", purpose=f"{world.tag}.other")
    assert answer["dataset_versions"] == answer["models"] == []

    assert [await counts(world.reg_db), await counts(world.lin_db)] == before
    again = await collect(
        world.bootstrap,
        MODEL_FLAGS.name,
        lambda r: r.key is not None and world.tag in r.key.decode(),
        expected=len(published),
        within=10,
    )
    assert len(again) == len(published), "nothing published"

    body = await world.what_if(422, subject_id=world.subject("bob"), category="user")
    assert body["detail"] == "give exactly one of subject_id, category, jurisdiction"


async def test_without_the_registry_inputs_and_what_if_answer_503(world: World) -> None:
    """The registry stopped: what needs it answers 503, a model's status does not need it.
    Last in the module, and the registry is started again (the module's world shares it)."""
    before = await world.status("chat")
    world.registry.stop()
    try:
        response = await world.lin.get("/api/v1/what-if", params={"category": "user"})
        assert response.status_code == 503
        assert response.json()["detail"].startswith(
            f"the registry at {world.registry.url} cannot be reached: ConnectError"
        )
        response = await world.lin.get("/api/v1/model-inputs", params=world.model("chat"))
        assert response.status_code == 503
        assert await world.status("chat") == before, "status needs no registry"
    finally:
        world.registry.start()
        await asyncio.to_thread(world.registry.wait_ready)
