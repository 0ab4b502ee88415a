"""Contract models (contracts.events, contracts.base) and the CloudEvents envelope."""

from __future__ import annotations

import functools
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from contracts.base import DatasetRef, ModelRef
from contracts.envelope import Envelope, EnvelopeError
from contracts.events import (
    ConsentEvent,
    ConsentEvidence,
    DatasetFinding,
    FindingReason,
    FindingStatus,
    Severity,
    TaskOutcome,
    TaskResult,
)
from contracts.policy import (
    DefaultConsent,
    GpcCoverage,
    LawfulBasis,
    PolicyDocument,
    PolicyRule,
    WithdrawalEffect,
    WithdrawalRequires,
)
from contracts.vocabulary import ConsentMechanism

T0 = datetime(2024, 9, 18, 12, 0, tzinfo=UTC)
EVENT_ID = UUID("11111111-1111-4111-8111-111111111111")


def consent_payload(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "consent_event_id": str(EVENT_ID),
        "subject_id": "subj-42",
        "jurisdiction": "US-CA",
        "purpose": "ai.training.generative",
        "data_categories": ["user.content.public"],
        "state": "withdrawn",
        "mechanism": "opt_out",
        "policy_version": "2024-09",
        "effective_at": "2024-09-18T12:00:00Z",
        "recorded_at": "2024-09-18T12:00:01Z",
        "source_system": "settings",
        "evidence": {"collection_point": "settings/privacy"},
    }
    payload.update(overrides)
    return payload


def consent_event(**overrides: Any) -> ConsentEvent:
    return ConsentEvent.model_validate(consent_payload(**overrides))


def finding() -> DatasetFinding:
    return DatasetFinding(
        finding_id=EVENT_ID,
        status=FindingStatus.ACTIVE,
        dataset=DatasetRef(namespace="s3://lake", name="posts", version="v1"),
        severity=Severity.RETRAIN_REQUIRED,
        reason=FindingReason.LATER_WITHDRAWAL,
        policy_id="ai",
        policy_version="1",
        rule="r",
        affected_records=1,
        affected_subjects=1,
        detected_at=T0,
    )


def rule(*jurisdictions: str, **overrides: Any) -> PolicyRule:
    fields: dict[str, Any] = {
        "id": "r",
        "jurisdictions": jurisdictions or ("*",),
        "purposes": ("ai",),
        "data_categories": ("user",),
    }
    fields.update(overrides)
    return PolicyRule(**fields)


def policy(*rules: PolicyRule, **overrides: Any) -> PolicyDocument:
    fields: dict[str, Any] = {
        "policy_id": "ai",
        "version": "1",
        "valid_from": T0,
        "rules": rules or (rule(),),
    }
    fields.update(overrides)
    return PolicyDocument(**fields)


def full_rule() -> PolicyRule:
    """A rule that sets every field, with nested contracts."""
    return rule(
        "EEA",
        "US-CA",
        id="eea-opt-in",
        purposes=("ai.training",),
        data_categories=("user.content", "user.contact"),
        lawful_bases=(
            LawfulBasis(mechanism=ConsentMechanism.EXPLICIT_OPT_IN),
            LawfulBasis(mechanism=ConsentMechanism.OPT_OUT, valid_until=T0),
        ),
        default=DefaultConsent(valid_from=T0 - timedelta(days=30)),
        withdrawal=WithdrawalEffect(requires=WithdrawalRequires.RETRAIN, erasure=True),
        valid_from=T0 - timedelta(days=365),
        description="explicit opt-in",
    )


def envelope(**overrides: Any) -> Envelope:
    fields: dict[str, Any] = {
        "id": "evt-1",
        "type": "io.consenttrace.consent.changed",
        "source": "consent",
        "time": T0,
        "subject": "subj-42",
    }
    fields.update(overrides)
    return Envelope(**fields)


