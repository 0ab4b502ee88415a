"""Which rule governs a use, which policy is in force, and later-withdrawal findings."""

from __future__ import annotations

import itertools
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
    ConsentMechanism,
    ConsentState,
    FindingReason,
    FindingStatus,
    PolicyDocument,
    PolicyRule,
    Severity,
    WithdrawalRequires,
)
from services.registry.domain.findings import SAMPLE_SIZE, UsedRecords, withdrawal_findings
from services.registry.domain.policy import (
    covers,
    governing_rule,
    policy_in_force,
    severity_of_withdrawal,
)

T0 = datetime(2024, 1, 1, tzinfo=UTC)
USED = datetime(2024, 10, 1, tzinfo=UTC)
WITHDRAWN = datetime(2025, 1, 10, tzinfo=UTC)
PRIVATE_MESSAGES = "private messages were promised confidentiality"


def rule(
    jurisdictions: tuple[str, ...] = ("*",),
    purpose: str = "ai.training",
    categories: tuple[str, ...] = ("user",),
    requires: WithdrawalRequires = WithdrawalRequires.EXCLUDE_FROM_FUTURE,
    description: str = "",
) -> PolicyRule:
    return PolicyRule(
        jurisdictions=jurisdictions,
        purpose=purpose,
        data_categories=categories,
        withdrawal_requires=requires,
        description=description,
    )


def policy(
    *rules: PolicyRule, version: str = "1", valid_from: datetime = T0, policy_id: str = "ai"
) -> PolicyDocument:
    return PolicyDocument(policy_id=policy_id, version=version, valid_from=valid_from, rules=rules)


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


# --- covers ---------------------------------------------------------------------------

segments = st.lists(st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True), min_size=1, max_size=5)


@pytest.mark.parametrize(
    ("parent", "child", "expected"),
    [
        ("user", "user", True),
        ("user", "user.content", True),
        ("user.content", "user.content.private", True),
        ("user.content", "user.contents", False),
        ("user.content", "user.content_private", False),
        ("user.content.private", "user.content", False),
        ("user.contact", "user.content", False),
        ("ai.training", "ai.training_v2.generative", False),
    ],
)
def test_covers(parent: str, child: str, expected: bool) -> None:
    assert covers(parent, child) is expected


@settings(max_examples=100, deadline=None)
@given(path=segments, extra=st.from_regex(r"[a-z0-9_]{1,4}", fullmatch=True))
def test_covers_is_reflexive_follows_the_hierarchy_and_ignores_prefixes(
    path: list[str], extra: str
) -> None:
    full = ".".join(path)
    ancestors = [".".join(path[:k]) for k in range(1, len(path) + 1)]
    assert covers(full, full)
    assert all(covers(a, full) for a in ancestors)
    for outer, inner in itertools.pairwise(ancestors):
        assert not covers(inner, outer)
    assert not covers(full, full + extra)
    assert not covers(full + extra, full)
    assert not covers(full, ancestors[0] + extra + full[len(ancestors[0]) :])


tricky = st.lists(st.sampled_from(["a", "ab", "b"]), min_size=1, max_size=4).map(".".join)


@settings(max_examples=300, deadline=None)
@given(x=tricky, y=tricky, z=tricky)
def test_covers_is_transitive_and_antisymmetric(x: str, y: str, z: str) -> None:
    if covers(x, y) and covers(y, z):
        assert covers(x, z)
    if covers(x, y) and covers(y, x):
        assert x == y
    assert covers(x, y) == (y.split(".")[: x.count(".") + 1] == x.split("."))


# --- governing rule ---------------------------------------------------------------------

BY_PLACE = [
    rule(("*",), description="anywhere"),
    rule(("EEA",), description="eea"),
    rule(("US",), description="us"),
    rule(("US-CA",), description="california"),
]


@pytest.mark.parametrize("order", [1, -1])
@pytest.mark.parametrize(
    ("jurisdiction", "expected"),
    [
        ("US-CA", "california"),
        ("US-NY", "us"),
        ("US", "us"),
        ("DE", "eea"),
        ("DE-BY", "eea"),
        ("NO", "eea"),
        ("GB", "anywhere"),
        ("BR", "anywhere"),
    ],
)
def test_the_most_specific_jurisdiction_wins(jurisdiction: str, expected: str, order: int) -> None:
    found = governing_rule(
        policy(*BY_PLACE[::order]),
        jurisdiction=jurisdiction,
        purpose="ai.training",
        category="user",
    )
    assert found is not None
    assert found.description == expected


def test_eu_group_and_countries_in_one_rule() -> None:
    doc = policy(rule(("GB", "EU"), description="europe"), rule(("*",), description="anywhere"))
    for jurisdiction in ("GB", "FR", "IE"):
        found = governing_rule(
            doc, jurisdiction=jurisdiction, purpose="ai.training", category="user"
        )
        assert found is not None and found.description == "europe"
    found = governing_rule(doc, jurisdiction="NO", purpose="ai.training", category="user")
    assert found is not None and found.description == "anywhere"


