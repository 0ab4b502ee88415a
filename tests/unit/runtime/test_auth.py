"""API keys and roles (services.runtime.auth): key files and hashing, 401 against 403, deny
by default, open probes and docs, the actor taken from the key, the OpenAPI statement of
each endpoint's roles, and the four services' access tables against their routes."""

from __future__ import annotations

import importlib
import json
import logging
import pkgutil
import stat
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import BaseModel

from services.deletion.domain.workflow import Command
from services.runtime import auth, devstack
from services.runtime.auth import (
    AccessGuard,
    AccessTableError,
    AuthConfigError,
    AuthMiddleware,
    KeyStore,
    Role,
    actor_of,
    allow,
    hash_key,
    new_key,
    parse_keys,
    require_roles,
)
from services.runtime.host import ServiceSpec, create_app
from services.runtime.settings import ServiceSettings
from services.runtime.testing import ServiceProcess

SERVICES = ("consent", "registry", "lineage", "deletion")

KEYS = {role: new_key() for role in Role}
KEYS_JSON = json.dumps(
    {
        "keys": [
            {"principal": f"p-{role.value}", "roles": [role.value], "sha256": hash_key(key)}
            for role, key in KEYS.items()
        ]
    }
)


def bearer(role: Role) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


# --- a small service to exercise the runtime's check -------------------------------------


class Item(BaseModel):
    name: str


class Act(BaseModel):
    command: str
    actor: str | None = None


router = APIRouter(prefix="/api/v1")


@router.get("/items/{item_id}")
async def get_item(item_id: str) -> dict[str, str]:
    """Read one item."""
    return {"item": item_id}


@router.post("/items", status_code=201)
async def post_item(item: Item) -> dict[str, str]:
    return {"created": item.name}


@router.post("/acts")
async def post_act(body: Act, request: Request) -> dict[str, str]:
    actor = actor_of(request, body.actor)
    if body.command == "approve":
        require_roles(request, {Role.LEGAL_APPROVER}, "approve")
    return {"actor": actor, "command": body.command}


TABLE = {
    ("GET", "/api/v1/items/{item_id}"): allow(Role.ML_READER, Role.ML_WRITER),
    ("POST", "/api/v1/items"): allow(Role.ML_WRITER, note="Writers only."),
    ("POST", "/api/v1/acts"): allow(Role.LEGAL_REQUESTER, Role.LEGAL_APPROVER),
}


def spec(table: Any = TABLE, routers: tuple[APIRouter, ...] = (router,)) -> ServiceSpec:
    return ServiceSpec(
        name="demo",
        title="demo",
        description="demo",
        migrations=Path("."),
        routers=routers,
        access=table,
    )


