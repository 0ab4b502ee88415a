"""Eligibility under every policy at once (services.registry.domain.preflight) and the
pre-flight filter's block loop (services.registry.service.eligibility) on fakes.

What one policy decides is the engine's (tests/unit/eligibility); these tests check what
the registry makes of several: which readings speak to a use, how their decisions
combine, that the cached filter decides exactly as the engine would record by record, and
that the filter hands back the eligible lines byte for byte.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.events import ConsentEvent, ConsentEvidence
from contracts.policy import DefaultConsent, LawfulBasis, OptInScope, PolicyDocument, PolicyRule
from contracts.vocabulary import ConsentMechanism, ConsentState
from services.eligibility import Decision, Reason, Use, covers, evaluate, policy_in_force
from services.registry.domain import preflight
from services.registry.domain.ndjson import LineTooLong
from services.registry.domain.preflight import (
    NO_POLICY,
    SAMPLE_EXCLUDED,
    DecisionCache,
    FilterSummary,
    PolicyReading,
    Verdict,
    combine,
    explain_use,
    history_known_at,
    readings_in_force,
    speaks_to,
)
from services.registry.domain.snapshots import LineError, RecordRow
from services.registry.service import eligibility as service

EXAMPLES = int(os.environ.get("PREFLIGHT_EXAMPLES", "60"))
FAST = settings(max_examples=EXAMPLES, deadline=None)

BASE = datetime(2024, 1, 1, tzinfo=UTC)
DIGEST = "sha256:" + "ab" * 32


def day(n: float) -> datetime:
    return BASE + timedelta(days=n)


def rule(
    rule_id: str,
    *,
    purposes: tuple[str, ...] = ("ai.training",),
    categories: tuple[str, ...] = ("user",),
    jurisdictions: tuple[str, ...] = ("*",),
    bases: tuple[ConsentMechanism, ...] = (ConsentMechanism.EXPLICIT_OPT_IN,),
    default: ConsentMechanism | None = None,
    **fields: Any,
) -> PolicyRule:
    return PolicyRule(
        id=rule_id,
        jurisdictions=jurisdictions,
        purposes=purposes,
        data_categories=categories,
        lawful_bases=tuple(LawfulBasis(mechanism=m) for m in bases),
        default=DefaultConsent(mechanism=default) if default else None,
        **fields,
    )


def policy(
    policy_id: str, *rules: PolicyRule, version: str = "1", valid_from: int = 0
) -> PolicyDocument:
    return PolicyDocument(
        policy_id=policy_id, version=version, valid_from=day(valid_from), rules=rules
    )


def event(
    subject: str,
    *,
    state: ConsentState = ConsentState.GRANTED,
    mechanism: ConsentMechanism = ConsentMechanism.EXPLICIT_OPT_IN,
    purpose: str = "ai.training",
    categories: tuple[str, ...] = ("user",),
    effective: float = 1,
    recorded: float | None = None,
    n: int = 0,
) -> ConsentEvent:
    return ConsentEvent(
        consent_event_id=UUID(int=n),
        subject_id=subject,
        jurisdiction="US",
        purpose=purpose,
        data_categories=categories,
        state=state,
        mechanism=mechanism,
        policy_version="1",
        effective_at=day(effective),
        recorded_at=day(effective if recorded is None else recorded),
        source_system="test",
        evidence=ConsentEvidence(collection_point="test"),
    )


def use(
    subject: str = "s1",
    *,
    purpose: str = "ai.training",
    category: str = "user.content",
    jurisdiction: str = "US",
    at: float = 10,
) -> Use:
    return Use(
        subject_id=subject,
        jurisdiction=jurisdiction,
        purpose=purpose,
        category=category,
        used_at=day(at),
    )


def published(*documents: PolicyDocument, at: float = 0) -> list[tuple[PolicyDocument, datetime]]:
    return [(d, day(at)) for d in documents]


US_DEFAULT_ON = policy(
    "us-default",
    rule(
        "us-on",
        jurisdictions=("US",),
        default=ConsentMechanism.DEFAULT_SETTING,
        bases=(ConsentMechanism.DEFAULT_SETTING, ConsentMechanism.EXPLICIT_OPT_IN),
    ),
)
EU_OPT_IN = policy("eu-opt-in", rule("eu-in", jurisdictions=("EU",)))
ANALYTICS = policy("analytics", rule("stats", purposes=("analytics",), jurisdictions=("*",)))


# --- which readings speak, and how decisions combine ------------------------------------


def test_a_policy_speaks_to_a_purpose_its_rules_cover_whatever_their_window_and_place() -> None:
    narrow = policy(
        "narrow",
        rule(
            "gen",
            purposes=("ai.training.generative",),
            jurisdictions=("DE",),
            valid_from=day(100),
            valid_until=day(200),
        ),
    )
    assert speaks_to(narrow, "ai.training.generative")
    assert speaks_to(narrow, "ai.training.generative.chat")
    assert not speaks_to(narrow, "ai.training")  # a narrower rule does not reach the parent
    assert speaks_to(US_DEFAULT_ON, "ai.training.generative")
    assert not speaks_to(ANALYTICS, "ai.training")


def test_readings_are_each_policys_version_in_force_that_speaks_by_policy_id() -> None:
    v1 = policy("us-default", *US_DEFAULT_ON.rules, version="1", valid_from=0)
    v2 = policy("us-default", *US_DEFAULT_ON.rules, version="2", valid_from=5)
    later = policy("us-default", *US_DEFAULT_ON.rules, version="3", valid_from=50)
    versions = [
        (v2, day(6)),
        (EU_OPT_IN, day(0)),
        (v1, day(0)),
        (later, day(1)),
        (ANALYTICS, day(0)),
    ]
    readings = readings_in_force(versions, "ai.training", day(10))
    assert [(r.policy_id, r.version, r.published_at) for r in readings] == [
        ("eu-opt-in", "1", day(0)),
        ("us-default", "2", day(6)),
    ]
    # As known on day 3, version 2 was not published yet.
    known = readings_in_force(versions, "ai.training", day(10), known_at=day(3))
    assert [(r.policy_id, r.version) for r in known] == [("eu-opt-in", "1"), ("us-default", "1")]
    # Before any version's valid time, a policy has no reading.
    assert readings_in_force([(v2, day(6))], "ai.training", day(1)) == []


def test_no_policy_speaking_is_not_eligible() -> None:
    readings = readings_in_force(published(ANALYTICS), "ai.training", day(10))
    assert readings == []
    verdict = DecisionCache(readings, "ai.training", day(10))
    verdict.learn(["s1"], {})
    assert verdict.decide("s1", "user.content", "US") == Verdict(False, NO_POLICY, None, None, ())


def test_every_policy_that_speaks_must_agree() -> None:
    readings = readings_in_force(published(US_DEFAULT_ON, EU_OPT_IN), "ai.training", day(10))
    cache = DecisionCache(readings, "ai.training", day(10))
    cache.learn(["s1"], {})
    verdict = cache.decide("s1", "user.content", "US")
    # us-default allows it by default; eu-opt-in speaks to the purpose but has no rule for
    # the US: no rule, no use.
    assert not verdict.eligible
    assert (verdict.reason, verdict.policy_id, verdict.rule_id) == ("no_rule", "eu-opt-in", None)
    assert [d.reason for d in verdict.decisions] == [Reason.NO_RULE, Reason.DEFAULT_CONSENT]

    alone = DecisionCache(
        readings_in_force(published(US_DEFAULT_ON), "ai.training", day(10)), "ai.training", day(10)
    )
    alone.learn(["s1"], {})
    ok = alone.decide("s1", "user.content", "US")
    assert ok.eligible and (ok.reason, ok.policy_id, ok.rule_id) == (
        "default_consent",
        "us-default",
        "us-on",
    )


def test_combine_takes_the_first_excluding_decision() -> None:
    def decision(policy_id: str, reason: Reason) -> Decision:
        return Decision(reason.eligible, reason, policy_id, "1", f"r-{policy_id}", None, (), "x")

    ok_a, no_b, no_c = (
        decision("a", Reason.CONSENTED),
        decision("b", Reason.WITHDRAWN),
        decision("c", Reason.NO_CONSENT),
    )
    assert combine([]) == Verdict(False, NO_POLICY, None, None, ())
    assert combine([ok_a]) == Verdict(True, "consented", "a", "r-a", (ok_a,))
    assert combine([ok_a, no_b, no_c]) == Verdict(
        False, "withdrawn", "b", "r-b", (ok_a, no_b, no_c)
    )


# --- the decision cache -----------------------------------------------------------------


def test_subjects_without_events_cost_one_engine_run_per_jurisdiction_and_category() -> None:
    readings = readings_in_force(published(US_DEFAULT_ON, EU_OPT_IN), "ai.training", day(10))
    cache = DecisionCache(readings, "ai.training", day(10))
    subjects = [f"s{i}" for i in range(500)]
    assert cache.unseen(subjects + subjects[:10]) == subjects
    cache.learn(subjects, {"s7": [event("s7")]})
    assert cache.unseen(subjects) == []
    for subject, category, jurisdiction in itertools.product(
        subjects, ("user.content", "user.contact"), ("US", "DE")
    ):
        cache.decide(subject, category, jurisdiction)
    # 4 pairs for 499 subjects without events, 4 for s7; 2 policies each.
    assert cache.engine_runs == (4 + 4) * 2


def test_events_the_engine_would_ignore_do_not_cost_an_engine_run() -> None:
    readings = readings_in_force(published(US_DEFAULT_ON), "ai.training", day(10))
    cache = DecisionCache(readings, "ai.training", day(10), known_at=day(20))
    ignored = {
        "other-purpose": [event("other-purpose", purpose="analytics", n=1)],
        "later": [event("later", effective=11, n=2)],
        "recorded-later": [event("recorded-later", effective=5, recorded=21, n=3)],
    }
    cache.learn([*ignored, "none"], ignored)
    verdicts = {s: cache.decide(s, "user.content", "US") for s in [*ignored, "none"]}
    assert cache.engine_runs == 1 and len(set(verdicts.values())) == 1
    for subject, history in ignored.items():
        the_use = use(subject)
        assert verdicts[subject].decisions == (
            evaluate(history, US_DEFAULT_ON, the_use, known_at=day(20)),
        )


def test_deciding_for_a_subject_never_learnt_is_an_error_not_a_guess() -> None:
    cache = DecisionCache([], "ai.training", day(10))
    with pytest.raises(LookupError, match="s1"):
        cache.decide("s1", "user", "US")


def test_forgetting_subjects_keeps_the_answers() -> None:
    readings = readings_in_force(published(US_DEFAULT_ON), "ai.training", day(10))
    histories = {
        f"s{i}": [event(f"s{i}", state=ConsentState.WITHDRAWN, n=i)] for i in range(0, 40, 3)
    }
    small = DecisionCache(readings, "ai.training", day(10), max_subjects=5)
    large = DecisionCache(readings, "ai.training", day(10))
    for block in range(8):
        subjects = [f"s{(block * 7 + i) % 40}" for i in range(5)]
        for cache in (small, large):
            unseen = cache.unseen(subjects)
            cache.learn(unseen, {s: histories[s] for s in unseen if s in histories})
        for s in subjects:
            assert small.decide(s, "user.content", "US") == large.decide(s, "user.content", "US")
    assert small.forgotten > 0 and large.forgotten == 0


# --- the cache decides exactly as the engine, record by record --------------------------

PURPOSES = ("ai", "ai.training", "ai.training.generative", "analytics")
CATEGORIES = ("user", "user.content", "user.content.private", "user.contact")
JURISDICTIONS = ("US", "US-CA", "DE", "GB")
SELECTORS = ("*", "US", "US-CA", "EU", "DE")
SUBJECTS = ("s1", "s2", "s3", "s4", "s5", "s6")
WITH_EVENTS = SUBJECTS[:4]
MECHANISMS = tuple(ConsentMechanism)


def subsets(values: tuple[str, ...]) -> st.SearchStrategy[tuple[str, ...]]:
    return st.sampled_from([*((v,) for v in values), *itertools.combinations(values, 2)])


def broad(first: str, values: tuple[str, ...]) -> st.SearchStrategy[tuple[str, ...]]:
    """Half the time the broadest selector alone, so that many rules govern many uses."""
    return st.just((first,)) | subsets(values)


windows = st.sampled_from([(None, None), (None, None), (0, None), (None, 20), (5, 15), (12, None)])
LIKELY = (
    ConsentMechanism.EXPLICIT_OPT_IN,
    ConsentMechanism.DEFAULT_SETTING,
    ConsentMechanism.OPT_OUT,
)
mechanisms = st.sampled_from(LIKELY) | st.sampled_from(MECHANISMS)


@st.composite
def rules(draw: st.DrawFn, rule_id: str) -> PolicyRule:
    """Biased towards rules that govern and allow, so that eligible uses are common."""
    start, end = draw(windows)
    default = draw(st.none() | mechanisms)
    return PolicyRule(
        id=rule_id,
        jurisdictions=draw(broad("*", SELECTORS)),
        purposes=draw(broad("ai", PURPOSES)),
        data_categories=draw(broad("user", CATEGORIES)),
        lawful_bases=tuple(
            LawfulBasis(mechanism=m)
            for m in draw(
                st.lists(
                    mechanisms, min_size=draw(st.sampled_from((0, 1, 1))), max_size=3, unique=True
                )
            )
        ),
        default=DefaultConsent(mechanism=default) if default else None,
        opt_in_scope=draw(st.sampled_from(OptInScope)),
        valid_from=None if start is None else day(start),
        valid_until=None if end is None else day(end),
    )


@st.composite
def policy_versions(draw: st.DrawFn) -> list[tuple[PolicyDocument, datetime]]:
    versions = []
    for policy_id in draw(
        st.lists(
            st.sampled_from(("pa", "pb", "pc")),
            min_size=draw(st.sampled_from((0, 1, 1, 1))),
            max_size=3,
            unique=True,
        )
    ):
        for version in range(draw(st.integers(1, 2))):
            n_rules = draw(st.integers(1, 3))
            document = PolicyDocument(
                policy_id=policy_id,
                version=str(version),
                valid_from=day(draw(st.integers(0, 8))),
                rules=tuple(draw(rules(f"r{i}")) for i in range(n_rules)),
            )
            versions.append((document, day(draw(st.integers(0, 12)))))
    return versions


@st.composite
def histories(draw: st.DrawFn) -> dict[str, list[ConsentEvent]]:
    result: dict[str, list[ConsentEvent]] = {}
    ids = itertools.count(1)
    for subject in WITH_EVENTS:
        for _ in range(draw(st.integers(0, 3))):
            effective = draw(st.integers(0, 20))
            result.setdefault(subject, []).append(
                event(
                    subject,
                    state=draw(st.sampled_from(ConsentState)),
                    mechanism=draw(mechanisms),
                    purpose=draw(st.sampled_from(PURPOSES)),
                    categories=draw(broad("user", CATEGORIES)),
                    effective=effective,
                    recorded=effective + draw(st.integers(0, 5)),
                    n=next(ids),
                )
            )
    return result


records = st.lists(
    st.tuples(
        st.sampled_from(SUBJECTS), st.sampled_from(CATEGORIES), st.sampled_from(JURISDICTIONS)
    ),
    min_size=1,
    max_size=40,
)


def reference(
    versions: Sequence[tuple[PolicyDocument, datetime]],
    history: Sequence[ConsentEvent],
    use: Use,
    known_at: datetime | None,
) -> tuple[bool, str, str | None, str | None, list[Decision]]:
    """The rule written out without the module: each policy judged alone, every one that
    speaks must say yes, none speaking is a no."""
    decisions = []
    for policy_id in sorted({d.policy_id for d, _ in versions}):
        mine = [(d, p) for d, p in versions if d.policy_id == policy_id]
        document = policy_in_force(mine, use.used_at, known_at=known_at)
        if document is None:
            continue
        if not any(covers(p, use.purpose) for r in document.rules for p in r.purposes):
            continue
        decisions.append(evaluate(history, document, use, known_at=known_at))
    if not decisions:
        return False, "no_policy", None, None, decisions
    no = [d for d in decisions if not d.eligible]
    first = no[0] if no else decisions[0]
    return not no, first.reason.value, first.policy_id, first.rule_id, decisions


@FAST
@given(
    policy_versions(),
    histories(),
    records,
    st.sampled_from(PURPOSES),
    st.integers(0, 25),
    st.none() | st.integers(0, 25),
    st.integers(1, 7),
)
def test_the_cached_filter_decides_like_the_engine_record_by_record(
    versions: list[tuple[PolicyDocument, datetime]],
    subject_histories: dict[str, list[ConsentEvent]],
    uses: list[tuple[str, str, str]],
    purpose: str,
    at_day: int,
    known_day: int | None,
    block: int,
) -> None:
    at, known_at = day(at_day), None if known_day is None else day(known_day)
    cache = DecisionCache(
        readings_in_force(versions, purpose, at, known_at=known_at),
        purpose,
        at,
        known_at=known_at,
        max_subjects=4,  # forgets now and then, which must change nothing
    )
    for index, start in enumerate(range(0, len(uses), block)):
        chunk = uses[start : start + block]
        unseen = cache.unseen(s for s, _, _ in chunk)
        cache.learn(unseen, {s: subject_histories[s] for s in unseen if s in subject_histories})
        rows = [row(start + i, s, c, j) for i, (s, c, j) in enumerate(chunk)]
        # Half the blocks record by record, half in one go: the same answers.
        verdicts = (
            cache.decide_rows(rows) if index % 2 else [cache.decide(s, c, j) for s, c, j in chunk]
        )
        for (subject, category, jurisdiction), verdict in zip(chunk, verdicts, strict=True):
            the_use = use(
                subject, purpose=purpose, category=category, jurisdiction=jurisdiction, at=at_day
            )
            eligible, reason, policy_id, rule_id, decisions = reference(
                versions, subject_histories.get(subject, []), the_use, known_at
            )
            assert (verdict.eligible, verdict.reason, verdict.policy_id, verdict.rule_id) == (
                eligible,
                reason,
                policy_id,
                rule_id,
            )
            assert list(verdict.decisions) == decisions


# --- the summary ------------------------------------------------------------------------


def row(
    n: int, subject: str, category: str = "user.content", jurisdiction: str = "US"
) -> RecordRow:
    """A validated record row, as ``parse_record_lines`` yields it."""
    return (0, n + 1, "inbox", f"m{n}", subject, category, jurisdiction, BASE, DIGEST)


def test_counting_a_block_is_counting_its_records_one_by_one() -> None:
    verdicts = [
        Verdict(True, "consented", "p", "r", ()),
        Verdict(False, "withdrawn", "p", "r", ()),
        Verdict(False, NO_POLICY, None, None, ()),
    ]
    rng = random.Random(5)
    rows = [row(i, f"s{i}") for i in range(70)]
    picked = [rng.choice(verdicts) for _ in rows]
    one_by_one, by_block = FilterSummary(), FilterSummary()
    for r, v in zip(rows, picked, strict=True):
        one_by_one.count(v, *r[2:7])
    for start in range(0, len(rows), 9):
        by_block.count_rows(rows[start : start + 9], picked[start : start + 9])
    assert by_block == one_by_one
    assert len(by_block.sample_excluded) == SAMPLE_EXCLUDED


def test_summary_counts_reasons_and_samples_at_most_twenty() -> None:
    summary = FilterSummary()
    yes = Verdict(True, "consented", "p", "r", ())
    withdrawn = Verdict(False, "withdrawn", "p", "r", ())
    nothing = Verdict(False, NO_POLICY, None, None, ())
    for i in range(100):
        verdict = (yes, withdrawn, nothing, withdrawn)[i % 4]
        summary.count(verdict, "inbox", f"m{i}", f"s{i}", "user.content", "US")
    reading = PolicyReading(US_DEFAULT_ON, day(0))
    body = summary.as_json("ai.training", day(10), [reading])
    assert body["records"] == 100 and body["eligible"] == 25 and body["excluded"] == 75
    assert body["excluded_by_reason"] == {"no_policy": 25, "withdrawn": 50}
    assert body["policies"] == [{"policy_id": "us-default", "version": "1"}]
    assert body["at"] == "2024-01-11T00:00:00+00:00"
    assert len(body["sample_excluded"]) == SAMPLE_EXCLUDED
    assert body["sample_excluded"][0] == {
        "source_system": "inbox",
        "record_id": "m1",
        "subject_id": "s1",
        "category": "user.content",
        "jurisdiction": "US",
        "reason": "withdrawn",
        "policy_id": "p",
        "rule_id": "r",
    }
    assert body["sample_excluded"][1]["reason"] == "no_policy"
    assert body["sample_excluded"][1]["policy_id"] is None


# --- one record explained ---------------------------------------------------------------


def test_explain_names_the_deciding_events_and_honours_known_at() -> None:
    grant = event("s1", effective=1, recorded=1, n=1)
    withdrawal = event("s1", state=ConsentState.WITHDRAWN, effective=5, recorded=8, n=2)
    other = event("s2", effective=1, n=3)
    v1 = policy("opt-in", rule("in", description="opt-in only"), version="1")
    v2 = policy("opt-in", rule("in2", description="re-read"), version="2", valid_from=0)
    versions = [(v1, day(0)), (v2, day(9))]

    now = explain_use([withdrawal, other, grant], versions, use(at=10))
    assert not now.verdict.eligible and now.verdict.reason == "withdrawn"
    [decided] = now.decisions
    assert (decided.reading.version, decided.reading.published_at) == ("2", day(9))
    assert decided.rule is not None and decided.rule.description == "re-read"
    assert decided.consent_events == (withdrawal,)
    assert now.consent_history == (grant, withdrawal)  # the subject's only, oldest first

    # On day 7 the withdrawal was not recorded yet and version 2 not published.
    then = explain_use([withdrawal, other, grant], versions, use(at=10), known_at=day(7))
    assert then.verdict.eligible and then.verdict.reason == "consented"
    [decided] = then.decisions
    assert (decided.reading.version, decided.decision.rule_id) == ("1", "in")
    assert decided.consent_events == (grant,)
    assert then.consent_history == (grant,)


def test_explain_without_a_policy_speaking() -> None:
    explained = explain_use([], published(ANALYTICS), use())
    assert explained.decisions == () and explained.verdict.reason == NO_POLICY
    assert not explained.verdict.eligible


def test_history_known_at_orders_by_valid_then_recorded_time() -> None:
    a = event("s1", effective=3, recorded=3, n=1)
    b = event("s1", effective=1, recorded=9, n=2)
    c = event("s1", effective=3, recorded=2, n=3)
    assert history_known_at([a, b, c], None) == [b, c, a]
    assert history_known_at([a, b, c], day(3)) == [c, a]


# --- the filter's block loop (fake database) --------------------------------------------


def line(record_id: str, subject: str, category: str = "user.content", **extra: str) -> bytes:
    fields = {
        "record_id": record_id,
        "source_system": "inbox",
        "subject_id": subject,
        "category": category,
        "jurisdiction": "US",
        "collected_at": "2024-08-01T12:00:00Z",
        "content_digest": DIGEST,
        **extra,
    }
    return ("{" + ", ".join(f'"{k}":  "{v}"' for k, v in fields.items()) + "}").encode()


class FakeRepository:
    """Stands in for ``RegistryRepository``: the projections, and the queries made."""

    versions: list[tuple[PolicyDocument, datetime]] = []
    histories_of: dict[str, list[ConsentEvent]] = {}
    queries: list[list[str]] = []

    def __init__(self, conn: object) -> None:
        pass

    async def policies(self) -> list[tuple[PolicyDocument, datetime]]:
        return list(self.versions)

    async def histories(self, subject_ids: Sequence[str]) -> dict[str, list[ConsentEvent]]:
        FakeRepository.queries.append(list(subject_ids))
        return {s: self.histories_of[s] for s in subject_ids if s in self.histories_of}


class FakePool:
    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[object]:
        yield object()


@pytest.fixture
def fake_db(monkeypatch: pytest.MonkeyPatch) -> type[FakeRepository]:
    monkeypatch.setattr(service, "RegistryRepository", FakeRepository)
    FakeRepository.versions = published(US_DEFAULT_ON)
    FakeRepository.histories_of = {
        "gone": [event("gone", state=ConsentState.WITHDRAWN, n=1)],
        "in": [event("in", n=2)],
    }
    FakeRepository.queries = []
    return FakeRepository


async def blocks_of(data: bytes, sizes: Iterable[int]) -> AsyncIterator[bytes]:
    sizes = itertools.cycle(sizes)
    at = 0
    while at < len(data):
        size = next(sizes)
        yield data[at : at + size]
        at += size


async def run_filter(body: bytes, sizes: Iterable[int] = (7, 300, 1), **kwargs: Any) -> Any:
    out: list[bytes] = []
    report = await service.filter_records(
        FakePool(),  # type: ignore[arg-type]
        blocks_of(body, sizes),
        purpose="ai.training",
        at=day(10),
        on_eligible=out.append,
        **kwargs,
    )
    return report, b"".join(out)


async def test_the_filter_hands_back_eligible_lines_byte_for_byte(
    fake_db: type[FakeRepository],
) -> None:
    lines = [
        line("m1", "gone"),  # withdrawn
        line("m2", "in") + b"\r",  # a CRLF line stays as sent
        b"",  # blank lines are skipped
        line("m3", "nobody"),  # default-on in the US
        b"   ",
        line("m4", "gone", "user.contact"),
        line("m5", "nobody", jurisdiction="DE"),  # no rule for DE
        line("m6", "in", "user.contact"),
    ]
    body = b"\n".join(lines)  # the last line has no terminator
    report, out = await run_filter(body, block_lines=2)
    assert out == b"".join(x + b"\n" for x in (lines[1], lines[3], lines[7]))
    summary = report.summary
    assert (summary.records, summary.eligible, summary.excluded) == (6, 3, 3)
    assert dict(summary.excluded_by_reason) == {"withdrawn": 2, "no_rule": 1}
    assert [e.record_id for e in summary.sample_excluded] == ["m1", "m4", "m5"]
    assert [(r.policy_id, r.version) for r in report.readings] == [("us-default", "1")]
    # Each subject's history is asked for once, in one query per block.
    asked = [s for q in fake_db.queries for s in q]
    assert sorted(asked) == ["gone", "in", "nobody"]


async def test_one_history_query_per_block_of_lines(fake_db: type[FakeRepository]) -> None:
    rng = random.Random(3)
    subjects = [f"u{i}" for i in range(300)]
    body = b"".join(line(f"m{i}", rng.choice(subjects)) + b"\n" for i in range(2_000))
    report, out = await run_filter(body, sizes=(4096,), block_lines=500)
    assert 1 <= len(fake_db.queries) <= 4  # 2,000 lines in blocks of at least 500
    asked = [s for q in fake_db.queries for s in q]
    assert len(asked) == len(set(asked)), "a subject is asked for once"
    assert set(asked) == {s for s in subjects if f'"{s}"'.encode() in body}
    assert report.summary.eligible == 2_000 and out == body
    assert report.engine_runs == 1  # nobody has events: one pair, one policy


async def test_a_bad_line_is_named(fake_db: type[FakeRepository]) -> None:
    body = line("m1", "in") + b"\n" + line("m2", "not valid!") + b"\n"
    with pytest.raises(LineError) as caught:
        await run_filter(body)
    assert caught.value.line == 2 and caught.value.errors[0].field == "subject_id"
    with pytest.raises(LineTooLong) as too_long:
        await run_filter(line("m1", "in") + b"\n" + b"x" * 20_000, sizes=(1000,))
    assert too_long.value.line == 2


async def test_nothing_speaks_nothing_passes(fake_db: type[FakeRepository]) -> None:
    fake_db.versions = published(ANALYTICS)
    report, out = await run_filter(line("m1", "in") + b"\n" + line("m2", "x") + b"\n")
    assert out == b"" and report.readings == ()
    assert dict(report.summary.excluded_by_reason) == {NO_POLICY: 2}


def test_module_exports() -> None:
    assert set(preflight.__all__) <= set(dir(preflight))
