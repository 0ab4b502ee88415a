"""Properties of the eligibility engine over generated consent histories and policies."""

from __future__ import annotations

import functools
import itertools
import os
import random
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import ConsentEvent, ConsentEvidence
from contracts.policy import (
    DefaultConsent,
    LawfulBasis,
    OptInScope,
    PolicyDocument,
    PolicyRule,
    WithdrawalEffect,
    WithdrawalRequires,
)
from contracts.vocabulary import ConsentMechanism, ConsentState
from services.eligibility import (
    Reason,
    Use,
    covers,
    evaluate,
    governing_rule,
    jurisdiction_rank,
    matches_any_jurisdiction,
    policy_in_force,
    withdrawal_requirement,
)

T = TypeVar("T")
# Each property runs EXAMPLES generated cases (about 3 ms each, mostly generation), keeping
# the file near 3 s; ELIGIBILITY_EXAMPLES=2000 pytest ... explores far more on demand.
EXAMPLES = int(os.environ.get("ELIGIBILITY_EXAMPLES", "50"))
FAST = settings(max_examples=EXAMPLES, deadline=None)

BASE = datetime(2024, 1, 1, tzinfo=UTC)
SUBJECTS = ("s1", "s2")
JURISDICTIONS = ("US", "US-CA", "DE", "GB")
SELECTORS = ("*", "US", "US-CA", "EU", "DE", "GB")
PURPOSES = ("ai", "ai.training", "ai.training.generative", "analytics")
CATEGORIES = (
    "user",
    "user.content",
    "user.content.public",
    "user.content.private",
    "user.contact",
)
MECHANISMS = tuple(ConsentMechanism)
FORWARD_ONLY = (WithdrawalRequires.NONE, WithdrawalRequires.EXCLUDE_FROM_FUTURE)
ERASING = (WithdrawalRequires.RETRAIN, WithdrawalRequires.DESTROY)


def at(day: int) -> datetime:
    return BASE + timedelta(days=day)


def ancestors(path: str) -> list[str]:
    """``a.b.c`` → ``[a, a.b, a.b.c]``."""
    parts = path.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def in_window(window: LawfulBasis | DefaultConsent | PolicyRule, when: datetime) -> bool:
    return (window.valid_from is None or window.valid_from <= when) and (
        window.valid_until is None or when < window.valid_until
    )


# --- strategies ----------------------------------------------------------------------------
# Cheap by construction: every strategy is built once (module level or cached per option)
# and most values are one draw from a precomputed table, so a few hundred examples of
# each property run in well under a second.

days = st.integers(0, 60)
hours = st.integers(0, 23)
subjects = st.sampled_from(SUBJECTS)
jurisdictions = st.sampled_from(JURISDICTIONS)
purposes = st.sampled_from(PURPOSES)
categories = st.sampled_from(CATEGORIES)
states = st.sampled_from(ConsentState)
scopes = st.sampled_from(OptInScope)
uuids = st.integers(0, 2**20).map(lambda n: UUID(int=n))
"""Few enough that equal ids occur; ties on times fall through to the id."""


def combos(values: tuple[T, ...]) -> st.SearchStrategy[tuple[T, ...]]:
    """One draw: a non-empty subset of one or two values."""
    return st.sampled_from([*((v,) for v in values), *itertools.combinations(values, 2)])


selector_sets = combos(SELECTORS)
purpose_sets = combos(PURPOSES)
category_sets = combos(CATEGORIES)

BOUNDS = (0, 5, 10, 20, 30, 45, 60)
_SPANS: list[tuple[int | None, int | None]] = [
    (None, None),
    *((d, None) for d in BOUNDS),
    *((None, d) for d in BOUNDS),
    *itertools.combinations(BOUNDS, 2),
]
WINDOWS: list[dict[str, datetime | None]] = [
    {"valid_from": None if a is None else at(a), "valid_until": None if b is None else at(b)}
    for a, b in _SPANS
]


def windows_list(min_from: int | None = None) -> list[dict[str, datetime | None]]:
    """Valid windows; with ``min_from``, ``valid_from`` is set and not before that day."""
    if min_from is None:
        return WINDOWS
    return [w for w in WINDOWS if w["valid_from"] is not None and w["valid_from"] >= at(min_from)]


WITHDRAWALS: dict[str, st.SearchStrategy[WithdrawalEffect]] = {
    "any": st.sampled_from(
        [WithdrawalEffect(requires=r, erasure=e) for r in WithdrawalRequires for e in (False, True)]
    ),
    "forward_only": st.sampled_from(
        [WithdrawalEffect(requires=r, erasure=False) for r in FORWARD_ONLY]
    ),
    "erasing": st.sampled_from([WithdrawalEffect(requires=r, erasure=True) for r in ERASING]),
}