def test_a_subdivision_rule_does_not_apply_to_its_country_or_siblings() -> None:
    doc = policy(rule(("US-CA",), description="california"))
    for jurisdiction in ("US", "US-NY"):
        assert governing_rule(doc, jurisdiction=jurisdiction, purpose="ai", category="user") is None


@pytest.mark.parametrize(
    ("purpose", "expected"),
    [
        ("ai.training.generative", "generative"),
        ("ai.training.generative.chat", "generative"),
        ("ai.training.ranking", "training"),
        ("ai.inference", "ai"),
        ("ai", "ai"),
    ],
)
def test_the_deepest_covering_purpose_wins(purpose: str, expected: str) -> None:
    doc = policy(
        rule(purpose="ai.training.generative", description="generative"),
        rule(purpose="ai", description="ai"),
        rule(purpose="ai.training", description="training"),
    )
    found = governing_rule(doc, jurisdiction="DE", purpose=purpose, category="user")
    assert found is not None
    assert found.description == expected


@pytest.mark.parametrize(
    ("category", "expected"),
    [
        ("user.content.private", "private"),
        ("user.content.private.inmail", "private"),
        ("user.content.public", "content"),
        ("user.contact", "user"),
    ],
)
def test_the_deepest_covering_category_wins(category: str, expected: str) -> None:
    doc = policy(
        rule(categories=("user",), description="user"),
        rule(categories=("user.content.private", "system"), description="private"),
        rule(categories=("user.content",), description="content"),
    )
    found = governing_rule(doc, jurisdiction="DE", purpose="ai.training", category=category)
    assert found is not None
    assert found.description == expected


def test_jurisdiction_outranks_purpose_which_outranks_category() -> None:
    doc = policy(
        rule(("*",), "ai.training.generative", ("user.content.private",), description="deep"),
        rule(("US",), "ai", ("user",), description="country"),
        rule(("*",), "ai.training.generative", ("user",), description="purpose"),
        rule(("*",), "ai", ("user.content.private",), description="category"),
    )
    found = governing_rule(
        doc, jurisdiction="US-CA", purpose="ai.training.generative", category="user.content.private"
    )
    assert found is not None and found.description == "country"
    found = governing_rule(
        doc, jurisdiction="DE", purpose="ai.training.generative", category="user.content.private"
    )
    assert found is not None and found.description == "deep"


@pytest.mark.parametrize(
    ("jurisdiction", "purpose", "category"),
    [
        ("BR", "ai.training", "user.content"),
        ("US", "analytics", "user.content"),
        ("US", "ai", "user.content"),
        ("US", "ai.training", "user.contents"),
        ("US", "ai.training", "user"),
        ("US", "ai.trainingx", "user.content"),
    ],
)
def test_no_rule_when_nothing_matches(jurisdiction: str, purpose: str, category: str) -> None:
    doc = policy(rule(("US", "EEA"), "ai.training", ("user.content",)))
    assert (
        governing_rule(doc, jurisdiction=jurisdiction, purpose=purpose, category=category) is None
    )


@pytest.mark.parametrize(
    ("requires", "severity"),
    [
        (WithdrawalRequires.DESTROY, Severity.DESTROY_REQUIRED),
        (WithdrawalRequires.RETRAIN, Severity.RETRAIN_REQUIRED),
        (WithdrawalRequires.EXCLUDE_FROM_FUTURE, Severity.EXCLUDE_FROM_FUTURE),
        (WithdrawalRequires.NONE, None),
    ],
)
def test_severity_of_withdrawal(requires: WithdrawalRequires, severity: Severity | None) -> None:
    assert severity_of_withdrawal(rule(requires=requires)) == severity


def test_without_a_rule_a_withdrawal_still_excludes_from_future_training() -> None:
    assert severity_of_withdrawal(None) is Severity.EXCLUDE_FROM_FUTURE


# --- policy in force ----------------------------------------------------------------------


def test_policy_in_force_is_the_latest_valid_from_not_after_t() -> None:
    v1 = policy(rule(), version="1", valid_from=T0)
    v2 = policy(rule(), version="2", valid_from=T0 + timedelta(days=100))
    history = [(v2, v2.valid_from), (v1, v1.valid_from)]
    assert policy_in_force(history, T0 - timedelta(seconds=1)) is None
    assert policy_in_force(history, T0) == v1
    assert policy_in_force(history, T0 + timedelta(days=99)) == v1
    assert policy_in_force(history, T0 + timedelta(days=100)) == v2
    assert policy_in_force([], T0) is None


def test_a_rereading_published_later_replaces_the_earlier_reading() -> None:
    original = policy(rule(), version="1", valid_from=T0)
    reread = policy(rule(requires=WithdrawalRequires.DESTROY), version="1b", valid_from=T0)
    history = [(reread, T0 + timedelta(days=400)), (original, T0)]
    assert policy_in_force(history, T0 + timedelta(days=1)) == reread
    assert policy_in_force(list(reversed(history)), T0 + timedelta(days=1)) == reread


