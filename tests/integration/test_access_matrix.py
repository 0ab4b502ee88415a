"""The whole role-by-endpoint matrix, against the four services as real processes with auth on.

One key per role. Every route of every service (enumerated from the routers each service
serves, and checked against the live OpenAPI document, so a new route is covered the day it
is added) is called with each key, with an unknown key and with none:

- a role the access table allows is never answered 401 or 403 (a 404 or a 422 for the
  empty body and made-up ids is fine: the request got past the check);
- any other role gets 403 from the check itself, naming the roles allowed;
- no key, or an unknown one, gets 401 with a ``WWW-Authenticate: Bearer`` challenge;
- health, metrics and the API description answer without a key.

Then what the matrix cannot see: four eyes with real keys on a deletion case, and the
``openlineage-python`` client authenticating with its ``api_key`` as an ``ml_writer``.
"""

from __future__ import annotations

import contextlib
import importlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
from openlineage.client.transport.http import ApiKeyTokenProvider, HttpConfig, HttpTransport
from starlette.convertors import IntegerConvertor, PathConvertor

from services.runtime.auth import Role, Rule
from services.runtime.testing import DevKeys, ServiceProcess, StartStack, role_keys

pytestmark = pytest.mark.integration

SERVICES = ("consent", "registry", "lineage", "deletion")
NO_KEY, BAD_KEY = "no key", "unknown key"


@dataclass(frozen=True)
class Endpoint:
    service: str
    method: str
    template: str
    url_path: str
    rule: Rule


@dataclass
class Stack:
    keys: DevKeys
    services: dict[str, ServiceProcess]

    def url(self, service: str) -> str:
        return self.services[service].url


