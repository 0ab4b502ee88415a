"""The committed JSON Schemas match the models, cover every topic, and work without Python.

Non-Python consumers read ``contracts/schemas/*.schema.json``; they only help if they are
current (byte for byte what ``python -m contracts.generate`` writes) and if a body the
Python producers emit actually validates against them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
from jsonschema import Draft202012Validator, FormatChecker
from pydantic import BaseModel

from contracts.base import DatasetRef, ModelRef
from contracts.envelope import Envelope
from contracts.events import (
    CaseKind,
    CaseState,
    CaseStatusChanged,
    ConsentEvent,
    ConsentEvidence,
    ConsentMechanism,
    ConsentState,
    DatasetFinding,
    DeletionTask,
    FindingReason,
    FindingStatus,
    ModelFlag,
    PolicyChange,
    Severity,
    TaskOutcome,
    TaskResult,
)
from contracts.generate import SCHEMA_DIR, render, schema_documents
from contracts.openlineage import RunEvent, parse_openlineage_event
from contracts.policy import (
    DefaultConsent,
    GpcCoverage,
    LawfulBasis,
    OptInScope,
    PolicyDocument,
    PolicyRule,
    WithdrawalEffect,
    WithdrawalRequires,
)
from contracts.topics import ALL_TOPICS, INTAKE_TOPICS, TOPICS, Topic

REGENERATE = "run `python -m contracts.generate` and commit contracts/schemas/"
T0 = datetime(2024, 9, 18, 12, 0, tzinfo=UTC)
CASE = UUID("5e8b1d3a-7c24-4f9e-b0a6-3d1c8e2f9b47")
EVENT = UUID("6f1c2f7e-5b8a-4d0e-9a51-2c1f0b3e7d10")
POSTS = DatasetRef(namespace="s3://lake", name="posts", version="2024-09-01")
LLM = ModelRef(namespace="models", name="assistant-llm", version="7")


# --- drift ------------------------------------------------------------------------------


DOCUMENTS = schema_documents()


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_committed_schema_matches_the_models(name: str) -> None:
    path = SCHEMA_DIR / name
    assert path.is_file(), f"{path} is missing: {REGENERATE}"
    assert path.read_text(encoding="utf-8") == render(DOCUMENTS[name]), (
        f"{path} drifted from the models: {REGENERATE}"
    )


def test_no_stale_schema_files() -> None:
    committed = {p.name for p in SCHEMA_DIR.glob("*.schema.json")}
    stale = committed - DOCUMENTS.keys()
    assert not stale, f"stale schema files {sorted(stale)}: {REGENERATE}"


def test_render_is_canonical() -> None:
    text = render({"b": 1, "a": {"d": [1], "c": None}})
    assert text == '{\n  "a": {\n    "c": null,\n    "d": [\n      1\n    ]\n  },\n  "b": 1\n}\n'


@pytest.mark.parametrize("topic", TOPICS, ids=lambda t: t.name)
def test_every_topic_has_a_schema_file_of_its_model(topic: Topic) -> None:
    name = f"{topic.name}.schema.json"
    assert (SCHEMA_DIR / name).is_file(), f"no schema for {topic.name}: {REGENERATE}"
    committed = json.loads((SCHEMA_DIR / name).read_text(encoding="utf-8"))
    assert committed == topic.model.model_json_schema(by_alias=True)


def test_all_topics_lists_each_topic_and_its_dead_letter_topic_once() -> None:
    names = [t.name for t in (*TOPICS, *INTAKE_TOPICS)]
    assert len(set(names)) == len(names)
    assert len(set(ALL_TOPICS)) == len(ALL_TOPICS)
    assert set(ALL_TOPICS) == set(names) | {f"{n}.dlq" for n in names}
    for topic in TOPICS:
        assert topic.dlq == f"{topic.name}.dlq"


def test_topics_have_distinct_event_types() -> None:
    types = [t.event_type for t in TOPICS]
    assert len(set(types)) == len(types)


def test_design_topic_names_are_used() -> None:
    assert {t.name for t in TOPICS} == {
        "consent.events.v1",
        "consent.policies.v1",
        "registry.findings.v1",
        "lineage.openlineage.v1",
        "lineage.model-flags.v1",
        "deletion.tasks.v1",
        "deletion.task-results.v1",
        "deletion.cases.v1",
    }


# --- the schemas validate what producers emit -----------------------------------------


def _policy() -> PolicyDocument:
    """Every part of the policy contract, set the way legal would set it."""
    disclosed = datetime(2024, 9, 18, tzinfo=UTC)
    return PolicyDocument(
        policy_id="ai-training",
        version="2024-09-18",
        valid_from=datetime(2024, 8, 1, tzinfo=UTC),
        description="Generative-AI training on member data.",
        jurisdiction_groups={"GPC_STATES": ("US-CA", "US-CO", "US-CT")},
        rules=(
            PolicyRule(
                id="us-default-on",
                jurisdictions=("US",),
                purposes=("ai.training.generative",),
                data_categories=("user.content.public", "user.contact"),
                lawful_bases=(
                    LawfulBasis(mechanism=ConsentMechanism.DEFAULT_SETTING, valid_from=disclosed),
                    LawfulBasis(mechanism=ConsentMechanism.EXPLICIT_OPT_IN),
                ),
                default=DefaultConsent(
                    valid_from=disclosed, description="the setting is on unless turned off"
                ),
                withdrawal=WithdrawalEffect(requires=WithdrawalRequires.EXCLUDE_FROM_FUTURE),
            ),
            PolicyRule(
                id="us-private-messages",
                jurisdictions=("US",),
                purposes=("ai.training",),
                data_categories=("user.content.private",),
                lawful_bases=(LawfulBasis(mechanism=ConsentMechanism.EXPLICIT_OPT_IN),),
                opt_in_scope=OptInScope.EXACT,
                withdrawal=WithdrawalEffect(requires=WithdrawalRequires.RETRAIN, erasure=True),
                description="private messages need an explicit opt-in naming them",
            ),
            PolicyRule(
                id="eea-exempt",
                jurisdictions=("EEA", "GB", "CH"),
                purposes=("ai.training",),
                data_categories=("user",),
                valid_until=datetime(2025, 11, 3, tzinfo=UTC),
                withdrawal=WithdrawalEffect(requires=WithdrawalRequires.NONE),
                description="exempt: no lawful basis",
            ),
        ),
        gpc=(GpcCoverage(jurisdictions=("GPC_STATES",), purposes=("ai.training",)),),
    )


def _run_event() -> BaseModel:
    return parse_openlineage_event(
        {
            "eventType": "COMPLETE",
            "eventTime": "2024-09-20T08:15:00.123Z",
            "producer": "https://github.com/OpenLineage/OpenLineage/tree/1.24.0/client/python",
            "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
            "run": {"runId": "0191e4a0-1c2b-7d3e-8f40-5a6b7c8d9e0f"},
            "job": {"namespace": "ml-pipelines", "name": "finetune-assistant"},
            "inputs": [{"namespace": "s3://lake", "name": "posts"}],
            "outputs": [
                {
                    "namespace": "models",
                    "name": "assistant-llm",
                    "facets": {
                        "datasetType": {
                            "_producer": "https://example.com/trainer",
                            "_schemaURL": "https://openlineage.io/spec/facets/1-0-1/"
                            "DatasetTypeDatasetFacet.json",
                            "datasetType": "MODEL",
                        }
                    },
                }
            ],
        }
    )


SAMPLE_BODIES: dict[str, BaseModel] = {
    "consent.events.v1": ConsentEvent(
        consent_event_id=EVENT,
        subject_id="member:8812",
        jurisdiction="US-CA",
        purpose="ai.training.generative",
        data_categories=("user.content.public", "user.content.private"),
        state=ConsentState.WITHDRAWN,
        mechanism=ConsentMechanism.OPT_OUT,
        policy_version="2024-09-18",
        effective_at=T0,
        recorded_at=T0,
        source_system="settings",
        evidence=ConsentEvidence(
            collection_point="settings/data-privacy/genai",
            notice_text_hash="sha256:" + "ab" * 32,
        ),
        erasure_requested=True,
    ),
    "consent.policies.v1": PolicyChange(
        policy=_policy(), published_at=T0, supersedes_version="2024-08-01"
    ),
    "registry.findings.v1": DatasetFinding(
        finding_id=EVENT,
        status=FindingStatus.ACTIVE,
        dataset=POSTS,
        severity=Severity.DESTROY_REQUIRED,
        reason=FindingReason.IMPROPER_USE,
        policy_id="ai-training",
        policy_version="2024-09-18",
        rule="private messages need explicit opt-in",
        affected_records=3,
        affected_subjects=1,
        sample_record_ids=("r1", "r2", "r3"),
        cause_event_ids=(EVENT,),
        detected_at=T0,
    ),
    "lineage.openlineage.v1": _run_event(),
    "lineage.model-flags.v1": ModelFlag(
        flag_id=CASE,
        status=FindingStatus.ACTIVE,
        model=LLM,
        finding_id=EVENT,
        severity=Severity.RETRAIN_REQUIRED,
        reason=FindingReason.LATER_WITHDRAWAL,
        evidence_path=(POSTS.key, f"run:{EVENT}", LLM.key),
        flagged_at=T0,
    ),
    "deletion.tasks.v1": DeletionTask(
        task_id=EVENT,
        case_id=CASE,
        target_system="model-store",
        action="destroy_model",
        targets=(LLM.key,),
        issued_at=T0,
        parameters={"hard": True, "retain_evidence_days": 3650},
    ),
    "deletion.task-results.v1": TaskResult(
        task_id=EVENT,
        case_id=CASE,
        executor="model-store",
        outcome=TaskOutcome.FAILED,
        reason="bucket has a legal hold",
        completed_at=T0,
    ),
    "deletion.cases.v1": CaseStatusChanged(
        case_id=CASE,
        kind=CaseKind.MODEL_DESTRUCTION,
        state=CaseState.AWAITING_APPROVAL,
        previous_state=CaseState.SCOPING,
        actor="legal:alice",
        reason="scope confirmed",
        deadline=None,
        changed_at=T0,
    ),
}
OTHER_BODIES: dict[str, BaseModel] = {
    "cloudevents-envelope.schema.json": Envelope.new(
        type="io.consenttrace.consent.changed", source="consent", subject="member:8812"
    ),
    "policy-document.schema.json": _policy(),
}


def validator(file_name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMA_DIR / file_name).read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=FormatChecker())


def wire_json(body: BaseModel) -> Any:
    """The body as producers put it on the wire.

    Contract bodies as ``services.runtime.messages.encode_event`` writes them (nulls
    included); OpenLineage events as the OpenLineage client writes them (nulls omitted).
    """
    exclude_none = isinstance(body, RunEvent)
    return json.loads(body.model_dump_json(by_alias=True, exclude_none=exclude_none))


def test_there_is_a_sample_for_every_topic() -> None:
    assert SAMPLE_BODIES.keys() == {t.name for t in TOPICS}
    for topic in TOPICS:
        assert isinstance(SAMPLE_BODIES[topic.name], topic.model)


@pytest.mark.parametrize("topic", TOPICS, ids=lambda t: t.name)
def test_committed_schema_accepts_a_realistic_body(topic: Topic) -> None:
    body = wire_json(SAMPLE_BODIES[topic.name])
    errors = [e.message for e in validator(f"{topic.name}.schema.json").iter_errors(body)]
    assert errors == []
    assert topic.model.model_validate_json(json.dumps(body)) == SAMPLE_BODIES[topic.name]


@pytest.mark.parametrize("file_name", sorted(OTHER_BODIES))
def test_envelope_and_policy_schemas_accept_realistic_documents(file_name: str) -> None:
    document = wire_json(OTHER_BODIES[file_name])
    assert [e.message for e in validator(file_name).iter_errors(document)] == []


def _policy_defect(path: tuple[str | int, ...], value: Any) -> Any:
    document = wire_json(_policy())
    target = document
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return document


POLICY_DEFECTS = [
    pytest.param(("rules", 0, "surprise"), 1, id="rule-unknown-field"),
    pytest.param(("rules", 0, "lawful_bases", 0, "surprise"), 1, id="basis-unknown-field"),
    pytest.param(("rules", 0, "id"), None, id="rule-without-id"),
    pytest.param(("rules", 0, "id"), "Has Space", id="bad-rule-id"),
    pytest.param(("rules", 0, "jurisdictions"), ["us"], id="bad-selector"),
    pytest.param(("rules", 0, "purposes"), [], id="no-purposes"),
    pytest.param(("rules", 0, "lawful_bases", 0, "mechanism"), "vibes", id="bad-mechanism"),
    pytest.param(("rules", 1, "withdrawal", "requires"), "shred", id="bad-requirement"),
    pytest.param(("rules", 0, "default", "valid_from"), "2024-09-18T00:00:00", id="naive"),
    pytest.param(("jurisdiction_groups", "GPC_STATES"), ["*"], id="bad-group-member"),
    pytest.param(("rules",), [], id="no-rules"),
]


@pytest.mark.parametrize(("path", "value"), POLICY_DEFECTS)
def test_policy_schema_rejects_what_the_model_rejects(
    path: tuple[str | int, ...], value: Any
) -> None:
    document = _policy_defect(path, value)
    with pytest.raises(ValueError):
        PolicyDocument.model_validate(document)
    assert not validator("policy-document.schema.json").is_valid(document)
    change = wire_json(SAMPLE_BODIES["consent.policies.v1"]) | {"policy": document}
    assert not validator("consent.policies.v1.schema.json").is_valid(change)


CONTRACT_TOPICS = [t for t in TOPICS if t.name != "lineage.openlineage.v1"]


@pytest.mark.parametrize("topic", CONTRACT_TOPICS, ids=lambda t: t.name)
def test_committed_schema_rejects_unknown_fields_like_the_models(topic: Topic) -> None:
    body = wire_json(SAMPLE_BODIES[topic.name]) | {"surprise": 1}
    assert not validator(f"{topic.name}.schema.json").is_valid(body)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject_id", "has space"),
        ("jurisdiction", "california"),
        ("purpose", "AI.Training"),
        ("data_categories", []),
        ("state", "maybe"),
        ("effective_at", "not a time"),
        ("effective_at", "2024-09-18T12:00:00"),
        ("consent_event_id", "not-a-uuid"),
    ],
)
def test_consent_schema_rejects_what_the_model_rejects(field: str, value: Any) -> None:
    body = wire_json(SAMPLE_BODIES["consent.events.v1"]) | {field: value}
    assert not validator("consent.events.v1.schema.json").is_valid(body)


def test_consent_schema_requires_the_core_fields() -> None:
    body = wire_json(SAMPLE_BODIES["consent.events.v1"])
    del body["subject_id"]
    assert not validator("consent.events.v1.schema.json").is_valid(body)


RUN_EVENT_DEFECTS = [
    pytest.param("inputs", None, id="inputs-null"),
    pytest.param("eventType", None, id="eventType-null"),
    pytest.param("producer", "not a uri", id="producer-not-uri"),
]


@pytest.mark.parametrize(("field", "value"), RUN_EVENT_DEFECTS)
def test_openlineage_model_rejects_these_bodies(field: str, value: Any) -> None:
    body = wire_json(SAMPLE_BODIES["lineage.openlineage.v1"]) | {field: value}
    with pytest.raises(ValueError):
        parse_openlineage_event(body)


@pytest.mark.parametrize(("field", "value"), RUN_EVENT_DEFECTS)
def test_openlineage_schema_rejects_what_the_model_rejects(field: str, value: Any) -> None:
    body = wire_json(SAMPLE_BODIES["lineage.openlineage.v1"]) | {field: value}
    assert not validator("lineage.openlineage.v1.schema.json").is_valid(body)
