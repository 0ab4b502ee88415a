"""Model status: what may be set, which changes are allowed, what a model's status is. Pure.

A model version's **effective status** is one of ``active``, ``flagged``, ``quarantined``,
``destroyed``, ``superseded``:

- an **explicit status** (an override) set by an ML team or the deletion service wins:
  ``quarantined``, ``destroyed`` or ``superseded``. Setting ``active`` clears the override;
- otherwise the status is derived: ``flagged`` while the model has an active flag whose
  severity flags models (``review``, ``retrain_required``, ``destroy_required``), else
  ``active``. ``flagged`` is never set by anybody: it follows the flags, which follow the
  findings (a retracted finding retracts its flags, and the model is ``active`` again).

Transitions of the explicit status (``TRANSITIONS``; ``active`` stands for "no override"):

=============== ===========================================================
from            allowed to
=============== ===========================================================
``active``      ``quarantined``, ``superseded``, ``destroyed``
``quarantined`` ``active`` (release), ``superseded``, ``destroyed``
``superseded``  ``active`` (a rollback made it current again), ``quarantined``,
                ``destroyed``
``destroyed``   nothing: destruction cannot be undone
=============== ===========================================================

and two guards while the model has an active ``destroy_required`` flag (it must be
destroyed): it cannot be set ``active``, and a quarantine cannot be released into
``superseded`` (only ``destroyed`` ends it). Setting the status a model already has is
accepted and changes nothing (retries of the deletion service are harmless), even for a
destroyed model.

Destroying a model changes nothing downstream: the models derived from it keep their own
flags (each rests on a finding) until they are handled themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from uuid import NAMESPACE_URL, uuid5

from contracts.base import DatasetRef, ModelRef
from contracts.events import DatasetFinding, FindingReason, FindingStatus, Severity
from services.lineage.domain.propagation import LineageEdge, flags_for_finding

__all__ = [
    "SETTABLE",
    "SEVERITY_RANK",
    "TRANSITIONS",
    "ExplicitStatus",
    "ModelImpact",
    "ModelStatus",
    "StatusChange",
    "VersionImpact",
    "decide_change",
    "effective_status",
    "impact_on_models",
    "is_clean",
    "parse_explicit",
]


class ModelStatus(StrEnum):
    ACTIVE = "active"
    FLAGGED = "flagged"
    QUARANTINED = "quarantined"
    DESTROYED = "destroyed"
    SUPERSEDED = "superseded"


class ExplicitStatus(StrEnum):
    """What a caller may set. ``active`` clears an override; ``flagged`` is derived."""

    ACTIVE = "active"
    QUARANTINED = "quarantined"
    SUPERSEDED = "superseded"
    DESTROYED = "destroyed"


SETTABLE = tuple(s.value for s in ExplicitStatus)

TRANSITIONS: Mapping[ExplicitStatus, frozenset[ExplicitStatus]] = {
    ExplicitStatus.ACTIVE: frozenset(
        {ExplicitStatus.QUARANTINED, ExplicitStatus.SUPERSEDED, ExplicitStatus.DESTROYED}
    ),
    ExplicitStatus.QUARANTINED: frozenset(
        {ExplicitStatus.ACTIVE, ExplicitStatus.SUPERSEDED, ExplicitStatus.DESTROYED}
    ),
    ExplicitStatus.SUPERSEDED: frozenset(
        {ExplicitStatus.ACTIVE, ExplicitStatus.QUARANTINED, ExplicitStatus.DESTROYED}
    ),
    ExplicitStatus.DESTROYED: frozenset(),
}
"""Changes of the explicit status (the same status again is always a no-op)."""

SEVERITY_RANK: Mapping[Severity, int] = {
    Severity.EXCLUDE_FROM_FUTURE: 0,
    Severity.REVIEW: 1,
    Severity.RETRAIN_REQUIRED: 2,
    Severity.DESTROY_REQUIRED: 3,
}
"""How much a severity demands of a model; higher is more."""


def parse_explicit(value: str) -> ExplicitStatus:
    """The status a caller asked for, or ValueError saying what may be set."""
    try:
        return ExplicitStatus(value)
    except ValueError:
        pass
    if value == ModelStatus.FLAGGED.value:
        raise ValueError(
            "'flagged' cannot be set: it is derived from the model's active flags;"
            f" settable statuses are {', '.join(SETTABLE)}"
        )
    raise ValueError(f"unknown status {value!r}; settable statuses are {', '.join(SETTABLE)}")


@dataclass(frozen=True, slots=True)
class StatusChange:
    """The verdict on a requested change of the explicit status."""

    current: ExplicitStatus
    requested: ExplicitStatus
    refusal: str | None = None
    """Why it is refused; None when accepted."""

    @property
    def accepted(self) -> bool:
        return self.refusal is None

    @property
    def changes(self) -> bool:
        """Accepted and different from the current status (a history entry is written)."""
        return self.accepted and self.requested is not self.current


def decide_change(
    current: ExplicitStatus | None, requested: ExplicitStatus, *, destroy_flags: int = 0
) -> StatusChange:
    """Whether the explicit status may change from ``current`` (None: never set, i.e.
    ``active``) to ``requested``, given how many active ``destroy_required`` flags the model
    has. The refusal says precisely why and what is possible instead."""
    now = current or ExplicitStatus.ACTIVE
    if requested is now:
        return StatusChange(now, requested)
    if requested not in TRANSITIONS[now]:
        if now is ExplicitStatus.DESTROYED:
            why = "the model is destroyed, and destruction is final: no status can follow it"
        else:
            allowed = ", ".join(sorted(s.value for s in TRANSITIONS[now]))
            why = f"from {now.value} the model may become {allowed}"
        return StatusChange(now, requested, f"cannot change {now.value} → {requested.value}: {why}")
    if (
        destroy_flags
        and now is ExplicitStatus.QUARANTINED
        and requested is not (ExplicitStatus.DESTROYED)
    ):
        return StatusChange(
            now,
            requested,
            f"cannot change quarantined → {requested.value}: the model has {destroy_flags}"
            " active destroy_required flag(s), so its quarantine ends only in destroyed"
            " (or when they are retracted)",
        )
    if destroy_flags and requested is ExplicitStatus.ACTIVE:
        return StatusChange(
            now,
            requested,
            f"cannot change {now.value} → active: the model has {destroy_flags} active"
            " destroy_required flag(s); it cannot be made active until they are retracted",
        )
    return StatusChange(now, requested)


def _flags_models(severities: Iterable[Severity]) -> bool:
    return any(s.flags_models for s in severities)


def effective_status(
    explicit: ExplicitStatus | None, active_flag_severities: Iterable[Severity]
) -> ModelStatus:
    """An override wins; otherwise ``flagged`` while a model-flagging flag is active."""
    if explicit is not None and explicit is not ExplicitStatus.ACTIVE:
        return ModelStatus(explicit.value)
    return ModelStatus.FLAGGED if _flags_models(active_flag_severities) else ModelStatus.ACTIVE


def is_clean(explicit: ExplicitStatus | None, active_flag_severities: Iterable[Severity]) -> bool:
    """Whether the model is clean: no active flag, and no override saying quarantined or
    destroyed (a superseded model with no flag is clean)."""
    if explicit in (ExplicitStatus.QUARANTINED, ExplicitStatus.DESTROYED):
        return False
    return not _flags_models(active_flag_severities)


# --- what-if impact ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VersionImpact:
    """A dataset version that would get a finding of ``severity`` (a what-if answer)."""

    dataset: DatasetRef
    severity: Severity


@dataclass(frozen=True)
class ModelImpact:
    """A model that would be flagged: the most severe cause first, shortest path."""

    model: ModelRef
    severity: Severity
    evidence_path: tuple[str, ...]
    causes: tuple[tuple[DatasetRef, Severity, tuple[str, ...]], ...]
    """Every (dataset version, severity, path) that would flag it."""
    current_severities: frozenset[Severity] = field(default_factory=frozenset)

    @property
    def already_flagged(self) -> bool:
        """The model already has an active flag of the same severity."""
        return self.severity in self.current_severities

    @property
    def current_severity(self) -> Severity | None:
        return max(self.current_severities, key=SEVERITY_RANK.__getitem__, default=None)

    @property
    def escalates(self) -> bool:
        """It would demand more of the model than any of its active flags does now."""
        current = self.current_severity
        return current is None or SEVERITY_RANK[self.severity] > SEVERITY_RANK[current]


def impact_on_models(
    versions: Sequence[VersionImpact],
    edges: Mapping[tuple[str, str, str], Sequence[LineageEdge]],
    current: Mapping[tuple[str, str, str], frozenset[Severity]],
) -> list[ModelImpact]:
    """The models downstream of each version, each with the most severe what-if cause.

    ``edges`` holds, per dataset version, its downstream edges
    (``LineageRepository.downstream_edges``); ``current`` the severities of each model's
    active flags. A version whose severity flags no model (``exclude_from_future``)
    reaches nothing. Paths come from ``flags_for_finding`` (shortest, deterministic).
    """
    causes: dict[tuple[str, str, str], list[tuple[DatasetRef, Severity, tuple[str, ...]]]] = {}
    refs: dict[tuple[str, str, str], ModelRef] = {}
    for impact in versions:
        if not impact.severity.flags_models:
            continue
        d = impact.dataset
        finding = _synthetic_finding(impact)
        for flag in flags_for_finding(finding, edges.get((d.namespace, d.name, d.version), ())):
            key = (flag.model.namespace, flag.model.name, flag.model.version)
            refs[key] = flag.model
            causes.setdefault(key, []).append((d, impact.severity, flag.evidence_path))
    result = []
    for key in sorted(causes):
        ordered = sorted(
            causes[key], key=lambda c: (-SEVERITY_RANK[c[1]], len(c[2]), c[0].key, c[2])
        )
        result.append(
            ModelImpact(
                model=refs[key],
                severity=ordered[0][1],
                evidence_path=ordered[0][2],
                causes=tuple(ordered),
                current_severities=current.get(key, frozenset()),
            )
        )
    return result


def _synthetic_finding(impact: VersionImpact) -> DatasetFinding:
    """A finding that exists only to be propagated (never stored, never published)."""
    return DatasetFinding(
        finding_id=uuid5(NAMESPACE_URL, f"what-if:{impact.dataset.key}|{impact.severity.value}"),
        status=FindingStatus.ACTIVE,
        dataset=impact.dataset,
        severity=impact.severity,
        reason=FindingReason.LATER_WITHDRAWAL,
        policy_id="what-if",
        policy_version="what-if",
        rule="what-if",
        affected_records=0,
        affected_subjects=0,
        detected_at=datetime(1970, 1, 1, tzinfo=UTC),
    )
