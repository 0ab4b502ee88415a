"""The docker compose stack and the Dockerfile, checked offline (no Docker engine needed).

- docker-compose.yml validates against the official compose-spec JSON Schema. The schema
  comes from the `check-jsonschema` wheel (dev extra), which vendors the compose-spec
  repository's `schema/compose-spec.json`, so nothing is fetched at test time.
- Cross-references the schema cannot see: commands name real service packages, every
  DATABASE_URL names a database and role that postgres-init.sql creates, kafka-init creates
  exactly the contract topics, depends_on targets exist and can be satisfied, bind mounts
  exist, third-party images are pinned.
- The Dockerfile: what it copies exists and survives .dockerignore, what its CMD and
  HEALTHCHECK run exists, it runs as a non-root user.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from contracts.topics import ALL_TOPICS, TOPIC_PARTITIONS

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
POSTGRES_INIT = ROOT / "deploy" / "compose" / "postgres-init.sql"

SERVICES = ("consent", "registry", "lineage", "deletion")
HOST_PORTS = {"consent": 8001, "registry": 8002, "lineage": 8003, "deletion": 8004}


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as compose sees it: YAML anchors and merge keys resolved."""
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    result = compose["services"]
    assert isinstance(result, dict)
    return result


_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
)


def _interpolate(value: Any) -> Any:
    """Compose's variable substitution with an empty environment: defaults apply."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            op, arg = match.group("op"), match.group("arg")
            if op in (":-", "-"):
                return str(arg)
            assert op not in (":?", "?"), f"{match.group(0)} requires a variable to be set"
            return ""

        return _VARIABLE.sub(replace, value)
    if isinstance(value, dict):
        return {key: _interpolate(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item) for item in value]
    return value


def _environment(service: dict[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.split("=", 1) if "=" in item else (item, None) for item in env)
        return {key: value for key, value in pairs}
    return {key: None if value is None else str(value) for key, value in env.items()}


def _argv(command: str | list[str] | None) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def _python_module(argv: list[str]) -> str | None:
    """``python -m pkg.mod ...`` -> ``pkg.mod``; anything else -> None."""
    if len(argv) >= 3 and Path(argv[0]).name.startswith("python") and argv[1] == "-m":
        return argv[2]
    return None


def _module_is_runnable(module: str) -> bool:
    """``python -m module`` would find it in this repository (a package needs __main__.py)."""
    base = ROOT.joinpath(*module.split("."))
    return (base / "__main__.py").is_file() or base.with_suffix(".py").is_file()


def _depends_on(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: {"condition": "service_started"} for name in deps}
    return {name: (spec or {"condition": "service_started"}) for name, spec in deps.items()}


def _app_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Compose services that run one of this project's packages with ``python -m``."""
    result = {}
    for name, service in services.items():
        module = _python_module(_argv(service.get("command")))
        if module is not None and module.split(".")[0] == "services":
            result[name] = service
    return result


# --------------------------------------------------------------------------- (a) schema


def _compose_spec_schema() -> dict[str, Any]:
    try:
        vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    except ModuleNotFoundError:
        pytest.fail(
            "the compose-spec schema comes from the check-jsonschema package (dev extra): "
            "pip install -e '.[dev]'"
        )
    schema = json.loads((vendor / "compose-spec.json").read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    return schema


def test_compose_file_validates_against_the_compose_spec_schema(compose: dict[str, Any]) -> None:
    schema = _compose_spec_schema()
    assert schema.get("title") == "Compose Specification"
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    # Compose validates after variable substitution; do the same, with defaults.
    errors = sorted(validator.iter_errors(_interpolate(compose)), key=lambda e: list(e.path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, error.path)) or '<root>'}: {error.message}" for error in errors
    )


