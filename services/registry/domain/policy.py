"""Which policy rule governs a use, and what a later withdrawal requires. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime

from contracts.events import PolicyDocument, PolicyRule, Severity, WithdrawalRequires
from contracts.jurisdictions import in_group

__all__ = [
    "covers",
    "governing_rule",
    "policy_in_force",
    "severity_of_withdrawal",
]


def covers(parent: str, child: str) -> bool:
    """Dot-hierarchy containment: ``user.content`` covers ``user.content.private``."""
    return child == parent or child.startswith(parent + ".")


def _jurisdiction_rank(selector: str, jurisdiction: str) -> int | None:
    """How specifically ``selector`` names ``jurisdiction``; None when it does not."""
    country = jurisdiction.split("-", 1)[0]
    if selector == jurisdiction:
        return 3
    if selector == country:
        return 2
    if in_group(selector, jurisdiction):
        return 1
    if selector == "*":
        return 0
    return None


def governing_rule(
    policy: PolicyDocument, *, jurisdiction: str, purpose: str, category: str
) -> PolicyRule | None:
    """The most specific rule for this use: jurisdiction, then purpose, then category depth."""
    best: tuple[tuple[int, int, int], PolicyRule] | None = None
    for rule in policy.rules:
        ranks = [
            r for s in rule.jurisdictions if (r := _jurisdiction_rank(s, jurisdiction)) is not None
        ]
        categories = [c for c in rule.data_categories if covers(c, category)]
        if not ranks or not categories or not covers(rule.purpose, purpose):
            continue
        score = (max(ranks), rule.purpose.count("."), max(c.count(".") for c in categories))
        if best is None or score > best[0]:
            best = (score, rule)
    return best[1] if best else None


def policy_in_force(
    policies: Iterable[tuple[PolicyDocument, datetime]], at: datetime
) -> PolicyDocument | None:
    """The reading of the rules for time ``at``, as published now.

    The latest ``valid_from`` not after ``at`` wins; among versions with the same valid
    time, the one published last (a re-reading replaces the earlier reading).
    """
    candidates = [(p.valid_from, published, p) for p, published in policies if p.valid_from <= at]
    if not candidates:
        return None
    return max(candidates, key=lambda c: (c[0], c[1]))[2]


_SEVERITY = {
    WithdrawalRequires.DESTROY: Severity.DESTROY_REQUIRED,
    WithdrawalRequires.RETRAIN: Severity.RETRAIN_REQUIRED,
    WithdrawalRequires.EXCLUDE_FROM_FUTURE: Severity.EXCLUDE_FROM_FUTURE,
}


def severity_of_withdrawal(rule: PolicyRule | None) -> Severity | None:
    """None when a withdrawal requires nothing of existing datasets and models."""
    if rule is None:
        return Severity.EXCLUDE_FROM_FUTURE
    return _SEVERITY.get(rule.withdrawal_requires)


def most_severe(severities: Sequence[Severity]) -> Severity:
    order = [
        Severity.DESTROY_REQUIRED,
        Severity.RETRAIN_REQUIRED,
        Severity.REVIEW,
        Severity.EXCLUDE_FROM_FUTURE,
    ]
    return min(severities, key=order.index)
