"""Findings: what the rules, read now, say of every use of a subject's records. Pure.

A *use* is a subject's records of one category in one sealed dataset version
(``SubjectUse``), used at the version's time of use for its purpose. Each policy judges
the uses it speaks to (a rule of it names a purpose covering the use's) under its reading
in force at the time of use, as published now:

- **improper use** (severity ``destroy_required``): the engine finds the use was not
  eligible then. Every model trained on it is tainted, whatever happens later.
- **later withdrawal** (severity from the governing rule): the use was eligible then, and a
  withdrawal effective afterwards reaches it.

Each use yields ``Contribution``\\ s to findings; a finding is the sum of its
contributions (``aggregate``). Identity (``FindingCause.finding_id``) comes from the cause
only, never from counts or arrival order:

- a later withdrawal is caused by one withdrawal event: (dataset version, policy version,
  severity, rule, the withdrawal);
- an improper use is caused by a reading of the rules meeting a snapshot: (dataset
  version, policy version, rule, the engine's reason). It aggregates every subject the
  reading excludes; the deciding consent events (withdrawals before the snapshot, grants
  by a mechanism the rule does not accept) are listed as evidence, and adding one more
  subject changes the finding's counts, not its identity.

So the findings are a function of (uses, consent histories, policy versions): replaying
the same facts in any order yields the same findings, and a finding the facts no longer
support (a new reading, a late grant) has no contribution left and is retracted.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from uuid import UUID, uuid5

from contracts.base import DatasetRef
from contracts.events import (
    ConsentEvent,
    ConsentState,
    DatasetFinding,
    FindingReason,
    FindingStatus,
    Severity,
)
from contracts.policy import PolicyDocument, PolicyRule, WithdrawalRequires
from contracts.vocabulary import ConsentMechanism
from services.eligibility import (
    Reason,
    Use,
    covers,
    evaluate,
    policy_in_force,
    withdrawal_requirement,
)

__all__ = [
    "EVENT_SAMPLE_SIZE",
    "FINDING_NAMESPACE",
    "IMPROPER_USE_SEVERITY",
    "SAMPLE_SIZE",
    "Contribution",
    "FindingCause",
    "FindingTotals",
    "PolicyBook",
    "SubjectUse",
    "aggregate",
    "finding_body",
    "grant_changes_nothing",
    "judge",
    "totals",
    "withdrawal_totals",
]

FINDING_NAMESPACE = UUID("2b0c6c1e-8a3f-4d5b-b7e4-9f0a1d2c3e4f")
SAMPLE_SIZE = 20
"""Record ids a finding (and each contribution) lists: the smallest, so a sample is a
function of the set, not of the order records arrived in."""
EVENT_SAMPLE_SIZE = 100
"""Deciding consent events an improper-use finding lists as evidence."""
IMPROPER_USE_SEVERITY = Severity.DESTROY_REQUIRED
"""DESIGN §3: a record used when it was not eligible taints every model downstream."""

_SEVERITY = {
    WithdrawalRequires.DESTROY: Severity.DESTROY_REQUIRED,
    WithdrawalRequires.RETRAIN: Severity.RETRAIN_REQUIRED,
    WithdrawalRequires.EXCLUDE_FROM_FUTURE: Severity.EXCLUDE_FROM_FUTURE,
}


@dataclass(frozen=True, slots=True)
class SubjectUse:
    """A subject's records of one category (and jurisdiction) in one sealed dataset version."""

    dataset_version_id: int
    dataset: DatasetRef
    purpose: str
    sealed_at: datetime
    used_at: datetime
    subject_id: str
    category: str
    jurisdiction: str
    records: int
    sample: tuple[str, ...]
    """The smallest ``SAMPLE_SIZE`` record ids, sorted."""

    def use(self) -> Use:
        return Use(
            subject_id=self.subject_id,
            jurisdiction=self.jurisdiction,
            purpose=self.purpose,
            category=self.category,
            used_at=self.used_at,
        )


