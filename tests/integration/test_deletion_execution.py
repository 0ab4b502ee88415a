"""Deletion cases executed for real: deletion, registry and lineage as processes on the
session's broker and Postgres, and a webhook system served by this test.

- a withdrawal that asks for erasure opens one case (sent twice: still one; the model it
  flags opens one destruction case for its two flags), is scoped (registry and lineage over
  HTTP), approved by someone else, executed by the registry (records, memberships,
  manifest, findings), lineage (model destroyed) and the webhook system (a 503 retried,
  then a signed callback), verified and completed — every step in the evidence log;
- a held case executes nothing: no task before approval, and no webhook delivery re-sent
  while it is held during execution;
- a task the webhook system answers ``failed`` fails the case; ``resume`` re-sends that task
  alone, and the case completes.

The services run with this change's wiring (``WIRING`` below, applied only where the
service's ``app.py`` does not have it yet), started by a small launcher instead of
``python -m services.<name>``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from contracts.events import ConsentEvent, ConsentEvidence, PolicyChange
from contracts.policy import LawfulBasis, PolicyDocument, PolicyRule, WithdrawalEffect
from contracts.policy import WithdrawalRequires as Requires
from contracts.topics import CONSENT_EVENTS, POLICIES
from contracts.vocabulary import ConsentMechanism, ConsentState
from services.deletion.verify_evidence import verify_bundle
from services.runtime import embedded
from services.runtime.messages import encode_event
from services.runtime.testing import (
    REPO_ROOT,
    PostgresProxy,
    ServiceProcess,
    migrate_service,
    produce,
)

pytestmark = pytest.mark.integration

T0 = datetime(2024, 1, 1, tzinfo=UTC)
GRANTED_AT = datetime(2024, 1, 2, tzinfo=UTC)
PRODUCER = "https://github.com/OpenLineage/OpenLineage/tree/1.0.0/client/python"
SECRET = "crm-shared-secret-" + "x" * 24
REQUESTER, APPROVER = "legal:ann", "legal:bob"

LAUNCHER = r"""
import importlib, sys
from dataclasses import replace

from contracts.topics import DELETION_TASKS, TASK_RESULTS
from services.runtime.cli import main
from services.runtime.consumer import Subscription

def get(path):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)

WIRING = {
    "registry": {
        "routers": ["services.registry.entrypoints.composition_http:router"],
        "subscriptions": [(DELETION_TASKS, "services.registry.service.purge:on_deletion_task")],
        "publishes": [TASK_RESULTS],
    },
    "lineage": {
        "routers": [
            "services.lineage.entrypoints.graph_http:router",
            "services.lineage.entrypoints.models_http:router",
        ],
        "subscriptions": [(DELETION_TASKS, "services.lineage.service.executor:on_deletion_task")],
        "publishes": [TASK_RESULTS],
    },
    "deletion": {
        "routers": [
            "services.deletion.entrypoints.execution_http:router",
            "services.deletion.entrypoints.execution_http:acknowledgement_router",
        ],
        "subscriptions": [(TASK_RESULTS, "services.deletion.service.execution:on_task_result")],
        "workers": [
            "services.deletion.service.webhooks:WEBHOOK_WORKER",
            "services.deletion.service.execution:VERIFICATION_WORKER",
        ],
        "publishes": [DELETION_TASKS, TASK_RESULTS],
        "access": "services.deletion.entrypoints.execution_http:EXECUTION_ACCESS",
    },
}

name = sys.argv[1]
spec = importlib.import_module(f"services.{name}.app").SPEC
wiring = WIRING[name]
routers = list(spec.routers)
for path in wiring.get("routers", ()):
    router = get(path)
    if all(r is not router for r in routers):
        routers.append(router)
subscriptions = list(spec.subscriptions)
for topic, handler in wiring.get("subscriptions", ()):
    if all(s.topic.name != topic.name for s in subscriptions):
        subscriptions.append(Subscription(topic, get(handler)))
