"""Eligibility of records for a purpose at a time, under every policy at once. Pure.

Several policies (by ``policy_id``) coexist and each is judged on its own: for a use at T,
the reading of policy X is ``policy_in_force(versions of X, T, known_at=…)``. A reading
*speaks to* a use when one of its rules has a purpose covering the use's purpose, whatever
the rule's time window and jurisdictions; a reading that does not speak to it gives no
decision. A use is eligible when every reading that speaks to it decides eligible, and
when none does it is **not** eligible (``no_policy``): no rule written down, no use.

Two ways in:

- ``DecisionCache`` for the pre-flight filter (millions of records, one purpose and one
  time): histories are learnt per subject, decisions are cached per (subject, category,
  jurisdiction), and for subjects without any consent event per (jurisdiction, category),
  since the engine then sees nothing of the subject but those two (and the fixed purpose
  and time), so it runs once per pair and policy.
- ``explain_use`` for one record: every decision in full, with the deciding events.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from contracts.events import ConsentEvent
from contracts.policy import PolicyDocument, PolicyRule
from services.eligibility import Decision, Use, covers, evaluate, policy_in_force
from services.registry.domain.snapshots import RecordRow

__all__ = [
    "MAX_CACHED_SUBJECTS",
    "NO_POLICY",
    "SAMPLE_EXCLUDED",
    "DecisionCache",
    "ExcludedRecord",
    "ExplainedDecision",
    "FilterSummary",
    "PolicyReading",
    "UseExplanation",
    "Verdict",
    "combine",
    "explain_use",
    "history_known_at",
    "judge",
    "readings_in_force",
    "speaks_to",
]

NO_POLICY = "no_policy"
"""The reason a use is excluded when no policy in force speaks to its purpose."""
SAMPLE_EXCLUDED = 20
"""Excluded records a filter summary names."""
MAX_CACHED_SUBJECTS = 200_000
"""Subjects whose histories a ``DecisionCache`` keeps; past it, it forgets them all (and
their decisions) and learns them again as they come: memory stays bounded for a body of
any size, and the answers stay the same."""


@dataclass(frozen=True, slots=True)
class PolicyReading:
    """One policy's version in force for a use, and when it was published."""

    document: PolicyDocument
    published_at: datetime

    @property
    def policy_id(self) -> str:
        return self.document.policy_id

    @property
    def version(self) -> str:
        return self.document.version


def speaks_to(policy: PolicyDocument, purpose: str) -> bool:
    """Whether a rule of ``policy`` has a purpose covering ``purpose`` (any window, any
    jurisdiction, any category)."""
    return any(covers(p, purpose) for rule in policy.rules for p in rule.purposes)


def readings_in_force(
    versions: Iterable[tuple[PolicyDocument, datetime]],
    purpose: str,
    at: datetime,
    *,
    known_at: datetime | None = None,
) -> list[PolicyReading]:
    """Each policy's reading in force at ``at`` (as published by ``known_at``) that speaks
    to ``purpose``, by policy id."""
    by_policy: dict[str, list[tuple[PolicyDocument, datetime]]] = defaultdict(list)
    for document, published_at in versions:
        by_policy[document.policy_id].append((document, published_at))
    readings = []
    for policy_id in sorted(by_policy):
        candidates = by_policy[policy_id]
        reading = policy_in_force(candidates, at, known_at=known_at)
        if reading is None or not speaks_to(reading, purpose):
            continue
        # policy_in_force returns one of its inputs: find when that one was published.
        published = max(p for d, p in candidates if d is reading)
        readings.append(PolicyReading(reading, published))
    return readings


@dataclass(frozen=True, slots=True)
class Verdict:
    """All policies' answer for one use."""

    eligible: bool
    reason: str
    """The first excluding decision's reason (by policy id), ``no_policy`` when no policy
    speaks to the use; when eligible, the first decision's (``consented`` or
    ``default_consent``)."""
    policy_id: str | None
    """The policy whose decision gave ``reason``; None for ``no_policy``."""
    rule_id: str | None
    decisions: tuple[Decision, ...]
    """One per policy that speaks to the use, by policy id."""


def combine(decisions: Sequence[Decision]) -> Verdict:
    """Eligible only when there is a decision and every one is eligible."""
    if not decisions:
        return Verdict(False, NO_POLICY, None, None, ())
    deciding = next((d for d in decisions if not d.eligible), decisions[0])
    return Verdict(
        eligible=deciding.eligible,
        reason=deciding.reason.value,
        policy_id=deciding.policy_id,
        rule_id=deciding.rule_id,
        decisions=tuple(decisions),
    )


def judge(
    history: Sequence[ConsentEvent],
    readings: Sequence[PolicyReading],
    use: Use,
    *,
    known_at: datetime | None = None,
) -> Verdict:
    """The verdict of every reading on ``use`` (readings that speak to its purpose)."""
    return combine([evaluate(history, r.document, use, known_at=known_at) for r in readings])