@dataclass(frozen=True)
class FindingCause:
    """Everything that identifies a finding and does not change with its counts."""

    dataset_version_id: int
    dataset: DatasetRef
    policy_id: str
    policy_version: str
    reason: FindingReason
    severity: Severity
    rule_id: str | None
    detail: str
    """Improper use: the engine's reason. Later withdrawal: the withdrawal event id."""
    rule: str
    """The rule that decided, as legal wrote it (the finding's ``rule``)."""
    detected_at: datetime
    """When the system could first know: the latest of the seal, the policy version's
    publication and (later withdrawal) the withdrawal's recording. Never a deciding
    event's time for an improper use: that would make it depend on which subjects joined."""
    cause_event_ids: tuple[UUID, ...] = ()
    """Later withdrawal: the withdrawal. Improper use: empty (events are evidence)."""

    @cached_property
    def finding_id(self) -> UUID:
        return uuid5(
            FINDING_NAMESPACE,
            "|".join(
                (
                    self.dataset.key,
                    self.policy_id,
                    self.policy_version,
                    self.reason.value,
                    self.severity.value,
                    self.rule_id or "",
                    self.detail,
                )
            ),
        )


@dataclass(frozen=True, slots=True)
class Contribution:
    """What one use adds to one finding."""

    cause: FindingCause
    subject_id: str
    category: str
    records: int
    sample: tuple[str, ...]
    events: tuple[UUID, ...] = ()
    """The consent events that decided (evidence)."""

    @property
    def key(self) -> tuple[str, int, UUID, str]:
        """Unique per contribution: (subject, dataset version, finding, category)."""
        return (
            self.subject_id,
            self.cause.dataset_version_id,
            self.cause.finding_id,
            self.category,
        )


@dataclass(frozen=True)
class PolicyBook:
    """Every policy version the registry knows, grouped by policy id, with memoised readings."""

    versions: Sequence[tuple[PolicyDocument, datetime]]
    _by_policy: dict[str, list[tuple[PolicyDocument, datetime]]] = field(
        init=False, default_factory=dict
    )
    _published: dict[tuple[str, str], datetime] = field(init=False, default_factory=dict)
    _readings: dict[tuple[str, datetime], PolicyDocument | None] = field(
        init=False, default_factory=dict
    )
    _speaks: dict[tuple[str, str], bool] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        for document, published_at in self.versions:
            self._by_policy.setdefault(document.policy_id, []).append((document, published_at))
            key = (document.policy_id, document.version)
            self._published[key] = max(published_at, self._published.get(key, published_at))

    @property
    def policy_ids(self) -> list[str]:
        return sorted(self._by_policy)

    def reading(self, policy_id: str, at: datetime) -> PolicyDocument | None:
        """The policy's reading in force at ``at``, as published now."""
        key = (policy_id, at)
        if key not in self._readings:
            self._readings[key] = policy_in_force(self._by_policy[policy_id], at)
        return self._readings[key]

    def published_at(self, policy: PolicyDocument) -> datetime:
        return self._published[(policy.policy_id, policy.version)]

    def speaks_to(self, policy_id: str, purpose: str) -> bool:
        """Whether any version of the policy has a rule for a purpose covering ``purpose``."""
        key = (policy_id, purpose)
        if key not in self._speaks:
            self._speaks[key] = any(
                covers(p, purpose)
                for document, _ in self._by_policy[policy_id]
                for rule in document.rules
                for p in rule.purposes
            )
        return self._speaks[key]

    def readings_for(self, use: SubjectUse) -> list[PolicyDocument]:
        """The readings that judge ``use``: one per policy that speaks to its purpose."""
        readings = (
            self.reading(policy_id, use.used_at)
            for policy_id in self.policy_ids
            if self.speaks_to(policy_id, use.purpose)
        )
        return [r for r in readings if r is not None]


def grant_changes_nothing(event: ConsentEvent, latest_use: datetime | None) -> bool:
    """Whether ``judge`` would say the same of every sealed use with ``event`` in its
    subject's history as without it: a grant effective after the latest time of use of
    any sealed version (``latest_use``; None when none is sealed). Eligibility is read at
    the time of use, and afterwards only a withdrawal reaches a use (tested against
    ``judge``). A version sealed later is judged whole, with every event, at its seal."""
    return event.state is ConsentState.GRANTED and (
        latest_use is None or event.effective_at > latest_use
    )