workers = list(spec.workers)
for path in wiring.get("workers", ()):
    worker = get(path)
    if all(w.name != worker.name for w in workers):
        workers.append(worker)
publishes = list(spec.publishes)
publishes += [t for t in wiring.get("publishes", ()) if all(p.name != t.name for p in publishes)]
changes = dict(routers=tuple(routers), subscriptions=tuple(subscriptions),
               workers=tuple(workers), publishes=tuple(publishes))
if getattr(spec, "access", None) is not None and "access" in wiring:
    changes["access"] = {**get(wiring["access"]), **spec.access}
raise SystemExit(main(replace(spec, **changes), ["serve"]))
"""


@dataclass
class WiredProcess(ServiceProcess):
    """A service process started by ``LAUNCHER`` (its spec with this change's wiring)."""

    def start(self) -> WiredProcess:
        env = {**os.environ, **self.env(), "HTTP_PORT": str(self.port)}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
        )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, self.name],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO_ROOT,
                start_new_session=True,
            )
        return self


# --- the webhook system ---------------------------------------------------------------------


def signed(secret: str, body: bytes) -> dict[str, str]:
    """Headers signing ``body`` as the README says (written here independently)."""
    timestamp = str(int(time.time()))
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return {
        "X-ConsentTrace-Timestamp": timestamp,
        "X-ConsentTrace-Signature": f"v1={digest.hexdigest()}",
        "Content-Type": "application/json",
    }


@dataclass
class WebhookSystem:
    """Answers deliveries as planned per subject; by default accepts (202) and calls back
    ``done``, signed. Checks every delivery's signature."""

    name: str
    secret: str
    deletion_url: str = ""
    port: int = field(default_factory=embedded.free_port)
    plans: dict[str, list[Any]] = field(default_factory=dict)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    callbacks: list[httpx.Response] = field(default_factory=list)
    bad_signatures: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def of(self, subject: str) -> list[dict[str, Any]]:
        return [d for d in self.deliveries if f"subject:{subject}" in d["task"]["targets"]]

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hook")
        async def hook(request: Request) -> Response:
            body = await request.body()
            timestamp = request.headers["X-ConsentTrace-Timestamp"]
            expected = hmac.new(
                self.secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256
            ).hexdigest()
            if (
                not hmac.compare_digest(
                    f"v1={expected}", request.headers["X-ConsentTrace-Signature"]
                )
                or abs(time.time() - int(timestamp)) > 300
            ):
                self.bad_signatures += 1
                return Response(status_code=401)
            task = json.loads(body)
            self.deliveries.append({"task": task, "headers": dict(request.headers)})
            plan = next((self.plans[t] for t in task["targets"] if self.plans.get(t)), ["accept"])
            step = plan.pop(0) if len(plan) > 1 else plan[0]
            if isinstance(step, int):
                return Response(status_code=step)
            if isinstance(step, dict):
                return JSONResponse(step)
            job = asyncio.create_task(self._call_back(task))
            self._tasks.add(job)
            job.add_done_callback(self._tasks.discard)
            return Response(status_code=202)

        return app

    async def _call_back(self, task: dict[str, Any]) -> None:
        await asyncio.sleep(0.2)
        body = json.dumps(
            {"task_id": task["task_id"], "outcome": "done", "reason": f"erased in {self.name}"}
        ).encode()
        headers = {**signed(self.secret, body), "X-ConsentTrace-System": self.name}
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(
                f"{self.deletion_url}/api/v1/task-acknowledgements", content=body, headers=headers
            )
        self.callbacks.append(response)


# --- the world ------------------------------------------------------------------------------