@functools.cache
def rule_fields(
    min_from: int | None, mechanisms: tuple[ConsentMechanism, ...], withdrawal: str
) -> st.SearchStrategy[tuple[Any, ...]]:
    bases = st.lists(
        st.sampled_from(
            [LawfulBasis(mechanism=m, **w) for m in mechanisms for w in windows_list(min_from)]
        ),
        max_size=3,
    )
    defaults = st.none() | st.sampled_from(
        [DefaultConsent(mechanism=m, **w) for m in MECHANISMS for w in windows_list(min_from)]
    )
    return st.tuples(
        selector_sets,
        purpose_sets,
        category_sets,
        bases,
        defaults,
        scopes,
        WITHDRAWALS[withdrawal],
        st.sampled_from(WINDOWS),
    )


def _policy(version: str, rule_list: list[tuple[Any, ...]]) -> PolicyDocument:
    rules = []
    for i, (js, ps, cs, bases, default, scope, effect, window) in enumerate(rule_list):
        rules.append(
            PolicyRule(
                id=f"r{i}",
                jurisdictions=js,
                purposes=ps,
                data_categories=cs,
                lawful_bases=tuple(bases),
                default=default,
                opt_in_scope=scope,
                withdrawal=effect,
                **window,
            )
        )
    return PolicyDocument(policy_id="p", version=version, valid_from=BASE, rules=tuple(rules))


@functools.cache
def policies(
    *,
    min_from: int | None = None,
    mechanisms: tuple[ConsentMechanism, ...] = MECHANISMS,
    withdrawal: str = "any",
) -> st.SearchStrategy[PolicyDocument]:
    """Small policies of 1-4 generated rules (ids ``r0``...)."""
    return st.builds(
        _policy,
        st.sampled_from(("1", "2", "10")),
        st.lists(rule_fields(min_from, mechanisms, withdrawal), min_size=1, max_size=4),
    )


EVIDENCE = ConsentEvidence(collection_point="test")


def _event(fields: tuple[Any, ...]) -> ConsentEvent:
    event_id, subject, jurisdiction, purpose, cats, state, mechanism, day, late = fields
    effective = at(day)
    return ConsentEvent(
        consent_event_id=event_id,
        subject_id=subject,
        jurisdiction=jurisdiction,
        purpose=purpose,
        data_categories=cats,
        state=state,
        mechanism=mechanism,
        policy_version="1",
        effective_at=effective,
        recorded_at=effective + timedelta(hours=late),
        source_system="settings",
        evidence=EVIDENCE,
    )


@functools.cache
def events(
    *,
    subject: str | None = None,
    mechanisms: tuple[ConsentMechanism, ...] = MECHANISMS,
) -> st.SearchStrategy[ConsentEvent]:
    """Consent events at whole days, recorded from two days before to ten days after."""
    return st.tuples(
        uuids,
        subjects if subject is None else st.just(subject),
        jurisdictions,
        purposes,
        category_sets,
        states,
        st.sampled_from(mechanisms),
        days,
        st.integers(-48, 240),
    ).map(_event)


histories = st.lists(events(), max_size=8)


def _use(fields: tuple[str, str, str, str, int, int]) -> Use:
    subject, jurisdiction, purpose, category, day, hour = fields
    return Use(subject, jurisdiction, purpose, category, at(day) + timedelta(hours=hour))


uses = st.tuples(subjects, jurisdictions, purposes, categories, days, hours).map(_use)

LATER = st.integers(1, 24 * 30)
NOT_LATER = st.integers(-24 * 30, 0)


@st.composite
def reaching_withdrawal(draw: st.DrawFn, use: Use, *, after: bool = True) -> ConsentEvent:
    """A withdrawal by ``use``'s subject whose purpose and a category cover the use's,
    effective strictly after the use (or at/before it when ``after`` is False)."""
    effective = use.used_at + timedelta(hours=draw(LATER if after else NOT_LATER))
    cats = {draw(st.sampled_from(ancestors(use.category))), *draw(category_sets)}
    return ConsentEvent(
        consent_event_id=draw(uuids),
        subject_id=use.subject_id,
        jurisdiction=use.jurisdiction,
        purpose=draw(st.sampled_from(ancestors(use.purpose))),
        data_categories=tuple(sorted(cats)),
        state=ConsentState.WITHDRAWN,
        mechanism=draw(st.sampled_from(MECHANISMS)),
        policy_version="1",
        effective_at=effective,
        recorded_at=effective + timedelta(hours=draw(st.integers(0, 48))),
        source_system="settings",
        evidence=EVIDENCE,
    )