SAMPLES: dict[str, BaseModel] = {
    "ConsentEvent": consent_event(),
    "DatasetFinding": finding(),
    "PolicyDocument": policy(
        full_rule(),
        jurisdiction_groups={"NORDICS": ("DK", "FI", "IS", "NO", "SE")},
        gpc=(GpcCoverage(jurisdictions=("US-CA",), purposes=("ai.training",)),),
    ),
    "PolicyRule": full_rule(),
    "LawfulBasis": LawfulBasis(mechanism=ConsentMechanism.OPT_OUT, valid_from=T0),
    "DefaultConsent": DefaultConsent(valid_until=T0),
    "WithdrawalEffect": WithdrawalEffect(requires=WithdrawalRequires.DESTROY),
    "GpcCoverage": GpcCoverage(jurisdictions=("*",), purposes=("ai",)),
    "Envelope": envelope(),
    "ModelRef": ModelRef(namespace="models", name="llm", version="7"),
}


# --- frozen, extra="forbid" ---------------------------------------------------------


@pytest.mark.parametrize("name", SAMPLES)
def test_contracts_are_frozen(name: str) -> None:
    sample = SAMPLES[name]
    field = next(iter(type(sample).model_fields))
    with pytest.raises(ValidationError, match="frozen"):
        setattr(sample, field, getattr(sample, field))


@pytest.mark.parametrize("name", SAMPLES)
def test_contracts_reject_unknown_fields(name: str) -> None:
    sample = SAMPLES[name]
    data = sample.model_dump(mode="json") | {"surprise": 1}
    with pytest.raises(ValidationError, match="surprise"):
        type(sample).model_validate(data)


def test_nested_contracts_reject_unknown_fields_too() -> None:
    with pytest.raises(ValidationError, match=r"evidence\.surprise"):
        ConsentEvent.model_validate(
            consent_payload(evidence={"collection_point": "app", "surprise": True})
        )
    data = SAMPLES["PolicyDocument"].model_dump(mode="json")
    data["rules"][0]["lawful_bases"][0]["surprise"] = True
    with pytest.raises(ValidationError, match=r"rules\.0\.lawful_bases\.0\.surprise"):
        PolicyDocument.model_validate(data)


def test_frozen_contracts_are_hashable_and_compare_by_value() -> None:
    assert consent_event() == consent_event()
    assert hash(consent_event()) == hash(consent_event())
    assert consent_event() != consent_event(subject_id="other")


# --- timestamps -----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["effective_at", "recorded_at"])
def test_naive_timestamp_strings_are_rejected(field: str) -> None:
    with pytest.raises(ValidationError, match="UTC offset"):
        consent_event(**{field: "2024-09-18T12:00:00"})


def test_naive_datetime_objects_are_rejected_everywhere() -> None:
    naive = datetime(2024, 9, 18, 12, 0)
    with pytest.raises(ValidationError, match="UTC offset"):
        consent_event(effective_at=naive)
    with pytest.raises(ValidationError, match="UTC offset"):
        policy(valid_from=naive)
    with pytest.raises(ValidationError, match="UTC offset"):
        rule(valid_from=naive)
    with pytest.raises(ValidationError, match="UTC offset"):
        LawfulBasis(mechanism=ConsentMechanism.OPT_OUT, valid_until=naive)
    with pytest.raises(ValidationError, match="UTC offset"):
        DefaultConsent(valid_from=naive)
    with pytest.raises(ValidationError, match="UTC offset"):
        envelope(time=naive)
    with pytest.raises(ValidationError, match="UTC offset"):
        TaskResult(
            task_id=EVENT_ID,
            case_id=EVENT_ID,
            executor="x",
            outcome=TaskOutcome.DONE,
            completed_at=naive,
        )


def test_timestamps_with_any_offset_are_accepted_and_keep_the_instant() -> None:
    event = consent_event(effective_at="2024-09-18T14:00:00+02:00")
    assert event.effective_at == T0
    assert event.effective_at.utcoffset() == timedelta(hours=2)


# --- identifiers and paths ------------------------------------------------------------


