"""Model use cases: status (read and change), inputs, and what-if impact.

- Status changes are the only writes here: one transaction, serialized per model, a row in
  ``model_status`` and one in ``model_status_history``. No event is published (no topic
  carries model status yet).
- Inputs and what-if read lineage's graph and ask the registry over HTTP (reads only,
  never on the event path). Their lineage reads run in one read-only, repeatable-read
  transaction: nothing can be written, and every read sees the same graph.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from contracts.base import DatasetRef, ModelRef
from contracts.events import DatasetFinding, ModelFlag, Severity
from services.lineage.adapters.registry_client import RegistryClient
from services.lineage.adapters.repository import LineageRepository
from services.lineage.adapters.status import ModelStatusStore
from services.lineage.domain.propagation import LineageEdge
from services.lineage.domain.status import (
    ExplicitStatus,
    ModelImpact,
    VersionImpact,
    decide_change,
    effective_status,
    impact_on_models,
    is_clean,
)
from services.runtime.db import Connection, Pool
from services.runtime.settings import ServiceSettings

__all__ = [
    "ModelNotFound",
    "StatusRefused",
    "model_inputs",
    "model_status",
    "set_model_status",
    "what_if",
]


class ModelNotFound(Exception):
    """Lineage has never seen this model version in a run (404)."""


class StatusRefused(Exception):
    """The requested status change is not allowed (409); the message says why."""


async def _require_model(store: ModelStatusStore, model: ModelRef) -> None:
    seen = await store.seen_as(model)
    if seen is None:
        raise ModelNotFound(f"lineage has never seen {model.key} as the input or output of a run")
    if not seen:
        raise ModelNotFound(
            f"lineage knows {model.namespace}:{model.name}#{model.version} only as a dataset"
            " (no run reported it with datasetType MODEL)"
        )


async def model_status(conn: Connection, model: ModelRef) -> dict[str, Any]:
    """The model's effective status, whether it is clean, why (its active flags), notes
    (``exclude_from_future`` findings upstream, which flag no model) and its history."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _status_view(ModelStatusStore(conn), model)


async def _status_view(store: ModelStatusStore, model: ModelRef) -> dict[str, Any]:
    await _require_model(store, model)
    explicit = await store.explicit(model)
    flags = [f for f in await store.active_flags(model) if f.severity.flags_models]
    severities = [f.severity for f in flags]
    status = explicit.status if explicit else None
    notes = await store.findings_upstream(model, [Severity.EXCLUDE_FROM_FUTURE])
    return {
        "model": model.model_dump(),
        "status": effective_status(status, severities).value,
        "explicit_status": status.value if status else None,
        "clean": is_clean(status, severities),
        "causes": [_cause(f) for f in flags],
        "notes": [_note(f) for f in notes],
        "history": await store.history(model),
    }


def _cause(flag: ModelFlag) -> dict[str, Any]:
    return {
        "flag_id": str(flag.flag_id),
        "finding_id": str(flag.finding_id),
        "severity": flag.severity.value,
        "reason": flag.reason.value,
        "evidence_path": list(flag.evidence_path),
        "flagged_at": flag.flagged_at,
    }


def _note(finding: DatasetFinding) -> dict[str, Any]:
    return {
        "finding_id": str(finding.finding_id),
        "dataset": finding.dataset.model_dump(),
        "severity": finding.severity.value,
        "reason": finding.reason.value,
        "policy_id": finding.policy_id,
        "policy_version": finding.policy_version,
        "rule": finding.rule,
        "affected_records": finding.affected_records,
        "affected_subjects": finding.affected_subjects,
        "detected_at": finding.detected_at,
    }


async def set_model_status(
    conn: Connection,
    model: ModelRef,
    requested: ExplicitStatus,
    *,
    actor: str,
    reason: str,
    now: datetime,
) -> dict[str, Any]:
    """Change the model's explicit status if the rules allow it (``domain.status``);
    setting the status it already has changes nothing. Returns the new state."""
    async with conn.transaction():
        store = ModelStatusStore(conn)
        await _require_model(store, model)
        await store.lock(model)
        explicit = await store.explicit(model)
        destroy_flags = sum(
            1 for f in await store.active_flags(model) if f.severity is Severity.DESTROY_REQUIRED
        )
        change = decide_change(
            explicit.status if explicit else None, requested, destroy_flags=destroy_flags
        )
        if change.refusal is not None:
            raise StatusRefused(f"{model.key}: {change.refusal}")
        if change.changes:
            await store.set_explicit(model, requested, actor, reason, now)
        return await _status_view(store, model)