@settings(max_examples=100, deadline=None)
@given(
    entries=st.lists(
        st.tuples(st.integers(0, 20), st.integers(0, 10_000)),
        min_size=0,
        max_size=8,
        unique_by=lambda e: e[1],
    ),
    at=st.integers(-1, 21),
    seed=st.integers(0, 2**32),
)
def test_policy_in_force_matches_a_reference(
    entries: list[tuple[int, int]], at: int, seed: int
) -> None:
    history = [
        (
            policy(rule(), version=str(i), valid_from=T0 + timedelta(days=day)),
            T0 + timedelta(minutes=pub),
        )
        for i, (day, pub) in enumerate(entries)
    ]
    moment = T0 + timedelta(days=at)
    eligible = [(p.valid_from, published, p) for p, published in history if p.valid_from <= moment]
    expected = max(eligible, key=lambda e: (e[0], e[1]))[2] if eligible else None

    random.Random(seed).shuffle(history)
    assert policy_in_force(history, moment) == expected


# --- later-withdrawal findings ------------------------------------------------------------

STANDARD = policy(
    rule(categories=("user",)),
    rule(categories=("user.content",), requires=WithdrawalRequires.RETRAIN),
    rule(
        categories=("user.content.private",),
        requires=WithdrawalRequires.DESTROY,
        description=PRIVATE_MESSAGES,
    ),
)
POLICIES = [(STANDARD, T0)]
POSTS = dataset("posts")
INMAIL = dataset("inmail")


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
    assert finding.rule == PRIVATE_MESSAGES
    assert (finding.policy_id, finding.policy_version) == ("ai", "1")
    assert finding.affected_records == 2
    assert finding.affected_subjects == 1
    assert finding.sample_record_ids == ("m1", "m2")
    assert finding.cause_event_ids == (event.consent_event_id,)
    assert finding.detected_at == event.recorded_at


def test_a_rule_without_description_is_described() -> None:
    (finding,) = withdrawal_findings(
        consent_event(), [used(POSTS, "user.content.public")], POLICIES
    )
    assert finding.severity is Severity.RETRAIN_REQUIRED
    assert "retrain" in finding.rule and "user.content" in finding.rule


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


def test_datasets_used_after_the_withdrawal_are_not_later_withdrawals() -> None:
    uses = [used(POSTS, "user.content.public", used_at=WITHDRAWN + timedelta(microseconds=1))]
    assert withdrawal_findings(consent_event(), uses, POLICIES) == []


def test_a_withdrawal_the_policy_requires_nothing_for_yields_no_finding() -> None:
    lenient = policy(rule(categories=("user",), requires=WithdrawalRequires.NONE))
    assert (
        withdrawal_findings(consent_event(), [used(POSTS, "user.content")], [(lenient, T0)]) == []
    )


def test_the_policy_read_now_for_the_time_of_use_decides() -> None:
    reread = policy(
        rule(categories=("user",), requires=WithdrawalRequires.DESTROY), version="1-reread"
    )
    later = policy(rule(categories=("user",)), version="2", valid_from=USED + timedelta(days=1))
    history = [(STANDARD, T0), (reread, T0 + timedelta(days=500)), (later, USED)]
    (finding,) = withdrawal_findings(consent_event(), [used(POSTS, "user.content.public")], history)
    assert finding.policy_version == "1-reread"
    assert finding.severity is Severity.DESTROY_REQUIRED


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


def test_the_sample_is_bounded_but_the_count_is_not() -> None:
    ids = [f"r{i:04d}" for i in range(3 * SAMPLE_SIZE + 1)]
    random.Random(7).shuffle(ids)
    (finding,) = withdrawal_findings(consent_event(), [used(POSTS, "user.content", *ids)], POLICIES)
    assert finding.affected_records == len(ids)
    assert len(finding.sample_record_ids) == SAMPLE_SIZE
    assert finding.sample_record_ids == tuple(sorted(ids)[:SAMPLE_SIZE])


def test_finding_ids_are_deterministic_and_follow_the_cause() -> None:
    uses = [used(INMAIL, "user.content.private", "m1")]
    first = withdrawal_findings(consent_event(), uses, POLICIES)
    assert first == withdrawal_findings(consent_event(), uses, POLICIES)
    assert first[0].finding_id.version == 5

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


CATEGORIES = ["user.content.public", "user.content.private", "user.contact", "user.content"]
DATASETS = [
    (dataset("posts", "v1"), "ai.training.generative", USED),
    (dataset("posts", "v2"), "ai.training", USED + timedelta(days=30)),
    (dataset("clicks", "v1"), "analytics", USED),
    (dataset("late", "v1"), "ai.training", WITHDRAWN + timedelta(days=1)),
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
            and use.used_at <= event.effective_at
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