@pytest.mark.parametrize(
    "subject_id", ["subj-42", "u:123", "a.b_c@d", "0", "x" * 128, "AbC-09._:@"]
)
def test_valid_subject_ids(subject_id: str) -> None:
    assert consent_event(subject_id=subject_id).subject_id == subject_id


@pytest.mark.parametrize(
    "subject_id",
    ["", " ", "has space", "tab\tid", "a/b", "semi;colon", "ümlaut", "x" * 129, "line\n"],
)
def test_bad_subject_ids_are_rejected(subject_id: str) -> None:
    with pytest.raises(ValidationError, match="subject_id"):
        consent_event(subject_id=subject_id)


@pytest.mark.parametrize("jurisdiction", ["DE", "GB", "US-CA", "FR-75", "GB-ENG", "CN-11"])
def test_valid_jurisdictions(jurisdiction: str) -> None:
    assert consent_event(jurisdiction=jurisdiction).jurisdiction == jurisdiction


@pytest.mark.parametrize(
    "jurisdiction", ["", "de", "D", "DEU", "US-", "US-CAAA", "us-ca", "US_CA", " DE", "*", "EEA"]
)
def test_bad_jurisdictions_are_rejected(jurisdiction: str) -> None:
    with pytest.raises(ValidationError, match="jurisdiction"):
        consent_event(jurisdiction=jurisdiction)


# --- policies: jurisdiction selectors, rule ids, validity windows ---------------------


@pytest.mark.parametrize("selector", ["*", "EEA", "EU", "GB", "US", "US-CA", "FR-75"])
def test_policy_rules_accept_countries_subdivisions_groups_and_wildcard(selector: str) -> None:
    doc = policy(rule(selector))
    assert doc.rules[0].jurisdictions == (selector,)


@pytest.mark.parametrize(
    "selector", ["**", "eu", "Eu", "U", "US-", "US-CAAA", "us-ca", "*US", " GB", ""]
)
def test_policy_rules_reject_malformed_selectors(selector: str) -> None:
    with pytest.raises(ValidationError, match="jurisdictions"):
        rule(selector)


@pytest.mark.parametrize("selector", ["WORLD", "EUROPE", "US_CA", "NORDICS"])
def test_policy_documents_reject_unknown_groups(selector: str) -> None:
    with pytest.raises(ValidationError, match=f"unknown jurisdiction groups: {selector}"):
        policy(rule("GB", selector))
    gpc = (GpcCoverage(jurisdictions=(selector,), purposes=("ai",)),)
    with pytest.raises(ValidationError, match=f"unknown jurisdiction groups: {selector}"):
        policy(gpc=gpc)


def test_unknown_groups_are_all_named_at_once() -> None:
    with pytest.raises(ValidationError, match="unknown jurisdiction groups: EUROPE, WORLD"):
        policy(rule("WORLD", id="a"), rule("EUROPE", "EU", id="b"))


def test_policy_documents_may_define_their_own_groups() -> None:
    groups = {"NORDICS": ("DK", "FI", "IS", "NO", "SE"), "WEST_COAST": ("US-CA", "US-OR")}
    doc = policy(
        rule("NORDICS", id="nordics"),
        rule("WEST_COAST", "EEA", id="west"),
        jurisdiction_groups=groups,
        gpc=(GpcCoverage(jurisdictions=("WEST_COAST",), purposes=("ai",)),),
    )
    assert doc.jurisdiction_groups == groups
    assert [r.jurisdictions for r in doc.rules] == [("NORDICS",), ("WEST_COAST", "EEA")]


def test_document_groups_cannot_redefine_built_in_groups() -> None:
    with pytest.raises(ValidationError, match="jurisdiction group names already defined: EEA"):
        policy(jurisdiction_groups={"EEA": ("DE",)})


@pytest.mark.parametrize("name", ["nordics", "EU", "NO", "X", "NORDICS!"])
def test_document_group_names_are_upper_case_words(name: str) -> None:
    with pytest.raises(ValidationError, match="jurisdiction_groups"):
        policy(jurisdiction_groups={name: ("DE",)})