def judge(
    uses: Iterable[SubjectUse],
    histories: Mapping[str, Sequence[ConsentEvent]],
    book: PolicyBook,
) -> list[Contribution]:
    """Every contribution the uses make to findings, given each subject's whole history.

    The engine runs once per *shape* of a judgement, not per use: (policy version, the
    use's purpose, time of use, jurisdiction and category, and the subject's history as the
    engine sees it, see ``_shape``). Subjects with the same shape (every subject without
    history; every subject granted once before the use, then withdrawn after it) share
    one verdict, bound to their own events and records afterwards.
    """
    contributions: list[Contribution] = []
    verdicts: dict[tuple[object, ...], _Verdict] = {}
    ordered: dict[str, tuple[ConsentEvent, ...]] = {}
    causes: dict[tuple[object, ...], FindingCause] = {}
    # A subject's uses share their history, a version's uses their time of use and
    # purpose: shapes and readings are worked out once per (subject, time of use) and
    # (purpose, time of use), and a shape is known by a number (hashing the tuple of
    # tuples for every lookup cost more than the lookup).
    shapes: dict[tuple[str, datetime], int] = {}
    shape_numbers: dict[tuple[_EventShape, ...], int] = {}
    readings: dict[tuple[str, datetime], list[PolicyDocument]] = {}
    for use in uses:
        history = ordered.get(use.subject_id)
        if history is None:
            history = ordered[use.subject_id] = tuple(
                sorted(histories.get(use.subject_id, ()), key=_event_order)
            )
        shape = shapes.get((use.subject_id, use.used_at))
        if shape is None:
            shape = shapes[(use.subject_id, use.used_at)] = shape_numbers.setdefault(
                _shape(history, use.used_at), len(shape_numbers)
            )
        policies = readings.get((use.purpose, use.used_at))
        if policies is None:
            policies = readings[(use.purpose, use.used_at)] = book.readings_for(use)
        for policy in policies:
            key = (
                policy.policy_id,
                policy.version,
                use.purpose,
                use.used_at,
                use.jurisdiction,
                use.category,
                shape,
            )
            verdict = verdicts.get(key)
            if verdict is None:
                verdict = verdicts[key] = _verdict(use, history, use.used_at, policy)
            if verdict.improper is None and not verdict.withdrawals:
                continue  # eligible, and nothing since reaches it: no contribution
            contributions.extend(_bind(verdict, use, history, policy, book, causes))
    return contributions


@dataclass(frozen=True, slots=True)
class _Verdict:
    """What the engine said of one shape, with events named by their position in the
    subject's ordered history."""

    improper: tuple[str | None, Reason, tuple[int, ...], str] | None
    """Not eligible: (rule id, reason, the deciding events, the rule's text)."""
    withdrawals: tuple[tuple[int, Severity, str | None, str], ...] = ()
    """Eligible: each later withdrawal that reaches the use and requires something
    (event, severity, rule id, the rule's text)."""


_CANONICAL_SUBJECT = "~"
_EventShape = tuple[bool, ConsentState, ConsentMechanism, str, tuple[str, ...]]
"""Effective by the time of use, state, mechanism, purpose, categories."""


def _event_order(event: ConsentEvent) -> tuple[datetime, datetime, UUID]:
    return (event.effective_at, event.recorded_at, event.consent_event_id)


def _shape(history: Sequence[ConsentEvent], used_at: datetime) -> tuple[_EventShape, ...]:
    """The history as the engine reads it for a use at ``used_at`` (with every recorded
    fact known): the order of the events, whether each is effective by the time of use,
    and what each says (state, mechanism, purpose, categories). Subject, ids and times
    beyond that order take no part in a verdict (they are bound in afterwards)."""
    return tuple(
        (e.effective_at <= used_at, e.state, e.mechanism, e.purpose, e.data_categories)
        for e in history
    )