# --- the pre-flight filter --------------------------------------------------------------


class DecisionCache:
    """Verdicts for many records under one purpose and time, each computed once.

    Per block of records: ``unseen`` names the subjects whose histories are not known yet,
    the caller fetches those (one query) and hands them to ``learn``, then ``decide`` each
    record. Deciding for a subject never learnt is an error, not a guess.
    """

    def __init__(
        self,
        readings: Sequence[PolicyReading],
        purpose: str,
        at: datetime,
        *,
        known_at: datetime | None = None,
        max_subjects: int = MAX_CACHED_SUBJECTS,
    ) -> None:
        self.readings = tuple(readings)
        self.purpose = purpose
        self.at = at
        self.known_at = known_at
        self._max_subjects = max_subjects
        self._histories: dict[str, tuple[ConsentEvent, ...]] = {}
        self._without: set[str] = set()
        self._by_subject: dict[tuple[str, str, str], Verdict] = {}
        self._by_pair: dict[tuple[str, str], Verdict] = {}
        self.engine_runs = 0
        """``evaluate`` calls so far (one per policy per verdict computed)."""
        self.forgotten = 0
        """Times the subjects were forgotten to bound memory."""

    def unseen(self, subject_ids: Iterable[str]) -> list[str]:
        """Subjects not learnt yet, each once, in order of first appearance."""
        if len(self._histories) + len(self._without) >= self._max_subjects:
            self._forget()
        histories, without = self._histories, self._without
        return list(
            dict.fromkeys(s for s in subject_ids if s not in without and s not in histories)
        )

    def learn(
        self, subject_ids: Iterable[str], histories: Mapping[str, Sequence[ConsentEvent]]
    ) -> None:
        """The histories of ``subject_ids``; a subject absent from ``histories`` (or with
        an empty one) has no consent event at all.

        Only the events the engine could ever find relevant are kept: the subject's, for a
        purpose covering this one, effective by the time of use and recorded by
        ``known_at``. A subject left with none is decided as one without events (the
        engine ignores every other event, so the decision is the same)."""
        purpose, at, known_at = self.purpose, self.at, self.known_at
        for subject_id in subject_ids:
            events = tuple(
                e
                for e in histories.get(subject_id, ())
                if e.subject_id == subject_id
                and e.effective_at <= at
                and covers(e.purpose, purpose)
                and (known_at is None or e.recorded_at <= known_at)
            )
            if events:
                self._histories[subject_id] = events
                self._without.discard(subject_id)
            else:
                self._without.add(subject_id)

    def decide(self, subject_id: str, category: str, jurisdiction: str) -> Verdict:
        history = self._histories.get(subject_id)
        if history is None:
            if subject_id not in self._without:
                raise LookupError(f"the consent history of subject {subject_id!r} is not learnt")
            pair = (jurisdiction, category)
            verdict = self._by_pair.get(pair)
            if verdict is None:
                verdict = self._by_pair[pair] = self._judge((), subject_id, category, jurisdiction)
            return verdict
        key = (subject_id, category, jurisdiction)
        verdict = self._by_subject.get(key)
        if verdict is None:
            verdict = self._by_subject[key] = self._judge(
                history, subject_id, category, jurisdiction
            )
        return verdict

    def decide_rows(self, rows: Sequence[RecordRow]) -> list[Verdict]:
        """``decide`` for each validated record row, in order: the filter's inner loop,
        with two dictionary lookups per record once its verdict is cached."""
        without, by_subject, by_pair = self._without, self._by_subject, self._by_pair
        decide = self.decide
        verdicts: list[Verdict] = []
        append = verdicts.append
        for _, _, _, _, subject_id, category, jurisdiction, _, _ in rows:
            if subject_id in without:
                verdict = by_pair.get((jurisdiction, category))
            else:  # a hit means it was learnt (forgetting clears both)
                verdict = by_subject.get((subject_id, category, jurisdiction))
            append(verdict or decide(subject_id, category, jurisdiction))
        return verdicts

    def _judge(
        self, history: Sequence[ConsentEvent], subject_id: str, category: str, jurisdiction: str
    ) -> Verdict:
        self.engine_runs += len(self.readings)
        use = Use(
            subject_id=subject_id,
            jurisdiction=jurisdiction,
            purpose=self.purpose,
            category=category,
            used_at=self.at,
        )
        return judge(history, self.readings, use, known_at=self.known_at)

    def _forget(self) -> None:
        self._histories.clear()
        self._without.clear()
        self._by_subject.clear()
        self.forgotten += 1


@dataclass(frozen=True, slots=True)
class ExcludedRecord:
    source_system: str
    record_id: str
    subject_id: str
    category: str
    jurisdiction: str
    reason: str
    policy_id: str | None
    rule_id: str | None