async def model_inputs(pool: Pool, model: ModelRef, settings: ServiceSettings) -> dict[str, Any]:
    """The dataset versions upstream of the model (through parent models too), each with
    the registry's composition (None when the registry holds no sealed version of it).
    No connection is held while the registry answers."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        store = ModelStatusStore(conn)
        await _require_model(store, model)
        upstream = await store.upstream(model)
    datasets = [n for n in upstream if not n.is_model]
    async with RegistryClient.from_settings(settings) as registry:
        compositions = await registry.compositions([n.ref for n in datasets])
    categories = sorted(
        {c["category"] for comp in compositions if comp for c in comp.get("categories", ())}
    )
    jurisdictions = sorted(
        {j["jurisdiction"] for comp in compositions if comp for j in comp.get("jurisdictions", ())}
    )
    return {
        "model": model.model_dump(),
        "datasets": [
            {
                "dataset": node.ref.model_dump(),
                "depth": node.depth,
                "registered": comp is not None,
                "composition": _composition_figures(comp),
            }
            for node, comp in zip(datasets, compositions, strict=True)
        ],
        "models": [{"model": n.ref.model_dump(), "depth": n.depth} for n in upstream if n.is_model],
        "categories": categories,
        "jurisdictions": jurisdictions,
    }


def _composition_figures(composition: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if composition is None:
        return None
    return {k: v for k, v in composition.items() if k != "dataset"}


async def what_if(
    pool: Pool, settings: ServiceSettings, request: Mapping[str, Any]
) -> dict[str, Any]:
    """The registry's what-if of a withdrawal, carried through the lineage graph: every
    model that would be flagged, with the severity, the shortest path, and how it stands
    now. Nothing is stored or published (a synthetic finding per dataset version is only
    propagated in memory)."""
    async with RegistryClient.from_settings(settings) as registry:
        answer = await registry.what_if_withdrawal(request)
    impacts = [
        VersionImpact(DatasetRef.model_validate(v["dataset"]), Severity(v["severity"]))
        for v in answer["dataset_versions"]
    ]
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        lineage = LineageRepository(conn)
        store = ModelStatusStore(conn)
        edges: dict[tuple[str, str, str], list[LineageEdge]] = {}
        for impact in impacts:
            d = impact.dataset
            if impact.severity.flags_models and (d.namespace, d.name, d.version) not in edges:
                edges[(d.namespace, d.name, d.version)] = await lineage.downstream_edges(
                    d.namespace, d.name, d.version
                )
        reached = {
            (e.target.namespace, e.target.name, e.target.version)
            for group in edges.values()
            for e in group
            if e.target.is_model
        }
        current = await store.active_severities(sorted(reached))
        explicit = await store.explicit_statuses(sorted(reached))
    models = impact_on_models(impacts, edges, current)
    return {
        **{k: answer[k] for k in ("scope", "purpose", "at", "truncated", "subjects")},
        "dataset_versions": answer["dataset_versions"],
        "models": [_impact(m, explicit) for m in models],
    }


def _impact(
    impact: ModelImpact, explicit: Mapping[tuple[str, str, str], ExplicitStatus]
) -> dict[str, Any]:
    m = impact.model
    status = explicit.get((m.namespace, m.name, m.version))
    current = impact.current_severity
    return {
        "model": m.model_dump(),
        "severity": impact.severity.value,
        "evidence_path": list(impact.evidence_path),
        "via": [
            {"dataset": d.model_dump(), "severity": s.value, "evidence_path": list(p)}
            for d, s, p in impact.causes
        ],
        "already_flagged": impact.already_flagged,
        "current_severity": current.value if current else None,
        "escalates": impact.escalates,
        "status": effective_status(status, impact.current_severities).value,
    }
