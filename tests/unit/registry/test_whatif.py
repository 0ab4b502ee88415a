"""What-if withdrawal (services.registry.domain.whatif): which uses would get new or more
severe findings, for a subject, a category or a jurisdiction; aggregated judging of
subjects without history decides exactly as judging them one by one."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.base import DatasetRef
from contracts.events import ConsentEvent, ConsentEvidence, FindingReason, Severity
from contracts.policy import (
    DefaultConsent,
    LawfulBasis,
    PolicyDocument,
    PolicyRule,
    WithdrawalEffect,
    WithdrawalRequires,
)
from contracts.vocabulary import ConsentMechanism, ConsentState
from services.registry.domain.findings import PolicyBook, SubjectUse
from services.registry.domain.whatif import (
    REPRESENTATIVE,
    Change,
    Scope,
    ScopeKind,
    UseGroup,
    group_keys,
    hypothetical_withdrawals,
    judge_what_if,
    summarize,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
USED = datetime(2024, 10, 1, tzinfo=UTC)
NOW = datetime(2026, 1, 1, tzinfo=UTC)
PURPOSE = "ai.training"


def rule(
    rule_id: str, categories: tuple[str, ...], requires: WithdrawalRequires, **kw: Any
) -> PolicyRule:
    return PolicyRule(
        id=rule_id,
        jurisdictions=kw.pop("jurisdictions", ("*",)),
        purposes=(PURPOSE,),
        data_categories=categories,
        lawful_bases=kw.pop(
            "bases",
            (
                LawfulBasis(mechanism=ConsentMechanism.EXPLICIT_OPT_IN),
                LawfulBasis(mechanism=ConsentMechanism.DEFAULT_SETTING),
            ),
        ),
        withdrawal=WithdrawalEffect(requires=requires),
        **kw,
    )


def book(*rules: PolicyRule) -> PolicyBook:
    rules = rules or (
        rule("user", ("user",), WithdrawalRequires.EXCLUDE_FROM_FUTURE, default=DefaultConsent()),
        rule("content", ("user.content",), WithdrawalRequires.RETRAIN, default=DefaultConsent()),
        rule(
            "private",
            ("user.content.private",),
            WithdrawalRequires.DESTROY,
            bases=(LawfulBasis(mechanism=ConsentMechanism.EXPLICIT_OPT_IN),),
        ),
        rule(
            "us-content",
            ("user.content",),
            WithdrawalRequires.NONE,
            jurisdictions=("US",),
            default=DefaultConsent(),
        ),
    )
    document = PolicyDocument(policy_id="ai", version="1", valid_from=T0, rules=rules)
    return PolicyBook([(document, T0)])


VERSIONS = {"a": 1, "b": 2}


def use(
    subject: str,
    category: str,
    *,
    version: str = "a",
    jurisdiction: str = "DE",
    records: int = 1,
    used_at: datetime = USED,
) -> SubjectUse:
    return SubjectUse(
        dataset_version_id=VERSIONS[version],
        dataset=DatasetRef(namespace="s3://lake", name=version, version="v1"),
        purpose=PURPOSE,
        sealed_at=used_at,
        used_at=used_at,
        subject_id=subject,
        category=category,
        jurisdiction=jurisdiction,
        records=records,
        sample=(f"{subject}-{category}",),
    )


def consent(subject: str, state: ConsentState, at: datetime, **kw: Any) -> ConsentEvent:
    return ConsentEvent(
        consent_event_id=uuid4(),
        subject_id=subject,
        jurisdiction="DE",
        purpose=PURPOSE,
        data_categories=kw.pop("categories", ("user",)),
        state=state,
        mechanism=kw.pop("mechanism", ConsentMechanism.EXPLICIT_OPT_IN),
        policy_version="1",
        effective_at=at,
        recorded_at=at,
        source_system="test",
        evidence=ConsentEvidence(collection_point="test"),
    )


def what_if(
    scope: Scope,
    uses: list[SubjectUse],
    histories: dict[str, list[ConsentEvent]] | None = None,
    groups: list[UseGroup] | None = None,
    **kw: Any,
) -> list[Change]:
    return judge_what_if(
        scope,
        uses=uses,
        histories=histories or {},
        groups=groups or [],
        book=kw.pop("policies", None) or book(),
        purpose=kw.pop("purpose", None),
        at=kw.pop("at", NOW),
        recorded_at=NOW,
    )


def outcome(changes: list[Change]) -> set[tuple[str, str, str, str | None]]:
    return {
        (c.dataset.name, c.category, c.kind.severity.value, c.current.value if c.current else None)
        for c in changes
    }


GRANTED = ConsentState.GRANTED
WITHDRAWN = ConsentState.WITHDRAWN


def test_a_subject_who_consented_would_bring_later_withdrawal_findings() -> None:
    uses = [use("ann", "user.content.public"), use("ann", "user.content.private")]
    histories = {"ann": [consent("ann", GRANTED, T0 + timedelta(days=1))]}
    changes = what_if(Scope(ScopeKind.SUBJECT, "ann"), uses, histories)
    assert outcome(changes) == {
        ("a", "user.content.public", "retrain_required", None),
        ("a", "user.content.private", "destroy_required", None),
    }
    assert all(c.kind.reason is FindingReason.LATER_WITHDRAWAL for c in changes)
    assert {c.kind.rule_id for c in changes} == {"content", "private"}


def test_nothing_new_for_a_subject_who_withdrew_already_or_was_used_improperly() -> None:
    uses = [use("bob", "user.content.public"), use("cat", "user.content.private")]
    histories = {
        "bob": [
            consent("bob", GRANTED, T0 + timedelta(days=1)),
            consent("bob", WITHDRAWN, USED + timedelta(days=1), mechanism=ConsentMechanism.OPT_OUT),
        ],
    }
    assert what_if(Scope(ScopeKind.SUBJECT, "bob"), uses, histories) == []
    # cat never opted in to private messages (no default): an improper use already.
    assert what_if(Scope(ScopeKind.SUBJECT, "cat"), uses, histories) == []


def test_an_existing_finding_made_more_severe_is_reported_with_what_it_is_now() -> None:
    # dan withdrew user.content.public only (retrain); withdrawing all would destroy for
    # private messages and not change the public content's retrain.
    uses = [use("dan", "user.content.public"), use("dan", "user.content.private")]
    histories = {
        "dan": [
            consent("dan", GRANTED, T0 + timedelta(days=1)),
            consent(
                "dan",
                WITHDRAWN,
                USED + timedelta(days=1),
                categories=("user.content.public",),
                mechanism=ConsentMechanism.OPT_OUT,
            ),
        ]
    }
    assert outcome(what_if(Scope(ScopeKind.SUBJECT, "dan"), uses, histories)) == {
        ("a", "user.content.private", "destroy_required", None)
    }


def test_a_withdrawal_before_the_time_of_use_would_make_it_improper() -> None:
    uses = [
        use("eve", "user.content.public"),
        use("eve", "user.content.public", version="b", used_at=USED + timedelta(days=30)),
    ]
    histories = {"eve": [consent("eve", GRANTED, T0 + timedelta(days=1))]}
    changes = what_if(
        Scope(ScopeKind.SUBJECT, "eve"), uses, histories, at=USED + timedelta(days=10)
    )
    assert {(c.dataset.name, c.kind.reason.value, c.kind.severity.value) for c in changes} == {
        ("a", "later_withdrawal", "retrain_required"),
        ("b", "improper_use", "destroy_required"),
    }


def test_a_purpose_the_uses_do_not_fall_under_changes_nothing() -> None:
    uses = [use("fay", "user.content.public")]
    histories = {"fay": [consent("fay", GRANTED, T0 + timedelta(days=1))]}
    scope = Scope(ScopeKind.SUBJECT, "fay")
    assert what_if(scope, uses, histories, purpose="ai.inference") == []
    assert what_if(scope, uses, histories, purpose="ai") != []


def test_a_category_scope_reaches_that_category_and_below_only() -> None:
    uses = [
        use("gus", "user.content.public"),
        use("gus", "user.content.private"),
        use("gus", "user.contact"),
    ]
    histories = {"gus": [consent("gus", GRANTED, T0 + timedelta(days=1))]}
    changes = what_if(Scope(ScopeKind.CATEGORY, "user.content"), uses, histories)
    assert {c.category for c in changes} == {"user.content.public", "user.content.private"}
    (event,) = hypothetical_withdrawals(
        "gus",
        uses,
        Scope(ScopeKind.CATEGORY, "user.content"),
        purpose=None,
        at=NOW,
        recorded_at=NOW,
    )
    assert event.data_categories == ("user.content",) and event.state is WITHDRAWN


def test_a_jurisdiction_scope_reaches_its_subdivisions_and_groups_their_members() -> None:
    scope = Scope(ScopeKind.JURISDICTION, "US")
    assert scope.reaches(use("x", "user", jurisdiction="US-CA"))
    assert not scope.reaches(use("x", "user", jurisdiction="DE"))
    assert Scope(ScopeKind.JURISDICTION, "EU").reaches(use("x", "user", jurisdiction="FR"))
    assert not Scope(ScopeKind.JURISDICTION, "US-CA").reaches(use("x", "user", jurisdiction="US"))


def test_subjects_without_history_are_judged_once_per_group_and_scaled() -> None:
    groups = [
        UseGroup(use(REPRESENTATIVE, "user.content.public", records=30), subjects=12),
        UseGroup(use(REPRESENTATIVE, "user.content.public", jurisdiction="US", records=9), 4),
        UseGroup(use(REPRESENTATIVE, "user.contact", records=5), subjects=5),
    ]
    changes = what_if(Scope(ScopeKind.JURISDICTION, "EU"), [], groups=groups)
    assert [
        (c.category, c.jurisdiction, c.kind.severity.value, c.records, c.subjects) for c in changes
    ] == [
        ("user.contact", "DE", "exclude_from_future", 5, 5),
        ("user.content.public", "DE", "retrain_required", 30, 12),
    ]
    assert all(c.subject_id is None for c in changes)
    changes = what_if(Scope(ScopeKind.CATEGORY, "user.content"), [], groups=groups)
    assert [(c.jurisdiction, c.records) for c in changes] == [("DE", 30)], (
        "in the US a withdrawal of content requires nothing of models"
    )


def test_summary_per_version_counts_each_use_once_and_ranks_findings() -> None:
    uses = [
        use("ann", "user.content.public", records=3),
        use("ann", "user.content.private", records=2),
        use("bob", "user.content.public", records=4, version="b"),
    ]
    histories = {s: [consent(s, GRANTED, T0 + timedelta(days=1))] for s in ("ann", "bob")}
    groups = [UseGroup(use(REPRESENTATIVE, "user.content.public", records=10), subjects=7)]
    changes = what_if(Scope(ScopeKind.CATEGORY, "user"), uses, histories, groups=groups)
    kinds = sorted({c.kind for c in changes}, key=lambda k: k.order)
    assert group_keys(changes, kinds) == [(1, "user.content.public", "DE", 1)]
    a, b = summarize(changes, kinds, {})
    assert (a.dataset.name, a.severity, a.records, a.subjects) == (
        "a",
        Severity.DESTROY_REQUIRED,
        15,
        8,
    )
    assert [(f.kind.rule_id, f.records, f.subjects) for f in a.findings] == [
        ("private", 2, 1),
        ("content", 13, 8),
    ]
    assert (b.dataset.name, b.severity, b.records, b.subjects) == (
        "b",
        Severity.RETRAIN_REQUIRED,
        4,
        1,
    )
    # Distinct subjects counted by the caller replace the per-group sums.
    (a, _) = summarize(changes, kinds, {(1, None): 6, (1, 1): 5})
    assert a.subjects == 7 and a.findings[1].subjects == 6


CATEGORIES = ["user.content.public", "user.content.private", "user.contact", "user.behavior"]
JURISDICTIONS = ["DE", "FR", "US", "US-CA", "GB"]

no_history_uses = st.lists(
    st.tuples(
        st.sampled_from(["s1", "s2", "s3", "s4", "s5", "s6"]),
        st.sampled_from(CATEGORIES),
        st.sampled_from(JURISDICTIONS),
        st.sampled_from(["a", "b"]),
        st.integers(min_value=1, max_value=5),
    ),
    max_size=20,
    unique_by=lambda t: (t[0], t[1], t[2], t[3]),
)
scopes = st.one_of(
    st.builds(Scope, st.just(ScopeKind.CATEGORY), st.sampled_from(["user", "user.content"])),
    st.builds(Scope, st.just(ScopeKind.JURISDICTION), st.sampled_from(["US", "EU", "GB"])),
    st.builds(Scope, st.just(ScopeKind.SUBJECT), st.sampled_from(["s1", "s2"])),
)


@settings(max_examples=60, deadline=None)
@given(rows=no_history_uses, scope=scopes)
def test_aggregated_groups_decide_exactly_as_subjects_judged_one_by_one(
    rows: list[tuple[str, str, str, str, int]], scope: Scope
) -> None:
    uses = [use(s, c, jurisdiction=j, version=v, records=n) for s, c, j, v, n in rows]
    individually = what_if(scope, uses)
    grouped_uses: dict[tuple[str, str, str], list[SubjectUse]] = defaultdict(list)
    for u in uses:
        if scope.reaches(u):
            grouped_uses[(u.dataset.name, u.category, u.jurisdiction)].append(u)
    groups = [
        UseGroup(
            use(REPRESENTATIVE, c, jurisdiction=j, version=v, records=sum(u.records for u in us)),
            subjects=len({u.subject_id for u in us}),
        )
        for (v, c, j), us in grouped_uses.items()
    ]
    aggregated = what_if(scope, [], groups=groups)

    def per_group(changes: list[Change]) -> dict[tuple[str, str, str, str], tuple[int, int]]:
        result: dict[tuple[str, str, str, str], list[int]] = defaultdict(lambda: [0, 0])
        for c in changes:
            key = (c.dataset.name, c.category, c.jurisdiction, c.kind.severity.value)
            result[key][0] += c.records
            result[key][1] += c.subjects
        return {k: (v[0], v[1]) for k, v in result.items()}

    assert per_group(aggregated) == per_group(individually)
    kinds_i = sorted({c.kind for c in individually}, key=lambda k: k.order)
    kinds_a = sorted({c.kind for c in aggregated}, key=lambda k: k.order)
    assert [(v.dataset, v.severity, v.records) for v in summarize(individually, kinds_i, {})] == [
        (v.dataset, v.severity, v.records) for v in summarize(aggregated, kinds_a, {})
    ]
