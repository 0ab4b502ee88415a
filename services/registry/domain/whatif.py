"""What-if withdrawal: which dataset versions would get findings, changing nothing. Pure.

"If subject S (or everybody's category C, or everybody in jurisdiction J) withdrew now,
which dataset versions would get findings, and how severe?" is answered with the very
computation that makes real findings (``domain.findings.judge``), run twice on the same
uses: once with the subjects' consent histories as they are (the *baseline*), once with,
added to each history, the **hypothetical withdrawals** the scope implies (state
``withdrawn``, mechanism ``opt_out``, effective at ``at``). A use is reported when the
hypothetical judgement gives it a contribution **more severe than its most severe baseline
contribution** (or it has none): a new finding, or an existing one made worse. A subject
who already withdrew, or whose use was already improper, adds nothing.

Hypothetical withdrawals, per subject, one per purpose the scope reaches (the ``purpose``
asked, or else every purpose the subject's records were used for):

- subject scope: every category of the subject's records in those uses;
- category scope: the category (it reaches the records of that category and below it);
- jurisdiction scope: the categories of the subject's records in that jurisdiction (a
  country covers its subdivisions, ``EU``/``EEA`` their members); only those records'
  uses are judged.

**Aggregation.** Without a consent history, the engine sees nothing of a subject but the
jurisdiction and category of a use (the version fixing purpose and time), and the
hypothetical withdrawal is the same for all of them. So subjects without history are not
judged one by one: each (dataset version, category, jurisdiction) is judged once for a
representative subject (``UseGroup``), and counts scale. Subjects with histories are
judged one by one; the caller bounds how many (``truncated``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID, uuid5

from contracts.base import DatasetRef
from contracts.events import (
    ConsentEvent,
    ConsentEvidence,
    ConsentMechanism,
    ConsentState,
    FindingReason,
    Severity,
)
from contracts.jurisdictions import GROUPS
from services.eligibility import covers
from services.registry.domain.findings import Contribution, PolicyBook, SubjectUse, judge

__all__ = [
    "MAX_EVENT_CATEGORIES",
    "REPRESENTATIVE",
    "SEVERITY_RANK",
    "Change",
    "FindingKind",
    "KindOutcome",
    "Scope",
    "ScopeKind",
    "UseGroup",
    "VersionOutcome",
    "hypothetical_withdrawals",
    "judge_what_if",
    "summarize",
]

WHAT_IF_NAMESPACE = UUID("5d0c2a8e-7b41-4f6a-9c3e-2e8f1b7a4d90")
REPRESENTATIVE = "what-if:representative"
"""The subject id a group of subjects without history is judged as."""
MAX_EVENT_CATEGORIES = 64
"""A consent event names at most 64 categories (the contract); more make more events."""

SEVERITY_RANK: Mapping[Severity, int] = {
    Severity.EXCLUDE_FROM_FUTURE: 0,
    Severity.REVIEW: 1,
    Severity.RETRAIN_REQUIRED: 2,
    Severity.DESTROY_REQUIRED: 3,
}


class ScopeKind(StrEnum):
    SUBJECT = "subject_id"
    CATEGORY = "category"
    JURISDICTION = "jurisdiction"


@dataclass(frozen=True, slots=True)
class Scope:
    """Who would withdraw: one subject, a category, or a jurisdiction."""

    kind: ScopeKind
    value: str

    def jurisdictions(self) -> tuple[str, ...]:
        """Jurisdiction scope: the codes it stands for (a group's members, or itself)."""
        members = GROUPS.get(self.value)
        return tuple(sorted(members)) if members is not None else (self.value,)

    def reaches(self, use: SubjectUse) -> bool:
        if self.kind is ScopeKind.SUBJECT:
            return use.subject_id == self.value
        if self.kind is ScopeKind.CATEGORY:
            return covers(self.value, use.category)
        codes = self.jurisdictions()
        return use.jurisdiction in codes or use.jurisdiction.split("-", 1)[0] in codes


@dataclass(frozen=True, slots=True)
class UseGroup:
    """Subjects without consent history, aggregated: one representative use (its subject
    ``REPRESENTATIVE``, its records the group's total) and how many subjects it stands for."""

    use: SubjectUse
    subjects: int = 0
    """How many distinct subjects; 0 when unknown (the caller counts them after judging,
    see ``summarize``)."""


@dataclass(frozen=True, slots=True)
class FindingKind:
    """What a would-be finding is, without the identity of the (hypothetical) withdrawal:
    real later-withdrawal findings are one per withdrawal event, these are grouped."""

    policy_id: str
    policy_version: str
    reason: FindingReason
    severity: Severity
    rule_id: str | None
    rule: str

    @property
    def order(self) -> tuple[int, str, str, str, str, str]:
        """Most severe first, then by policy and rule."""
        return (
            -SEVERITY_RANK[self.severity],
            self.policy_id,
            self.policy_version,
            self.reason.value,
            self.rule_id or "",
            self.rule,
        )

    @classmethod
    def of(cls, contribution: Contribution) -> FindingKind:
        c = contribution.cause
        return cls(c.policy_id, c.policy_version, c.reason, c.severity, c.rule_id, c.rule)


@dataclass(frozen=True, slots=True)
class Change:
    """A use (or a group of uses) that would get a finding of ``kind``, more severe than
    its most severe finding now (``current``)."""

    dataset_version_id: int
    dataset: DatasetRef
    purpose: str
    used_at: datetime
    subject_id: str | None
    """None for a group of subjects without history."""
    category: str
    jurisdiction: str
    records: int
    subjects: int
    current: Severity | None
    kind: FindingKind


def hypothetical_withdrawals(
    subject_id: str,
    uses: Sequence[SubjectUse],
    scope: Scope,
    *,
    purpose: str | None,
    at: datetime,
    recorded_at: datetime,
) -> list[ConsentEvent]:
    """The withdrawals the scope implies for one subject, given its uses in scope."""
    by_purpose: dict[str, set[str]] = defaultdict(set)
    for use in uses:
        if purpose is not None and not covers(purpose, use.purpose):
            continue
        by_purpose[purpose or use.purpose].add(use.category)
    events = []
    jurisdiction = uses[0].jurisdiction if uses else "ZZ"
    for event_purpose in sorted(by_purpose):
        if scope.kind is ScopeKind.CATEGORY:
            categories = [scope.value]
        else:
            found = by_purpose[event_purpose]
            categories = sorted(c for c in found if not any(o != c and covers(o, c) for o in found))
        for start in range(0, len(categories), MAX_EVENT_CATEGORIES):
            chunk = tuple(categories[start : start + MAX_EVENT_CATEGORIES])
            # Built without validation: the values come from registered records and the
            # engine reads only subject, purpose, categories, state and times.
            events.append(
                ConsentEvent.model_construct(
                    consent_event_id=uuid5(
                        WHAT_IF_NAMESPACE, f"{subject_id}|{event_purpose}|{start}|{at}"
                    ),
                    subject_id=subject_id,
                    jurisdiction=jurisdiction,
                    purpose=event_purpose,
                    data_categories=chunk,
                    state=ConsentState.WITHDRAWN,
                    mechanism=ConsentMechanism.OPT_OUT,
                    policy_version="what-if",
                    effective_at=at,
                    recorded_at=recorded_at,
                    source_system="what-if",
                    evidence=ConsentEvidence.model_construct(collection_point="what-if"),
                    erasure_requested=False,
                )
            )
    return events


UseKey = tuple[int, str, str]
"""(dataset version, subject, category): what a contribution belongs to."""


def _worse(
    use: SubjectUse,
    histories: Mapping[str, Sequence[ConsentEvent]],
    hypothetical: Mapping[str, Sequence[ConsentEvent]],
    book: PolicyBook,
) -> dict[UseKey, tuple[Severity | None, list[FindingKind]]]:
    """Per use, its most severe baseline severity and the kinds of the hypothetical
    contributions more severe than it. The baseline is judged only when the hypothetical
    judgement contributes anything."""
    contributions = judge([use], hypothetical, book)
    if not contributions:
        return {}
    current: dict[UseKey, Severity] = {}
    for c in judge([use], histories, book):
        key = (c.cause.dataset_version_id, c.subject_id, c.category)
        previous = current.get(key)
        if previous is None or SEVERITY_RANK[c.cause.severity] > SEVERITY_RANK[previous]:
            current[key] = c.cause.severity
    worse: dict[UseKey, dict[FindingKind, None]] = defaultdict(dict)
    for c in contributions:
        key = (c.cause.dataset_version_id, c.subject_id, c.category)
        now = current.get(key)
        if now is None or SEVERITY_RANK[c.cause.severity] > SEVERITY_RANK[now]:
            worse[key][FindingKind.of(c)] = None
    return {key: (current.get(key), list(kinds)) for key, kinds in worse.items()}


def _change(
    use: SubjectUse,
    kind: FindingKind,
    current: Severity | None,
    *,
    subjects: int,
    subject_id: str | None,
) -> Change:
    return Change(
        dataset_version_id=use.dataset_version_id,
        dataset=use.dataset,
        purpose=use.purpose,
        used_at=use.used_at,
        subject_id=subject_id,
        category=use.category,
        jurisdiction=use.jurisdiction,
        records=use.records,
        subjects=subjects,
        current=current,
        kind=kind,
    )


def judge_what_if(
    scope: Scope,
    *,
    uses: Sequence[SubjectUse],
    histories: Mapping[str, Sequence[ConsentEvent]],
    groups: Sequence[UseGroup],
    book: PolicyBook,
    purpose: str | None,
    at: datetime,
    recorded_at: datetime,
) -> list[Change]:
    """Every use in scope whose findings the hypothetical withdrawals would make new or
    more severe. ``uses`` are the uses of subjects judged one by one (with ``histories``),
    ``groups`` those of subjects without history, aggregated."""
    uses = [u for u in uses if scope.reaches(u)]
    by_subject: dict[str, list[SubjectUse]] = defaultdict(list)
    for use in uses:
        by_subject[use.subject_id].append(use)
    hypothetical_histories = {
        subject_id: [
            *histories.get(subject_id, ()),
            *hypothetical_withdrawals(
                subject_id, subject_uses, scope, purpose=purpose, at=at, recorded_at=recorded_at
            ),
        ]
        for subject_id, subject_uses in by_subject.items()
    }
    changes = []
    for use in uses:
        # Judged use by use: a contribution names no jurisdiction, so a subject's records
        # of one category in two jurisdictions (two uses) stay apart.
        worse = _worse(use, histories, hypothetical_histories, book)
        for current, kinds in worse.values():
            changes += [
                _change(use, kind, current, subjects=1, subject_id=use.subject_id) for kind in kinds
            ]
    for group in groups:
        use = group.use
        if scope.kind is not ScopeKind.SUBJECT and not scope.reaches(use):
            continue  # (a subject's group stands for the subject: its representative's id)
        events = hypothetical_withdrawals(
            REPRESENTATIVE, [use], scope, purpose=purpose, at=at, recorded_at=recorded_at
        )
        worse = _worse(use, {}, {REPRESENTATIVE: events}, book)
        for current, kinds in worse.values():
            changes += [
                _change(
                    use,
                    kind,
                    current,
                    subjects=group.subjects,
                    subject_id=None,
                )
                for kind in kinds
            ]
    return sorted(
        changes,
        key=lambda c: (
            c.dataset_version_id,
            c.subject_id or "",
            c.category,
            c.jurisdiction,
            c.kind.order,
        ),
    )


# --- per dataset version -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KindOutcome:
    kind: FindingKind
    records: int
    subjects: int


@dataclass(frozen=True, slots=True)
class VersionOutcome:
    """One dataset version that would get findings."""

    dataset_version_id: int
    dataset: DatasetRef
    purpose: str
    used_at: datetime
    severity: Severity
    """The most severe of its would-be findings."""
    records: int
    subjects: int
    findings: tuple[KindOutcome, ...]


def group_keys(
    changes: Iterable[Change], kinds: Sequence[FindingKind]
) -> list[tuple[int, str, str, int]]:
    """(version, category, jurisdiction, index of the kind in ``kinds``) of every change of
    a group: what the caller counts distinct subjects of (subjects are not additive across
    a version's categories)."""
    index = {k: i for i, k in enumerate(kinds)}
    return sorted(
        {
            (c.dataset_version_id, c.category, c.jurisdiction, index[c.kind])
            for c in changes
            if c.subject_id is None
        }
    )


def summarize(
    changes: Sequence[Change],
    kinds: Sequence[FindingKind],
    group_subjects: Mapping[tuple[int, int | None], int],
) -> list[VersionOutcome]:
    """Per dataset version: its most severe would-be finding, the records and distinct
    subjects concerned, and the findings by kind. ``group_subjects`` holds the distinct
    subjects without history per (version, kind index) and per (version, None), counted
    by the caller over ``group_keys``."""
    index = {k: i for i, k in enumerate(kinds)}
    by_version: dict[int, list[Change]] = defaultdict(list)
    for change in changes:
        by_version[change.dataset_version_id].append(change)
    outcomes = []
    for version_id in sorted(by_version):
        version_changes = by_version[version_id]
        first = version_changes[0]
        per_kind: dict[FindingKind, list[Change]] = defaultdict(list)
        for change in version_changes:
            per_kind[change.kind].append(change)
        findings = tuple(
            KindOutcome(
                kind,
                records=_records(per_kind[kind]),
                subjects=_subjects(per_kind[kind], group_subjects.get((version_id, index[kind]))),
            )
            for kind in sorted(per_kind, key=lambda k: k.order)
        )
        outcomes.append(
            VersionOutcome(
                dataset_version_id=version_id,
                dataset=first.dataset,
                purpose=first.purpose,
                used_at=first.used_at,
                severity=findings[0].kind.severity,
                records=_records(version_changes),
                subjects=_subjects(version_changes, group_subjects.get((version_id, None))),
                findings=findings,
            )
        )
    return outcomes


def _records(changes: Iterable[Change]) -> int:
    """Records of the distinct uses among the changes (a use with two kinds counts once)."""
    uses = {(c.subject_id, c.category, c.jurisdiction): c.records for c in changes}
    return sum(uses.values())


def _subjects(changes: Iterable[Change], grouped: int | None) -> int:
    changes = list(changes)
    individual = {c.subject_id for c in changes if c.subject_id is not None}
    if grouped is None:
        grouped = sum(
            {
                (c.category, c.jurisdiction): c.subjects for c in changes if c.subject_id is None
            }.values()
        )
    return len(individual) + grouped
