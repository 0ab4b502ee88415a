"""Consent ledger rules: what may be recorded, and the facts a request becomes. Pure."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4, uuid5

from pydantic import ValidationError

from contracts.events import ConsentEvent, ConsentEvidence, ConsentMechanism, ConsentState
from contracts.policy import PolicyDocument
from contracts.taxonomy import category_error, purpose_error
from services.eligibility import gpc_withdrawals, policy_in_force

__all__ = [
    "BATCH_LIMIT",
    "FUTURE_TOLERANCE",
    "ConsentChange",
    "GpcSignal",
    "GpcWithdrawal",
    "InvalidBatch",
    "InvalidConsentChange",
    "InvalidPolicy",
    "UnreadableChange",
    "batch_digest",
    "gpc_coverage",
    "policy_problems",
    "policy_versions_named",
    "problems_of",
    "record_batch",
    "record_change",
    "record_gpc_withdrawals",
]

FUTURE_TOLERANCE = timedelta(minutes=5)
"""Clock skew we accept between the caller and us for ``effective_at``."""

BATCH_LIMIT = 1000
"""The most changes one batch may hold: one transaction must stay short."""

GPC_CHANNEL = "gpc"

_LEDGER_NAMESPACE = UUID("6f1c2f7e-5b8a-4d0e-9a51-2c1f0b3e7d10")


class InvalidConsentChange(ValueError):
    """The change cannot be recorded; the message says exactly why."""


class InvalidBatch(ValueError):
    """Some changes of a batch cannot be recorded, so none is: ``errors`` says which and why."""

    def __init__(self, errors: Sequence[tuple[int, str]], size: int, why: str = "") -> None:
        self.errors = tuple(errors)
        self.size = size
        why = f"{why}, not {size}" if why else f"{len(self.errors)} of {size} changes are invalid"
        super().__init__(f"{why}; nothing was recorded")


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """What a caller asks us to record."""

    subject_id: str
    jurisdiction: str
    purpose: str
    data_categories: tuple[str, ...]
    state: ConsentState
    mechanism: ConsentMechanism
    policy_version: str
    effective_at: datetime
    source_system: str
    evidence: ConsentEvidence
    erasure_requested: bool = False


def problems_of(change: ConsentChange, *, now: datetime) -> list[str]:
    """Every reason the change cannot be recorded at ``now`` (none: it can)."""
    problems = []
    if change.effective_at > now + FUTURE_TOLERANCE:
        problems.append(
            f"effective_at {change.effective_at.isoformat()} is more than "
            f"{int(FUTURE_TOLERANCE.total_seconds() // 60)} minutes in the future"
            f" (now is {now.isoformat()})"
        )
    if change.erasure_requested and change.state is not ConsentState.WITHDRAWN:
        problems.append("erasure can only be requested with a withdrawal")
    if len(set(change.data_categories)) != len(change.data_categories):
        counts = Counter(change.data_categories)
        duplicates = sorted(c for c, n in counts.items() if n > 1)
        problems.append(f"data_categories contains duplicates: {', '.join(duplicates)}")
    if error := purpose_error(change.purpose):
        problems.append(error)
    problems.extend(e for c in dict.fromkeys(change.data_categories) if (e := category_error(c)))
    return problems


def record_change(
    change: ConsentChange, *, now: datetime, idempotency_key: str | None
) -> ConsentEvent:
    """Turn a requested change into a ledger fact recorded at ``now``.

    With an idempotency key, the event id is derived from it, so a retried request
    maps onto the fact already recorded instead of appending a second one.
    """
    event_id = (
        uuid5(_LEDGER_NAMESPACE, f"{change.source_system}\x1f{idempotency_key}")
        if idempotency_key
        else None
    )
    return _fact(change, event_id or uuid4(), now)


@dataclass(frozen=True, slots=True)
class UnreadableChange:
    """A batch item that could not even be read as a change (the reason says why)."""

    reason: str


def record_batch(
    items: Sequence[ConsentChange | UnreadableChange],
    *,
    now: datetime,
    idempotency_key: str | None,
) -> list[ConsentEvent]:
    """All the changes as facts recorded at ``now``, or InvalidBatch naming every bad one.

    With an idempotency key, change ``i``'s event id derives from (key, i): a retried batch
    maps onto the facts already recorded, one for one.
    """
    if not items or len(items) > BATCH_LIMIT:
        raise InvalidBatch([], len(items), f"a batch holds 1 to {BATCH_LIMIT} changes")
    events, errors = [], []
    for index, item in enumerate(items):
        if isinstance(item, UnreadableChange):
            errors.append((index, item.reason))
            continue
        event_id = (
            uuid5(_LEDGER_NAMESPACE, f"batch\x1f{idempotency_key}\x1f{index}")
            if idempotency_key
            else uuid4()
        )
        try:
            events.append(_fact(item, event_id, now))
        except InvalidConsentChange as exc:
            errors.append((index, str(exc)))
        except ValidationError as exc:  # the contract's own rules (patterns, lengths)
            errors.append((index, _reasons(exc)))
    if errors:
        raise InvalidBatch(errors, len(items))
    return events


def batch_digest(changes: Sequence[ConsentChange]) -> str:
    """A fingerprint of a batch's content, to tell a replay from a reused key."""
    canonical = json.dumps([_canonical(c) for c in changes], sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _canonical(change: ConsentChange) -> dict[str, Any]:
    return {
        "subject_id": change.subject_id,
        "jurisdiction": change.jurisdiction,
        "purpose": change.purpose,
        "data_categories": list(change.data_categories),
        "state": change.state.value,
        "mechanism": change.mechanism.value,
        "policy_version": change.policy_version,
        "effective_at": change.effective_at.astimezone(UTC).isoformat(),
        "source_system": change.source_system,
        "evidence": change.evidence.model_dump(mode="json"),
        "erasure_requested": change.erasure_requested,
    }


def _fact(change: ConsentChange, event_id: UUID, now: datetime) -> ConsentEvent:
    if problems := problems_of(change, now=now):
        raise InvalidConsentChange("; ".join(problems))
    return ConsentEvent(
        consent_event_id=event_id,
        subject_id=change.subject_id,
        jurisdiction=change.jurisdiction,
        purpose=change.purpose,
        data_categories=change.data_categories,
        state=change.state,
        mechanism=change.mechanism,
        policy_version=change.policy_version,
        effective_at=change.effective_at,
        recorded_at=now,
        source_system=change.source_system,
        evidence=change.evidence,
        erasure_requested=change.erasure_requested,
    )


def _reasons(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())


# --- policies ---------------------------------------------------------------------------


class InvalidPolicy(ValueError):
    """The policy names terms the taxonomy does not know; the message lists each."""


def policy_problems(policy: PolicyDocument) -> list[str]:
    """Every unknown purpose or category a policy names, with where it names it.

    A rule or a GPC coverage naming ``user.contents`` would match no record and no consent:
    it must be refused when published, not discovered in an audit.
    """
    problems = []
    places = [
        (f"rules[{i}] ({r.id})", r.purposes, r.data_categories) for i, r in enumerate(policy.rules)
    ]
    places += [(f"gpc[{i}]", g.purposes, g.data_categories) for i, g in enumerate(policy.gpc)]
    for where, purposes, categories in places:
        problems += [f"{where}: {e}" for p in purposes if (e := purpose_error(p))]
        problems += [f"{where}: {e}" for c in categories if (e := category_error(c))]
    return problems


def policy_versions_named(
    names: Iterable[str], versions: Iterable[tuple[PolicyDocument, datetime]]
) -> tuple[list[tuple[PolicyDocument, datetime]], list[str]]:
    """The stored versions the ledger's ``policy_version`` values name, and the names none
    matches. ``policy_id:version`` names one version; a bare ``version`` names that version
    of every policy having one (callers of the intake API often send only the version)."""
    stored = list(versions)
    named: dict[tuple[str, str], tuple[PolicyDocument, datetime]] = {}
    unresolved = []
    for name in sorted(set(names)):
        hits = [(p, at) for p, at in stored if name in (p.version, f"{p.policy_id}:{p.version}")]
        if not hits:
            unresolved.append(name)
        for p, at in hits:
            named[(p.policy_id, p.version)] = (p, at)
    return [named[k] for k in sorted(named)], unresolved


# --- Global Privacy Control ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GpcSignal:
    """A Global Privacy Control signal (``Sec-GPC: 1``) seen for a subject."""

    subject_id: str
    jurisdiction: str
    source_system: str
    user_agent: str | None
    collection_point: str
    effective_at: datetime


@dataclass(frozen=True, slots=True)
class GpcWithdrawal:
    """What a policy version says a GPC signal withdraws in one jurisdiction."""

    purpose: str
    data_categories: tuple[str, ...]
    policy_id: str
    policy_version: str

    @property
    def policy_ref(self) -> str:
        """How the ledger names the policy version: ``policy_id:version``."""
        return f"{self.policy_id}:{self.policy_version}"


def gpc_coverage(
    policies: Iterable[tuple[PolicyDocument, datetime]], *, jurisdiction: str, at: datetime
) -> list[GpcWithdrawal]:
    """What a GPC signal at ``at`` withdraws for a subject in ``jurisdiction``.

    Several policies may be stored (one per ``policy_id``, each with its versions): each
    id's version in force at ``at`` is read, and their coverage is united. A (purpose,
    categories) pair that two policies both name is withdrawn once, in the name of the
    first policy id in alphabetical order.
    """
    by_id: dict[str, list[tuple[PolicyDocument, datetime]]] = {}
    for policy, published_at in policies:
        by_id.setdefault(policy.policy_id, []).append((policy, published_at))
    seen: set[tuple[str, tuple[str, ...]]] = set()
    coverage = []
    for policy_id in sorted(by_id):
        in_force = policy_in_force(by_id[policy_id], at)
        if in_force is None:
            continue
        for pair in gpc_withdrawals(in_force, subject_jurisdiction=jurisdiction):
            if pair not in seen:
                seen.add(pair)
                coverage.append(GpcWithdrawal(*pair, in_force.policy_id, in_force.version))
    return coverage


def record_gpc_withdrawals(
    signal: GpcSignal,
    withdrawals: Sequence[GpcWithdrawal],
    *,
    now: datetime,
    idempotency_key: str | None,
) -> list[ConsentEvent]:
    """One ``gpc_signal`` withdrawal fact per (purpose, categories) the policies name.

    With an idempotency key, each id derives from (source, key, purpose, categories), so a
    retried request maps onto the facts already recorded.
    """
    if signal.effective_at > now + FUTURE_TOLERANCE:
        raise InvalidConsentChange(
            f"effective_at {signal.effective_at.isoformat()} is more than "
            f"{int(FUTURE_TOLERANCE.total_seconds() // 60)} minutes in the future"
        )
    evidence = ConsentEvidence(
        collection_point=signal.collection_point,
        user_agent=signal.user_agent,
        channel=GPC_CHANNEL,
    )
    events = []
    for w in withdrawals:
        name = f"{signal.source_system}\x1f{idempotency_key}\x1fgpc\x1f{w.purpose}\x1f" + ",".join(
            w.data_categories
        )
        event_id = uuid5(_LEDGER_NAMESPACE, name) if idempotency_key else uuid4()
        events.append(
            ConsentEvent(
                consent_event_id=event_id,
                subject_id=signal.subject_id,
                jurisdiction=signal.jurisdiction,
                purpose=w.purpose,
                data_categories=w.data_categories,
                state=ConsentState.WITHDRAWN,
                mechanism=ConsentMechanism.GPC_SIGNAL,
                policy_version=w.policy_ref,
                effective_at=signal.effective_at,
                recorded_at=now,
                source_system=signal.source_system,
                evidence=evidence,
            )
        )
    return events
