"""Scoping a case: from what it asks (its ``scope``) and what the registry and lineage
answer, to the concrete targets frozen into the case. Pure: the answers come in as data.

What a case resolves into (``freeze``), by kind:

==================== ===================================================================
kind                 records (purged by the registry) and dataset versions
==================== ===================================================================
subject_erasure      the subjects' records (of the scope's categories, and below them,
                     when it names any; all of them otherwise), in every sealed version
category_purge       records of the categories (and below), of the jurisdictions when
                     given, collected in ``[collected_from, collected_until)`` when given
dataset_purge        the dataset version's records (its manifest is emptied; records no
                     other sealed version holds are deleted)
model_destruction    none: the model alone
==================== ===================================================================

**Models.** Data cases reach the models trained on the affected dataset versions: the
*direct* ones (a path of runs and datasets from a version to the model, no other model
in between); with ``include_descendants`` also every model derived from those
(*descendants*: lineage downstream, through other models). A model-destruction case
targets its model, and its descendants when chosen. Each model is to be marked
``destroyed`` or ``superseded`` (``model_action``).

**Systems.** Every registered webhook system whose case kinds include the case's kind
gets a task too; the set is frozen with the targets.

The frozen document is canonical JSON; its digest (``sha256:`` + hex of the canonical
bytes) goes into the evidence entry ``scope_frozen``, so the bundle proves what was
approved.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from contracts.base import DatasetRef, ModelRef
from contracts.events import CaseKind
from services.deletion.verify_evidence import canonical

__all__ = [
    "DATA_KINDS",
    "FORMAT",
    "FoundModel",
    "FoundVersion",
    "ScopeRequest",
    "ScopingError",
    "digest",
    "freeze",
    "model_action",
    "models_downstream",
    "parse_request",
    "resolve_models",
    "summary",
    "versions_from_listing",
    "versions_of_subjects",
]

FORMAT = "consenttrace.targets/1"
DATA_KINDS = frozenset({CaseKind.SUBJECT_ERASURE, CaseKind.CATEGORY_PURGE, CaseKind.DATASET_PURGE})
ModelAction = Literal["destroyed", "superseded"]


class ScopingError(ValueError):
    """The case's scope cannot be resolved as it is (it says why)."""


@dataclass(frozen=True, slots=True)
class ScopeRequest:
    """What a case asks for, whatever opened it (legal's API or an automatic cause)."""

    kind: CaseKind
    subjects: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    jurisdictions: tuple[str, ...] = ()
    collected_from: str | None = None
    collected_until: str | None = None
    dataset: DatasetRef | None = None
    model: ModelRef | None = None
    include_descendants: bool = False
    severity: str | None = None
    """A model-destruction case opened from a flag: the flag's severity."""

    def selector(self) -> dict[str, Any]:
        """What the registry (and every webhook system) is asked to purge."""
        return {
            "subjects": list(self.subjects),
            "categories": list(self.categories),
            "jurisdictions": list(self.jurisdictions),
            "collected_from": self.collected_from,
            "collected_until": self.collected_until,
            "dataset_versions": [self.dataset.model_dump()] if self.dataset else [],
        }

    def selector_keys(self) -> list[str]:
        """The selector as target strings: ``subject:S``, ``category:C``, ``dataset:…``."""
        if self.kind is CaseKind.SUBJECT_ERASURE:
            return [f"subject:{s}" for s in self.subjects]
        if self.kind is CaseKind.CATEGORY_PURGE:
            return [f"category:{c}" for c in self.categories]
        if self.kind is CaseKind.DATASET_PURGE and self.dataset is not None:
            return [self.dataset.key]
        return []


def _strings(value: Any) -> tuple[str, ...]:
    if not value:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(sorted({str(v) for v in value}))


def parse_request(kind: CaseKind | str, scope: Mapping[str, Any]) -> ScopeRequest:
    """The request of a case's stored ``scope`` (manual: ``CaseScope``; automatic: the
    erasure's ``subject_ids``/``data_categories``, the flag's ``model``/``severity``)."""
    kind = CaseKind(kind)
    categories = _strings([*scope.get("categories", ()), *scope.get("data_categories", ())])
    dataset = scope.get("dataset")
    model = scope.get("model")
    request = ScopeRequest(
        kind=kind,
        subjects=_strings(scope.get("subject_ids")),
        categories=categories,
        jurisdictions=_strings(scope.get("jurisdictions")),
        collected_from=scope.get("collected_from"),
        collected_until=scope.get("collected_until"),
        dataset=DatasetRef.model_validate(dataset) if dataset else None,
        model=ModelRef.model_validate(model) if model else None,
        include_descendants=bool(scope.get("include_descendants", False)),
        severity=scope.get("severity"),
    )
    needs = {
        CaseKind.SUBJECT_ERASURE: (bool(request.subjects), "subject_ids"),
        CaseKind.CATEGORY_PURGE: (bool(request.categories), "categories"),
        CaseKind.DATASET_PURGE: (request.dataset is not None, "dataset"),
        CaseKind.MODEL_DESTRUCTION: (request.model is not None, "model"),
    }
    present, name = needs[kind]
    if not present:
        raise ScopingError(f"a {kind.value} case needs scope.{name}: nothing to resolve")
    return request