def _verdict(
    use: SubjectUse, history: Sequence[ConsentEvent], used_at: datetime, policy: PolicyDocument
) -> _Verdict:
    """Ask the engine about the canonical form of ``history`` (ordered, as ``_shape``
    reads it): event ``i`` gets id ``UUID(int=i + 1)``, the subject ``~`` and times that
    keep the order and the side of the time of use, so that the verdict holds for every
    history of the same shape."""
    before = sum(1 for e in history if e.effective_at <= used_at)
    canonical = []
    for i, event in enumerate(history):
        at = used_at + timedelta(microseconds=i - before + (0 if i < before else 1))
        canonical.append(
            event.model_copy(
                update={
                    "consent_event_id": UUID(int=i + 1),
                    "subject_id": _CANONICAL_SUBJECT,
                    "effective_at": at,
                    "recorded_at": at,
                }
            )
        )
    probe = Use(
        subject_id=_CANONICAL_SUBJECT,
        jurisdiction=use.jurisdiction,
        purpose=use.purpose,
        category=use.category,
        used_at=use.used_at,
    )
    decision = evaluate(canonical, policy, probe)
    if not decision.eligible:
        deciding = tuple(e.int - 1 for e in decision.consent_event_ids)
        text = _improper_rule_text(policy, decision.rule_id, decision.reason)
        return _Verdict((decision.rule_id, decision.reason, deciding, text))
    withdrawals = []
    for i, event in enumerate(canonical):
        if event.state is not ConsentState.WITHDRAWN:
            continue
        outcome = withdrawal_requirement(policy, probe, event)
        if outcome is None or (severity := _SEVERITY.get(outcome.requires)) is None:
            continue  # not reached, or the rule requires nothing of trained models
        text = _withdrawal_rule_text(policy, outcome.rule_id, outcome.requires, outcome.erasure)
        withdrawals.append((i, severity, outcome.rule_id, text))
    return _Verdict(None, tuple(withdrawals))


def _bind(
    verdict: _Verdict,
    use: SubjectUse,
    history: Sequence[ConsentEvent],
    policy: PolicyDocument,
    book: PolicyBook,
    causes: dict[tuple[object, ...], FindingCause],
) -> list[Contribution]:
    """The verdict's contributions for this use's subject, events and records."""
    published_at = book.published_at(policy)
    if verdict.improper is not None:
        rule_id, reason, deciding, text = verdict.improper
        key = (use.dataset_version_id, policy.policy_id, policy.version, rule_id, reason)
        cause = causes.get(key)
        if cause is None:
            cause = causes[key] = FindingCause(
                dataset_version_id=use.dataset_version_id,
                dataset=use.dataset,
                policy_id=policy.policy_id,
                policy_version=policy.version,
                reason=FindingReason.IMPROPER_USE,
                severity=IMPROPER_USE_SEVERITY,
                rule_id=rule_id,
                detail=reason.value,
                rule=text,
                detected_at=max(use.sealed_at, published_at),
            )
        events = tuple(sorted(history[i].consent_event_id for i in deciding))
        return [Contribution(cause, use.subject_id, use.category, use.records, use.sample, events)]
    contributions = []
    for i, severity, rule_id, text in verdict.withdrawals:
        event = history[i]
        withdrawal = (
            use.dataset_version_id,
            policy.policy_id,
            policy.version,
            severity,
            rule_id,
            event.consent_event_id,
        )
        cause = causes.get(withdrawal)
        if cause is None:  # one per finding, not per use: its id is a uuid5
            cause = causes[withdrawal] = FindingCause(
                dataset_version_id=use.dataset_version_id,
                dataset=use.dataset,
                policy_id=policy.policy_id,
                policy_version=policy.version,
                reason=FindingReason.LATER_WITHDRAWAL,
                severity=severity,
                rule_id=rule_id,
                detail=str(event.consent_event_id),
                rule=text,
                detected_at=max(use.sealed_at, published_at, event.recorded_at),
                cause_event_ids=(event.consent_event_id,),
            )
        contributions.append(
            Contribution(
                cause,
                use.subject_id,
                use.category,
                use.records,
                use.sample,
                (event.consent_event_id,),
            )
        )
    return contributions