# --- order and time ------------------------------------------------------------------------


@FAST
@given(histories, policies(), uses, st.randoms(use_true_random=False))
def test_decision_does_not_depend_on_history_order(
    history: list[ConsentEvent], policy: PolicyDocument, use: Use, rnd: random.Random
) -> None:
    shuffled = list(history)
    rnd.shuffle(shuffled)
    expected = evaluate(history, policy, use)
    assert evaluate(shuffled, policy, use) == expected
    assert evaluate(reversed(history), policy, use) == expected
    assert evaluate(iter(shuffled), policy, use) == expected  # any iterable, read once


@FAST
@given(histories, histories, policies(), uses)
def test_other_subjects_events_change_nothing(
    history: list[ConsentEvent], noise: list[ConsentEvent], policy: PolicyDocument, use: Use
) -> None:
    others = [e for e in noise if e.subject_id != use.subject_id]
    assert evaluate(history + others, policy, use) == evaluate(history, policy, use)


@FAST
@given(histories, st.data())
def test_use_before_every_lawful_basis_is_never_eligible(
    history: list[ConsentEvent], data: st.DataObject
) -> None:
    policy = data.draw(policies(min_from=5))
    starts = [b.valid_from for r in policy.rules for b in r.lawful_bases] + [
        r.default.valid_from for r in policy.rules if r.default
    ]
    assert all(s is not None for s in starts)
    earliest = min((s for s in starts if s is not None), default=at(61))
    use = data.draw(uses)
    use = Use(
        use.subject_id,
        use.jurisdiction,
        use.purpose,
        use.category,
        min(use.used_at, earliest - timedelta(seconds=1)),
    )
    decision = evaluate(history, policy, use)
    assert not decision.eligible, decision.explanation


@FAST
@given(histories, policies(), uses, st.data())
def test_later_withdrawal_never_changes_an_earlier_use(
    history: list[ConsentEvent], policy: PolicyDocument, use: Use, data: st.DataObject
) -> None:
    withdrawal = data.draw(reaching_withdrawal(use, after=True))
    assert evaluate([*history, withdrawal], policy, use) == evaluate(history, policy, use)


@FAST
@given(histories, policies(), uses, st.data())
def test_latest_reaching_withdrawal_before_the_use_withdraws(
    history: list[ConsentEvent], policy: PolicyDocument, use: Use, data: st.DataObject
) -> None:
    """A withdrawal of a parent category (and purpose) reaches every child: when it is the
    subject's latest choice, no rule with a lawful basis lets the use through."""
    withdrawal = data.draw(reaching_withdrawal(use, after=False))
    earlier = [
        e
        for e in history
        if (e.effective_at, e.recorded_at) < (withdrawal.effective_at, withdrawal.recorded_at)
    ]
    decision = evaluate([*earlier, withdrawal], policy, use)
    assert not decision.eligible
    assert decision.reason in (Reason.WITHDRAWN, Reason.NO_LAWFUL_BASIS, Reason.NO_RULE)
    if decision.reason is Reason.WITHDRAWN:
        assert decision.consent_event_ids == (withdrawal.consent_event_id,)


@FAST
@given(st.data())
def test_forward_only_rules_never_require_retraining(data: st.DataObject) -> None:
    policy = data.draw(policies(withdrawal="forward_only"))
    use = data.draw(uses)
    withdrawal = data.draw(reaching_withdrawal(use) | events())
    outcome = withdrawal_requirement(policy, use, withdrawal)
    assert outcome is None or (outcome.requires in FORWARD_ONLY and not outcome.erasure)


@FAST
@given(st.data())
def test_erasure_rules_always_require_retraining_for_earlier_uses(data: st.DataObject) -> None:
    policy = data.draw(policies(withdrawal="erasing"))
    use = data.draw(uses)
    withdrawal = data.draw(reaching_withdrawal(use, after=True))
    outcome = withdrawal_requirement(policy, use, withdrawal)
    assert outcome is not None
    rule = governing_rule(policy, use)
    if rule is None:
        assert (outcome.requires, outcome.rule_id) == (WithdrawalRequires.EXCLUDE_FROM_FUTURE, None)
    else:
        assert outcome.requires in ERASING and outcome.erasure and outcome.rule_id == rule.id
    # At or before the use, the withdrawal is not a "later" one: evaluate reports it.
    not_later = data.draw(reaching_withdrawal(use, after=False))
    assert withdrawal_requirement(policy, use, not_later) is None