# --- dataset versions -----------------------------------------------------------------


@dataclass(slots=True)
class FoundVersion:
    """A sealed dataset version holding records in scope, as found at scoping."""

    dataset: DatasetRef
    records: int = 0
    """Records in scope it holds."""
    record_count: int | None = None
    """Every record it holds (its manifest's count), when known."""
    subjects: set[str] = field(default_factory=set)
    categories: dict[str, int] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset.model_dump(),
            "key": self.dataset.key,
            "records": self.records,
            "record_count": self.record_count,
            "subjects": sorted(self.subjects),
            "categories": dict(sorted(self.categories.items())),
        }


def _covered(category: str, wanted: Sequence[str]) -> bool:
    return not wanted or any(category == c or category.startswith(c + ".") for c in wanted)


def versions_of_subjects(
    answers: Mapping[str, Sequence[Mapping[str, Any]]], categories: Sequence[str] = ()
) -> list[FoundVersion]:
    """Merge the registry's ``GET /dataset-versions?subject_id=S`` answers (one list per
    subject, possibly asked per category and concatenated) into one entry per version,
    counting each (subject, version, category) once and only the categories in scope."""
    found: dict[str, FoundVersion] = {}
    seen: set[tuple[str, str, str]] = set()
    for subject, versions in answers.items():
        for version in versions:
            ref = DatasetRef.model_validate(version["dataset"])
            entry = found.setdefault(
                ref.key, FoundVersion(ref, record_count=version.get("record_count"))
            )
            for category in version.get("categories", ()):
                name = str(category["category"])
                if not _covered(name, categories) or (subject, ref.key, name) in seen:
                    continue
                seen.add((subject, ref.key, name))
                count = int(category["records"])
                entry.records += count
                entry.categories[name] = entry.categories.get(name, 0) + count
                entry.subjects.add(subject)
    return [found[k] for k in sorted(found) if found[k].records]


def versions_from_listing(rows: Iterable[Mapping[str, Any]]) -> list[FoundVersion]:
    """Versions from a listing of ``{"dataset", "records", "record_count"?}`` (a category
    purge's registry answer, or the one version of a dataset purge)."""
    found = [
        FoundVersion(
            DatasetRef.model_validate(row["dataset"]),
            records=int(row.get("records", row.get("record_count", 0)) or 0),
            record_count=row.get("record_count"),
        )
        for row in rows
    ]
    return sorted(found, key=lambda v: v.dataset.key)


# --- models ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FoundModel:
    model: ModelRef
    relation: Literal["case", "direct", "descendant"]
    via: str
    """The dataset version (or model) it was reached from."""
    action: ModelAction
    severities: tuple[str, ...] = ()
    status: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "model": self.model.model_dump(),
            "key": self.model.key,
            "relation": self.relation,
            "via": self.via,
            "action": self.action,
            "severities": list(self.severities),
            "status": self.status,
        }


def model_action(
    kind: CaseKind, *, case_severity: str | None, severities: Iterable[str]
) -> ModelAction:
    """``destroyed`` when the model has an active ``destroy_required`` flag, or the case is
    a model destruction that is not about a ``retrain_required`` flag; ``superseded``
    otherwise (the model must be retrained without the purged data, and the retrained one
    replaces it)."""
    if "destroy_required" in set(severities):
        return "destroyed"
    if kind is CaseKind.MODEL_DESTRUCTION and case_severity != "retrain_required":
        return "destroyed"
    return "superseded"