def _rule(policy: PolicyDocument, rule_id: str | None) -> PolicyRule | None:
    return next((r for r in policy.rules if r.id == rule_id), None)


def _improper_rule_text(policy: PolicyDocument, rule_id: str | None, reason: Reason) -> str:
    rule = _rule(policy, rule_id)
    if rule is None:
        return f"no rule of policy {policy.policy_id} version {policy.version} governs the use"
    text = f"{rule.id} (not eligible: {reason.value})"
    return f"{text}: {rule.description}"[:4096] if rule.description else text


def _withdrawal_rule_text(
    policy: PolicyDocument, rule_id: str | None, requires: WithdrawalRequires, erasure: bool
) -> str:
    rule = _rule(policy, rule_id)
    if rule is None:
        return "no rule governs this use: a withdrawal excludes the data from future training"
    text = f"{rule.id} (withdrawal requires {requires.value}{' + erasure' if erasure else ''})"
    return f"{text}: {rule.description}"[:4096] if rule.description else text


# --- aggregation -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FindingTotals:
    """A finding's aggregate over its contributions."""

    records: int
    subjects: int
    sample: tuple[str, ...]
    events: tuple[UUID, ...]


def finding_body(
    cause: FindingCause, totals: FindingTotals | None, previous: DatasetFinding | None = None
) -> DatasetFinding:
    """The finding as published. Without contributions (``totals`` None) it is retracted
    and keeps the counts it had, so a retraction says what it takes back."""
    if totals is None:
        if previous is None:
            raise ValueError("a finding without contributions needs its previous state")
        return previous.model_copy(update={"status": FindingStatus.RETRACTED})
    improper = cause.reason is FindingReason.IMPROPER_USE
    return DatasetFinding(
        finding_id=cause.finding_id,
        status=FindingStatus.ACTIVE,
        dataset=cause.dataset,
        severity=cause.severity,
        reason=cause.reason,
        policy_id=cause.policy_id,
        policy_version=cause.policy_version,
        rule=cause.rule,
        affected_records=totals.records,
        affected_subjects=totals.subjects,
        sample_record_ids=totals.sample,
        cause_event_ids=totals.events[:EVENT_SAMPLE_SIZE] if improper else cause.cause_event_ids,
        detected_at=cause.detected_at,
    )


def aggregate(contributions: Iterable[Contribution]) -> dict[UUID, DatasetFinding]:
    """The active findings the contributions add up to (what storage maintains)."""
    causes: dict[UUID, FindingCause] = {}
    grouped: dict[UUID, list[Contribution]] = defaultdict(list)
    for c in contributions:
        causes.setdefault(c.cause.finding_id, c.cause)
        grouped[c.cause.finding_id].append(c)
    return {fid: finding_body(causes[fid], totals(grouped[fid])) for fid in sorted(grouped)}


def withdrawal_totals(
    contributions: Iterable[Contribution], finding_ids: Iterable[UUID]
) -> dict[UUID, FindingTotals]:
    """The totals of the later-withdrawal findings among ``finding_ids``, from
    ``contributions`` alone: every contribution to such a finding is its one withdrawal's
    subject's, so a judgement of all that subject's uses holds all of them (storage need not
    add them up again). Other findings gather subjects, and are absent."""
    wanted = set(finding_ids)
    grouped: dict[UUID, list[Contribution]] = defaultdict(list)
    for c in contributions:
        if c.cause.reason is FindingReason.LATER_WITHDRAWAL and c.cause.finding_id in wanted:
            grouped[c.cause.finding_id].append(c)
    return {finding_id: totals(mine) for finding_id, mine in grouped.items()}


def totals(contributions: Sequence[Contribution]) -> FindingTotals:
    return FindingTotals(
        records=sum(c.records for c in contributions),
        subjects=len({c.subject_id for c in contributions}),
        sample=tuple(heapq.nsmallest(SAMPLE_SIZE, {r for c in contributions for r in c.sample})),
        events=tuple(
            heapq.nsmallest(EVENT_SAMPLE_SIZE, {e for c in contributions for e in c.events})
        ),
    )
