"""The eligibility engine: was this use of this record lawful, under this reading of the
rules, at that time? Pure functions over contract types (``contracts.events.ConsentEvent``,
``contracts.policy.PolicyDocument``), imported unchanged by every service. A library, not
a process: it performs no I/O and knows no framework.

Loading policy files (YAML/JSON) lives apart, in :mod:`services.eligibility.documents`.
"""

from services.eligibility.engine import (
    Decision,
    Reason,
    Use,
    WithdrawalOutcome,
    evaluate,
    governing_rule,
    gpc_withdrawals,
    policy_in_force,
    withdrawal_requirement,
)
from services.eligibility.matching import covers, jurisdiction_rank, matches_any_jurisdiction

__all__ = [
    "Decision",
    "Reason",
    "Use",
    "WithdrawalOutcome",
    "covers",
    "evaluate",
    "governing_rule",
    "gpc_withdrawals",
    "jurisdiction_rank",
    "matches_any_jurisdiction",
    "policy_in_force",
    "withdrawal_requirement",
]