def _nodes(graph: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {str(n["id"]): n for n in graph.get("graph", ())}


def _model_ref(node: Mapping[str, Any]) -> ModelRef:
    data = node.get("data") or {}
    return ModelRef(namespace=data["namespace"], name=data["name"], version=data["version"])


def models_downstream(
    graph: Mapping[str, Any], start: str
) -> dict[str, tuple[Mapping[str, Any], bool]]:
    """Every model downstream of ``start`` in a lineage graph document (Marquez's shape, as
    ``GET /api/v1/lineage/graph?direction=downstream`` answers), each with whether it is
    *direct*: reached by a path on which no other model lies. ``start`` itself is never
    among them."""
    nodes = _nodes(graph)

    def out(node_id: str) -> list[str]:
        node = nodes.get(node_id)
        return sorted(str(e["destination"]) for e in (node or {}).get("outEdges", ()))

    def is_model(node_id: str) -> bool:
        return str(nodes.get(node_id, {}).get("type")) == "MODEL"

    direct: set[str] = set()
    frontier, seen = [start], {start}
    while frontier:  # paths that stop at the first model
        current = frontier.pop()
        for nxt in out(current):
            if nxt in seen:
                continue
            seen.add(nxt)
            if is_model(nxt):
                direct.add(nxt)
            else:
                frontier.append(nxt)
    every: set[str] = set()
    frontier, seen = [start], {start}
    while frontier:
        current = frontier.pop()
        for nxt in out(current):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
                if is_model(nxt):
                    every.add(nxt)
    return {key: (nodes[key], key in direct) for key in sorted(every)}


def _severities(node: Mapping[str, Any]) -> tuple[str, ...]:
    flags = (node.get("data") or {}).get("flags") or ()
    return tuple(sorted({str(f.get("severity")) for f in flags if f.get("severity")}))


def resolve_models(
    request: ScopeRequest,
    graphs: Mapping[str, Mapping[str, Any] | None],
) -> list[FoundModel]:
    """The models of the case from the lineage graphs downstream of each start (a dataset
    version key, or the case's model key); a start lineage does not know maps to None."""
    found: dict[str, FoundModel] = {}
    case_key = request.model.key if request.model else None
    if request.model is not None:
        start_graph = graphs.get(request.model.key) or {}
        node = _nodes(start_graph).get(request.model.key, {})
        found[request.model.key] = FoundModel(
            request.model,
            "case",
            request.model.key,
            model_action(
                request.kind, case_severity=request.severity, severities=_severities(node)
            ),
            _severities(node),
            (node.get("data") or {}).get("status"),
        )
    for start in sorted(graphs):
        graph = graphs[start]
        if not graph:
            continue
        for key, (node, direct) in models_downstream(graph, start).items():
            if key == case_key or (not direct and not request.include_descendants):
                continue
            if request.kind is CaseKind.MODEL_DESTRUCTION and not request.include_descendants:
                continue
            relation: Literal["direct", "descendant"] = (
                "direct" if direct and request.kind in DATA_KINDS else "descendant"
            )
            previous = found.get(key)
            if previous is not None and (previous.relation == "direct" or relation != "direct"):
                continue
            severities = _severities(node)
            found[key] = FoundModel(
                _model_ref(node),
                relation,
                start,
                model_action(request.kind, case_severity=request.severity, severities=severities),
                severities,
                (node.get("data") or {}).get("status"),
            )
    return [found[k] for k in sorted(found)]


# --- the frozen document --------------------------------------------------------------


def freeze(
    request: ScopeRequest,
    *,
    versions: Sequence[FoundVersion],
    models: Sequence[FoundModel],
    systems: Sequence[str],
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    """The targets document stored in ``cases.targets`` (and digested into the evidence)."""
    data_case = request.kind in DATA_KINDS
    return {
        "format": FORMAT,
        "kind": request.kind.value,
        "include_descendants": request.include_descendants,
        "records": (
            {
                "selector": request.selector(),
                "keys": request.selector_keys(),
                "found": sum(v.records for v in versions),
            }
            if data_case
            else None
        ),
        "dataset_versions": [v.as_json() for v in sorted(versions, key=lambda v: v.dataset.key)],
        "models": [m.as_json() for m in sorted(models, key=lambda m: m.model.key)],
        "systems": sorted(set(systems)),
        "notes": list(notes),
    }


def digest(targets: Mapping[str, Any]) -> str:
    """``sha256:<hex>`` of the canonical JSON of the frozen targets."""
    return "sha256:" + hashlib.sha256(canonical(dict(targets))).hexdigest()


def summary(targets: Mapping[str, Any]) -> str:
    """One line for a person: how much the case reaches."""
    records = targets.get("records")
    parts = []
    if records is not None:
        parts.append(f"{records['found']} record(s) found now")
    parts.append(f"{len(targets.get('dataset_versions', ()))} dataset version(s)")
    actions: dict[str, int] = {}
    for model in targets.get("models", ()):
        actions[model["action"]] = actions.get(model["action"], 0) + 1
    parts.append(
        f"{len(targets.get('models', ()))} model(s)"
        + (
            " (" + ", ".join(f"{n} to be {a}" for a, n in sorted(actions.items())) + ")"
            if actions
            else ""
        )
    )
    parts.append(f"{len(targets.get('systems', ()))} webhook system(s)")
    return ", ".join(parts)