@FAST
@given(policies(), uses, events())
def test_withdrawal_requirement_ignores_what_does_not_reach(
    policy: PolicyDocument, use: Use, event: ConsentEvent
) -> None:
    reaches = (
        event.state is ConsentState.WITHDRAWN
        and event.subject_id == use.subject_id
        and covers(event.purpose, use.purpose)
        and any(covers(c, use.category) for c in event.data_categories)
        and event.effective_at > use.used_at
    )
    assert (withdrawal_requirement(policy, use, event) is not None) == reaches


# --- categories and mechanisms ----------------------------------------------------------------


@FAST
@given(
    st.sampled_from(("user.content.private", "user.content.public")),
    st.sampled_from(("user", "user.content")),
    st.sampled_from(OptInScope),
    st.lists(events(subject="someone-else"), max_size=4),
    st.integers(0, 30),
)
def test_parent_opt_in_covers_children_only_under_subtree_scope(
    child: str, parent: str, scope: OptInScope, noise: list[ConsentEvent], day: int
) -> None:
    policy = PolicyDocument(
        policy_id="p",
        version="1",
        valid_from=BASE,
        rules=(
            PolicyRule(
                id="r",
                jurisdictions=("*",),
                purposes=("ai.training",),
                data_categories=(child,),
                lawful_bases=(LawfulBasis(mechanism=ConsentMechanism.EXPLICIT_OPT_IN),),
                opt_in_scope=scope,
            ),
        ),
    )

    def grant(category: str) -> ConsentEvent:
        return ConsentEvent(
            consent_event_id=f"00000000-0000-4000-8000-{day:012d}",
            subject_id="s1",
            jurisdiction="US",
            purpose="ai.training",
            data_categories=(category,),
            state=ConsentState.GRANTED,
            mechanism=ConsentMechanism.EXPLICIT_OPT_IN,
            policy_version="1",
            effective_at=at(day),
            recorded_at=at(day),
            source_system="settings",
            evidence=ConsentEvidence(collection_point="test"),
        )

    use = Use("s1", "US", "ai.training.generative", child, at(day + 1))
    via_parent = evaluate([*noise, grant(parent)], policy, use)
    assert via_parent.eligible is (scope is OptInScope.SUBTREE)
    assert via_parent.reason is (
        Reason.CONSENTED if scope is OptInScope.SUBTREE else Reason.NO_CONSENT
    )
    # A grant naming the category itself counts under both scopes.
    assert evaluate([*noise, grant(child)], policy, use).reason is Reason.CONSENTED


@FAST
@given(
    st.lists(
        events(
            mechanisms=tuple(m for m in MECHANISMS if m is not ConsentMechanism.EXPLICIT_OPT_IN)
        ),
        max_size=8,
    ),
    policies(mechanisms=(ConsentMechanism.EXPLICIT_OPT_IN,)),
    uses,
)
def test_explicit_opt_in_categories_are_never_eligible_by_default(
    history: list[ConsentEvent], policy: PolicyDocument, use: Use
) -> None:
    """Rules whose only lawful basis is an explicit opt-in: no default setting, no
    default-setting grant (nor any other mechanism) makes a use eligible."""
    decision = evaluate(history, policy, use)
    assert not decision.eligible, decision.explanation


@FAST
@given(histories, policies(), uses)
def test_eligible_implies_governing_rule_and_lawful_basis(
    history: list[ConsentEvent], policy: PolicyDocument, use: Use
) -> None:
    decision = evaluate(history, policy, use)
    rule = governing_rule(policy, use)
    assert decision.eligible is decision.reason.eligible
    assert decision.rule_id == (rule.id if rule else None)
    assert (decision.policy_id, decision.policy_version) == (policy.policy_id, policy.version)
    ids = {e.consent_event_id for e in history if e.subject_id == use.subject_id}
    assert set(decision.consent_event_ids) <= ids
    assert len(decision.consent_event_ids) <= 1
    if rule is None:
        assert decision.reason is Reason.NO_RULE
    if not decision.eligible:
        return
    assert rule is not None and in_window(rule, use.used_at)
    assert any(
        b.mechanism is decision.mechanism and in_window(b, use.used_at) for b in rule.lawful_bases
    )
    if decision.reason is Reason.CONSENTED:
        assert len(decision.consent_event_ids) == 1
    else:
        assert decision.consent_event_ids == ()
        assert rule.default is not None and in_window(rule.default, use.used_at)