@pytest.mark.parametrize("member", ["*", "EEA", "de", "NORDICS", "US-", "USA"])
def test_document_group_members_are_countries_or_subdivisions(member: str) -> None:
    with pytest.raises(ValidationError, match="jurisdiction_groups"):
        policy(jurisdiction_groups={"NORDICS": ("NO", member)})


def test_duplicate_rule_ids_are_rejected() -> None:
    with pytest.raises(ValidationError, match="rule ids must be unique: a, b"):
        policy(
            rule(id="a"),
            rule(id="b"),
            rule("GB", id="a"),
            rule("US", id="c"),
            rule("US", id="b"),
        )
    assert [r.id for r in policy(rule(id="a"), rule("GB", id="b")).rules] == ["a", "b"]


@pytest.mark.parametrize("rule_id", ["", "Upper", "-lead", "has space", "a/b", "x" * 129])
def test_bad_rule_ids_are_rejected(rule_id: str) -> None:
    with pytest.raises(ValidationError, match="id"):
        rule(id=rule_id)


@pytest.mark.parametrize("field", ["jurisdictions", "purposes", "data_categories"])
def test_rules_need_at_least_one_selector_of_each_kind(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        rule(**{field: ()})


def test_policy_documents_need_at_least_one_rule() -> None:
    with pytest.raises(ValidationError, match="rules"):
        PolicyDocument(policy_id="ai", version="1", valid_from=T0, rules=())


WINDOWED: dict[str, Any] = {
    "PolicyRule": rule,
    "LawfulBasis": functools.partial(LawfulBasis, mechanism=ConsentMechanism.OPT_OUT),
    "DefaultConsent": DefaultConsent,
}


@pytest.mark.parametrize("name", WINDOWED)
@pytest.mark.parametrize("until", [T0, T0 - timedelta(microseconds=1), T0 - timedelta(days=9)])
def test_a_window_must_end_after_it_starts(name: str, until: datetime) -> None:
    with pytest.raises(ValidationError, match="valid_until must be after valid_from"):
        WINDOWED[name](valid_from=T0, valid_until=until)


@pytest.mark.parametrize("name", WINDOWED)
def test_windows_may_be_open_at_either_end(name: str) -> None:
    make = WINDOWED[name]
    later = T0 + timedelta(microseconds=1)
    assert make(valid_from=T0, valid_until=later).valid_until == later
    assert make(valid_from=T0).valid_until is None
    assert make(valid_until=T0).valid_from is None
    # Offsets do not matter, only the instants: 14:00+02:00 is 12:00Z.
    plus_two = timezone(timedelta(hours=2))
    with pytest.raises(ValidationError, match="valid_until must be after valid_from"):
        make(valid_from=T0, valid_until=datetime(2024, 9, 18, 14, 0, tzinfo=plus_two))


def test_rule_defaults() -> None:
    r = rule()
    assert r.lawful_bases == ()
    assert r.default is None
    assert r.withdrawal == WithdrawalEffect(
        requires=WithdrawalRequires.EXCLUDE_FROM_FUTURE, erasure=False
    )
    assert DefaultConsent().mechanism is ConsentMechanism.DEFAULT_SETTING
    assert GpcCoverage(jurisdictions=("*",), purposes=("ai",)).data_categories == ("user",)


def test_consent_words_are_shared_with_the_events() -> None:
    import contracts.events as events
    import contracts.vocabulary as vocabulary

    assert events.ConsentState is vocabulary.ConsentState
    assert events.ConsentMechanism is vocabulary.ConsentMechanism


@pytest.mark.parametrize(
    "path", ["user", "user.content.private", "ai.training.generative", "a1_b.c2_", "x" * 200]
)
def test_valid_dotted_paths(path: str) -> None:
    event = consent_event(purpose=path, data_categories=[path])
    assert event.purpose == path
    assert event.data_categories == (path,)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "User",
        ".user",
        "user.",
        "user..content",
        "user.Content",
        "1user",
        "user.2x",
        "user-content",
        "user content",
        "user/content",
        "x" * 201,
    ],
)
def test_bad_dotted_paths_are_rejected(path: str) -> None:
    with pytest.raises(ValidationError, match="purpose"):
        consent_event(purpose=path)
    with pytest.raises(ValidationError, match="data_categories"):
        consent_event(data_categories=["user", path])


