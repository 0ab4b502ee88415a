"""The consent ledger read bitemporally, the taxonomy, batch rules and GPC coverage: pure."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter

from contracts.base import CategoryPath, PurposePath
from contracts.events import ConsentEvent, ConsentEvidence, ConsentMechanism, ConsentState
from contracts.policy import GpcCoverage, PolicyDocument, PolicyRule
from contracts.taxonomy import (
    DATA_CATEGORIES,
    PURPOSES,
    category_error,
    is_known_category,
    is_known_purpose,
    purpose_error,
)
from services.consent.domain.ledger import as_known_at, ledger_order, state_at
from services.consent.domain.model import (
    BATCH_LIMIT,
    ConsentChange,
    GpcSignal,
    InvalidBatch,
    InvalidConsentChange,
    UnreadableChange,
    batch_digest,
    gpc_coverage,
    policy_problems,
    policy_versions_named,
    record_batch,
    record_change,
    record_gpc_withdrawals,
)
from services.eligibility.matching import covers

T0 = datetime(2024, 8, 1, tzinfo=UTC)
NOW = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)
GRANTED, WITHDRAWN = ConsentState.GRANTED, ConsentState.WITHDRAWN


def event(
    purpose: str = "ai.training",
    categories: tuple[str, ...] = ("user.content",),
    state: ConsentState = GRANTED,
    *,
    effective: datetime = T0,
    recorded: datetime | None = None,
    mechanism: ConsentMechanism = ConsentMechanism.EXPLICIT_OPT_IN,
    event_id: UUID | None = None,
) -> ConsentEvent:
    return ConsentEvent(
        consent_event_id=event_id or uuid4(),
        subject_id="member-1",
        jurisdiction="US",
        purpose=purpose,
        data_categories=categories,
        state=state,
        mechanism=mechanism,
        policy_version="ai-training:1",
        effective_at=effective,
        recorded_at=recorded or effective,
        source_system="settings",
        evidence=ConsentEvidence(collection_point="settings/genai"),
    )


def by_key(events: list[ConsentEvent], **kwargs: Any) -> dict[tuple[str, str], Any]:
    return {(s.purpose, s.data_category): s for s in state_at(events, **kwargs)}


# --- state_at: examples ----------------------------------------------------------------------


def test_the_latest_event_decides_and_names_what_it_overrides() -> None:
    grant = event(effective=T0)
    withdrawal = event(state=WITHDRAWN, effective=T0 + timedelta(days=10))
    state = by_key([withdrawal, grant], valid_at=NOW)
    entry = state[("ai.training", "user.content")]
    assert entry.state is WITHDRAWN
    assert entry.decided_by == withdrawal
    assert entry.superseded == (grant.consent_event_id,)
    assert "withdrawn by explicit_opt_in" in entry.explanation
    assert "overrides 1 earlier event" in entry.explanation
    assert str(withdrawal.consent_event_id) in entry.explanation


def test_valid_time_before_a_change_sees_the_earlier_state() -> None:
    grant = event(effective=T0)
    withdrawal = event(state=WITHDRAWN, effective=T0 + timedelta(days=10))
    between = by_key([grant, withdrawal], valid_at=T0 + timedelta(days=5))
    assert between[("ai.training", "user.content")].state is GRANTED
    assert between[("ai.training", "user.content")].superseded == ()
    assert state_at([grant, withdrawal], valid_at=T0 - timedelta(seconds=1)) == []


def test_a_broad_withdrawal_overrides_an_earlier_narrow_grant() -> None:
    grant = event("ai.training.generative", ("user.content.private",), effective=T0)
    withdraw_all = event("ai", ("user",), WITHDRAWN, effective=T0 + timedelta(days=1))
    state = by_key([grant, withdraw_all], valid_at=NOW)
    narrow = state[("ai.training.generative", "user.content.private")]
    assert narrow.state is WITHDRAWN and narrow.decided_by == withdraw_all
    assert narrow.superseded == (grant.consent_event_id,)
    assert "(which covers ai.training.generative on user.content.private)" in narrow.explanation
    # The broad key is decided by the broad event only: a narrow grant never covers it.
    assert state[("ai", "user")].superseded == ()


def test_a_later_narrow_grant_wins_for_its_key_only() -> None:
    withdraw_all = event("ai", ("user",), WITHDRAWN, effective=T0)
    grant = event("ai.training", ("user.content.public",), effective=T0 + timedelta(days=1))
    state = by_key([grant, withdraw_all], valid_at=NOW)
    assert state[("ai.training", "user.content.public")].state is GRANTED
    assert state[("ai", "user")].state is WITHDRAWN


def test_unrelated_purposes_and_categories_do_not_interfere() -> None:
    analytics = event("analytics", ("user.behavior",), WITHDRAWN, effective=T0 + timedelta(days=2))
    grant = event("ai.training", ("user.content",), effective=T0)
    state = by_key([grant, analytics], valid_at=NOW)
    assert state[("ai.training", "user.content")].state is GRANTED
    assert state[("ai.training", "user.content")].superseded == ()
    assert state[("analytics", "user.behavior")].state is WITHDRAWN


def test_an_event_with_several_categories_answers_for_each() -> None:
    both = event(categories=("user.content.public", "user.content.private"), state=WITHDRAWN)
    assert set(by_key([both], valid_at=NOW)) == {
        ("ai.training", "user.content.public"),
        ("ai.training", "user.content.private"),
    }


def test_known_at_before_recording_hides_the_event() -> None:
    """A retroactive withdrawal: effective in August, recorded in September."""
    grant = event(effective=T0, recorded=T0)
    late = event(
        state=WITHDRAWN, effective=T0 + timedelta(days=1), recorded=T0 + timedelta(days=30)
    )
    valid = T0 + timedelta(days=10)
    as_known_then = by_key([grant, late], valid_at=valid, known_at=T0 + timedelta(days=20))
    as_known_now = by_key([grant, late], valid_at=valid, known_at=NOW)
    assert as_known_then[("ai.training", "user.content")].state is GRANTED
    assert as_known_now[("ai.training", "user.content")].state is WITHDRAWN
    # known_at exactly at recorded_at: known (inclusive).
    exactly = by_key([grant, late], valid_at=valid, known_at=late.recorded_at)
    assert exactly[("ai.training", "user.content")].decided_by == late


def test_keys_only_come_from_events_known_then() -> None:
    later = event("analytics", ("user.behavior",), recorded=NOW)
    assert state_at([later], valid_at=NOW, known_at=NOW - timedelta(days=1)) == []


def test_ties_in_valid_time_go_to_the_later_recording_then_the_id() -> None:
    first = event(state=GRANTED, effective=T0, recorded=T0 + timedelta(hours=1))
    correction = event(state=WITHDRAWN, effective=T0, recorded=T0 + timedelta(hours=2))
    assert by_key([correction, first], valid_at=NOW)[("ai.training", "user.content")].state is (
        WITHDRAWN
    )
    low, high = sorted([uuid4(), uuid4()])
    a = event(state=WITHDRAWN, event_id=high)
    b = event(state=GRANTED, event_id=low)
    assert by_key([a, b], valid_at=NOW)[("ai.training", "user.content")].decided_by == a


def test_timestamps_compare_as_instants_across_offsets() -> None:
    berlin = timezone(timedelta(hours=2))
    grant = event(effective=datetime(2024, 8, 1, 11, 0, tzinfo=berlin))  # 09:00 UTC
    withdrawal = event(state=WITHDRAWN, effective=datetime(2024, 8, 1, 10, 0, tzinfo=UTC))
    state = by_key([withdrawal, grant], valid_at=datetime(2024, 8, 1, 9, 30, tzinfo=UTC))
    assert state[("ai.training", "user.content")].state is GRANTED


def test_history_as_known_is_in_valid_time_order() -> None:
    a = event(effective=T0 + timedelta(days=2), recorded=T0 + timedelta(days=2))
    b = event(effective=T0, recorded=T0 + timedelta(days=5))
    c = event(effective=T0 + timedelta(days=1), recorded=T0 + timedelta(days=9))
    assert as_known_at([a, b, c], None) == [b, c, a]
    assert as_known_at([a, b, c], T0 + timedelta(days=6)) == [b, a]


# --- state_at: properties --------------------------------------------------------------------

PURPOSE_POOL = ["ai", "ai.training", "ai.training.generative", "ai.training.ranking", "analytics"]
CATEGORY_POOL = [
    "user",
    "user.content",
    "user.content.public",
    "user.content.private",
    "user.contact",
]
times = st.integers(min_value=0, max_value=40).map(lambda d: T0 + timedelta(days=d))


@st.composite
def ledgers(draw: st.DrawFn) -> list[ConsentEvent]:
    count = draw(st.integers(min_value=0, max_value=14))
    events = []
    for _ in range(count):
        effective = draw(times)
        events.append(
            event(
                draw(st.sampled_from(PURPOSE_POOL)),
                tuple(
                    draw(
                        st.lists(
                            st.sampled_from(CATEGORY_POOL), min_size=1, max_size=3, unique=True
                        )
                    )
                ),
                draw(st.sampled_from([GRANTED, WITHDRAWN])),
                effective=effective,
                recorded=effective + timedelta(days=draw(st.integers(0, 10))),
                event_id=UUID(int=draw(st.integers(0, 2**128 - 1))),
            )
        )
    # Ids are unique in the ledger (its primary key).
    return list({e.consent_event_id: e for e in events}.values())


ledger_settings = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@ledger_settings
@given(events=ledgers(), valid=times, known=times | st.none(), seed=st.integers())
def test_shuffling_the_input_never_changes_the_answer(
    events: list[ConsentEvent], valid: datetime, known: datetime | None, seed: int
) -> None:
    shuffled = list(events)
    random.Random(seed).shuffle(shuffled)
    assert state_at(shuffled, valid_at=valid, known_at=known) == state_at(
        events, valid_at=valid, known_at=known
    )


@ledger_settings
@given(events=ledgers(), valid=times, known=times | st.none())
def test_each_answer_is_the_latest_relevant_event_known_then(
    events: list[ConsentEvent], valid: datetime, known: datetime | None
) -> None:
    """Against a brute-force reading of the rule, key by key."""
    visible = [
        e for e in events if e.effective_at <= valid and (known is None or e.recorded_at <= known)
    ]
    expected_keys = {(e.purpose, c) for e in visible for c in e.data_categories}
    answer = state_at(events, valid_at=valid, known_at=known)
    assert [(s.purpose, s.data_category) for s in answer] == sorted(expected_keys)
    for entry in answer:
        relevant = [
            e
            for e in visible
            if covers(e.purpose, entry.purpose)
            and any(covers(c, entry.data_category) for c in e.data_categories)
        ]
        latest = max(relevant, key=ledger_order)
        assert entry.decided_by == latest and entry.state is latest.state
        assert set(entry.superseded) == {e.consent_event_id for e in relevant} - {
            latest.consent_event_id
        }
        assert all(
            ledger_order(e) < ledger_order(latest)
            for e in relevant
            if e.consent_event_id in entry.superseded
        )


@ledger_settings
@given(events=ledgers(), valid=times, known=times)
def test_what_was_recorded_after_known_at_changes_nothing(
    events: list[ConsentEvent], valid: datetime, known: datetime
) -> None:
    known_then = [e for e in events if e.recorded_at <= known]
    assert state_at(events, valid_at=valid, known_at=known) == state_at(known_then, valid_at=valid)
    hidden = {e.consent_event_id for e in events if e.recorded_at > known}
    for entry in state_at(events, valid_at=valid, known_at=known):
        assert entry.decided_by.consent_event_id not in hidden
        assert not hidden & set(entry.superseded)


@ledger_settings
@given(events=ledgers(), valid=times)
def test_events_effective_after_valid_at_change_nothing(
    events: list[ConsentEvent], valid: datetime
) -> None:
    future = event("ai", ("user",), WITHDRAWN, effective=valid + timedelta(seconds=1))
    assert state_at([*events, future], valid_at=valid) == state_at(events, valid_at=valid)


# --- taxonomy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("terms", "path"), [(PURPOSES, PurposePath), (DATA_CATEGORIES, CategoryPath)]
)
def test_every_term_is_a_valid_path_whose_parent_is_known(terms: Any, path: Any) -> None:
    for term in terms:
        assert TypeAdapter(path).validate_python(term) == term
        parent = term.rsplit(".", 1)[0]
        assert "." not in term or parent in terms, f"{term}: parent {parent} unknown"
        assert terms[term], f"{term} has no description"


def test_the_fideslang_terms_the_domain_names_are_known() -> None:
    for category in (
        "user",
        "user.content",
        "user.content.public",
        "user.content.private",
        "user.contact",
        "user.contact.email",
        "user.behavior",
        "user.account",
        "user.device",
        "user.financial",
        "user.location",
    ):
        assert is_known_category(category) and category_error(category) is None
    for purpose in ("ai", "ai.training", "ai.training.generative", "ai.training.ranking"):
        assert is_known_purpose(purpose) and purpose_error(purpose) is None
    for purpose in ("analytics", "marketing", "marketing.advertising", "essential"):
        assert is_known_purpose(purpose)


def test_an_unknown_category_is_explained_with_its_known_siblings() -> None:
    message = category_error("user.foo")
    assert message is not None
    assert message.startswith("unknown data category 'user.foo'; known under 'user': ")
    assert "user.account" in message and "user.content" in message
    assert "user.content.private" not in message  # one level only


def test_a_misspelling_gets_a_suggestion() -> None:
    assert "(did you mean 'user.content'?)" in (category_error("user.contents") or "")
    assert "(did you mean 'ai.training'?)" in (purpose_error("ai.trainingx") or "")


def test_a_term_below_a_leaf_says_to_use_the_leaf() -> None:
    message = category_error("user.content.public.comment") or ""
    assert "'user.content.public' has no narrower terms" in message
    below = category_error("user.content.private.inmail") or ""
    assert "known under 'user.content.private': user.content.private.premium" in below


def test_an_unknown_top_level_term_lists_the_roots() -> None:
    assert purpose_error("ads") == (
        "unknown purpose 'ads'; known top-level terms: ai, analytics, essential, marketing,"
        " personalization, research"
    )
    assert category_error("system") == "unknown data category 'system'; known top-level terms: user"


# --- intake rules and batches ----------------------------------------------------------------


def change(**overrides: Any) -> ConsentChange:
    fields: dict[str, Any] = {
        "subject_id": "member-1",
        "jurisdiction": "US-CA",
        "purpose": "ai.training.generative",
        "data_categories": ("user.content.public",),
        "state": WITHDRAWN,
        "mechanism": ConsentMechanism.OPT_OUT,
        "policy_version": "ai-training:1",
        "effective_at": NOW - timedelta(hours=1),
        "source_system": "settings",
        "evidence": ConsentEvidence(collection_point="settings/genai"),
    }
    fields.update(overrides)
    return ConsentChange(**fields)


def test_unknown_terms_are_refused_at_intake_with_every_reason() -> None:
    with pytest.raises(InvalidConsentChange) as refused:
        record_change(
            change(purpose="ai.trainin", data_categories=("user.foo", "user.contents")),
            now=NOW,
            idempotency_key=None,
        )
    message = str(refused.value)
    assert "unknown purpose 'ai.trainin'" in message
    assert "unknown data category 'user.foo'" in message
    assert "unknown data category 'user.contents'" in message


def test_a_batch_becomes_facts_recorded_together() -> None:
    changes = [change(), change(purpose="analytics", data_categories=("user.behavior",))]
    events = record_batch(changes, now=NOW, idempotency_key="b-1")
    assert [e.purpose for e in events] == ["ai.training.generative", "analytics"]
    assert {e.recorded_at for e in events} == {NOW}
    assert len({e.consent_event_id for e in events}) == 2


def test_a_batch_with_invalid_changes_names_each_index_and_records_nothing() -> None:
    items = [
        change(),
        change(data_categories=("user.foo",)),
        UnreadableChange("jurisdiction: Field required"),
        change(effective_at=NOW + timedelta(hours=1)),
        change(state=GRANTED, erasure_requested=True),
        change(jurisdiction="california"),
    ]
    with pytest.raises(InvalidBatch) as refused:
        record_batch(items, now=NOW, idempotency_key="b-1")
    errors = dict(refused.value.errors)
    assert sorted(errors) == [1, 2, 3, 4, 5]
    assert "unknown data category 'user.foo'" in errors[1]
    assert errors[2] == "jurisdiction: Field required"
    assert "in the future" in errors[3]
    assert "erasure" in errors[4]
    assert errors[5].startswith("jurisdiction:")
    assert str(refused.value) == "5 of 6 changes are invalid; nothing was recorded"


@pytest.mark.parametrize("size", [0, BATCH_LIMIT + 1])
def test_a_batch_holds_one_to_a_thousand_changes(size: int) -> None:
    with pytest.raises(InvalidBatch, match=f"1 to {BATCH_LIMIT} changes, not {size}"):
        record_batch([change()] * size, now=NOW, idempotency_key=None)


def test_a_full_batch_is_accepted() -> None:
    assert len(record_batch([change()] * BATCH_LIMIT, now=NOW, idempotency_key="k")) == BATCH_LIMIT


keys = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30
)


@settings(max_examples=100, deadline=None)
@given(key=keys, size=st.integers(1, 20))
def test_a_retried_batch_maps_onto_the_same_ids_index_by_index(key: str, size: int) -> None:
    changes = [change(policy_version=str(i)) for i in range(size)]
    first = record_batch(changes, now=NOW, idempotency_key=key)
    retry = record_batch(changes, now=NOW + timedelta(minutes=1), idempotency_key=key)
    assert [e.consent_event_id for e in first] == [e.consent_event_id for e in retry]
    assert len({e.consent_event_id for e in first}) == size
    assert all(e.consent_event_id.version == 5 for e in first)


@settings(max_examples=100, deadline=None)
@given(key=keys, other=keys)
def test_batch_ids_depend_on_the_key_and_never_collide_with_single_intake(
    key: str, other: str
) -> None:
    batch = record_batch([change()], now=NOW, idempotency_key=key)[0].consent_event_id
    single = record_change(change(), now=NOW, idempotency_key=key).consent_event_id
    assert batch != single
    if other != key:
        assert batch != record_batch([change()], now=NOW, idempotency_key=other)[0].consent_event_id


def test_without_a_key_a_batch_gets_fresh_ids() -> None:
    a = record_batch([change()], now=NOW, idempotency_key=None)[0]
    b = record_batch([change()], now=NOW, idempotency_key=None)[0]
    assert a.consent_event_id != b.consent_event_id and a.consent_event_id.version == 4


def test_the_batch_digest_tells_a_replay_from_other_content() -> None:
    changes = [change(), change(purpose="analytics")]
    same_instant = [
        replace(c, effective_at=c.effective_at.astimezone(timezone(timedelta(hours=2))))
        for c in changes
    ]
    assert batch_digest(changes) == batch_digest(same_instant)
    assert batch_digest(changes) != batch_digest(changes[:1])
    assert batch_digest(changes) != batch_digest(list(reversed(changes)))
    assert batch_digest(changes) != batch_digest([changes[0], replace(changes[1], state=GRANTED)])


# --- policies and GPC ------------------------------------------------------------------------


def policy(
    policy_id: str = "ai-training",
    version: str = "1",
    *,
    valid_from: datetime = T0,
    gpc: tuple[GpcCoverage, ...] = (),
    categories: tuple[str, ...] = ("user.content",),
) -> PolicyDocument:
    return PolicyDocument(
        policy_id=policy_id,
        version=version,
        valid_from=valid_from,
        rules=(
            PolicyRule(
                id="r1",
                jurisdictions=("US",),
                purposes=("ai.training",),
                data_categories=categories,
            ),
        ),
        gpc=gpc,
    )


CA_SHARING = GpcCoverage(jurisdictions=("US-CA",), purposes=("marketing.advertising.sharing",))
US_GENAI = GpcCoverage(
    jurisdictions=("US",),
    purposes=("ai.training.generative",),
    data_categories=("user.content.public",),
)


def test_gpc_coverage_unites_each_policys_version_in_force() -> None:
    published = T0
    versions = [
        (policy("ads", "1", gpc=(CA_SHARING,)), published),
        (policy("ai-training", "1", gpc=(US_GENAI,)), published),
        # A later version of ai-training that drops GPC: in force from NOW on only.
        (policy("ai-training", "2", valid_from=NOW), published),
    ]
    before = gpc_coverage(versions, jurisdiction="US-CA", at=NOW - timedelta(days=1))
    assert [(w.purpose, w.data_categories, w.policy_ref) for w in before] == [
        ("marketing.advertising.sharing", ("user",), "ads:1"),
        ("ai.training.generative", ("user.content.public",), "ai-training:1"),
    ]
    after = gpc_coverage(versions, jurisdiction="US-CA", at=NOW)
    assert [w.policy_ref for w in after] == ["ads:1"]
    assert gpc_coverage(versions, jurisdiction="US-NY", at=NOW - timedelta(days=1))[0].purpose == (
        "ai.training.generative"
    )
    assert gpc_coverage(versions, jurisdiction="DE", at=NOW) == []
    assert gpc_coverage([], jurisdiction="US-CA", at=NOW) == []


def test_a_pair_two_policies_name_is_withdrawn_once() -> None:
    versions = [(policy("b", gpc=(CA_SHARING,)), T0), (policy("a", gpc=(CA_SHARING,)), T0)]
    coverage = gpc_coverage(versions, jurisdiction="US-CA", at=NOW)
    assert [w.policy_ref for w in coverage] == ["a:1"]


def signal(**overrides: Any) -> GpcSignal:
    fields: dict[str, Any] = {
        "subject_id": "member-1",
        "jurisdiction": "US-CA",
        "source_system": "edge",
        "user_agent": "Firefox/128.0",
        "collection_point": "Sec-GPC header",
        "effective_at": NOW,
    }
    fields.update(overrides)
    return GpcSignal(**fields)


def test_gpc_withdrawals_carry_the_signal_as_evidence() -> None:
    coverage = gpc_coverage(
        [(policy(gpc=(CA_SHARING, US_GENAI)), T0)], jurisdiction="US-CA", at=NOW
    )
    events = record_gpc_withdrawals(signal(), coverage, now=NOW, idempotency_key=None)
    assert len(events) == 2
    for e in events:
        assert e.state is WITHDRAWN and e.mechanism is ConsentMechanism.GPC_SIGNAL
        assert e.evidence.channel == "gpc" and e.evidence.user_agent == "Firefox/128.0"
        assert e.policy_version == "ai-training:1"
        assert e.effective_at == NOW and e.recorded_at == NOW


def test_gpc_withdrawal_ids_are_deterministic_with_a_key() -> None:
    coverage = gpc_coverage(
        [(policy(gpc=(CA_SHARING, US_GENAI)), T0)], jurisdiction="US-CA", at=NOW
    )
    first = record_gpc_withdrawals(signal(), coverage, now=NOW, idempotency_key="k")
    retry = record_gpc_withdrawals(signal(), coverage, now=NOW, idempotency_key="k")
    other = record_gpc_withdrawals(signal(), coverage, now=NOW, idempotency_key="k2")
    assert [e.consent_event_id for e in first] == [e.consent_event_id for e in retry]
    assert not {e.consent_event_id for e in first} & {e.consent_event_id for e in other}
    single = record_change(change(source_system="edge"), now=NOW, idempotency_key="k")
    assert single.consent_event_id not in {e.consent_event_id for e in first}


def test_a_gpc_signal_from_the_future_is_refused() -> None:
    with pytest.raises(InvalidConsentChange, match="in the future"):
        record_gpc_withdrawals(
            signal(effective_at=NOW + timedelta(hours=1)), [], now=NOW, idempotency_key=None
        )


def test_a_policy_naming_unknown_terms_is_refused_with_where() -> None:
    bad = policy(
        categories=("user.contents",),
        gpc=(GpcCoverage(jurisdictions=("US-CA",), purposes=("ads",)),),
    )
    problems = policy_problems(bad)
    assert problems[0].startswith("rules[0] (r1): unknown data category 'user.contents'")
    assert problems[1].startswith("gpc[0]: unknown purpose 'ads'")
    assert policy_problems(policy(gpc=(CA_SHARING,))) == []


def test_the_policy_versions_events_name_are_found_by_id_and_version_or_version() -> None:
    stored = [(policy("ai-training", "1"), T0), (policy("ads", "7"), T0), (policy("ads", "1"), T0)]
    named, unresolved = policy_versions_named(["ai-training:1", "7", "2024-09-18"], stored)
    assert [(p.policy_id, p.version) for p, _ in named] == [("ads", "7"), ("ai-training", "1")]
    assert unresolved == ["2024-09-18"]
    both, _ = policy_versions_named(["1"], stored)
    assert [(p.policy_id, p.version) for p, _ in both] == [("ads", "1"), ("ai-training", "1")]