@pytest.fixture(scope="module")
def stack(start_stack: StartStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    keys, auth_env = role_keys(Path(tmp_path_factory.mktemp("access-matrix-keys")))
    with start_stack(SERVICES, "access", auth_env) as services:
        yield Stack(keys, services)


def _path_value(name: str, convertor: object) -> str:
    if isinstance(convertor, IntegerConvertor) or name == "chunk":
        return "0"
    if isinstance(convertor, PathConvertor):
        return "some/record"
    return str(uuid.uuid4())


def endpoints(service: str) -> list[Endpoint]:
    """Every (method, route) the service's app serves, with the rule its table gives."""
    spec = importlib.import_module(f"services.{service}.app").SPEC
    table = importlib.import_module(f"services.{service}.access").ACCESS
    found = []
    for router in spec.routers:
        for route in router.routes:
            path = route.path_format
            for name, convertor in route.param_convertors.items():
                path = path.replace(f"{{{name}}}", _path_value(name, convertor))
            for method in sorted(set(route.methods) - {"HEAD"}):
                key = (method, route.path_format)
                assert key in table, f"{service}: {method} {route.path_format} has no entry"
                found.append(Endpoint(service, method, route.path_format, path, table[key]))
    return found


def headers_for(stack: Stack, who: Role | str) -> dict[str, str]:
    if who == NO_KEY:
        return {}
    if who == BAD_KEY:
        return {"Authorization": "Bearer ct_this-key-was-never-issued"}
    return stack.keys.headers(who)


async def call(
    client: httpx.AsyncClient, endpoint: Endpoint, headers: dict[str, str]
) -> httpx.Response:
    body: dict[str, Any] = {}
    if endpoint.method in ("POST", "PUT", "PATCH"):
        body["json"] = {}
    return await client.request(endpoint.method, endpoint.url_path, headers=headers, **body)


async def test_every_role_on_every_endpoint_of_every_service(stack: Stack) -> None:
    checked, problems = 0, []
    for service in SERVICES:
        async with httpx.AsyncClient(base_url=stack.url(service), timeout=30) as client:
            for endpoint in endpoints(service):
                for who in (*Role, NO_KEY, BAD_KEY):
                    answer = await call(client, endpoint, headers_for(stack, who))
                    checked += 1
                    what = f"{service} {endpoint.method} {endpoint.template} as {who}"
                    if who in (NO_KEY, BAD_KEY):
                        ok = answer.status_code == 401 and answer.headers.get(
                            "www-authenticate", ""
                        ).startswith("Bearer")
                    elif who in endpoint.rule.roles:
                        ok = answer.status_code not in (401, 403)
                    else:
                        ok = answer.status_code == 403 and answer.json().get(
                            "roles_allowed"
                        ) == sorted(endpoint.rule.roles)
                    if not ok:
                        problems.append(f"{what}: {answer.status_code} {answer.text[:200]}")
    assert problems == [], "\n".join(problems)
    assert checked == (len(Role) + 2) * sum(len(endpoints(s)) for s in SERVICES)
    assert all(endpoints(s) for s in SERVICES)


async def test_the_live_openapi_lists_no_endpoint_the_matrix_missed_and_states_roles(
    stack: Stack,
) -> None:
    for service in SERVICES:
        known = {(e.method, e.template): e.rule for e in endpoints(service)}
        spec = importlib.import_module(f"services.{service}.app").SPEC
        opened = {r.path_format for router in spec.open_routers for r in router.routes}
        async with httpx.AsyncClient(base_url=stack.url(service), timeout=30) as client:
            document = (await client.get("/openapi.json")).json()
        assert {"apiKeyBearer", "apiKeyHeader"} <= set(document["components"]["securitySchemes"])
        for path, operations in document["paths"].items():
            for method, operation in operations.items():
                if path.startswith("/health/") or path in opened:
                    assert "security" not in operation, f"{service} {path} is open by design"
                    continue
                rule = known.get((method.upper(), path))
                assert rule is not None, f"{service}: {method.upper()} {path} not enumerated"
                assert operation["x-roles"] == sorted(rule.roles)
                assert "**Roles:**" in operation["description"]
                assert operation["security"]


async def test_probes_metrics_and_docs_answer_without_a_key(stack: Stack) -> None:
    for service in SERVICES:
        async with httpx.AsyncClient(base_url=stack.url(service), timeout=30) as client:
            for path in ("/health/live", "/health/ready", "/metrics", "/docs", "/openapi.json"):
                assert (await client.get(path)).status_code == 200, f"{service} {path}"


# --- four eyes with real keys --------------------------------------------------------------


@pytest.fixture
async def deletion(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url("deletion"), timeout=30) as client:
        yield client


async def test_the_actors_of_a_case_are_the_keys_principals(
    stack: Stack, deletion: httpx.AsyncClient
) -> None:
    requester, approver = (
        stack.keys.headers(Role.LEGAL_REQUESTER),
        stack.keys.headers(Role.LEGAL_APPROVER),
    )
    admin = stack.keys.headers(Role.PLATFORM_ADMIN)
    case = {
        "kind": "subject_erasure",
        "legal_basis": "GDPR Art. 17",
        "regime": "gdpr",
        "scope": {"subject_ids": [f"member-{uuid.uuid4().hex[:8]}"]},
    }
    in_another_name = await deletion.post(
        "/api/v1/cases", json={**case, "requester": "legal:someone-else"}, headers=requester
    )
    assert in_another_name.status_code == 403, in_another_name.text
    opened = await deletion.post("/api/v1/cases", json=case, headers=requester)
    assert opened.status_code == 201, opened.text
    assert opened.json()["requester"] == "dev-legal-requester"
    actions = f"/api/v1/cases/{opened.json()['case_id']}/actions"

    async def act(command: str, headers: dict[str, str], **extra: Any) -> httpx.Response:
        return await deletion.post(
            actions, json={"command": command, "reason": "r", **extra}, headers=headers
        )

    assert (await act("start_scoping", approver)).status_code == 403, "scoping is the requester's"
    assert (await act("start_scoping", requester)).status_code == 200
    assert (await act("submit_scope", requester)).status_code == 200
    by_requester = await act("approve", requester)
    assert by_requester.status_code == 403 and "legal_approver" in by_requester.json()["detail"]
    by_admin = await act("approve", admin)
    assert by_admin.status_code == 403, "platform_admin never approves"
    posing = await act("approve", approver, actor="dev-legal-requester")
    assert posing.status_code == 403 and "someone else" in posing.json()["detail"]
    approved = await act("approve", approver)
    assert approved.status_code == 200, approved.text
    assert approved.json()["approved_by"] == "dev-legal-approver"
    # Never scoped (no POST …/scope): nothing to execute, whoever asks.
    started = await act("start_execution", admin)
    assert started.status_code == 409 and "scope" in started.json()["detail"]
    evidence = await deletion.get(f"{actions.rsplit('/', 1)[0]}/evidence", headers=admin)
    assert evidence.status_code == 200
    assert {"dev-legal-requester", "dev-legal-approver"} <= {
        entry.get("actor") for entry in evidence.json()
    }


# --- ML pipelines authenticate with the openlineage-python client's api_key -------------------


def test_the_openlineage_client_posts_lineage_with_an_ml_writer_key(stack: Stack) -> None:
    statuses: list[int] = []

    def client_with(key: str) -> OpenLineageClient:
        session = requests.Session()
        session.hooks["response"].append(lambda r, *a, **k: statuses.append(r.status_code))
        config = HttpConfig(
            url=stack.url("lineage"), session=session, auth=ApiKeyTokenProvider({"apiKey": key})
        )
        return OpenLineageClient(transport=HttpTransport(config))

    event = RunEvent(
        eventType=RunState.START,
        eventTime=datetime.now(UTC).isoformat(),
        run=Run(runId=str(uuid.uuid4())),
        job=Job(namespace=f"ml-{uuid.uuid4().hex[:8]}", name="train"),
        producer="https://github.com/acme/ml-pipelines",
    )
    client_with(stack.keys.keys[Role.ML_WRITER.value]).emit(event)
    with contextlib.suppress(Exception):  # the client may raise on a 4xx: the status counts
        client_with(stack.keys.keys[Role.ML_READER.value]).emit(event)
    assert statuses == [201, 403]


async def test_a_service_key_reads_the_registry_as_ml_reader(stack: Stack) -> None:
    headers = {"Authorization": f"Bearer {stack.keys.service_key}"}
    async with httpx.AsyncClient(base_url=stack.url("registry"), timeout=30) as client:
        composition = await client.get(
            "/api/v1/dataset-version/composition",
            params={"namespace": "s3://x", "name": "y", "version": "1"},
            headers=headers,
        )
        register = await client.post("/api/v1/dataset-versions", json={}, headers=headers)
    assert composition.status_code == 404  # past the check: no such version
    assert register.status_code == 403


def test_matrix_helpers_fill_every_template() -> None:
    for service in SERVICES:
        for endpoint in endpoints(service):
            assert "{" not in endpoint.url_path, endpoint
