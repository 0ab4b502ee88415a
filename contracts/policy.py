"""Policies as versioned data (DESIGN §3): which uses of which data had a lawful basis.

A policy document is what legal writes (YAML or JSON, see ``policies/``) and what every
service evaluates with the pure eligibility engine (``services.eligibility``). It never
holds code. Its JSON Schema is ``contracts/schemas/policy-document.schema.json``.

Reading a document, for a use of a record (jurisdiction J, purpose P, category C, time T):

- the **rule** that governs the use is the most specific rule in force at T whose
  jurisdictions include J, whose purposes cover P and whose categories cover C
  (subdivision > country > group > ``*``; then the deeper purpose; then the deeper
  category; ties go to the rule listed first);
- the use is **eligible** when the subject's consent for (P, C) in force at T — their
  latest recorded choice, or else the rule's ``default`` — is a grant whose mechanism is
  one of the rule's ``lawful_bases`` at T. A rule without lawful bases allows nothing;
- what a **later withdrawal** requires of models already trained is the rule's
  ``withdrawal``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from contracts.base import AwareDatetime, CategoryPath, Contract, Jurisdiction, PurposePath
from contracts.jurisdictions import GROUPS
from contracts.vocabulary import ConsentMechanism

__all__ = [
    "DefaultConsent",
    "GpcCoverage",
    "JurisdictionSelector",
    "LawfulBasis",
    "OptInScope",
    "PolicyDocument",
    "PolicyRule",
    "WithdrawalEffect",
    "WithdrawalRequires",
]

_Text = Annotated[str, StringConstraints(max_length=4096)]
_Id = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9._-]{0,127}$")]
_Version = Annotated[str, StringConstraints(min_length=1, max_length=128)]
_GroupName = Annotated[str, StringConstraints(pattern=r"^[A-Z][A-Z0-9_]{2,63}$")]

JurisdictionSelector = Annotated[
    str, StringConstraints(pattern=r"^(\*|[A-Z][A-Z0-9_]{1,63}|[A-Z]{2}-[A-Z0-9]{1,3})$")
]
"""A country (``GB``), a subdivision (``US-CA``), a group (``EU``, ``EEA`` or one the
document defines in ``jurisdiction_groups``), or ``*`` for everywhere."""


class _Window(Contract):
    """``valid_from`` inclusive, ``valid_until`` exclusive; either may be open."""

    valid_from: AwareDatetime | None = None
    valid_until: AwareDatetime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> _Window:
        if self.valid_from and self.valid_until and self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self


class LawfulBasis(_Window):
    """A consent mechanism that counts as a lawful basis, and from/until when it counts."""

    mechanism: ConsentMechanism
    description: _Text = ""


class DefaultConsent(_Window):
    """What a subject who recorded no choice is taken to have, e.g. a default-on setting."""

    mechanism: ConsentMechanism = ConsentMechanism.DEFAULT_SETTING
    description: _Text = ""


class OptInScope(StrEnum):
    """Whether a consent given for a parent category reaches the rule's categories."""

    SUBTREE = "subtree"
    """A grant for ``user.content`` covers ``user.content.private``."""
    EXACT = "exact"
    """Only a grant that names the rule's category (or a narrower one) counts."""


class WithdrawalRequires(StrEnum):
    """What a later withdrawal requires of models already trained on the data."""

    NONE = "none"
    EXCLUDE_FROM_FUTURE = "exclude_from_future"
    RETRAIN = "retrain"
    DESTROY = "destroy"


class WithdrawalEffect(Contract):
    requires: WithdrawalRequires = WithdrawalRequires.EXCLUDE_FROM_FUTURE
    erasure: bool = False
    """The withdrawal also requires erasing the subject's records (GDPR Art. 17 style)."""


class PolicyRule(_Window):
    """One rule. Its window (``valid_from``/``valid_until``) bounds the *uses* it governs."""

    id: _Id
    jurisdictions: Annotated[tuple[JurisdictionSelector, ...], Field(min_length=1)]
    purposes: Annotated[tuple[PurposePath, ...], Field(min_length=1)]
    data_categories: Annotated[tuple[CategoryPath, ...], Field(min_length=1)]
    lawful_bases: tuple[LawfulBasis, ...] = ()
    default: DefaultConsent | None = None
    opt_in_scope: OptInScope = OptInScope.SUBTREE
    withdrawal: WithdrawalEffect = WithdrawalEffect()
    description: _Text = ""


class GpcCoverage(Contract):
    """Where a Global Privacy Control signal counts as a withdrawal, and for what."""

    jurisdictions: Annotated[tuple[JurisdictionSelector, ...], Field(min_length=1)]
    purposes: Annotated[tuple[PurposePath, ...], Field(min_length=1)]
    data_categories: Annotated[tuple[CategoryPath, ...], Field(min_length=1)] = ("user",)


class PolicyDocument(Contract):
    """One version of a policy. Versions have their own valid time: a re-reading of the
    rules is a new version whose ``valid_from`` may reach back before its publication."""

    policy_id: _Id
    version: _Version
    valid_from: AwareDatetime
    description: _Text = ""
    jurisdiction_groups: dict[_GroupName, tuple[Jurisdiction, ...]] = Field(default_factory=dict)
    rules: Annotated[tuple[PolicyRule, ...], Field(min_length=1)]
    gpc: tuple[GpcCoverage, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> PolicyDocument:
        ids = [rule.id for rule in self.rules]
        if duplicates := sorted({i for i in ids if ids.count(i) > 1}):
            raise ValueError(f"rule ids must be unique: {', '.join(duplicates)}")
        clash = sorted(set(self.jurisdiction_groups) & set(GROUPS))
        if clash:
            raise ValueError(f"jurisdiction group names already defined: {', '.join(clash)}")
        known = set(GROUPS) | set(self.jurisdiction_groups)
        selectors = {s for r in self.rules for s in r.jurisdictions} | {
            s for g in self.gpc for s in g.jurisdictions
        }
        unknown = sorted(
            s for s in selectors if s != "*" and "-" not in s and len(s) > 2 and s not in known
        )
        if unknown:
            raise ValueError(f"unknown jurisdiction groups: {', '.join(unknown)}")
        return self