def settings(**overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {
        "service_name": "demo",
        "auth_mode": "api_keys",
        "api_keys": KEYS_JSON,
    }
    values.update(overrides)
    return ServiceSettings(**values)


@pytest.fixture
def client() -> TestClient:
    return TestClient(create_app(spec(), settings()))  # no lifespan: nothing connects


# --- keys --------------------------------------------------------------------------------


def test_a_new_key_is_prefixed_and_random_and_its_hash_is_sha256_hex() -> None:
    key = new_key()
    assert key.startswith("ct_") and len(key) >= 40 and key != new_key()
    assert hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_key_lists_are_json_or_yaml_an_object_or_a_bare_list() -> None:
    digest = hash_key("k")
    as_json = parse_keys(
        json.dumps({"keys": [{"principal": "a", "roles": ["ml_reader"], "sha256": digest}]}), "t"
    )
    as_list = parse_keys(
        json.dumps([{"principal": "a", "roles": ["ml_reader"], "sha256": digest.upper()}]), "t"
    )
    as_yaml = parse_keys(
        f"keys:\n  - principal: a\n    roles: [ml_reader]\n    sha256: {digest}\n", "t"
    )
    assert as_json == as_list == as_yaml
    assert as_json[0].roles == frozenset({Role.ML_READER}) and as_json[0].sha256 == digest


@pytest.mark.parametrize(
    ("entry", "complaint"),
    [
        ({"principal": "a", "roles": ["superuser"], "sha256": hash_key("k")}, "roles"),
        ({"principal": "a", "roles": [], "sha256": hash_key("k")}, "roles"),
        ({"principal": "a", "roles": ["ml_reader"], "sha256": "abc"}, "sha256"),
        ({"principal": " a", "roles": ["ml_reader"], "sha256": hash_key("k")}, "principal"),
        ({"principal": "a", "roles": ["ml_reader"], "key": "plain"}, "key"),
    ],
)
def test_a_bad_key_entry_is_a_configuration_error_naming_the_field(
    entry: dict[str, Any], complaint: str
) -> None:
    with pytest.raises(AuthConfigError, match=complaint):
        parse_keys(json.dumps([entry]), "API_KEYS")


def test_the_store_finds_a_key_by_its_hash_and_nothing_else() -> None:
    store = KeyStore(parse_keys(KEYS_JSON, "t"))
    principal = store.authenticate(KEYS[Role.ML_WRITER])
    assert principal is not None and principal.name == "p-ml_writer"
    assert principal.roles == {Role.ML_WRITER}
    assert principal.key_id == hash_key(KEYS[Role.ML_WRITER])[:12]
    assert store.authenticate(KEYS[Role.ML_WRITER] + "x") is None
    assert store.authenticate("") is None
    assert store.authenticate("x" * 10_000) is None


def test_one_key_configured_twice_is_refused() -> None:
    entry = {"principal": "a", "roles": ["ml_reader"], "sha256": hash_key("k")}
    with pytest.raises(AuthConfigError, match="twice"):
        KeyStore(parse_keys(json.dumps([entry, {**entry, "principal": "b"}]), "t"))


def test_keys_come_from_the_file_and_the_variable_together(tmp_path: Path) -> None:
    key_file = tmp_path / "keys.json"
    key_file.write_text(
        json.dumps([{"principal": "f", "roles": ["ml_reader"], "sha256": hash_key("kf")}])
    )
    inline = json.dumps([{"principal": "i", "roles": ["ml_writer"], "sha256": hash_key("ki")}])
    store = auth.load_key_store(settings(api_keys=inline, api_keys_file=key_file))
    assert store is not None and len(store) == 2
    assert auth.load_key_store(settings(auth_mode="off")) is None
    with pytest.raises(AuthConfigError, match="API_KEYS_FILE"):
        auth.load_key_store(settings(api_keys=None))
    with pytest.raises(AuthConfigError, match="cannot be read"):
        auth.load_key_store(settings(api_keys=None, api_keys_file=tmp_path / "missing.json"))


def test_settings_read_auth_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_MODE", "off")
    monkeypatch.setenv("API_KEYS_FILE", "/run/secrets/api-keys")
    monkeypatch.setenv("SERVICE_API_KEY", "ct_secret")
    read = ServiceSettings()
    assert read.auth_mode == "off" and read.api_keys_file == Path("/run/secrets/api-keys")
    assert "ct_secret" not in repr(read)
    assert auth.service_headers(read) == {"Authorization": "Bearer ct_secret"}
    monkeypatch.delenv("AUTH_MODE")
    assert ServiceSettings().auth_mode == "api_keys", "secure by default"
    assert auth.service_headers(ServiceSettings(service_api_key=None)) == {}


# --- 401 against 403 -----------------------------------------------------------------------


def test_no_key_is_401_with_a_bearer_challenge(client: TestClient) -> None:
    answer = client.get("/api/v1/items/7")
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == 'Bearer realm="consenttrace"'
    assert "no API key" in answer.json()["detail"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer ct_not-a-key"},
        {"X-API-Key": "ct_not-a-key"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer "},
    ],
)
def test_an_unknown_or_unreadable_key_is_401(client: TestClient, headers: dict[str, str]) -> None:
    answer = client.get("/api/v1/items/7", headers=headers)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer")


def test_two_different_keys_in_one_request_are_401(client: TestClient) -> None:
    headers = {**bearer(Role.ML_READER), "X-API-Key": KEYS[Role.ML_WRITER]}
    answer = client.get("/api/v1/items/7", headers=headers)
    assert answer.status_code == 401 and "different keys" in answer.json()["detail"]


def test_a_known_key_with_a_role_the_route_allows_passes(client: TestClient) -> None:
    assert client.get("/api/v1/items/7", headers=bearer(Role.ML_READER)).json() == {"item": "7"}
    by_header = client.get("/api/v1/items/8", headers={"X-API-Key": KEYS[Role.ML_WRITER]})
    assert by_header.status_code == 200
    lower = client.get(
        "/api/v1/items/9", headers={"authorization": f"bearer {KEYS[Role.ML_READER]}"}
    )
    assert lower.status_code == 200
    created = client.post("/api/v1/items", json={"name": "x"}, headers=bearer(Role.ML_WRITER))
    assert created.status_code == 201


def test_a_known_key_without_the_role_is_403_naming_the_roles_allowed(client: TestClient) -> None:
    answer = client.post("/api/v1/items", json={"name": "x"}, headers=bearer(Role.ML_READER))
    assert answer.status_code == 403
    body = answer.json()
    assert body["roles_allowed"] == ["ml_writer"]
    assert "POST /api/v1/items needs one of the roles ml_writer" in body["detail"]
    assert "p-ml_reader has ml_reader" in body["detail"]


def test_the_check_comes_before_the_body_is_read(client: TestClient) -> None:
    garbage = client.post("/api/v1/items", content=b"{not json", headers={})
    assert garbage.status_code == 401
    wrong_role = client.post("/api/v1/items", content=b"{not json", headers=bearer(Role.ML_READER))
    assert wrong_role.status_code == 403


def test_the_route_template_decides_not_the_raw_url(client: TestClient) -> None:
    for item in ("1", "a%20b", "x" * 300):
        assert (
            client.get(f"/api/v1/items/{item}", headers=bearer(Role.ML_READER)).status_code == 200
        )
        assert (
            client.get(f"/api/v1/items/{item}", headers=bearer(Role.LEGAL_APPROVER)).status_code
            == 403
        )


def test_unknown_paths_and_methods_need_a_key_then_get_the_routers_answer(
    client: TestClient,
) -> None:
    assert client.get("/api/v1/nothing").status_code == 401
    assert client.get("/api/v1/nothing", headers=bearer(Role.ML_READER)).status_code == 404
    assert client.delete("/api/v1/items/1", headers=bearer(Role.ML_READER)).status_code == 405


def test_probes_metrics_and_docs_stay_open(client: TestClient) -> None:
    assert client.get("/health/live").status_code == 200
    assert client.get("/metrics").status_code == 200
    assert client.get("/docs").status_code == 200
    assert client.get("/redoc").status_code == 200
    assert client.get("/openapi.json").status_code == 200


# --- deny by default, and the startup check -----------------------------------------------


def test_a_route_without_an_entry_is_refused_even_to_every_role() -> None:
    app = FastAPI()
    app.include_router(router)
    partial = {k: v for k, v in TABLE.items() if k[0] != "POST"}
    guard = AccessGuard("demo", open_routes=(), routes=list(router.routes), table=partial)
    everyone = json.dumps(
        [{"principal": "all", "roles": [r.value for r in Role], "sha256": hash_key("every")}]
    )
    keys = KeyStore(parse_keys(everyone, "t"))
    guarded = TestClient(AuthMiddleware(app, guard=guard, keys=keys))
    headers = {"X-API-Key": "every"}
    answer = guarded.post("/api/v1/items", json={"name": "x"}, headers=headers)
    assert answer.status_code == 403 and "deny by default" in answer.json()["detail"]
    assert answer.json()["roles_allowed"] == []
    assert guarded.get("/api/v1/items/1", headers=headers).status_code == 200


def test_a_service_with_a_route_missing_from_its_table_does_not_start_with_auth_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    partial = {k: v for k, v in TABLE.items() if k != ("POST", "/api/v1/items")}
    with pytest.raises(AccessTableError, match="POST /api/v1/items has no entry"):
        create_app(spec(partial), settings())
    with caplog.at_level(logging.WARNING):
        create_app(spec(partial), settings(auth_mode="off"))
    assert "POST /api/v1/items has no entry" in caplog.text


def test_a_service_without_a_table_does_not_start_with_auth_on() -> None:
    with pytest.raises(AccessTableError, match="declares no access table"):
        create_app(spec(None), settings())
    create_app(spec(None), settings(auth_mode="off"))


def test_an_entry_no_route_serves_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    stale = {**TABLE, ("GET", "/api/v1/gone"): allow(Role.ML_READER)}
    with caplog.at_level(logging.WARNING):
        create_app(spec(stale), settings())
    assert "GET /api/v1/gone, which no route serves" in caplog.text


def test_auth_on_without_any_key_source_does_not_start() -> None:
    with pytest.raises(AuthConfigError, match="AUTH_MODE=api_keys needs keys"):
        create_app(spec(), settings(api_keys=None))


def test_an_empty_rule_is_a_mistake() -> None:
    with pytest.raises(ValueError, match="at least one role"):
        allow()


# --- the actor is the key's principal -----------------------------------------------------


def test_the_actor_is_the_principal_and_a_body_cannot_claim_another(client: TestClient) -> None:
    requester = bearer(Role.LEGAL_REQUESTER)
    implied = client.post("/api/v1/acts", json={"command": "hold"}, headers=requester)
    assert implied.json() == {"actor": "p-legal_requester", "command": "hold"}
    same = client.post(
        "/api/v1/acts", json={"command": "hold", "actor": "p-legal_requester"}, headers=requester
    )
    assert same.status_code == 200
    other = client.post(
        "/api/v1/acts", json={"command": "hold", "actor": "legal:bob"}, headers=requester
    )
    assert other.status_code == 403 and "someone else" in other.json()["detail"]


def test_a_finer_rule_inside_a_route_is_a_403_too(client: TestClient) -> None:
    refused = client.post(
        "/api/v1/acts", json={"command": "approve"}, headers=bearer(Role.LEGAL_REQUESTER)
    )
    assert refused.status_code == 403 and "legal_approver" in refused.json()["detail"]
    approved = client.post(
        "/api/v1/acts", json={"command": "approve"}, headers=bearer(Role.LEGAL_APPROVER)
    )
    assert approved.json() == {"actor": "p-legal_approver", "command": "approve"}


def test_with_auth_off_the_body_names_the_actor_and_every_call_passes() -> None:
    open_client = TestClient(create_app(spec(), settings(auth_mode="off")))
    assert open_client.get("/api/v1/items/1").status_code == 200
    named = open_client.post("/api/v1/acts", json={"command": "approve", "actor": "legal:bob"})
    assert named.json() == {"actor": "legal:bob", "command": "approve"}
    unnamed = open_client.post("/api/v1/acts", json={"command": "approve"})
    assert unnamed.status_code == 422 and "actor is required" in unnamed.json()["detail"]


# --- the OpenAPI document states the roles --------------------------------------------------


def test_each_operation_states_its_roles_and_security(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    get_item_op = document["paths"]["/api/v1/items/{item_id}"]["get"]
    assert get_item_op["x-roles"] == ["ml_reader", "ml_writer"]
    assert get_item_op["description"].startswith("Read one item.")
    assert "**Roles:** `ml_reader`, `ml_writer`." in get_item_op["description"]
    assert get_item_op["security"] == [{"apiKeyBearer": []}, {"apiKeyHeader": []}]
    assert {"401", "403"} <= set(get_item_op["responses"])
    post_op = document["paths"]["/api/v1/items"]["post"]
    assert post_op["description"] == "**Roles:** `ml_writer`. Writers only."
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKeyBearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["apiKeyBearer"]["description"],
    }
    assert schemes["apiKeyHeader"]["name"] == "X-API-Key"
    assert "security" not in document["paths"]["/health/live"]["get"]


def test_with_auth_off_the_roles_are_stated_without_a_security_requirement() -> None:
    document = TestClient(create_app(spec(), settings(auth_mode="off"))).get("/openapi.json")
    operation = document.json()["paths"]["/api/v1/items/{item_id}"]["get"]
    assert operation["x-roles"] == ["ml_reader", "ml_writer"] and "security" not in operation
    assert "securitySchemes" not in document.json().get("components", {})


# --- the four services' tables ----------------------------------------------------------------


def _router_routes(service: str) -> set[tuple[str, str]]:
    """Every (method, template) of every router module under services/<service>/entrypoints,
    wired into the app or not yet."""
    package = importlib.import_module(f"services.{service}.entrypoints")
    keys: set[tuple[str, str]] = set()
    for module_info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{module_info.name}")
        for value in vars(module).values():
            if isinstance(value, APIRouter):
                for route in value.routes:
                    methods = set(getattr(route, "methods", ())) - {"HEAD"}
                    keys |= {(m, route.path_format) for m in methods}  # type: ignore[attr-defined]
    return keys


def _open_routes(service: str) -> set[tuple[str, str]]:
    """Routes the service opens on purpose (``ServiceSpec.open_routers``: signed webhooks)."""
    spec = importlib.import_module(f"services.{service}.app").SPEC
    return {
        (m, route.path_format)
        for router in spec.open_routers
        for route in router.routes
        for m in set(getattr(route, "methods", ())) - {"HEAD"}
    }


@pytest.mark.parametrize("service", SERVICES)
def test_every_route_of_every_router_module_has_exactly_its_entry(service: str) -> None:
    table = importlib.import_module(f"services.{service}.access").ACCESS
    opened = _open_routes(service)
    assert not opened & set(table), "an open route cannot also have roles"
    routes = _router_routes(service) - opened
    assert routes, service
    assert sorted(routes - set(table)) == [], "routes without an entry (refused by default)"
    assert sorted(set(table) - routes) == [], "entries without a route (a typo?)"


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_spec_carries_its_access_table(service: str) -> None:
    spec_ = importlib.import_module(f"services.{service}.app").SPEC
    table = importlib.import_module(f"services.{service}.access").ACCESS
    assert spec_.access is table, f"services/{service}/app.py: ServiceSpec(..., access=ACCESS)"
    errors, _ = AccessGuard(
        service,
        open_routes=(),
        routes=[r for router_ in spec_.routers for r in router_.routes],
        table=spec_.access,
    ).problems()
    assert errors == []


@pytest.mark.parametrize("service", SERVICES)
def test_platform_admin_reads_everything(service: str) -> None:
    table = importlib.import_module(f"services.{service}.access").ACCESS
    for (method, path), rule in table.items():
        if method == "GET":
            assert Role.PLATFORM_ADMIN in rule.roles, f"{method} {path}"


def test_only_legal_approvers_approve_or_reject_and_every_command_has_roles() -> None:
    from services.deletion.access import ACCESS, COMMAND_ROLES

    assert set(COMMAND_ROLES) == set(Command)
    assert COMMAND_ROLES[Command.APPROVE] == COMMAND_ROLES[Command.REJECT] == {Role.LEGAL_APPROVER}
    actions = ACCESS[("POST", "/api/v1/cases/{case_id}/actions")]
    assert actions.roles == frozenset().union(*COMMAND_ROLES.values())
    assert "`approve`, `reject`: `legal_approver`" in actions.note
    assert ACCESS[("POST", "/api/v1/cases")].roles == {Role.LEGAL_REQUESTER}


def test_ml_writers_post_lineage_and_register_snapshots() -> None:
    from services.lineage.access import ACCESS as LINEAGE
    from services.registry.access import ACCESS as REGISTRY

    assert Role.ML_WRITER in LINEAGE[("POST", "/api/v1/lineage")].roles
    assert Role.ML_READER not in LINEAGE[("POST", "/api/v1/lineage")].roles
    assert Role.ML_WRITER in REGISTRY[("POST", "/api/v1/dataset-versions")].roles
    assert Role.ML_READER in REGISTRY[("GET", "/api/v1/dataset-version/composition")].roles


# --- provisioning ---------------------------------------------------------------------------


def test_dev_keys_are_one_per_role_hashed_apart_from_the_secret_file(tmp_path: Path) -> None:
    keys = auth.write_dev_keys(tmp_path)
    store = auth.load_key_store(settings(api_keys=None, api_keys_file=keys.keys_file))
    assert store is not None and len(store) == len(Role) + 1
    for role in Role:
        principal = store.authenticate(keys.keys[role.value])
        assert principal is not None and principal.roles == {role}
    service = store.authenticate(keys.service_key)
    assert service is not None and service.roles == {Role.ML_READER}
    assert stat.S_IMODE(keys.plain_file.stat().st_mode) == 0o600
    assert all(key not in keys.keys_file.read_text() for key in keys.keys.values())
    assert auth.write_dev_keys(tmp_path).keys == keys.keys, "kept across restarts"
    assert auth.write_dev_keys(tmp_path, reuse=False).keys != keys.keys


def test_the_command_line_makes_a_key_and_its_entry(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert auth.main(["new-key", "--principal", "legal:ann", "--role", "legal_requester"]) == 0
    key, entry_line = capsys.readouterr().out.splitlines()
    store = KeyStore(parse_keys(json.dumps([json.loads(entry_line)]), "cli"))
    principal = store.authenticate(key)
    assert principal is not None and principal.name == "legal:ann"
    key_file = tmp_path / "keys.json"
    key_file.write_text(json.dumps({"keys": [json.loads(entry_line)]}))
    assert auth.main(["check", str(key_file)]) == 0
    assert "legal:ann  legal_requester" in capsys.readouterr().out
    key_file.write_text("{")
    assert auth.main(["check", str(key_file)]) == 1


def test_test_processes_run_with_auth_off_unless_told(tmp_path: Path) -> None:
    process = ServiceProcess("consent", "postgresql://x@h/db", "h:9092", tmp_path, port=1)
    assert process.env()["AUTH_MODE"] == "off"
    on = ServiceProcess(
        "consent",
        "postgresql://x@h/db",
        "h:9092",
        tmp_path,
        port=1,
        extra_env={"AUTH_MODE": "api_keys"},
    )
    assert on.env()["AUTH_MODE"] == "api_keys"


def test_the_dev_stack_is_open_by_default_and_provisions_keys_on_request(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AUTH_MODE", "API_KEYS", "API_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    stack: dict[str, Any] = {}
    envs = devstack._resolve_auth(tmp_path, stack)
    assert all(env == {"AUTH_MODE": "off"} for env in envs.values())
    monkeypatch.setenv("AUTH_MODE", "api_keys")
    envs = devstack._resolve_auth(tmp_path, stack)
    keys_file = Path(stack["auth"]["keys_file"])
    assert keys_file.exists() and Path(stack["auth"]["plain_keys_file"]).exists()
    assert all(env["API_KEYS_FILE"] == str(keys_file) for env in envs.values())
    plain = json.loads(Path(stack["auth"]["plain_keys_file"]).read_text())
    assert envs["lineage"]["SERVICE_API_KEY"] == plain["service"]["key"]