def test_consent_needs_at_least_one_category() -> None:
    with pytest.raises(ValidationError, match="data_categories"):
        consent_event(data_categories=[])


def test_notice_hash_must_be_a_sha256_digest() -> None:
    ConsentEvidence(collection_point="app", notice_text_hash="sha256:" + "a" * 64)
    for bad in ["sha256:" + "A" * 64, "sha256:" + "a" * 63, "md5:" + "a" * 32, "a" * 64]:
        with pytest.raises(ValidationError, match="notice_text_hash"):
            ConsentEvidence(collection_point="app", notice_text_hash=bad)


def test_counts_cannot_be_negative() -> None:
    data = finding().model_dump(mode="json") | {"affected_records": -1}
    with pytest.raises(ValidationError, match="affected_records"):
        DatasetFinding.model_validate(data)


def test_dataset_and_model_keys_differ_by_kind() -> None:
    fields = {"namespace": "s3://lake", "name": "posts", "version": "v1"}
    assert DatasetRef(**fields).key == "dataset:s3://lake:posts#v1"
    assert ModelRef(**fields).key == "model:s3://lake:posts#v1"


# --- severities and task results ------------------------------------------------------


@pytest.mark.parametrize(
    ("severity", "flags"),
    [
        (Severity.DESTROY_REQUIRED, True),
        (Severity.RETRAIN_REQUIRED, True),
        (Severity.REVIEW, True),
        (Severity.EXCLUDE_FROM_FUTURE, False),
    ],
)
def test_only_exclude_from_future_flags_no_model(severity: Severity, flags: bool) -> None:
    assert severity.flags_models is flags


def task_result(outcome: TaskOutcome, reason: str) -> TaskResult:
    return TaskResult(
        task_id=EVENT_ID,
        case_id=EVENT_ID,
        executor="model-store",
        outcome=outcome,
        reason=reason,
        completed_at=T0,
    )


def test_failed_task_result_requires_a_reason() -> None:
    with pytest.raises(ValidationError, match="reason"):
        task_result(TaskOutcome.FAILED, "")
    assert task_result(TaskOutcome.FAILED, "bucket locked").reason == "bucket locked"


@pytest.mark.parametrize("outcome", [TaskOutcome.DONE, TaskOutcome.NOT_APPLICABLE])
def test_successful_task_results_need_no_reason(outcome: TaskOutcome) -> None:
    assert task_result(outcome, "").outcome is outcome


# --- envelope: CloudEvents binary mode ------------------------------------------------

attributes = st.text(min_size=1, max_size=64)
offsets = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
times = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=offsets
)


@settings(max_examples=150, deadline=None)
@given(
    id=attributes,
    type=attributes,
    source=attributes,
    subject=st.none() | attributes,
    time=times,
    shuffle_seed=st.integers(0, 2**32),
)
def test_envelope_round_trips_through_headers(
    id: str, type: str, source: str, subject: str | None, time: datetime, shuffle_seed: int
) -> None:
    original = Envelope(id=id, type=type, source=source, subject=subject, time=time)
    headers = original.to_headers()
    assert all(isinstance(value, bytes) for _, value in headers)
    random.Random(shuffle_seed).shuffle(headers)

    restored = Envelope.from_headers(headers)

    assert restored == original
    assert restored.time.utcoffset() == time.utcoffset()


def test_envelope_headers_follow_the_kafka_binding() -> None:
    headers = dict(envelope().to_headers())
    assert headers == {
        "ce_specversion": b"1.0",
        "ce_id": b"evt-1",
        "ce_type": b"io.consenttrace.consent.changed",
        "ce_source": b"consent",
        "ce_time": b"2024-09-18T12:00:00+00:00",
        "ce_schemaversion": b"1",
        "ce_subject": b"subj-42",
        "content-type": b"application/json",
    }