@dataclass
class World:
    tag: str
    purpose: str
    bootstrap: str
    registry: ServiceProcess
    lineage: ServiceProcess
    deletion: ServiceProcess
    reg: httpx.AsyncClient
    lin: httpx.AsyncClient
    dele: httpx.AsyncClient
    reg_db: asyncpg.Pool
    del_db: asyncpg.Pool
    crm: WebhookSystem
    lineage_link: PostgresProxy
    """Deletion reaches lineage through this TCP forwarder (a test can cut it)."""

    def subject(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def dataset(self, name: str) -> dict[str, str]:
        return {"namespace": "s3://deletion-test", "name": f"{self.tag}/{name}", "version": "1"}

    def model(self, name: str) -> dict[str, str]:
        return {"namespace": "models://ml", "name": f"{self.tag}-{name}", "version": "1"}

    async def case(self, case_id: str) -> dict[str, Any]:
        response = await self.dele.get(f"/api/v1/cases/{case_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def do(self, case_id: str, command: str, actor: str, reason: str = "r") -> httpx.Response:
        return await self.dele.post(
            f"/api/v1/cases/{case_id}/actions",
            json={"command": command, "actor": actor, "reason": reason},
        )

    async def scope(self, case_id: str) -> dict[str, Any]:
        response = await self.dele.post(
            f"/api/v1/cases/{case_id}/scope", json={"actor": REQUESTER, "reason": "scope it"}
        )
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def execution(self, case_id: str) -> dict[str, Any]:
        response = await self.dele.get(f"/api/v1/cases/{case_id}/execution")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def reaches(self, case_id: str, state: str, within: float = 60) -> dict[str, Any]:
        async def there() -> bool:
            return (await self.case(case_id))["state"] == state

        await wait_for(there, within, f"case {case_id} {state} (log: {self.deletion.log_path})")
        return await self.case(case_id)

    async def evidence(self, case_id: str) -> list[dict[str, Any]]:
        response = await self.dele.get(f"/api/v1/cases/{case_id}/evidence")
        assert response.status_code == 200, response.text
        return list(response.json())

    async def open_erasure(self, subject: str) -> str:
        response = await self.dele.post(
            "/api/v1/cases",
            json={
                "kind": "subject_erasure",
                "legal_basis": "GDPR Art. 17",
                "regime": "gdpr",
                "requester": REQUESTER,
                "scope": {"subject_ids": [self.subject(subject)]},
            },
        )
        assert response.status_code == 201, response.text
        return str(response.json()["case_id"])

    async def records_of(self, subject: str) -> int:
        return int(
            await self.reg_db.fetchval(
                "SELECT count(*) FROM records WHERE subject_id = $1", self.subject(subject)
            )
        )


async def wait_for(probe: Callable[[], Awaitable[object]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.2)


def kafka_record(topic: Any, body: Any, key: str) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    message = encode_event(topic, body, key=key, source="/test")
    assert message.key is not None
    return message.key, message.value, list(message.headers)


def policy(tag: str, purpose: str) -> PolicyDocument:
    def rule(rule_id: str, category: str, requires: Requires) -> PolicyRule:
        return PolicyRule(
            id=rule_id,
            jurisdictions=("*",),
            purposes=(purpose,),
            data_categories=(category,),
            lawful_bases=(LawfulBasis(mechanism=ConsentMechanism.EXPLICIT_OPT_IN),),
            withdrawal=WithdrawalEffect(requires=requires),
        )

    return PolicyDocument(
        policy_id=f"dx-{tag}",
        version="1",
        valid_from=T0,
        rules=(
            rule("content", "user.content", Requires.RETRAIN),
            rule("private", "user.content.private", Requires.DESTROY),
        ),
    )


def consent(
    world_tag: str, subject: str, state: ConsentState, at: datetime, purpose: str, **kw: Any
) -> ConsentEvent:
    return ConsentEvent(
        consent_event_id=uuid.uuid4(),
        subject_id=f"{world_tag}-{subject}",
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
        **kw,
    )


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


HOLDINGS = {
    "posts": {"ann": ["user.content.private", "user.content.public"], "bob": ["user.content"]},
    "notes": {"cat": ["user.content.public"], "dan": ["user.content.public"]},
}


async def register(world: World, name: str) -> None:
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
                for subject, categories in HOLDINGS[name].items()
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


async def train(world: World, job: str, dataset: str, model: str) -> None:
    response = await world.lin.post(
        "/api/v1/lineage",
        json={
            "eventType": "COMPLETE",
            "eventTime": datetime.now(UTC).isoformat(),
            "producer": PRODUCER,
            "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
            "run": {"runId": str(uuid.uuid4())},
            "job": {"namespace": "ml-pipelines", "name": f"{world.tag}-{job}"},
            "inputs": [ol_dataset(world.dataset(dataset), "DATASET")],
            "outputs": [ol_dataset(world.model(model), "MODEL")],
        },
    )
    assert response.status_code == 201, response.text


@pytest.fixture(scope="module")
async def world(
    make_database: Callable[[str], str],
    kafka_bootstrap: str,
    kafka_idempotence: bool,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[World]:
    tag = f"dx{uuid.uuid4().hex[:8]}"
    purpose = f"{tag}.training"
    log_dir: Path = tmp_path_factory.mktemp("deletion-execution")
    databases = {}
    for name in ("registry", "lineage", "deletion"):
        databases[name] = make_database(name)
        migrate_service(name, databases[name])

    def process(name: str, **env: str) -> WiredProcess:
        return WiredProcess(
            name,
            databases[name],
            kafka_bootstrap,
            log_dir,
            idempotence=kafka_idempotence,
            extra_env=env,
        )

    registry = process("registry")
    lineage = process("lineage", REGISTRY_URL=registry.url)
    lineage_link = PostgresProxy("127.0.0.1", lineage.port)
    await lineage_link.open()
    deletion = process(
        "deletion",
        REGISTRY_URL=registry.url,
        LINEAGE_URL=f"http://127.0.0.1:{lineage_link.port}",
    )
    crm = WebhookSystem("crm", SECRET, deletion_url=deletion.url)
    server = uvicorn.Server(
        uvicorn.Config(crm.app(), host="127.0.0.1", port=crm.port, log_level="warning")
    )
    serving = asyncio.create_task(server.serve())
    services = (registry, lineage, deletion)
    for service in services:
        service.start()
    try:
        await produce(
            kafka_bootstrap,
            POLICIES.name,
            [
                kafka_record(
                    POLICIES,
                    PolicyChange(policy=policy(tag, purpose), published_at=T0),
                    f"dx-{tag}",
                )
            ],
        )
        grants = [
            consent(tag, s, ConsentState.GRANTED, GRANTED_AT, purpose) for s in ("ann", "bob")
        ]
        await produce(
            kafka_bootstrap,
            CONSENT_EVENTS.name,
            [kafka_record(CONSENT_EVENTS, e, e.subject_id) for e in grants],
        )
        reg_db = await asyncpg.create_pool(databases["registry"], min_size=1, max_size=2)
        del_db = await asyncpg.create_pool(databases["deletion"], min_size=1, max_size=2)
        try:
            await asyncio.gather(*(asyncio.to_thread(s.wait_ready) for s in services))
            await wait_for(lambda: asyncio.sleep(0, server.started), 10, "the webhook system")

            async def projected() -> bool:
                return bool(
                    await reg_db.fetchval(
                        "SELECT count(*) = 1 FROM policy_versions WHERE policy_id = $1",
                        f"dx-{tag}",
                    )
                    and await reg_db.fetchval(
                        "SELECT count(*) = 2 FROM consent_projection WHERE subject_id LIKE $1",
                        f"{tag}-%",
                    )
                )

            await wait_for(projected, 90, f"the registry to project (log: {registry.log_path})")
            async with (
                httpx.AsyncClient(base_url=registry.url, timeout=30) as reg,
                httpx.AsyncClient(base_url=lineage.url, timeout=30) as lin,
                httpx.AsyncClient(base_url=deletion.url, timeout=60) as dele,
            ):
                w = World(
                    tag,
                    purpose,
                    kafka_bootstrap,
                    registry,
                    lineage,
                    deletion,
                    reg,
                    lin,
                    dele,
                    reg_db,
                    del_db,
                    crm,
                    lineage_link,
                )
                for name in HOLDINGS:
                    await register(w, name)
                await train(w, "train-chat", "posts", "chat")
                registered = await dele.put(
                    "/api/v1/webhook-systems/crm",
                    json={
                        "url": crm.url,
                        "secret": SECRET,
                        "case_kinds": ["subject_erasure"],
                        "actor": "platform:ops",
                    },
                )
                assert registered.status_code == 201, registered.text
                assert "secret" not in registered.json()
                yield w
        finally:
            await reg_db.close()
            await del_db.close()
    finally:
        for service in services:
            service.stop()
        server.should_exit = True
        await serving
        await lineage_link.cut()


# --- the scenarios ----------------------------------------------------------------------------


async def test_an_erasure_goes_from_request_to_verified_completion(world: World) -> None:
    ann = world.subject("ann")
    chat_key = "model:models://ml:{}#1".format(world.model("chat")["name"])
    posts_key = "dataset:s3://deletion-test:{}#1".format(world.dataset("posts")["name"])
    # the withdrawal asks for erasure, and arrives twice (a producer's retry: a new event id)
    withdrawal = consent(
        world.tag,
        "ann",
        ConsentState.WITHDRAWN,
        datetime.now(UTC),
        world.purpose,
        erasure_requested=True,
    )
    record = kafka_record(CONSENT_EVENTS, withdrawal, withdrawal.subject_id)
    again = kafka_record(CONSENT_EVENTS, withdrawal, withdrawal.subject_id)
    await produce(world.bootstrap, CONSENT_EVENTS.name, [record, again])

    async def opened() -> bool:
        causes = await world.del_db.fetch(
            "SELECT kind, cause_key FROM cases WHERE cause_key LIKE $1 OR cause_key = $2",
            f"erasure:{ann}:%",
            f"model:{chat_key}",
        )
        return {r["kind"] for r in causes} == {"subject_erasure", "model_destruction"}

    await wait_for(opened, 90, f"both cases opened (log: {world.deletion.log_path})")
    # the model's two flags (destroy for private messages, retrain for posts) and the
    # duplicate withdrawal each opened nothing more
    await asyncio.sleep(2)
    rows = await world.del_db.fetch(
        "SELECT case_id, kind, scope FROM cases WHERE cause_key LIKE $1 OR cause_key = $2",
        f"erasure:{ann}:%",
        f"model:{chat_key}",
    )
    assert sorted(r["kind"] for r in rows) == ["model_destruction", "subject_erasure"]
    flags = await world.lin.get("/api/v1/model-flags", params=world.model("chat"))
    assert len([f for f in flags.json() if f["flag"]["status"] == "active"]) == 2
    case_id = str(next(r["case_id"] for r in rows if r["kind"] == "subject_erasure"))

    scoped = await world.scope(case_id)
    assert scoped["state"] == "awaiting_approval"
    targets = scoped["targets"]
    assert [v["key"] for v in targets["dataset_versions"]] == [posts_key]
    assert targets["dataset_versions"][0]["records"] == 2
    assert [(m["key"], m["action"], m["relation"]) for m in targets["models"]] == [
        (chat_key, "destroyed", "direct")
    ]
    assert targets["systems"] == ["crm"]
    refused = await world.do(case_id, "approve", scoped["requester"])
    assert refused.status_code == 409 and "four eyes" in refused.json()["detail"]

    world.crm.plans[f"subject:{ann}"] = [503, "accept"]  # the first delivery is refused
    approved = await world.do(case_id, "approve", APPROVER, "erasure is due")
    assert approved.status_code == 200, approved.text
    assert approved.json()["state"] == "executing"
    assert {t["system"] for t in approved.json()["execution"]["tasks"]} == {
        "registry",
        "lineage",
        "crm",
    }

    done = await world.reaches(case_id, "completed", within=90)
    assert done["execution"]["missing"] == []
    assert done["execution"]["verification"]["confirmed"] is True
    assert {t["state"] for t in done["execution"]["tasks"]} == {"done"}

    # the registry: ann's records and memberships gone, the manifest rebuilt, her
    # contributions gone: every finding on the version is retracted (bob withdrew nothing)
    assert await world.records_of("ann") == 0
    assert await world.records_of("bob") == 1
    version = await world.reg.get("/api/v1/dataset-version", params=world.dataset("posts"))
    assert version.json()["record_count"] == 1
    subject = await world.reg.get("/api/v1/dataset-versions", params={"subject_id": ann})
    assert subject.json() == []
    findings = await world.reg.get("/api/v1/findings", params=world.dataset("posts"))
    mine = [f["finding"] for f in findings.json() if f["finding"]["policy_id"] == f"dx-{world.tag}"]
    assert mine and {f["status"] for f in mine} == {"retracted"}
    # lineage: the model destroyed, by the deletion case
    status = await world.lin.get("/api/v1/model-status", params=world.model("chat"))
    assert status.json()["explicit_status"] == "destroyed"
    assert status.json()["history"][-1]["actor"] == f"deletion:{case_id}"
    # the webhook system: refused once, then accepted, signed every time, called back
    deliveries = world.crm.of(ann)
    assert len(deliveries) == 2 and world.crm.bad_signatures == 0
    assert deliveries[0]["headers"]["x-consenttrace-delivery"] == "1"
    assert deliveries[1]["headers"]["x-consenttrace-delivery"] == "2"
    assert [c.status_code for c in world.crm.callbacks] == [202]
    view = await world.execution(case_id)
    crm_task = next(t for t in view["tasks"] if t["system"] == "crm")
    assert [d["status_code"] for d in crm_task["delivery_log"]] == [503, 202]

    kinds = [e["kind"] for e in await world.evidence(case_id)]
    assert kinds[:4] == ["opened", "start_scoping", "scope_frozen", "submit_scope"]
    assert kinds[4:7] == ["approve", "start_execution", "tasks_sent"]
    assert kinds.count("task_acknowledged") == 3 and "task_delivered" in kinds
    assert kinds[-4:] == ["task_acknowledged", "start_verification", "verification", "complete"]
    frozen = next(e for e in await world.evidence(case_id) if e["kind"] == "scope_frozen")
    assert frozen["data"]["targets"] == targets
    bundle = await world.dele.get(f"/api/v1/cases/{case_id}/evidence/bundle")
    assert verify_bundle(bundle.content)["case"]["state"] == "completed"


async def test_a_held_case_executes_nothing(world: World) -> None:
    case_id = await world.open_erasure("cat")
    assert (await world.scope(case_id))["state"] == "awaiting_approval"
    held = await world.do(case_id, "hold", "legal:counsel", "litigation hold #7")
    assert held.json()["state"] == "on_hold"
    refused = await world.do(case_id, "approve", APPROVER)
    assert refused.status_code == 409 and "on hold" in refused.json()["detail"]
    await asyncio.sleep(1)
    assert (await world.execution(case_id))["tasks"] == []
    cat = world.subject("cat")
    assert world.crm.of(cat) == [] and await world.records_of("cat") == 1

    # held while executing: a refused delivery is not sent again until the release
    world.crm.plans[f"subject:{cat}"] = [503, "accept"]
    assert (await world.do(case_id, "release", "legal:counsel")).status_code == 200
    assert (await world.do(case_id, "approve", APPROVER)).json()["state"] == "executing"

    async def refused_once() -> bool:
        return len(world.crm.of(cat)) == 1

    await wait_for(refused_once, 30, "the first delivery")
    again = await world.do(case_id, "hold", "legal:counsel", "new matter #8")
    assert again.status_code == 200, again.text
    await asyncio.sleep(6)  # the retry was due after ~2 s
    assert len(world.crm.of(cat)) == 1
    assert (await world.case(case_id))["state"] == "on_hold"
    assert (await world.do(case_id, "release", "legal:counsel")).status_code == 200
    done = await world.reaches(case_id, "completed", within=60)
    assert len(world.crm.of(cat)) == 2
    assert await world.records_of("cat") == 0
    history = [h["to_state"] for h in done["history"]]
    assert history.count("on_hold") == 2


async def test_a_failed_task_is_resumed_alone(world: World) -> None:
    dan = world.subject("dan")
    world.crm.plans[f"subject:{dan}"] = [
        {"outcome": "failed", "reason": "mailbox locked"},
        "accept",
    ]
    case_id = await world.open_erasure("dan")
    await world.scope(case_id)
    assert (await world.do(case_id, "approve", APPROVER)).status_code == 200
    failed = await world.reaches(case_id, "failed")
    assert "mailbox locked" in failed["history"][-1]["reason"]
    assert failed["failed_step"] == "executing"

    async def registry_acknowledged() -> bool:
        tasks = (await world.execution(case_id))["tasks"]
        return any(t["system"] == "registry" and t["state"] == "done" for t in tasks)

    await wait_for(registry_acknowledged, 30, "the registry's acknowledgement")
    before = {t["system"]: t for t in (await world.execution(case_id))["tasks"]}
    resumed = await world.do(case_id, "resume", REQUESTER, "mailbox unlocked")
    assert resumed.status_code == 200 and resumed.json()["state"] == "executing"
    await world.reaches(case_id, "completed")
    after = {t["system"]: t for t in (await world.execution(case_id))["tasks"]}
    assert after["registry"]["task_id"] == before["registry"]["task_id"]
    assert after["registry"]["attempt"] == 1
    assert after["crm"]["attempt"] == 2 and after["crm"]["task_id"] != before["crm"]["task_id"]
    assert [d["task"]["task_id"] for d in world.crm.of(dan)] == [
        before["crm"]["task_id"],
        after["crm"]["task_id"],
    ]
    sent = [e["data"] for e in await world.evidence(case_id) if e["kind"] == "tasks_sent"]
    assert [[t["system"] for t in s["tasks"]] for s in sent] == [["registry", "crm"], ["crm"]]
    assert sent[1]["resent"] and sent[1]["tasks"][0]["failed_with"] == "mailbox locked"


async def test_scoping_fails_while_a_service_is_unreachable_and_resumes(world: World) -> None:
    case_id = await world.open_erasure("bob")
    await world.lineage_link.cut()
    try:
        response = await world.dele.post(
            f"/api/v1/cases/{case_id}/scope", json={"actor": REQUESTER}
        )
    finally:
        await world.lineage_link.open()
    assert response.status_code == 503, response.text
    assert "lineage" in response.json()["detail"]
    case = response.json()["case"]
    assert (case["state"], case["failed_step"], case["targets"]) == ("failed", "scoping", None)
    scoped = await world.scope(case_id)  # asking again resumes it
    assert scoped["state"] == "awaiting_approval" and scoped["targets"]["models"]
    kinds = [e["kind"] for e in await world.evidence(case_id)]
    assert kinds == [
        "opened",
        "start_scoping",
        "fail",
        "resume",
        "scope_frozen",
        "submit_scope",
    ]


async def test_a_case_never_scoped_is_approved_but_not_executed(world: World) -> None:
    case_id = await world.open_erasure("eve")
    for command, actor in (("start_scoping", REQUESTER), ("submit_scope", REQUESTER)):
        assert (await world.do(case_id, command, actor)).status_code == 200
    approved = await world.do(case_id, "approve", APPROVER)
    assert approved.json()["state"] == "approved" and approved.json()["targets"] is None
    refused = await world.do(case_id, "start_execution", REQUESTER)
    assert refused.status_code == 409 and "never frozen" in refused.json()["detail"]
    assert (await world.execution(case_id))["tasks"] == []