@FAST
@given(histories, policies(), uses, st.data())
def test_governing_rule_is_the_most_specific(
    history: list[ConsentEvent], policy: PolicyDocument, use: Use, data: st.DataObject
) -> None:
    rule = governing_rule(policy, use)
    matching = [
        r
        for r in policy.rules
        if in_window(r, use.used_at)
        and any(covers(p, use.purpose) for p in r.purposes)
        and any(covers(c, use.category) for c in r.data_categories)
        and matches_any_jurisdiction(r.jurisdictions, use.jurisdiction)
    ]
    assert (rule is None) == (not matching)
    # Reordering the rules only matters between equally specific rules.
    reordered = PolicyDocument(
        policy_id=policy.policy_id,
        version=policy.version,
        valid_from=policy.valid_from,
        rules=tuple(data.draw(st.permutations(policy.rules))),
    )
    other = governing_rule(reordered, use)
    if rule is not None and other is not None and other.id != rule.id:
        assert evaluate(history, reordered, use).rule_id == other.id
        assert _specificity(other, use) == _specificity(rule, use)


def _specificity(rule: PolicyRule, use: Use) -> tuple[int, int, int]:
    ranks = [jurisdiction_rank(s, use.jurisdiction) for s in rule.jurisdictions]
    return (
        max(r for r in ranks if r is not None),
        max(p.count(".") for p in rule.purposes if covers(p, use.purpose)),
        max(c.count(".") for c in rule.data_categories if covers(c, use.category)),
    )


# --- bitemporal ------------------------------------------------------------------------------


@FAST
@given(histories, policies(), uses, days, st.integers(0, 23))
def test_known_at_ignores_facts_recorded_later(
    history: list[ConsentEvent], policy: PolicyDocument, use: Use, day: int, hour: int
) -> None:
    known_at = at(day) + timedelta(hours=hour)
    known = [e for e in history if e.recorded_at <= known_at]
    assert evaluate(history, policy, use, known_at=known_at) == evaluate(known, policy, use)


@FAST
@given(histories, policies(), uses, events(), st.integers(1, 100))
def test_an_event_recorded_after_known_at_is_ignored(
    history: list[ConsentEvent],
    policy: PolicyDocument,
    use: Use,
    late: ConsentEvent,
    hours: int,
) -> None:
    known_at = late.recorded_at - timedelta(hours=hours)
    assert evaluate([*history, late], policy, use, known_at=known_at) == evaluate(
        history, policy, use, known_at=known_at
    )


# --- policy versions -------------------------------------------------------------------------


def _doc(version: str, valid_from: datetime) -> PolicyDocument:
    return PolicyDocument(
        policy_id="p",
        version=version,
        valid_from=valid_from,
        rules=(
            PolicyRule(id="r", jurisdictions=("*",), purposes=("ai",), data_categories=("user",)),
        ),
    )


versions = st.lists(
    st.builds(
        lambda v, f, p: (_doc(str(v), at(f)), at(f + p)),
        st.integers(1, 5),
        st.integers(0, 30),
        st.integers(-10, 30),
    ),
    max_size=6,
)


@FAST
@given(versions, days, st.none() | days, st.randoms(use_true_random=False))
def test_policy_in_force_is_order_independent(
    pairs: list[tuple[PolicyDocument, datetime]],
    day: int,
    known: int | None,
    rnd: random.Random,
) -> None:
    known_at = None if known is None else at(known)
    shuffled = list(pairs)
    rnd.shuffle(shuffled)
    chosen = policy_in_force(pairs, at(day), known_at=known_at)
    assert policy_in_force(shuffled, at(day), known_at=known_at) == chosen
    eligible = [
        (d, p) for d, p in pairs if d.valid_from <= at(day) and (known_at is None or p <= known_at)
    ]
    assert (chosen is None) == (not eligible)
    if chosen is not None:
        assert chosen.valid_from == max(d.valid_from for d, _ in eligible)


@FAST
@given(versions, days, st.integers(1, 100))
def test_a_later_re_reading_replaces_the_reading_it_re_reads(
    pairs: list[tuple[PolicyDocument, datetime]], day: int, later: int
) -> None:
    current = policy_in_force(pairs, at(day))
    valid_from = current.valid_from if current else at(day)
    published = max([p for _, p in pairs], default=BASE) + timedelta(hours=later)
    re_read = _doc("re-read", valid_from)
    with_re_read = [*pairs, (re_read, published)]
    assert policy_in_force(with_re_read, at(day)) == re_read
    # ... but not as known before its publication.
    assert policy_in_force(with_re_read, at(day), known_at=published - timedelta(seconds=1)) == (
        policy_in_force(pairs, at(day), known_at=published - timedelta(seconds=1))
    )
