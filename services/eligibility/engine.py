"""The eligibility engine: pure functions from (consent history, policy, use) to a decision.

Everything here follows the reading rules of :mod:`contracts.policy`. Nothing depends on
the order of its inputs, only on their times, so every service that evaluates the same
facts under the same policy version reaches the same decision, byte for byte.

Time is bitemporal: ``used_at`` (and an event's ``effective_at``) is valid time, what the
world was like; ``known_at`` (and an event's ``recorded_at``, a version's ``published_at``)
is transaction time, what we had learnt by then. "As the rules are read now, was this use
lawful then?" is ``evaluate(history, policy_in_force(versions, used_at), use)``; "as we
knew it then?" adds ``known_at=`` to both calls.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol
from uuid import UUID

from contracts.events import ConsentEvent
from contracts.policy import (
    LawfulBasis,
    OptInScope,
    PolicyDocument,
    PolicyRule,
    WithdrawalRequires,
)
from contracts.vocabulary import ConsentMechanism, ConsentState
from services.eligibility.matching import covers, jurisdiction_rank, matches_any_jurisdiction

__all__ = [
    "Decision",
    "Reason",
    "Use",
    "WithdrawalOutcome",
    "evaluate",
    "governing_rule",
    "gpc_withdrawals",
    "policy_in_force",
    "withdrawal_requirement",
]


@dataclass(frozen=True, slots=True)
class Use:
    """One use of one subject's data: a record of ``category`` put in a snapshot for
    ``purpose`` at ``used_at`` (the snapshot's time), the subject living in
    ``jurisdiction``."""

    subject_id: str
    jurisdiction: str
    purpose: str
    category: str
    used_at: datetime

    def __post_init__(self) -> None:
        if self.used_at.tzinfo is None or self.used_at.utcoffset() is None:
            raise ValueError("Use.used_at must carry a UTC offset")


class Reason(StrEnum):
    """Why a use is (not) eligible. Exactly two reasons are eligible."""

    CONSENTED = "consented"
    """A recorded grant whose mechanism is a lawful basis at the time of use."""
    DEFAULT_CONSENT = "default_consent"
    """No recorded choice; the rule's default applies and its mechanism is lawful then."""
    WITHDRAWN = "withdrawn"
    """The latest relevant choice is a withdrawal."""
    BASIS_NOT_LAWFUL = "basis_not_lawful"
    """The grant's (or default's) mechanism is not among the rule's lawful bases at all."""
    BASIS_NOT_YET_LAWFUL = "basis_not_yet_lawful"
    """It is, but only from a later time (e.g. default-on before its disclosure)."""
    BASIS_NO_LONGER_LAWFUL = "basis_no_longer_lawful"
    """It was, but no longer at the time of use."""
    NO_CONSENT = "no_consent"
    """No relevant choice and no default in force."""
    NO_LAWFUL_BASIS = "no_lawful_basis"
    """The governing rule allows nothing (exempt jurisdiction, suspension)."""
    NO_RULE = "no_rule"
    """No rule of the policy governs the use."""

    @property
    def eligible(self) -> bool:
        return self in (Reason.CONSENTED, Reason.DEFAULT_CONSENT)


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a use was eligible, why, and on which facts the answer rests."""

    eligible: bool
    reason: Reason
    policy_id: str
    policy_version: str
    rule_id: str | None
    mechanism: ConsentMechanism | None
    """The deciding grant's or withdrawal's mechanism, or the default's; None otherwise."""
    consent_event_ids: tuple[UUID, ...]
    """The deciding event; empty for a default, no consent, no rule or no lawful basis."""
    explanation: str


@dataclass(frozen=True, slots=True)
class WithdrawalOutcome:
    """What a withdrawal requires of a model trained on a use it reaches."""

    requires: WithdrawalRequires
    erasure: bool
    rule_id: str | None
    policy_id: str
    policy_version: str
    explanation: str


# --- helpers -------------------------------------------------------------------------


class _Windowed(Protocol):
    @property
    def valid_from(self) -> datetime | None: ...
    @property
    def valid_until(self) -> datetime | None: ...


def _in_window(window: _Windowed, at: datetime) -> bool:
    """``valid_from`` inclusive, ``valid_until`` exclusive, either open."""
    return (window.valid_from is None or window.valid_from <= at) and (
        window.valid_until is None or at < window.valid_until
    )


def _ts(at: datetime | None) -> str:
    if at is None:
        return "open"
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _span(window: _Windowed) -> str:
    if window.valid_from is None and window.valid_until is None:
        return "at any time"
    if window.valid_until is None:
        return f"from {_ts(window.valid_from)}"
    if window.valid_from is None:
        return f"until {_ts(window.valid_until)}"
    return f"from {_ts(window.valid_from)} until {_ts(window.valid_until)}"


def _depth(path: str) -> int:
    return path.count(".") + 1


def _deepest_cover(selectors: Iterable[str], value: str) -> int | None:
    depths = [_depth(s) for s in selectors if covers(s, value)]
    return max(depths) if depths else None


def _event_order(event: ConsentEvent) -> tuple[datetime, datetime, UUID]:
    return (event.effective_at, event.recorded_at, event.consent_event_id)


# --- rules ---------------------------------------------------------------------------


def governing_rule(policy: PolicyDocument, use: Use) -> PolicyRule | None:
    """The most specific rule in force at ``use.used_at`` that names the use's
    jurisdiction and covers its purpose and category: highest jurisdiction rank
    (subdivision > country > group > ``*``), then the deepest matching purpose, then the
    deepest matching category; ties go to the rule listed first."""
    best: PolicyRule | None = None
    best_key: tuple[int, int, int] | None = None
    for rule in policy.rules:
        if not _in_window(rule, use.used_at):
            continue
        ranks = [
            r
            for s in rule.jurisdictions
            if (r := jurisdiction_rank(s, use.jurisdiction, policy.jurisdiction_groups)) is not None
        ]
        if not ranks:
            continue
        purpose_depth = _deepest_cover(rule.purposes, use.purpose)
        category_depth = _deepest_cover(rule.data_categories, use.category)
        if purpose_depth is None or category_depth is None:
            continue
        key = (max(ranks), purpose_depth, category_depth)
        if best_key is None or key > best_key:
            best, best_key = rule, key
    return best


def _relevant(event: ConsentEvent, rule: PolicyRule, use: Use, known_at: datetime | None) -> bool:
    if (
        event.subject_id != use.subject_id
        or not covers(event.purpose, use.purpose)
        or event.effective_at > use.used_at
        or (known_at is not None and event.recorded_at > known_at)
    ):
        return False
    reaching = [c for c in event.data_categories if covers(c, use.category)]
    if event.state is ConsentState.WITHDRAWN:
        # A withdrawal of a parent category always reaches its children.
        return bool(reaching)
    if rule.opt_in_scope is OptInScope.EXACT:
        # Only a grant naming the rule's category (or a narrower one) counts.
        return any(covers(rc, c) for c in reaching for rc in rule.data_categories)
    return bool(reaching)


def _deciding_event(
    history: Iterable[ConsentEvent], rule: PolicyRule, use: Use, known_at: datetime | None
) -> ConsentEvent | None:
    relevant = [e for e in history if _relevant(e, rule, use, known_at)]
    return max(relevant, key=_event_order) if relevant else None


def _basis_verdict(
    mechanism: ConsentMechanism, rule: PolicyRule, at: datetime
) -> tuple[Reason | None, tuple[LawfulBasis, ...]]:
    """None when ``mechanism`` is a lawful basis of ``rule`` at ``at``; else the reason it
    is not. Also returns the rule's bases for that mechanism (for the explanation)."""
    bases = tuple(b for b in rule.lawful_bases if b.mechanism is mechanism)
    if not bases:
        return Reason.BASIS_NOT_LAWFUL, bases
    if any(_in_window(b, at) for b in bases):
        return None, bases
    # Between two windows of the same mechanism, "not yet" (a later window opens) wins.
    if any(b.valid_from is not None and at < b.valid_from for b in bases):
        return Reason.BASIS_NOT_YET_LAWFUL, bases
    return Reason.BASIS_NO_LONGER_LAWFUL, bases


def _windows(bases: tuple[LawfulBasis, ...]) -> str:
    return " and ".join(_span(b) for b in bases)


# --- evaluation ----------------------------------------------------------------------


def evaluate(
    history: Iterable[ConsentEvent],
    policy: PolicyDocument,
    use: Use,
    *,
    known_at: datetime | None = None,
) -> Decision:
    """Was ``use`` eligible under ``policy``, given the subject's consent ``history``
    (any order; other subjects' events are ignored), as known at ``known_at`` (every
    recorded fact when None)?"""
    at = _ts(use.used_at)
    subject = f"the use of {use.category} for {use.purpose} in {use.jurisdiction} at {at}"
    doc = f"policy {policy.policy_id} version {policy.version}"

    def decide(
        reason: Reason,
        explanation: str,
        rule: PolicyRule | None = None,
        mechanism: ConsentMechanism | None = None,
        event: ConsentEvent | None = None,
    ) -> Decision:
        return Decision(
            eligible=reason.eligible,
            reason=reason,
            policy_id=policy.policy_id,
            policy_version=policy.version,
            rule_id=rule.id if rule else None,
            mechanism=mechanism,
            consent_event_ids=(event.consent_event_id,) if event else (),
            explanation=explanation,
        )

    rule = governing_rule(policy, use)
    if rule is None:
        return decide(Reason.NO_RULE, f"No rule of {doc} governs {subject}, so it is not eligible.")
    head = f"Under rule {rule.id} of {doc}, {subject}"
    if not rule.lawful_bases:
        return decide(
            Reason.NO_LAWFUL_BASIS,
            f"{head} is not eligible: the rule allows no lawful basis"
            f" ({_span(rule)}), whatever the consent.",
            rule,
        )

    event = _deciding_event(history, rule, use, known_at)
    if event is not None:
        what = (
            f"{event.state.value} by {event.mechanism.value} effective"
            f" {_ts(event.effective_at)} (event {event.consent_event_id})"
        )
        if event.state is ConsentState.WITHDRAWN:
            return decide(
                Reason.WITHDRAWN,
                f"{head} is not eligible: the latest relevant choice is a withdrawal, {what}.",
                rule,
                event.mechanism,
                event,
            )
        verdict, bases = _basis_verdict(event.mechanism, rule, use.used_at)
        if verdict is None:
            return decide(
                Reason.CONSENTED,
                f"{head} is eligible: the latest relevant choice is a grant, {what}, and"
                f" {event.mechanism.value} is a lawful basis {_windows(bases)}.",
                rule,
                event.mechanism,
                event,
            )
        return decide(
            verdict,
            f"{head} is not eligible: the latest relevant choice is a grant, {what}, but"
            + _why_not(event.mechanism, verdict, bases),
            rule,
            event.mechanism,
            event,
        )

    default = rule.default
    if default is None or not _in_window(default, use.used_at):
        has = "no default" if default is None else f"a default only {_span(default)}"
        return decide(
            Reason.NO_CONSENT,
            f"{head} is not eligible: the subject recorded no relevant choice and the rule"
            f" has {has}.",
            rule,
        )
    intro = (
        f"the subject recorded no relevant choice, so the rule's default"
        f" ({default.mechanism.value}, {_span(default)}) applies"
    )
    if default.mechanism is ConsentMechanism.EXPLICIT_OPT_IN:
        # An opt-in is a choice only the subject can make: a default never is one, so a
        # rule that needs an explicit opt-in can never be satisfied by its default.
        return decide(
            Reason.BASIS_NOT_LAWFUL,
            f"{head} is not eligible: {intro}, but a default is never an explicit opt-in.",
            rule,
            default.mechanism,
        )
    verdict, bases = _basis_verdict(default.mechanism, rule, use.used_at)
    if verdict is None:
        return decide(
            Reason.DEFAULT_CONSENT,
            f"{head} is eligible: {intro}, and {default.mechanism.value} is a lawful basis"
            f" {_windows(bases)}.",
            rule,
            default.mechanism,
        )
    return decide(
        verdict,
        f"{head} is not eligible: {intro}, but" + _why_not(default.mechanism, verdict, bases),
        rule,
        default.mechanism,
    )


def _why_not(mechanism: ConsentMechanism, verdict: Reason, bases: tuple[LawfulBasis, ...]) -> str:
    if verdict is Reason.BASIS_NOT_LAWFUL:
        return f" {mechanism.value} is not a lawful basis under the rule."
    if verdict is Reason.BASIS_NOT_YET_LAWFUL:
        return f" {mechanism.value} is a lawful basis only {_windows(bases)} (not yet)."
    return f" {mechanism.value} was a lawful basis only {_windows(bases)} (no longer)."


def withdrawal_requirement(
    policy: PolicyDocument, use: Use, withdrawal: ConsentEvent
) -> WithdrawalOutcome | None:
    """What ``withdrawal`` (effective at W) requires of a model trained on ``use`` (at U).

    None when the withdrawal does not reach the use (not a withdrawal, another subject,
    a purpose or categories that do not cover the use's) or when W <= U: the use then
    came after the withdrawal, an improper use that :func:`evaluate` reports. Otherwise
    the ``withdrawal`` of the rule governing the use; without one, the record is only
    excluded from future training.
    """
    if (
        withdrawal.state is not ConsentState.WITHDRAWN
        or withdrawal.subject_id != use.subject_id
        or not covers(withdrawal.purpose, use.purpose)
        or not any(covers(c, use.category) for c in withdrawal.data_categories)
        or withdrawal.effective_at <= use.used_at
    ):
        return None
    rule = governing_rule(policy, use)
    lead = (
        f"Withdrawal {withdrawal.consent_event_id} effective {_ts(withdrawal.effective_at)}"
        f" reaches the use of {use.category} for {use.purpose} in {use.jurisdiction} at"
        f" {_ts(use.used_at)}"
    )
    doc = f"policy {policy.policy_id} version {policy.version}"
    if rule is None:
        return WithdrawalOutcome(
            requires=WithdrawalRequires.EXCLUDE_FROM_FUTURE,
            erasure=False,
            rule_id=None,
            policy_id=policy.policy_id,
            policy_version=policy.version,
            explanation=f"{lead}; no rule of {doc} governs it, so it is excluded from future"
            " training only.",
        )
    effect = rule.withdrawal
    return WithdrawalOutcome(
        requires=effect.requires,
        erasure=effect.erasure,
        rule_id=rule.id,
        policy_id=policy.policy_id,
        policy_version=policy.version,
        explanation=f"{lead}; rule {rule.id} of {doc} requires {effect.requires.value}"
        + (" and erasure of the records." if effect.erasure else ", without erasure."),
    )


# --- policy versions and GPC ---------------------------------------------------------


def policy_in_force(
    versions: Iterable[tuple[PolicyDocument, datetime]],
    at: datetime,
    *,
    known_at: datetime | None = None,
) -> PolicyDocument | None:
    """The reading of the rules for a use at ``at``, from (document, published_at) pairs.

    Among the versions published by ``known_at`` (all when None) whose ``valid_from`` is
    at or before ``at``: the latest ``valid_from`` wins; on a tie the latest
    ``published_at`` (a re-reading replaces the reading it re-reads); then the greatest
    version string. Input order never matters.
    """
    candidates = [
        (doc.valid_from, published_at, doc.version, doc.policy_id, doc)
        for doc, published_at in versions
        if doc.valid_from <= at and (known_at is None or published_at <= known_at)
    ]
    if not candidates:
        return None
    best = max(c[:4] for c in candidates)
    tied = [c[4] for c in candidates if c[:4] == best]
    # Two different documents under one id, version and time: pick by content, not order.
    return tied[0] if len(tied) == 1 else min(tied, key=lambda d: d.model_dump_json())


def gpc_withdrawals(
    policy: PolicyDocument, *, subject_jurisdiction: str
) -> list[tuple[str, tuple[str, ...]]]:
    """The (purpose, categories) pairs a ``Sec-GPC: 1`` signal withdraws for a subject in
    ``subject_jurisdiction``; empty when the policy gives GPC no effect there. Sorted by
    purpose; categories sorted, without those a broader listed category already covers."""
    by_purpose: dict[str, set[str]] = {}
    for coverage in policy.gpc:
        if not matches_any_jurisdiction(
            coverage.jurisdictions, subject_jurisdiction, policy.jurisdiction_groups
        ):
            continue
        for purpose in coverage.purposes:
            by_purpose.setdefault(purpose, set()).update(coverage.data_categories)
    result = []
    for purpose in sorted(by_purpose):
        categories = by_purpose[purpose]
        kept = sorted(c for c in categories if not any(o != c and covers(o, c) for o in categories))
        result.append((purpose, tuple(kept)))
    return result