def test_compose_structure_beyond_the_schema(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    allowed_top_level = {"name", "services", "networks", "volumes", "configs", "secrets"}
    unknown = {key for key in compose if not key.startswith("x-")} - allowed_top_level
    assert not unknown, f"unexpected top-level keys: {unknown}"

    declared_volumes = set(compose.get("volumes") or {})
    host_ports: list[str] = []
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name}: needs image or build"

        own_profiles = set(service.get("profiles") or [])
        for target, spec in _depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            target_profiles = set(services[target].get("profiles") or [])
            assert not target_profiles or own_profiles & target_profiles, (
                f"{name} depends on {target}, which only runs in profiles {target_profiles}"
            )
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                check = services[target].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), (
                    f"{name} waits for {target} to be healthy, but {target} has no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", (
                    f"{target} is a one-shot job for {name}: it must not be restarted"
                )

        for volume in service.get("volumes") or []:
            source = (
                volume.split(":")[0] if isinstance(volume, str) else volume.get("source")
            ) or ""
            if source.startswith((".", "/")):
                assert (ROOT / source).exists(), f"{name}: bind mount {source} does not exist"
            elif source:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"

        for port in service.get("ports") or []:
            published = str(port).rsplit(":", 1)[0] if ":" in str(port) else str(port)
            host_ports.append(published)

        if "build" in service:
            build = service["build"]
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
            assert (context / (dockerfile or "Dockerfile")).is_file(), f"{name}: no Dockerfile"

    duplicates = {port for port in host_ports if host_ports.count(port) > 1}
    assert not duplicates, f"host ports published twice: {duplicates}"


def test_third_party_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    built = {service["image"] for service in services.values() if "build" in service}
    for name, service in services.items():
        image = service.get("image")
        if image is None or image in built:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image} has no tag"
        assert tag != "latest", f"{name}: image {image} is not pinned"
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["postgres"]["image"].split(":")[1].split(".")[0] == "16"