def test_envelope_without_subject_sends_no_subject_header() -> None:
    headers = envelope(subject=None).to_headers()
    assert "ce_subject" not in dict(headers)
    assert Envelope.from_headers(headers).subject is None


def test_new_envelopes_get_unique_ids_and_an_aware_current_time() -> None:
    before = datetime.now(UTC)
    first = Envelope.new(type="t", source="s")
    second = Envelope.new(type="t", source="s")
    assert first.id != second.id
    assert UUID(first.id)
    assert before <= first.time <= datetime.now(UTC)


REQUIRED = ["ce_id", "ce_type", "ce_source", "ce_time", "ce_specversion"]


@pytest.mark.parametrize("missing", REQUIRED)
def test_a_missing_required_header_is_named(missing: str) -> None:
    headers = [h for h in envelope().to_headers() if h[0] != missing]
    with pytest.raises(EnvelopeError) as excinfo:
        Envelope.from_headers(headers)
    message = str(excinfo.value)
    assert missing in message
    assert [name for name in REQUIRED if name in message] == [missing]


def test_all_missing_headers_are_named_at_once() -> None:
    with pytest.raises(EnvelopeError) as excinfo:
        Envelope.from_headers([("traceparent", b"00-abc"), ("content-type", b"application/json")])
    for name in REQUIRED:
        assert name in str(excinfo.value)


def test_a_header_without_value_counts_as_missing() -> None:
    headers: list[tuple[str, bytes | None]] = [
        (name, None if name == "ce_id" else value) for name, value in envelope().to_headers()
    ]
    with pytest.raises(EnvelopeError, match="ce_id"):
        Envelope.from_headers(headers)


def test_non_utf8_header_is_rejected_with_its_name() -> None:
    headers = [
        (name, b"\xff\xfe" if name == "ce_source" else value)
        for name, value in envelope().to_headers()
    ]
    with pytest.raises(EnvelopeError, match=r"ce_source.*UTF-8"):
        Envelope.from_headers(headers)


def test_first_occurrence_wins_on_duplicate_headers() -> None:
    headers = envelope(id="first").to_headers()
    headers += [("ce_id", b"second"), ("ce_type", b"other.type"), ("ce_id", b"\xff")]
    restored = Envelope.from_headers(headers)
    assert restored.id == "first"
    assert restored.type == "io.consenttrace.consent.changed"

    restored = Envelope.from_headers([("ce_id", b"zeroth"), *headers])
    assert restored.id == "zeroth"


def test_unknown_headers_are_ignored() -> None:
    headers = [
        ("ce_partitionkey", b"p"),
        ("ce_traceparent", b"00-x"),
        ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("x-custom", b"\xff"),
        *envelope().to_headers(),
    ]
    assert Envelope.from_headers(headers) == envelope()


@pytest.mark.parametrize("version", [b"0.3", b"1.1", b"1", b"2.0", b""])
def test_specversion_other_than_1_0_is_rejected(version: bytes) -> None:
    headers = [
        (name, version if name == "ce_specversion" else value)
        for name, value in envelope().to_headers()
    ]
    with pytest.raises(EnvelopeError, match="specversion"):
        Envelope.from_headers(headers)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ce_time", b"2024-09-18T12:00:00"),
        ("ce_time", b"yesterday"),
        ("content-type", b"text/plain"),
        ("ce_id", b""),
    ],
)
def test_malformed_header_values_are_rejected(name: str, value: bytes) -> None:
    headers = [(n, value if n == name else v) for n, v in envelope().to_headers()]
    with pytest.raises(EnvelopeError, match="invalid CloudEvents headers"):
        Envelope.from_headers(headers)


def test_missing_content_type_defaults_to_json() -> None:
    headers = [h for h in envelope().to_headers() if h[0] != "content-type"]
    assert Envelope.from_headers(headers).datacontenttype == "application/json"
