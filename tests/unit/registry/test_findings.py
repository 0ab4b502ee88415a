"""Later-withdrawal findings (services.registry.domain.findings).

Which rule governs a use, which policy version is in force and what a withdrawal requires
are the eligibility engine's (tests/unit/eligibility); these tests check what the registry
makes of them: which records a withdrawal reaches, with which severity, and how they are
aggregated into findings.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.base import DatasetRef
from contracts.events import (
    ConsentEvent,
    ConsentEvidence,
    FindingReason,
    FindingStatus,
    Severity,
)
from contracts.policy import (
    LawfulBasis,
    PolicyDocument,
    PolicyRule,
    WithdrawalEffect,
    WithdrawalRequires,
)
from contracts.vocabulary import ConsentMechanism, ConsentState
from services.eligibility import covers
from services.registry.domain.findings import (
    SAMPLE_SIZE,
    UsedRecords,
    finding_id,
    withdrawal_findings,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
USED = datetime(2024, 10, 1, tzinfo=UTC)
WITHDRAWN = datetime(2025, 1, 10, tzinfo=UTC)
PRIVATE_MESSAGES = "private-messages"


def rule(
    rule_id: str,
    categories: tuple[str, ...] = ("user",),
    requires: WithdrawalRequires = WithdrawalRequires.EXCLUDE_FROM_FUTURE,
    *,
    jurisdictions: tuple[str, ...] = ("*",),
    purposes: tuple[str, ...] = ("ai.training",),
    **overrides: Any,
) -> PolicyRule:
    return PolicyRule(
        id=rule_id,
        jurisdictions=jurisdictions,
        purposes=purposes,
        data_categories=categories,
        lawful_bases=(LawfulBasis(mechanism=ConsentMechanism.EXPLICIT_OPT_IN),),
        withdrawal=WithdrawalEffect(requires=requires),
        **overrides,
    )


def policy(
    *rules: PolicyRule, version: str = "1", valid_from: datetime = T0, policy_id: str = "ai"
) -> PolicyDocument:
    return PolicyDocument(policy_id=policy_id, version=version, valid_from=valid_from, rules=rules)


def standard(private: WithdrawalRequires = WithdrawalRequires.DESTROY) -> PolicyDocument:
    return policy(
        rule("user", ("user",)),
        rule("content", ("user.content",), WithdrawalRequires.RETRAIN),
        rule(
            PRIVATE_MESSAGES,
            ("user.content.private",),
            private,
            description="private messages were promised confidentiality",
        ),
    )


def consent_event(**overrides: Any) -> ConsentEvent:
    fields: dict[str, Any] = {
        "consent_event_id": UUID("0f8fad5b-d9cb-469f-a165-70867728950e"),
        "subject_id": "member:8812",
        "jurisdiction": "US-CA",
        "purpose": "ai.training",
        "data_categories": ("user.content",),
        "state": ConsentState.WITHDRAWN,
        "mechanism": ConsentMechanism.OPT_OUT,
        "policy_version": "1",
        "effective_at": WITHDRAWN,
        "recorded_at": WITHDRAWN + timedelta(seconds=2),
        "source_system": "settings",
        "evidence": ConsentEvidence(collection_point="settings/genai"),
    }
    fields.update(overrides)
    return ConsentEvent(**fields)


def dataset(name: str, version: str = "v1") -> DatasetRef:
    return DatasetRef(namespace="s3://lake", name=name, version=version)


def used(
    ds: DatasetRef,
    category: str,
    *record_ids: str,
    purpose: str = "ai.training.generative",
    used_at: datetime = USED,
    jurisdiction: str = "US-CA",
) -> UsedRecords:
    return UsedRecords(
        dataset=ds,
        purpose=purpose,
        used_at=used_at,
        jurisdiction=jurisdiction,
        category=category,
        record_ids=record_ids or ("r1",),
    )


STANDARD = standard()
POLICIES = [(STANDARD, T0)]
POSTS = dataset("posts")
INMAIL = dataset("inmail")


# --- what a withdrawal reaches, and how severely -------------------------------------------


def test_withdrawing_content_reaches_private_messages_with_their_rules_severity() -> None:
    event = consent_event(data_categories=("user.content",))
    findings = withdrawal_findings(
        event, [used(INMAIL, "user.content.private", "m2", "m1")], POLICIES
    )

    assert len(findings) == 1
    (finding,) = findings
    assert finding.dataset == INMAIL
    assert finding.severity is Severity.DESTROY_REQUIRED
    assert finding.reason is FindingReason.LATER_WITHDRAWAL
    assert finding.status is FindingStatus.ACTIVE
    assert finding.rule.startswith(f"{PRIVATE_MESSAGES} (withdrawal requires")
    assert "requires destroy" in finding.rule
    assert (finding.policy_id, finding.policy_version) == ("ai", "1")
    assert finding.affected_records == 2
    assert finding.affected_subjects == 1
    assert finding.sample_record_ids == ("m1", "m2")
    assert finding.cause_event_ids == (event.consent_event_id,)
    assert finding.detected_at == event.recorded_at


@pytest.mark.parametrize(
    ("requires", "severity"),
    [
        (WithdrawalRequires.DESTROY, Severity.DESTROY_REQUIRED),
        (WithdrawalRequires.RETRAIN, Severity.RETRAIN_REQUIRED),
        (WithdrawalRequires.EXCLUDE_FROM_FUTURE, Severity.EXCLUDE_FROM_FUTURE),
        (WithdrawalRequires.NONE, None),
    ],
)
def test_the_governing_rules_withdrawal_sets_the_severity(
    requires: WithdrawalRequires, severity: Severity | None
) -> None:
    findings = withdrawal_findings(
        consent_event(), [used(INMAIL, "user.content.private")], [(standard(requires), T0)]
    )
    assert [f.severity for f in findings] == ([severity] if severity else [])
    if severity is not None:
        assert findings[0].rule.startswith(f"{PRIVATE_MESSAGES} (withdrawal requires")
        assert f"requires {requires.value}" in findings[0].rule


def test_the_finding_names_the_rule_and_what_it_requires() -> None:
    (finding,) = withdrawal_findings(
        consent_event(), [used(POSTS, "user.content.public")], POLICIES
    )
    assert finding.severity is Severity.RETRAIN_REQUIRED
    assert finding.rule.startswith("content (withdrawal requires retrain)")
    assert (finding.policy_id, finding.policy_version) == ("ai", "1")


def test_without_a_governing_rule_a_withdrawal_still_excludes_from_future_training() -> None:
    elsewhere = policy(
        rule("gb-only", ("user",), WithdrawalRequires.DESTROY, jurisdictions=("GB",))
    )
    (finding,) = withdrawal_findings(
        consent_event(), [used(POSTS, "user.content.public")], [(elsewhere, T0)]
    )
    assert finding.severity is Severity.EXCLUDE_FROM_FUTURE
    assert "no rule" in finding.rule


def test_grants_yield_no_findings() -> None:
    event = consent_event(state=ConsentState.GRANTED, mechanism=ConsentMechanism.EXPLICIT_OPT_IN)
    assert withdrawal_findings(event, [used(INMAIL, "user.content.private")], POLICIES) == []


@pytest.mark.parametrize("purpose", ["analytics", "ai.inference", "ai", "ai.trainingx"])
def test_datasets_for_other_purposes_are_not_reached(purpose: str) -> None:
    uses = [used(POSTS, "user.content.public", purpose=purpose)]
    assert withdrawal_findings(consent_event(purpose="ai.training"), uses, POLICIES) == []


def test_datasets_for_narrower_purposes_are_reached() -> None:
    uses = [used(POSTS, "user.content.public", purpose="ai.training.generative.chat")]
    assert len(withdrawal_findings(consent_event(purpose="ai.training"), uses, POLICIES)) == 1


@pytest.mark.parametrize("category", ["user.contact", "user.contents", "user", "system.logs"])
def test_records_of_other_categories_are_not_reached(category: str) -> None:
    uses = [used(POSTS, category)]
    event = consent_event(data_categories=("user.content",))
    assert withdrawal_findings(event, uses, POLICIES) == []


@pytest.mark.parametrize("after", [timedelta(0), timedelta(microseconds=1), timedelta(days=30)])
def test_datasets_used_at_or_after_the_withdrawal_are_not_later_withdrawals(
    after: timedelta,
) -> None:
    # Such a use is an improper use (the engine's evaluate says so), not a later withdrawal.
    uses = [used(POSTS, "user.content.public", used_at=WITHDRAWN + after)]
    assert withdrawal_findings(consent_event(), uses, POLICIES) == []
    just_before = [
        used(POSTS, "user.content.public", used_at=WITHDRAWN - timedelta(microseconds=1))
    ]
    assert len(withdrawal_findings(consent_event(), just_before, POLICIES)) == 1


def test_a_withdrawal_the_policy_requires_nothing_for_yields_no_finding() -> None:
    lenient = policy(rule("lenient", ("user",), WithdrawalRequires.NONE))
    assert (
        withdrawal_findings(consent_event(), [used(POSTS, "user.content")], [(lenient, T0)]) == []
    )


# --- the policy in force ---------------------------------------------------------------------


def test_without_a_policy_in_force_there_is_no_finding() -> None:
    uses = [used(POSTS, "user.content.public", used_at=T0 - timedelta(microseconds=1))]
    assert withdrawal_findings(consent_event(), uses, POLICIES) == []
    assert withdrawal_findings(consent_event(), [used(POSTS, "user.content.public")], []) == []


def test_the_policy_read_now_for_the_time_of_use_decides() -> None:
    reread = policy(rule("all", ("user",), WithdrawalRequires.DESTROY), version="1-reread")
    later = policy(rule("all", ("user",)), version="2", valid_from=USED + timedelta(days=1))
    history = [(STANDARD, T0), (reread, T0 + timedelta(days=500)), (later, USED)]
    for versions in (history, history[::-1]):
        (finding,) = withdrawal_findings(
            consent_event(), [used(POSTS, "user.content.public")], versions
        )
        assert finding.policy_version == "1-reread"
        assert finding.severity is Severity.DESTROY_REQUIRED

    # A use after the later version's valid_from is judged by that version.
    (finding,) = withdrawal_findings(
        consent_event(),
        [used(POSTS, "user.content.public", used_at=USED + timedelta(days=2))],
        history,
    )
    assert finding.policy_version == "2"
    assert finding.severity is Severity.EXCLUDE_FROM_FUTURE


def test_rule_windows_are_read_at_the_time_of_use() -> None:
    windowed = policy(
        rule("content-until", ("user.content",), WithdrawalRequires.DESTROY, valid_until=USED),
        rule("content-from", ("user.content",), WithdrawalRequires.RETRAIN, valid_from=USED),
    )
    uses = [
        used(POSTS, "user.content.public", "early", used_at=USED - timedelta(days=1)),
        used(dataset("posts", "v2"), "user.content.public", "late", used_at=USED),
    ]
    findings = withdrawal_findings(consent_event(), uses, [(windowed, T0)])
    assert [(f.dataset.version, f.severity) for f in findings] == [
        ("v1", Severity.DESTROY_REQUIRED),
        ("v2", Severity.RETRAIN_REQUIRED),
    ]


# --- aggregation -------------------------------------------------------------------------------


def test_records_are_aggregated_per_dataset_version_and_severity() -> None:
    posts_v2 = dataset("posts", "v2")
    uses = [
        used(POSTS, "user.content.public", "p1", "p2"),
        used(POSTS, "user.content.comments", "p3", "p2"),
        used(POSTS, "user.content.private", "m1"),
        used(posts_v2, "user.content.public", "p1"),
    ]
    findings = withdrawal_findings(consent_event(), uses, POLICIES)
    summary = [
        (f.dataset.version, f.severity, f.affected_records, f.sample_record_ids) for f in findings
    ]
    assert sorted(summary) == sorted(
        [
            ("v1", Severity.RETRAIN_REQUIRED, 3, ("p1", "p2", "p3")),
            ("v1", Severity.DESTROY_REQUIRED, 1, ("m1",)),
            ("v2", Severity.RETRAIN_REQUIRED, 1, ("p1",)),
        ]
    )
    assert len({f.finding_id for f in findings}) == 3
    assert all(f.affected_subjects == 1 for f in findings)


def test_the_sample_is_bounded_but_the_count_is_not() -> None:
    ids = [f"r{i:04d}" for i in range(3 * SAMPLE_SIZE + 1)]
    random.Random(7).shuffle(ids)
    (finding,) = withdrawal_findings(consent_event(), [used(POSTS, "user.content", *ids)], POLICIES)
    assert finding.affected_records == len(ids)
    assert len(finding.sample_record_ids) == SAMPLE_SIZE
    assert finding.sample_record_ids == tuple(sorted(ids)[:SAMPLE_SIZE])


# --- finding ids -------------------------------------------------------------------------------


def test_finding_ids_are_deterministic_and_follow_the_cause() -> None:
    uses = [used(INMAIL, "user.content.private", "m1")]
    first = withdrawal_findings(consent_event(), uses, POLICIES)
    assert first == withdrawal_findings(consent_event(), uses, POLICIES)
    assert first[0].finding_id.version == 5
    assert first[0].finding_id == finding_id(
        INMAIL,
        STANDARD,
        FindingReason.LATER_WITHDRAWAL,
        Severity.DESTROY_REQUIRED,
        [consent_event().consent_event_id],
    )

    other_event = withdrawal_findings(consent_event(consent_event_id=uuid4()), uses, POLICIES)
    assert other_event[0].finding_id != first[0].finding_id

    v2 = STANDARD.model_copy(update={"version": "2"})
    other_policy = withdrawal_findings(
        consent_event(), uses, [(STANDARD, T0), (v2, T0 + timedelta(days=1))]
    )
    assert other_policy[0].policy_version == "2"
    assert other_policy[0].finding_id != first[0].finding_id

    other_dataset = withdrawal_findings(
        consent_event(), [used(dataset("inmail", "v2"), "user.content.private", "m1")], POLICIES
    )
    assert other_dataset[0].finding_id != first[0].finding_id

    # The records and when the finding was detected are not part of the cause.
    more_records = withdrawal_findings(
        consent_event(recorded_at=WITHDRAWN + timedelta(days=3)),
        [used(INMAIL, "user.content.private", "m1", "m2")],
        POLICIES,
    )
    assert more_records[0].finding_id == first[0].finding_id


def test_finding_ids_do_not_depend_on_the_order_of_causes() -> None:
    causes = [uuid4() for _ in range(4)]
    ids = {
        finding_id(POSTS, STANDARD, FindingReason.LATER_WITHDRAWAL, Severity.RETRAIN_REQUIRED, c)
        for c in (causes, causes[::-1], sorted(causes, key=str))
    }
    assert len(ids) == 1


CATEGORIES = ["user.content.public", "user.content.private", "user.contact", "user.content"]
DATASETS = [
    (dataset("posts", "v1"), "ai.training.generative", USED),
    (dataset("posts", "v2"), "ai.training", USED + timedelta(days=30)),
    (dataset("clicks", "v1"), "analytics", USED),
    (dataset("late", "v1"), "ai.training", WITHDRAWN + timedelta(days=1)),
    (dataset("edge", "v1"), "ai.training", WITHDRAWN),
]

uses_strategy = st.lists(
    st.tuples(
        st.integers(0, len(DATASETS) - 1),
        st.sampled_from(CATEGORIES),
        st.sampled_from(["US-CA", "DE", "GB"]),
        st.integers(1, 4),
    ),
    max_size=12,
)


@settings(max_examples=75, deadline=None)
@given(spec=uses_strategy, seed=st.integers(0, 2**32))
def test_findings_do_not_depend_on_input_order_and_count_every_reached_record(
    spec: list[tuple[int, str, str, int]], seed: int
) -> None:
    uses = []
    for n, (ds, category, jurisdiction, count) in enumerate(spec):
        ref, purpose, used_at = DATASETS[ds]
        ids = tuple(f"u{n}-{i}" for i in range(count))
        uses.append(UsedRecords(ref, purpose, used_at, jurisdiction, category, ids))
    event = consent_event(data_categories=("user.content",))

    findings = withdrawal_findings(event, uses, POLICIES)
    shuffled = list(uses)
    random.Random(seed).shuffle(shuffled)
    assert withdrawal_findings(event, shuffled, POLICIES) == findings

    reached: dict[str, int] = {}
    for use in uses:
        if (
            covers("ai.training", use.purpose)
            and covers("user.content", use.category)
            and use.used_at < event.effective_at
        ):
            reached[use.dataset.key] = reached.get(use.dataset.key, 0) + len(use.record_ids)
    counted: dict[str, int] = {}
    for finding in findings:
        counted[finding.dataset.key] = (
            counted.get(finding.dataset.key, 0) + finding.affected_records
        )
    assert counted == reached
    assert len({(f.dataset, f.severity) for f in findings}) == len(findings)
    assert len({f.finding_id for f in findings}) == len(findings)
    expected = {
        "user.content.private": Severity.DESTROY_REQUIRED,
        "user.content.public": Severity.RETRAIN_REQUIRED,
        "user.content": Severity.RETRAIN_REQUIRED,
    }
    for finding in findings:
        categories = {
            u.category
            for u in uses
            if u.dataset == finding.dataset and expected.get(u.category) is finding.severity
        }
        assert categories, finding


def test_each_policy_judges_the_use_under_its_own_reading() -> None:
    """Two policies are two documents: a newer one does not silence an older one's rules."""
    company = policy(rule("content", ("user.content",), WithdrawalRequires.RETRAIN))
    contract = policy(
        rule("premium-messages", ("user.content.private",), WithdrawalRequires.DESTROY),
        policy_id="premium-contract",
        valid_from=T0 + timedelta(days=30),
    )
    findings = withdrawal_findings(
        consent_event(),
        [used(dataset("chats"), "user.content.private")],
        [(company, T0), (contract, T0)],
    )
    assert {(f.policy_id, f.severity) for f in findings} == {
        ("ai", Severity.RETRAIN_REQUIRED),
        ("premium-contract", Severity.DESTROY_REQUIRED),
    }
    assert len({f.finding_id for f in findings}) == 2
