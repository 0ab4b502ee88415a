"""The demo's case study, small, on the four services: its report against a computation of
our own.

The report is built from the services' API answers only. Here the expected findings, model
verdicts and cases are computed from the generated data alone, by reading the case's rules
directly (dates, regions, categories, who opted out or in when) — not with the eligibility
engine or any code of the services.

The services get a Tansu broker of their own: the registry judges every snapshot under
*every* policy on its broker, and other tests publish policies that speak to every
``ai.training`` purpose (the shared-broker rule cannot be met with this case's policy,
which must speak to ``ai.training.generative``).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest

from services.runtime import embedded
from services.runtime.casestudy.__main__ import run
from services.runtime.casestudy.replay import Stack
from services.runtime.casestudy.report import Report
from services.runtime.casestudy.scenario import (
    CATEGORY,
    DATES,
    ConsentChange,
    Record,
    Scenario,
    generate,
    region,
)
from services.runtime.testing import ServiceProcess, migrate_service

pytestmark = pytest.mark.e2e

SEED, MEMBERS = 20241, 700
FLAGGING = ("destroy_required", "retrain_required")


@pytest.fixture
def stack(make_database: Callable[[str], str], tmp_path: Path) -> Iterator[Stack]:
    with embedded.TansuBroker(log_path=tmp_path / "tansu.log") as broker:
        procs = {}
        for name in ("consent", "registry", "lineage", "deletion"):
            database = make_database(f"case_{name}")
            migrate_service(name, database)
            procs[name] = ServiceProcess(name, database, broker.bootstrap_servers, tmp_path)
        registry, lineage = procs["registry"].url, procs["lineage"].url
        procs["lineage"].extra_env = {"REGISTRY_URL": registry}
        procs["deletion"].extra_env = {"REGISTRY_URL": registry, "LINEAGE_URL": lineage}
        try:
            for service in procs.values():
                service.start()
            for service in procs.values():
                service.wait_ready()
            yield Stack(*(s.url for s in procs.values()))
        finally:
            for service in procs.values():
                service.stop()


# --- the independent computation ---------------------------------------------------------

Key = tuple[str, str, str, str]
"""(severity, reason, rule id, detail) of a finding."""


def _latest(
    changes: list[ConsentChange], at: datetime, reaches: Callable[[ConsentChange], bool]
) -> ConsentChange | None:
    known = [c for c in changes if c.effective_at <= at and reaches(c)]
    return max(known, key=lambda c: c.effective_at) if known else None


def _judge(record: Record, changes: list[ConsentChange], at: datetime) -> tuple[str, str] | None:
    """None when the use was lawful at ``at``; else (the rule, why not), as the case reads."""
    where = region(record.jurisdiction)
    if record.category == CATEGORY["premium_message"]:
        return "premium-private-messages", "no_lawful_basis"  # the re-reading
    opted_out = _latest(changes, at, lambda c: c.data_categories == ("user",)) is not None
    if where == "HK":
        return "hk-exempt", "no_lawful_basis"
    if where == "GB" and at >= DATES["uk_suspension"]:
        return "gb-suspended", "no_lawful_basis"
    if where in ("EU", "CH"):
        if record.category == CATEGORY["message"]:
            return "eea-ch-private-messages", "no_lawful_basis"
        if at < DATES["eu_training"]:
            return "eea-ch-exempt", "no_lawful_basis"
        return ("eea-ch-legitimate-interest", "withdrawn") if opted_out else None
    if record.category == CATEGORY["message"]:
        latest = _latest(
            changes,
            at,
            lambda c: "user.content.private" in c.data_categories or c.data_categories == ("user",),
        )
        if latest is None:
            return "private-messages", "no_consent"
        return None if latest.state == "granted" else ("private-messages", "withdrawn")
    if opted_out:
        return "default-on", "withdrawn"
    if at < DATES["disclosure"]:
        return "default-on", "basis_not_yet_lawful"
    return None


def _withdrawal_effect(record: Record) -> tuple[str, str]:
    """The rule governing a lawful use, and what a later withdrawal then requires."""
    if record.category == CATEGORY["message"]:
        return "private-messages", "retrain"
    if region(record.jurisdiction) in ("EU", "CH"):
        return "eea-ch-legitimate-interest", "exclude_from_future"
    return "default-on", "exclude_from_future"


def expected_findings(case: Scenario) -> dict[str, dict[Key, tuple[int, int, int]]]:
    """Per dataset version key: (findings, records, subjects) per finding kind."""
    by_subject: dict[str, list[ConsentChange]] = defaultdict(list)
    for change in case.consent:
        by_subject[change.subject_id].append(change)
    out: dict[str, dict[Key, tuple[int, int, int]]] = {}
    for snapshot in case.snapshots:
        improper: dict[tuple[str, str], list[Record]] = defaultdict(list)
        withdrawals: dict[tuple[str, int, str, str], list[Record]] = defaultdict(list)
        for record in case.snapshot_records(snapshot):
            changes = by_subject[record.subject_id]
            verdict = _judge(record, changes, snapshot.used_at)
            if verdict is not None:
                improper[verdict].append(record)
                continue
            rule, requires = _withdrawal_effect(record)
            for i, c in enumerate(changes):
                reaches = c.data_categories == ("user",) or (
                    c.data_categories == ("user.content.private",)
                    and record.category == CATEGORY["message"]
                )
                if c.state == "withdrawn" and c.effective_at > snapshot.used_at and reaches:
                    withdrawals[(record.subject_id, i, rule, requires)].append(record)
        kinds: dict[Key, list[int]] = defaultdict(lambda: [0, 0, 0])
        for (rule, why), records in improper.items():
            totals = kinds[("destroy_required", "improper_use", rule, why)]
            totals[0] += 1
            totals[1] += len(records)
            totals[2] += len({r.subject_id for r in records})
        for (_, _, rule, requires), records in withdrawals.items():
            severity = "retrain_required" if requires == "retrain" else requires
            totals = kinds[(severity, "later_withdrawal", rule, requires)]
            totals[0] += 1
            totals[1] += len(records)
            totals[2] += 1
        out[snapshot.key] = {k: (v[0], v[1], v[2]) for k, v in kinds.items()}
    return out


def upstream_datasets(case: Scenario) -> dict[str, set[str]]:
    ups: dict[str, set[str]] = {}
    for r in case.runs:  # runs come in story order: parents before children
        ups[r.output.key] = {d.key for d in r.datasets}.union(*(ups[p.key] for p in r.parents))
    return ups


# --- the test ----------------------------------------------------------------------------


async def test_the_report_says_what_the_generated_case_implies(
    stack: Stack, tmp_path: Path
) -> None:
    case = generate(SEED, MEMBERS)
    report: Report = await asyncio.wait_for(
        run(stack, seed=SEED, members=MEMBERS, tag="", out_dir=tmp_path / "report"), timeout=150
    )
    expected = expected_findings(case)

    # Findings per dataset version, per severity: counts, records, subjects.
    for dataset in report.datasets:
        want: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for (severity, *_), (n, records, subjects) in expected[dataset["key"]].items():
            want[severity] = [
                a + b for a, b in zip(want[severity], (n, records, subjects), strict=True)
            ]
        assert dataset["findings"] == dict(want), dataset["key"]
        assert dataset["records"] == len(
            next(s for s in case.snapshots if s.key == dataset["key"]).record_ids
        )

    # Each model: its verdict and every cause that flags it, with its figures.
    upstream = upstream_datasets(case)
    flagged = set()
    for model in report.models:
        want_causes = {
            (key, kind): figures
            for key in upstream[model.key]
            for kind, figures in expected[key].items()
            if kind[0] in FLAGGING
        }
        got = {
            (c.dataset, (c.severity, c.reason, c.rule_id, c.detail)): (
                c.findings,
                c.records,
                c.subjects,
            )
            for c in model.causes
        }
        assert got == want_causes, model.key
        severities = {kind[0] for _, kind in want_causes}
        want_severity = next((s for s in FLAGGING if s in severities), None)
        assert model.severity == want_severity, model.key
        if want_severity:
            flagged.add(f"model:{model.key}")
        assert all(c.path[0] == c.dataset and c.path[-1] == model.key for c in model.causes)

    # The case is rich enough to mean something: both readings and several causes show.
    kinds = {kind for per in expected.values() for kind in per}
    assert ("destroy_required", "improper_use", "default-on", "basis_not_yet_lawful") in kinds
    assert (
        "destroy_required",
        "improper_use",
        "premium-private-messages",
        "no_lawful_basis",
    ) in kinds
    assert any(k[0] == "retrain_required" for k in kinds)
    assert any(k[0] == "exclude_from_future" for k in kinds)

    # One case per flagged model, opened by the deletion service; one carried out, verified.
    assert {c["cause_key"] for c in report.cases} == flagged
    assert all(c["kind"] == "model_destruction" for c in report.cases)
    assert report.executed is not None and report.executed.final["state"] == "completed"
    assert report.executed.verified, report.executed.verifier_output
    destroyed = next(m for m in report.models if m.key == report.executed.model)
    assert destroyed.status == "destroyed"
    assert (tmp_path / "report" / "report.md").read_text().count("model:") > len(report.models)
    assert report.graph_svg is None or report.graph_svg.read_text().lstrip().startswith(
        ("<?xml", "<svg")
    )