def test_every_app_service_has_a_migrate_job_it_waits_for(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in SERVICES:
        service, migrate = services[name], services[f"{name}-migrate"]
        assert _argv(service["command"])[1:] == ["-m", f"services.{name}", "serve"]
        assert _argv(migrate["command"])[1:] == ["-m", f"services.{name}", "migrate"]
        deps = _depends_on(service)
        assert deps[f"{name}-migrate"]["condition"] == "service_completed_successfully"
        assert deps["kafka-init"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["kafka"]["condition"] == "service_healthy"
        assert _depends_on(migrate)["postgres"]["condition"] == "service_healthy"
        assert service["image"] == migrate["image"], "one image for every service"
        assert f"{HOST_PORTS[name]}:8000" in [str(port) for port in service["ports"]]

        env = _environment(service)
        assert env == _environment(migrate), f"{name}: migrate and serve must agree"
        assert env["SERVICE_NAME"] == name
        assert env["HTTP_PORT"] == "8000"
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["KAFKA_ENABLE_IDEMPOTENCE"] == "true"
        assert "/health/ready" in " ".join(_argv(service["healthcheck"]["test"]))


# --------------------------------------------------------------------------- (b) commands


def test_python_commands_name_existing_service_packages(
    services: dict[str, dict[str, Any]],
) -> None:
    app_services = _app_services(services)
    assert {f"services.{name}" for name in SERVICES} <= {
        _python_module(_argv(service.get("command"))) for service in app_services.values()
    }
    for name, service in app_services.items():
        module = _python_module(_argv(service["command"]))
        assert module is not None
        assert _module_is_runnable(module), (
            f"{name}: `python -m {module}` needs {module.replace('.', '/')}/__main__.py"
        )
        assert _argv(service["command"])[3:4] in (["serve"], ["migrate"]), name


# --------------------------------------------------------------------------- (c) databases


def _created_databases() -> dict[str, str]:
    """Database name -> owner, from postgres-init.sql."""
    sql = POSTGRES_INIT.read_text(encoding="utf-8")
    return {
        db.lower(): owner.lower()
        for db, owner in re.findall(
            r"CREATE\s+DATABASE\s+\"?(\w+)\"?\s+OWNER\s+\"?(\w+)\"?", sql, re.IGNORECASE
        )
    }


def _created_roles() -> dict[str, str]:
    """Role name -> password, from postgres-init.sql."""
    sql = POSTGRES_INIT.read_text(encoding="utf-8")
    pattern = r"CREATE\s+ROLE\s+\"?(\w+)\"?\s+(?:WITH\s+)?LOGIN\s+PASSWORD\s+'([^']*)'"
    return {role.lower(): password for role, password in re.findall(pattern, sql, re.IGNORECASE)}


def test_each_database_url_names_a_database_the_init_script_creates(
    services: dict[str, dict[str, Any]],
) -> None:
    databases, roles = _created_databases(), _created_roles()
    assert set(databases) == {f"consenttrace_{name}" for name in SERVICES}
    postgres_volumes = [str(v) for v in services["postgres"].get("volumes") or []]
    assert any(
        v.startswith("./deploy/compose/postgres-init.sql:/docker-entrypoint-initdb.d/")
        for v in postgres_volumes
    ), "postgres must run deploy/compose/postgres-init.sql on first start"

    used: dict[str, str] = {}
    for name, service in _app_services(services).items():
        url = _environment(service).get("DATABASE_URL")
        assert url, f"{name}: no DATABASE_URL"
        parts = urlsplit(url)
        assert parts.scheme in ("postgresql", "postgres"), f"{name}: {url}"
        assert parts.hostname in services, f"{name}: {parts.hostname} is not a compose service"
        database = parts.path.lstrip("/")
        assert database in databases, f"{name}: {database} is not created by postgres-init.sql"
        assert parts.username == databases[database], f"{name}: log in as the database owner"
        assert roles.get(parts.username or "") == parts.password, f"{name}: role or password"
        module = _python_module(_argv(service["command"])) or ""
        owner = used.setdefault(database, module)
        assert owner == module, f"{database} is shared by {owner} and {module}"
    assert len(used) == len(SERVICES), "each service has its own database"


# --------------------------------------------------------------------------- (d) topics


def test_kafka_init_creates_exactly_the_contract_topics(
    services: dict[str, dict[str, Any]],
) -> None:
    init = services["kafka-init"]
    assert init["image"] == services["kafka"]["image"]
    script = " ".join(_argv(init.get("entrypoint")) + _argv(init.get("command")))
    assert "kafka-topics.sh" in script and "--if-not-exists" in script
    assert "$$TOPICS" in script, "the script creates the topics listed in TOPICS"

    specs = (_environment(init).get("TOPICS") or "").split()
    created: dict[str, int] = {}
    for spec in specs:
        topic, _, partitions = spec.rpartition(":")
        assert topic and partitions.isdigit() and int(partitions) >= 1, spec
        assert topic not in created, f"{topic} listed twice"
        created[topic] = int(partitions)

    assert len(ALL_TOPICS) == len(set(ALL_TOPICS))
    missing = set(ALL_TOPICS) - set(created)
    unknown = set(created) - set(ALL_TOPICS)
    assert not missing, f"kafka-init does not create {sorted(missing)}"
    assert not unknown, f"kafka-init creates topics that contracts.topics does not know: {unknown}"
    for topic in ALL_TOPICS:
        if not topic.endswith(".dlq"):
            assert f"{topic}.dlq" in created, f"{topic} has no dead-letter topic"
    # The embedded broker creates the same (TansuBroker.start): one truth, contracts.topics.
    assert created == TOPIC_PARTITIONS


def test_kafka_listens_for_containers_at_kafka_9092(services: dict[str, dict[str, Any]]) -> None:
    env = _environment(services["kafka"])
    assert "PLAINTEXT://kafka:9092" in (env["KAFKA_ADVERTISED_LISTENERS"] or "").split(",")
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller", "KRaft, single node"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "true"


def test_observability_profile_wires_collector_to_jaeger(
    services: dict[str, dict[str, Any]],
) -> None:
    collector, jaeger = services["otel-collector"], services["jaeger"]
    assert collector.get("profiles") == ["observability"] == jaeger.get("profiles")
    assert "16686:16686" in [str(port) for port in jaeger.get("ports") or []]
    mounts = [str(volume).split(":") for volume in collector.get("volumes") or []]
    config_path = next(host for host, _, *_ in mounts if host.endswith("otel-collector.yaml"))
    config = yaml.safe_load((ROOT / config_path).read_text(encoding="utf-8"))

    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    for pipeline in config["service"]["pipelines"].values():
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind, []):
                assert component in config[kind], f"{component} is not configured"
    traces = config["service"]["pipelines"]["traces"]
    assert "batch" in traces["processors"]
    endpoints = [config["exporters"][name].get("endpoint", "") for name in traces["exporters"]]
    assert any(endpoint.split(":")[0] == "jaeger" for endpoint in endpoints)


# --------------------------------------------------------------------------- (e) Dockerfile


def _instructions() -> Iterator[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    logical: list[str] = []
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical.append(line[:-1].strip())
            continue
        logical.append(line)
        instruction, _, arguments = " ".join(logical).partition(" ")
        logical = []
        yield instruction.upper(), arguments.strip()
    assert not logical, "Dockerfile ends inside a continued line"


def _exec_form(arguments: str) -> list[str]:
    argv = json.loads(arguments)
    assert isinstance(argv, list) and all(isinstance(arg, str) for arg in argv), arguments
    return argv


def _dockerignore_rules() -> list[tuple[re.Pattern[str], bool]]:
    """(pattern, excludes) in file order; the last matching rule wins, as in Docker."""
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        pattern = line.lstrip("!").strip().strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif pattern[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif pattern[i] == "?":
                regex, i = regex + "[^/]", i + 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex, i = regex + pattern[i : end + 1], end + 1
            else:
                regex, i = regex + re.escape(pattern[i]), i + 1
        rules.append((re.compile(regex + r"\Z"), not include))
    return rules


def _ignored(relative: str, rules: list[tuple[re.Pattern[str], bool]]) -> bool:
    """Whether .dockerignore keeps ``relative`` out of the build context."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for regex, excludes in rules:
        if any(regex.match(candidate) for candidate in candidates):
            excluded = excludes
    return excluded


def _is_cache(path: Path) -> bool:
    return any(
        part == "__pycache__" or part.endswith((".egg-info", "_cache")) or part.startswith(".")
        for part in path.parts
    ) or path.suffix in (".pyc", ".pyo", ".so")  # .so: built in place by an editable install


def test_dockerfile_copies_what_exists_and_dockerignore_keeps_it() -> None:
    rules = _dockerignore_rules()
    copies = [arguments for instruction, arguments in _instructions() if instruction == "COPY"]
    assert copies
    sources: list[str] = []
    for arguments in copies:
        words = [word for word in shlex.split(arguments) if not word.startswith("--")]
        sources.extend(words[:-1])
    for source in ("pyproject.toml", "contracts", "services"):
        assert source in sources, f"the image needs {source}"

    for source in sources:
        matches = sorted(ROOT.glob(source))
        if not any(char in source for char in "*?["):
            assert matches, f"COPY {source}: no such file in the repository"
        for match in matches:
            files = [match] if match.is_file() else sorted(match.rglob("*"))
            for path in files:
                relative = path.relative_to(ROOT)
                if path.is_dir() or _is_cache(relative):
                    continue
                assert not _ignored(relative.as_posix(), rules), (
                    f"COPY {source}: .dockerignore drops {relative}"
                )
    # The whole repository is not sent as build context.
    for noise in (".git", ".venv", "tests", "docker-compose.yml"):
        assert _ignored(noise, rules), f".dockerignore should exclude {noise}"


def test_dockerfile_runs_what_exists_as_a_non_root_user() -> None:
    instructions = list(_instructions())
    froms = [arguments for instruction, arguments in instructions if instruction == "FROM"]
    assert froms[-1].split()[0] == "python:3.11-slim"

    users = [arguments for instruction, arguments in instructions if instruction == "USER"]
    assert users, "the image must not run as root"
    assert users[-1].split(":")[0] not in ("root", "0")

    runs = " ".join(arguments for instruction, arguments in instructions if instruction == "RUN")
    assert "pip install --no-cache-dir" in runs
    assert "-c requirements.lock" in runs, "requirements.lock constrains the install"

    commands: list[list[str]] = []
    for instruction, arguments in instructions:
        if instruction in ("CMD", "ENTRYPOINT"):
            commands.append(_exec_form(arguments))
        elif instruction == "HEALTHCHECK":
            _, _, test = arguments.partition("CMD ")
            argv = _exec_form(test.strip())
            assert argv[0] == "python", "python:3.11-slim has no curl: use urllib"
            assert "/health/live" in " ".join(argv)
            commands.append(argv)
    assert any(i == "CMD" for i, _ in instructions), "the default command prints help"
    assert any(i == "HEALTHCHECK" for i, _ in instructions)

    mentioned: set[str] = set()
    for argv in commands:
        module = _python_module(argv)
        if module is not None:
            mentioned.add(module)
        # Modules named in the printed help or in a `-c` program.
        mentioned.update(re.findall(r"\bservices(?:\.[a-z_][a-z0-9_]*)+", " ".join(argv)))
    assert {f"services.{name}" for name in SERVICES} <= mentioned, "CMD lists the services"
    for module in sorted(mentioned):
        assert _module_is_runnable(module), f"Dockerfile runs `python -m {module}`: not found"
