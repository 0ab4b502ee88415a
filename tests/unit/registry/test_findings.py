"""Findings (services.registry.domain.findings): improper use and later withdrawal.

Which rule governs a use, which policy version is in force and what a withdrawal requires
are the eligibility engine's (tests/unit/eligibility); these tests check what the registry
makes of them: which uses are judged, under which reading, what each contributes to which
finding, and how contributions add up.
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
    DefaultConsent,
    LawfulBasis,
    PolicyDocument,
    PolicyRule,
    WithdrawalEffect,
    WithdrawalRequires,
)
from contracts.vocabulary import ConsentMechanism, ConsentState
from services.eligibility import covers, evaluate, withdrawal_requirement
from services.registry.domain.findings import (
    IMPROPER_USE_SEVERITY,
    SAMPLE_SIZE,
    Contribution,
    PolicyBook,
    SubjectUse,
    aggregate,
    grant_changes_nothing,
    judge,
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


_VERSION_IDS: dict[str, int] = {}


def used(
    ds: DatasetRef,
    category: str,
    *record_ids: str,
    subject: str = "member:8812",
    purpose: str = "ai.training.generative",
    used_at: datetime = USED,
    jurisdiction: str = "US-CA",
) -> SubjectUse:
    ids = tuple(sorted(record_ids or ("r1",)))
    return SubjectUse(
        dataset_version_id=_VERSION_IDS.setdefault(ds.key, len(_VERSION_IDS) + 1),
        dataset=ds,
        purpose=purpose,
        sealed_at=used_at,
        used_at=used_at,
        subject_id=subject,
        category=category,
        jurisdiction=jurisdiction,
        records=len(ids),
        sample=ids[:SAMPLE_SIZE],
    )


def granted(subject: str = "member:8812", **overrides: Any) -> ConsentEvent:
    fields: dict[str, Any] = {
        "consent_event_id": uuid4(),
        "subject_id": subject,
        "state": ConsentState.GRANTED,
        "mechanism": ConsentMechanism.EXPLICIT_OPT_IN,
        "data_categories": ("user",),
        "effective_at": T0 + timedelta(days=1),
        "recorded_at": T0 + timedelta(days=1),
    }
    fields.update(overrides)
    return consent_event(**fields)


def findings_of(
    uses: list[SubjectUse],
    events: list[ConsentEvent],
    versions: list[tuple[PolicyDocument, datetime]] | None = None,
) -> list[Any]:
    histories: dict[str, list[ConsentEvent]] = {}
    for e in events:
        histories.setdefault(e.subject_id, []).append(e)
    return list(aggregate(judge(uses, histories, PolicyBook(versions or POLICIES))).values())


STANDARD = standard()
POLICIES = [(STANDARD, T0)]
POSTS = dataset("posts")
INMAIL = dataset("inmail")


# --- later withdrawal: eligible then, withdrawn since ---------------------------------


def test_withdrawing_content_reaches_private_messages_with_their_rules_severity() -> None:
    event = consent_event(data_categories=("user.content",))
    (finding,) = findings_of([used(INMAIL, "user.content.private", "m2", "m1")], [granted(), event])
    assert finding.dataset == INMAIL
    assert finding.severity is Severity.DESTROY_REQUIRED
    assert finding.reason is FindingReason.LATER_WITHDRAWAL
    assert finding.status is FindingStatus.ACTIVE
    assert finding.rule.startswith(f"{PRIVATE_MESSAGES} (withdrawal requires destroy)")
    assert finding.rule.endswith("private messages were promised confidentiality")
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
    findings = findings_of(
        [used(INMAIL, "user.content.private")],
        [granted(), consent_event()],
        [(standard(requires), T0)],
    )
    assert [f.severity for f in findings] == ([severity] if severity else [])


def test_each_withdrawal_is_its_own_cause() -> None:
    first = consent_event(consent_event_id=uuid4())
    second = consent_event(consent_event_id=uuid4(), effective_at=WITHDRAWN + timedelta(days=9))
    findings = findings_of([used(POSTS, "user.content.public")], [granted(), first, second])
    assert sorted(f.cause_event_ids for f in findings) == sorted(
        [(first.consent_event_id,), (second.consent_event_id,)]
    )


@pytest.mark.parametrize("purpose", ["analytics", "ai.inference", "ai", "ai.trainingx"])
def test_uses_for_purposes_no_policy_speaks_to_are_not_judged(purpose: str) -> None:
    assert findings_of([used(POSTS, "user.content.public", purpose=purpose)], []) == []


@pytest.mark.parametrize("category", ["user.contact", "user.contents", "system.logs"])
def test_withdrawals_of_other_categories_do_not_reach(category: str) -> None:
    event = consent_event(data_categories=("user.content",))
    findings = findings_of(
        [used(POSTS, category)], [granted(data_categories=("user", "system")), event]
    )
    assert all(f.reason is not FindingReason.LATER_WITHDRAWAL for f in findings)


# --- improper use: not eligible at the time of use -------------------------------------


def test_a_snapshot_sealed_after_a_withdrawal_is_an_improper_use() -> None:
    withdrawal = consent_event(effective_at=USED - timedelta(days=1))
    (finding,) = findings_of(
        [used(POSTS, "user.content.public", "p1", "p2")], [granted(), withdrawal]
    )
    assert finding.reason is FindingReason.IMPROPER_USE
    assert finding.severity is IMPROPER_USE_SEVERITY is Severity.DESTROY_REQUIRED
    assert finding.rule.startswith("content (not eligible: withdrawn)")
    assert finding.cause_event_ids == (withdrawal.consent_event_id,)
    assert finding.affected_records == 2


@pytest.mark.parametrize("after", [timedelta(0), timedelta(microseconds=1), timedelta(days=30)])
def test_a_withdrawal_effective_at_or_before_the_use_is_improper_use_not_later_withdrawal(
    after: timedelta,
) -> None:
    uses = [used(POSTS, "user.content.public", used_at=WITHDRAWN + after)]
    (finding,) = findings_of(uses, [granted(), consent_event()])
    assert finding.reason is FindingReason.IMPROPER_USE
    just_before = [
        used(POSTS, "user.content.public", used_at=WITHDRAWN - timedelta(microseconds=1))
    ]
    (finding,) = findings_of(just_before, [granted(), consent_event()])
    assert finding.reason is FindingReason.LATER_WITHDRAWAL


def test_improper_use_aggregates_every_subject_the_reading_excludes() -> None:
    """No opt-in recorded: the rule needs one, so each subject's use is improper; one finding
    per (version, rule, reason) adds them up, whoever the subjects are."""
    uses = [
        used(INMAIL, "user.content.private", f"m{i}a", f"m{i}b", subject=f"s{i}") for i in range(5)
    ]
    opted_in = granted(subject="s4")
    (finding,) = findings_of(uses, [opted_in])
    assert finding.reason is FindingReason.IMPROPER_USE
    assert finding.rule.startswith(f"{PRIVATE_MESSAGES} (not eligible: no_consent)")
    assert (finding.affected_records, finding.affected_subjects) == (8, 4)
    assert finding.sample_record_ids == tuple(sorted(f"m{i}{x}" for i in range(4) for x in "ab"))
    assert finding.cause_event_ids == ()


def test_a_later_withdrawal_of_a_use_that_was_never_eligible_adds_nothing() -> None:
    (finding,) = findings_of([used(POSTS, "user.content.public")], [consent_event()])
    assert finding.reason is FindingReason.IMPROPER_USE


def test_a_jurisdiction_no_rule_governs_is_improper_for_a_policy_that_speaks_to_the_purpose() -> (
    None
):
    gb_only = policy(rule("gb", ("user",), WithdrawalRequires.DESTROY, jurisdictions=("GB",)))
    (finding,) = findings_of([used(POSTS, "user.content.public")], [granted()], [(gb_only, T0)])
    assert finding.reason is FindingReason.IMPROPER_USE
    assert "no rule" in finding.rule


# --- the reading in force ------------------------------------------------------------------


def test_without_a_reading_in_force_there_is_no_finding() -> None:
    early = [used(POSTS, "user.content.public", used_at=T0 - timedelta(microseconds=1))]
    assert findings_of(early, [granted(), consent_event()]) == []


def test_a_re_reading_of_the_past_changes_the_findings_and_their_identity() -> None:
    """v1 accepts opt-outs for content; the re-reading says only an opt-in ever counted."""
    lenient_rule = rule("content", ("user.content",), WithdrawalRequires.RETRAIN)
    lenient_rule = lenient_rule.model_copy(
        update={"lawful_bases": (LawfulBasis(mechanism=ConsentMechanism.OPT_OUT),)}
    )
    v1 = policy(lenient_rule)
    reread = policy(rule("content", ("user.content",), WithdrawalRequires.RETRAIN), version="1-r")
    opt_out_default = granted(mechanism=ConsentMechanism.OPT_OUT)
    uses = [used(POSTS, "user.content.public")]
    events = [opt_out_default, consent_event()]

    (before,) = findings_of(uses, events, [(v1, T0)])
    assert (before.reason, before.policy_version) == (FindingReason.LATER_WITHDRAWAL, "1")
    (after,) = findings_of(uses, events, [(v1, T0), (reread, T0 + timedelta(days=700))])
    assert (after.reason, after.policy_version) == (FindingReason.IMPROPER_USE, "1-r")
    assert after.finding_id != before.finding_id
    assert after.detected_at == T0 + timedelta(days=700)


def test_rule_windows_are_read_at_the_time_of_use() -> None:
    windowed = policy(
        rule("content-until", ("user.content",), WithdrawalRequires.DESTROY, valid_until=USED),
        rule("content-from", ("user.content",), WithdrawalRequires.RETRAIN, valid_from=USED),
    )
    uses = [
        used(POSTS, "user.content.public", "early", used_at=USED - timedelta(days=1)),
        used(dataset("posts", "v2"), "user.content.public", "late", used_at=USED),
    ]
    findings = findings_of(uses, [granted(), consent_event()], [(windowed, T0)])
    assert sorted((f.dataset.version, f.severity) for f in findings) == [
        ("v1", Severity.DESTROY_REQUIRED),
        ("v2", Severity.RETRAIN_REQUIRED),
    ]


def test_each_policy_judges_the_use_under_its_own_reading() -> None:
    company = policy(rule("content", ("user.content",), WithdrawalRequires.RETRAIN))
    contract = policy(
        rule("premium-messages", ("user.content.private",), WithdrawalRequires.DESTROY),
        policy_id="premium-contract",
        valid_from=T0 + timedelta(days=30),
    )
    findings = findings_of(
        [used(dataset("chats"), "user.content.private")],
        [granted(), consent_event()],
        [(company, T0), (contract, T0)],
    )
    assert {(f.policy_id, f.severity) for f in findings} == {
        ("ai", Severity.RETRAIN_REQUIRED),
        ("premium-contract", Severity.DESTROY_REQUIRED),
    }


# --- aggregation and identity ------------------------------------------------------------------


def test_the_sample_is_bounded_but_the_count_is_not() -> None:
    ids = [f"r{i:04d}" for i in range(3 * SAMPLE_SIZE + 1)]
    random.Random(7).shuffle(ids)
    uses = [
        used(POSTS, "user.content", *ids[: len(ids) // 2], subject="a"),
        used(POSTS, "user.content", *ids[len(ids) // 2 :], subject="b"),
    ]
    (finding,) = findings_of(uses, [])
    assert finding.affected_records == len(ids)
    assert finding.sample_record_ids == tuple(sorted(ids)[:SAMPLE_SIZE])


def test_finding_ids_follow_the_cause_not_the_counts() -> None:
    uses = [used(INMAIL, "user.content.private", "m1")]
    events = [granted(), consent_event()]
    (first,) = findings_of(uses, events)
    assert first.finding_id.version == 5
    (same,) = findings_of([used(INMAIL, "user.content.private", "m1", "m2")], events)
    assert same.finding_id == first.finding_id and same.affected_records == 2
    (other_event,) = findings_of(uses, [granted(), consent_event(consent_event_id=uuid4())])
    assert other_event.finding_id != first.finding_id
    v2 = STANDARD.model_copy(update={"version": "2"})
    (other_policy,) = findings_of(uses, events, [(STANDARD, T0), (v2, T0 + timedelta(days=1))])
    assert other_policy.finding_id != first.finding_id
    (other_dataset,) = findings_of(
        [used(dataset("inmail", "v2"), "user.content.private", "m1")], events
    )
    assert other_dataset.finding_id != first.finding_id


def test_subjects_without_history_are_judged_like_those_with_an_irrelevant_one() -> None:
    """The memoised path (no history) must decide as the engine does per subject."""
    uses = [
        used(d, c, f"{s}-{c}", subject=s, jurisdiction=j)
        for d in (POSTS, INMAIL)
        for c in ("user.content.public", "user.content.private", "user.contact")
        for s, j in (("a", "US-CA"), ("b", "DE"), ("c", "US-CA"))
    ]
    unrelated = [granted(subject=s, purpose="analytics") for s in "abc"]
    assert findings_of(uses, []) == findings_of(uses, unrelated)


CATEGORIES = ["user.content.public", "user.content.private", "user.contact", "user.content"]
DATASETS = [
    (dataset("posts", "v1"), "ai.training.generative", USED),
    (dataset("posts", "v2"), "ai.training", USED + timedelta(days=30)),
    (dataset("clicks", "v1"), "analytics", USED),
    (dataset("late", "v1"), "ai.training", WITHDRAWN + timedelta(days=1)),
    (dataset("edge", "v1"), "ai.training", WITHDRAWN),
]
SUBJECTS = ["a", "b", "c"]

uses_strategy = st.lists(
    st.tuples(
        st.integers(0, len(DATASETS) - 1),
        st.sampled_from(CATEGORIES),
        st.sampled_from(SUBJECTS),
        st.integers(1, 4),
    ),
    max_size=12,
    unique_by=lambda t: (t[0], t[1], t[2]),
)


def uses_of(spec: list[tuple[int, str, str, int]]) -> list[SubjectUse]:
    """The uses ``uses_strategy`` describes: (dataset, category, subject, records)."""
    uses = []
    for n, (ds, category, subject, count) in enumerate(spec):
        ref, purpose, used_at = DATASETS[ds]
        ids = tuple(f"u{n}-{i}" for i in range(count))
        uses.append(used(ref, category, *ids, subject=subject, purpose=purpose, used_at=used_at))
    return uses


events_strategy = st.lists(
    st.tuples(
        st.sampled_from(SUBJECTS),
        st.sampled_from([ConsentState.GRANTED, ConsentState.WITHDRAWN]),
        st.sampled_from(["user", "user.content", "user.content.private"]),
        st.integers(-400, 200),
    ),
    max_size=6,
)


@settings(max_examples=75, deadline=None)
@given(spec=uses_strategy, history=events_strategy, seed=st.integers(0, 2**32))
def test_findings_are_a_function_of_the_facts_and_count_every_judged_record(
    spec: list[tuple[int, str, str, int]],
    history: list[tuple[str, ConsentState, str, int]],
    seed: int,
) -> None:
    uses = uses_of(spec)
    events = [
        consent_event(
            consent_event_id=uuid4(),
            subject_id=subject,
            state=state,
            mechanism=ConsentMechanism.EXPLICIT_OPT_IN
            if state is ConsentState.GRANTED
            else ConsentMechanism.OPT_OUT,
            data_categories=(category,),
            effective_at=USED + timedelta(days=days),
            recorded_at=USED + timedelta(days=days, seconds=1),
        )
        for subject, state, category, days in history
    ]
    findings = findings_of(uses, events)
    rng = random.Random(seed)
    shuffled_uses, shuffled_events = list(uses), list(events)
    rng.shuffle(shuffled_uses)
    rng.shuffle(shuffled_events)
    assert findings_of(shuffled_uses, shuffled_events) == findings

    # Every record of a judged use is counted once as improper, or not at all.
    judged = {
        (u.dataset.key, u.subject_id, u.category): u.records
        for u in uses
        if covers("ai.training", u.purpose)
    }
    improper = [f for f in findings if f.reason is FindingReason.IMPROPER_USE]
    assert sum(f.affected_records for f in improper) <= sum(judged.values())
    contributions: list[Contribution] = judge(
        uses,
        {s: [e for e in events if e.subject_id == s] for s in SUBJECTS},
        PolicyBook(POLICIES),
    )
    per_use: dict[tuple[str, str, str], set[FindingReason]] = {}
    for c in contributions:
        per_use.setdefault((c.cause.dataset.key, c.subject_id, c.category), set()).add(
            c.cause.reason
        )
    for key, reasons in per_use.items():
        assert key in judged
        assert reasons in ({FindingReason.IMPROPER_USE}, {FindingReason.LATER_WITHDRAWAL})
    assert len({f.finding_id for f in findings}) == len(findings)


def engine_contributions(
    uses: list[SubjectUse], histories: dict[str, list[ConsentEvent]], book: PolicyBook
) -> set[tuple[Any, ...]]:
    """What the engine says of each use on its own, asked once per use and event (the
    reference ``judge``'s shared verdicts must equal)."""
    out: set[tuple[Any, ...]] = set()
    for u in uses:
        history = histories.get(u.subject_id, [])
        for reading in book.readings_for(u):
            decision = evaluate(history, reading, u.use())
            if not decision.eligible:
                deciding = tuple(sorted(decision.consent_event_ids))
                use = (u.subject_id, u.dataset.key, u.category)
                out.add((*use, "improper", decision.rule_id, decision.reason.value, deciding))
                continue
            for e in history:
                outcome = withdrawal_requirement(reading, u.use(), e)
                if outcome is not None and outcome.requires is not WithdrawalRequires.NONE:
                    use = (u.subject_id, u.dataset.key, u.category)
                    requires = outcome.requires.value
                    out.add((*use, "later", outcome.rule_id, requires, (e.consent_event_id,)))
    return out


def judged(contributions: list[Contribution]) -> set[tuple[Any, ...]]:
    out: set[tuple[Any, ...]] = set()
    for c in contributions:
        improper = c.cause.reason is FindingReason.IMPROPER_USE
        detail = c.cause.detail if improper else c.cause.severity.value.removesuffix("_required")
        use = (c.subject_id, c.cause.dataset.key, c.category)
        out.add((*use, "improper" if improper else "later", c.cause.rule_id, detail, c.events))
    return out


MECHANISMS = [ConsentMechanism.EXPLICIT_OPT_IN, ConsentMechanism.OPT_OUT]


def histories(
    mechanisms: list[ConsentMechanism],
    days: list[int],
    *more: st.SearchStrategy[Any],
    max_size: int,
) -> st.SearchStrategy[list[tuple[Any, ...]]]:
    """Consent events as (subject, state, mechanism, category, days from the use, *more)."""
    return st.lists(
        st.tuples(
            st.sampled_from(SUBJECTS),
            st.sampled_from([ConsentState.GRANTED, ConsentState.WITHDRAWN]),
            st.sampled_from(mechanisms),
            st.sampled_from(["user", "user.content", "user.content.private", "user.contact"]),
            st.sampled_from(days),
            *more,
        ),
        max_size=max_size,
    )


@settings(max_examples=150, deadline=None)
@given(
    spec=uses_strategy,
    history=histories(MECHANISMS, [-400, -1, 0, 1, 100, 200], st.integers(0, 2), max_size=8),
)
def test_shared_verdicts_say_what_the_engine_says_of_each_use(
    spec: list[tuple[int, str, str, int]],
    history: list[tuple[str, ConsentState, ConsentMechanism, str, int, int]],
) -> None:
    """``judge`` asks the engine once per history shape; the events, their order (ties in
    effective time broken by recording time, then id) and the side of the time of use
    must decide exactly as asking per use does."""
    uses = uses_of(spec)
    histories: dict[str, list[ConsentEvent]] = {}
    for subject, state, mechanism, category, days, seconds in history:
        at = USED + timedelta(days=days)
        histories.setdefault(subject, []).append(
            consent_event(
                consent_event_id=uuid4(),
                subject_id=subject,
                state=state,
                mechanism=mechanism,
                data_categories=(category,),
                effective_at=at,
                recorded_at=at + timedelta(seconds=seconds),
            )
        )
    book = PolicyBook(POLICIES)
    contributions = judge(uses, histories, book)
    assert judged(contributions) == engine_contributions(uses, histories, book)
    sealed = {u.dataset.key: u.sealed_at for u in uses}
    recorded = {e.consent_event_id: e.recorded_at for h in histories.values() for e in h}
    for c in contributions:
        known = [sealed[c.cause.dataset.key], T0]  # T0: when the policy was published
        if c.cause.reason is FindingReason.LATER_WITHDRAWAL:
            known.append(recorded[c.events[0]])
            assert c.cause.cause_event_ids == c.events
        assert c.cause.detected_at == max(known)


LENIENT = policy(
    rule("lenient-user", ("user",)).model_copy(
        update={
            "lawful_bases": (
                LawfulBasis(mechanism=ConsentMechanism.EXPLICIT_OPT_IN),
                LawfulBasis(mechanism=ConsentMechanism.OPT_OUT, valid_until=WITHDRAWN),
            ),
            "default": DefaultConsent(valid_until=WITHDRAWN),
        }
    ),
    rule("lenient-content", ("user.content",), WithdrawalRequires.DESTROY),
    policy_id="lenient",
)


@settings(max_examples=200, deadline=None)
@given(
    spec=uses_strategy,
    history=histories(
        [*MECHANISMS, ConsentMechanism.DEFAULT_SETTING], [-400, -1, 0, 1, 100, 200, 400], max_size=6
    ),
    grant=st.tuples(
        st.sampled_from(SUBJECTS),
        st.sampled_from([*MECHANISMS, ConsentMechanism.DEFAULT_SETTING]),
        st.sampled_from(["user", "user.content", "user.content.private"]),
        st.sampled_from(["ai.training", "ai.training.generative", "analytics"]),
        st.integers(1, 10_000),
    ),
)
def test_a_grant_effective_after_every_use_changes_no_judgement(
    spec: list[tuple[int, str, str, int]],
    history: list[tuple[str, ConsentState, ConsentMechanism, str, int]],
    grant: tuple[str, ConsentMechanism, str, str, int],
) -> None:
    """What lets a consent batch skip subjects whose new events are all such grants
    (``grant_changes_nothing``): eligibility is read at the time of use, and only a
    withdrawal reaches a use afterwards. Whatever came before, re-grants after a
    withdrawal included, under policies with default consents and time-bound bases."""
    uses = uses_of(spec)
    histories: dict[str, list[ConsentEvent]] = {}
    for subject, state, mechanism, category, days in history:
        histories.setdefault(subject, []).append(
            consent_event(
                consent_event_id=uuid4(),
                subject_id=subject,
                state=state,
                mechanism=mechanism,
                data_categories=(category,),
                effective_at=USED + timedelta(days=days),
                recorded_at=USED + timedelta(days=days, seconds=1),
            )
        )
    subject, mechanism, category, purpose, minutes = grant
    latest_use = max((u.used_at for u in uses), default=None)
    at = (latest_use or USED) + timedelta(minutes=minutes)
    event = consent_event(
        consent_event_id=uuid4(),
        subject_id=subject,
        state=ConsentState.GRANTED,
        mechanism=mechanism,
        purpose=purpose,
        data_categories=(category,),
        effective_at=at,
        recorded_at=at,
    )
    assert grant_changes_nothing(event, latest_use)
    book = PolicyBook([(STANDARD, T0), (LENIENT, T0)])
    after = {**histories, subject: [*histories.get(subject, []), event]}
    assert judge(uses, after, book) == judge(uses, histories, book)


def test_only_a_grant_after_every_use_is_known_to_change_nothing() -> None:
    latest_use = USED + timedelta(days=30)
    grant = consent_event(state=ConsentState.GRANTED, effective_at=latest_use)
    assert not grant_changes_nothing(grant, latest_use)  # at the time of use: it decides
    later = grant.model_copy(update={"effective_at": latest_use + timedelta(seconds=1)})
    assert grant_changes_nothing(later, latest_use)
    assert grant_changes_nothing(later, None)  # nothing sealed yet
    withdrawal = later.model_copy(update={"state": ConsentState.WITHDRAWN})
    assert not grant_changes_nothing(withdrawal, latest_use)