@dataclass
class FilterSummary:
    """Counts of a filter run, and a sample of what it excluded."""

    records: int = 0
    eligible: int = 0
    excluded_by_reason: Counter[str] = field(default_factory=Counter)
    sample_excluded: list[ExcludedRecord] = field(default_factory=list)

    @property
    def excluded(self) -> int:
        return self.records - self.eligible

    def count(
        self,
        verdict: Verdict,
        source_system: str,
        record_id: str,
        subject_id: str,
        category: str,
        jurisdiction: str,
    ) -> None:
        self.records += 1
        if verdict.eligible:
            self.eligible += 1
            return
        self.excluded_by_reason[verdict.reason] += 1
        if len(self.sample_excluded) < SAMPLE_EXCLUDED:
            self.sample_excluded.append(
                ExcludedRecord(
                    source_system=source_system,
                    record_id=record_id,
                    subject_id=subject_id,
                    category=category,
                    jurisdiction=jurisdiction,
                    reason=verdict.reason,
                    policy_id=verdict.policy_id,
                    rule_id=verdict.rule_id,
                )
            )

    def count_rows(self, rows: Sequence[RecordRow], verdicts: Sequence[Verdict]) -> None:
        """``count`` for a block of validated rows and their verdicts."""
        excluded = [(row, v) for row, v in zip(rows, verdicts, strict=True) if not v.eligible]
        self.records += len(rows)
        self.eligible += len(rows) - len(excluded)
        self.excluded_by_reason.update(v.reason for _, v in excluded)
        for row, verdict in excluded[: SAMPLE_EXCLUDED - len(self.sample_excluded)]:
            _, _, source_system, record_id, subject_id, category, jurisdiction, _, _ = row
            self.sample_excluded.append(
                ExcludedRecord(
                    source_system=source_system,
                    record_id=record_id,
                    subject_id=subject_id,
                    category=category,
                    jurisdiction=jurisdiction,
                    reason=verdict.reason,
                    policy_id=verdict.policy_id,
                    rule_id=verdict.rule_id,
                )
            )

    def as_json(
        self, purpose: str, at: datetime, readings: Sequence[PolicyReading]
    ) -> dict[str, Any]:
        """The ``?report=summary`` answer."""
        return {
            "purpose": purpose,
            "at": at.isoformat(),
            "policies": [{"policy_id": r.policy_id, "version": r.version} for r in readings],
            "records": self.records,
            "eligible": self.eligible,
            "excluded": self.excluded,
            "excluded_by_reason": dict(sorted(self.excluded_by_reason.items())),
            "sample_excluded": [
                {
                    "source_system": e.source_system,
                    "record_id": e.record_id,
                    "subject_id": e.subject_id,
                    "category": e.category,
                    "jurisdiction": e.jurisdiction,
                    "reason": e.reason,
                    "policy_id": e.policy_id,
                    "rule_id": e.rule_id,
                }
                for e in self.sample_excluded
            ],
        }


# --- explaining one record --------------------------------------------------------------


def history_known_at(
    history: Iterable[ConsentEvent], known_at: datetime | None
) -> list[ConsentEvent]:
    """The events recorded by ``known_at`` (all when None), oldest first (effective time,
    then recorded time, then id)."""
    return sorted(
        (e for e in history if known_at is None or e.recorded_at <= known_at),
        key=lambda e: (e.effective_at, e.recorded_at, e.consent_event_id),
    )


@dataclass(frozen=True, slots=True)
class ExplainedDecision:
    reading: PolicyReading
    decision: Decision
    rule: PolicyRule | None
    consent_events: tuple[ConsentEvent, ...]
    """The deciding events, in full."""


@dataclass(frozen=True, slots=True)
class UseExplanation:
    use: Use
    known_at: datetime | None
    verdict: Verdict
    decisions: tuple[ExplainedDecision, ...]
    consent_history: tuple[ConsentEvent, ...]
    """Every event of the subject as known at ``known_at``, oldest first."""


def explain_use(
    history: Iterable[ConsentEvent],
    versions: Iterable[tuple[PolicyDocument, datetime]],
    use: Use,
    *,
    known_at: datetime | None = None,
) -> UseExplanation:
    """Why ``use`` is (not) eligible, under every policy that speaks to it, as known at
    ``known_at``: events recorded and policy versions published later are ignored."""
    known = history_known_at((e for e in history if e.subject_id == use.subject_id), known_at)
    readings = readings_in_force(versions, use.purpose, use.used_at, known_at=known_at)
    verdict = judge(known, readings, use, known_at=known_at)
    by_id = {e.consent_event_id: e for e in known}
    decisions = tuple(
        ExplainedDecision(
            reading=reading,
            decision=decision,
            rule=next((r for r in reading.document.rules if r.id == decision.rule_id), None),
            consent_events=tuple(by_id[i] for i in decision.consent_event_ids if i in by_id),
        )
        for reading, decision in zip(readings, verdict.decisions, strict=True)
    )
    return UseExplanation(
        use=use,
        known_at=known_at,
        verdict=verdict,
        decisions=decisions,
        consent_history=tuple(known),
    )
