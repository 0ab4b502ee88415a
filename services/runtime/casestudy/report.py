"""The case study's report, built only from what the services' APIs answer.

The scenario gives the report nothing but names (which dataset versions and models to ask
about); every figure — findings, their counts of records and subjects, flags, evidence
paths, model status, cases — is the registry's, lineage's or deletion's answer.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from services.runtime.casestudy.replay import ReplayError, Say, Stack
from services.runtime.casestudy.scenario import Scenario

__all__ = [
    "CaseRun",
    "Cause",
    "ModelReport",
    "Report",
    "collect",
    "execute_case",
    "render_markdown",
    "render_terminal",
    "write",
]

SEVERITY_ORDER = ("destroy_required", "retrain_required", "review", "exclude_from_future")
VERIFIER = Path(__file__).resolve().parents[2] / "deletion" / "verify_evidence.py"


@dataclass(frozen=True)
class Cause:
    """Active findings of one dataset version that flag a model, grouped by what they
    say: the severity, the finding's reason, the rule (and the engine's reason)."""

    dataset: str
    severity: str
    reason: str
    rule_id: str
    detail: str
    """``basis_not_yet_lawful``… for an improper use; the withdrawal effect otherwise."""
    policy: str
    rule: str
    findings: int
    records: int
    subjects: int
    path: tuple[str, ...]


@dataclass
class ModelReport:
    key: str
    ref: dict[str, str]
    status: str
    clean: bool
    severity: str | None
    causes: list[Cause]
    case: dict[str, Any] | None


@dataclass
class CaseRun:
    """The case the demo drove to its end, and its verified evidence."""

    case_id: str
    model: str
    states: list[str]
    final: dict[str, Any]
    bundle: Path | None = None
    verified: bool = False
    verifier_output: str = ""


@dataclass
class Report:
    seed: int
    members: int
    policy: list[dict[str, Any]]
    datasets: list[dict[str, Any]]
    models: list[ModelReport]
    cases: list[dict[str, Any]]
    graph_svg: Path | None = None
    graph_note: str = ""
    mermaid: str = ""
    executed: CaseRun | None = None
    timings: dict[str, float] = field(default_factory=dict)


def _split_rule(text: str) -> tuple[str, str]:
    """``default-on (not eligible: basis_not_yet_lawful): …`` → (rule id, detail)."""
    head, _, rest = text.partition(" (")
    detail = rest.split(")", 1)[0]
    detail = detail.removeprefix("not eligible: ").removeprefix("withdrawal requires ")
    return head, detail


async def _json(client: httpx.AsyncClient, url: str, **params: str) -> Any:
    response = await client.get(url, params=params)
    if response.status_code != 200:
        raise ReplayError(f"GET {url} {params}: {response.status_code} {response.text[:500]}")
    return response.json()


async def collect(stack: Stack, case: Scenario) -> Report:
    """Ask the services about the scenario's dataset versions and models."""
    async with httpx.AsyncClient(timeout=60) as client:
        policies = await _json(client, f"{stack.registry}/api/v1/policy-versions")
        findings: dict[str, dict[str, Any]] = {}
        datasets = []
        for snapshot in case.snapshots:
            if not snapshot.record_ids:
                continue
            version = await _json(
                client, f"{stack.registry}/api/v1/dataset-version", **snapshot.ref()
            )
            rows = await _json(
                client,
                f"{stack.registry}/api/v1/findings",
                **snapshot.ref(),
                status="active",
                limit="10000",
            )
            by_severity: dict[str, list[int]] = {}
            for row in rows:
                finding = row["finding"]
                findings[finding["finding_id"]] = finding
                totals = by_severity.setdefault(finding["severity"], [0, 0, 0])
                totals[0] += 1
                totals[1] += finding["affected_records"]
                totals[2] += finding["affected_subjects"]
            datasets.append(
                {
                    "key": snapshot.key,
                    "used_at": version.get("used_at"),
                    "records": version.get("record_count"),
                    "description": snapshot.description,
                    "findings": by_severity,
                }
            )
        models = []
        for model in case.models():
            status = await _json(client, f"{stack.lineage}/api/v1/model-status", **model.ref())
            models.append(_model_report(model.key, model.ref(), status, findings))
        all_cases = await _json(client, f"{stack.deletion}/api/v1/cases")
        ours = {f"model:{m.key}": m for m in models}
        cases = [c for c in all_cases if c.get("cause_key") in ours]
        for c in cases:
            ours[c["cause_key"]].case = c
    return Report(
        seed=case.seed,
        members=len(case.members),
        policy=[p for p in policies if p.get("policy_id") == case.policies[0]["policy_id"]],
        datasets=datasets,
        models=models,
        cases=cases,
    )


def _model_report(
    key: str, ref: dict[str, str], status: dict[str, Any], findings: dict[str, dict[str, Any]]
) -> ModelReport:
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for cause in status.get("causes", []):
        finding = findings.get(cause["finding_id"])
        if finding is None:  # not one of the scenario's datasets' active findings
            continue
        rule_id, detail = _split_rule(finding["rule"])
        dataset = cause["evidence_path"][0]
        group_key = (dataset, finding["severity"], finding["reason"], rule_id, detail)
        group = groups.setdefault(
            group_key,
            {
                "policy": f"{finding['policy_id']} {finding['policy_version']}",
                "rule": finding["rule"],
                "findings": set(),
                "records": 0,
                "subjects": 0,
                "path": tuple(cause["evidence_path"]),
            },
        )
        if finding["finding_id"] in group["findings"]:
            continue  # the same finding reaching the model by two paths counts once
        group["findings"].add(finding["finding_id"])
        group["records"] += finding["affected_records"]
        group["subjects"] += finding["affected_subjects"]
    causes = sorted(
        (
            Cause(
                dataset=k[0],
                severity=k[1],
                reason=k[2],
                rule_id=k[3],
                detail=k[4],
                policy=g["policy"],
                rule=g["rule"],
                findings=len(g["findings"]),
                records=g["records"],
                subjects=g["subjects"],
                path=g["path"],
            )
            for k, g in groups.items()
        ),
        key=lambda c: (SEVERITY_ORDER.index(c.severity), c.dataset, c.rule_id, c.detail),
    )
    severities = [c["severity"] for c in status.get("causes", [])]
    severity = min(severities, key=SEVERITY_ORDER.index) if severities else None
    return ModelReport(key, ref, status["status"], status["clean"], severity, causes, None)


# --- the graph ---------------------------------------------------------------------------


async def fetch_graph(stack: Stack, case: Scenario, report: Report, out_dir: Path) -> None:
    """The lineage picture from lineage's own ``graph.svg`` (downstream of the posts
    corpus: every model); without Graphviz on the server, a Mermaid chart drawn from the
    graph's JSON answer instead."""
    posts = next(s for s in case.snapshots if s.name == "member-posts")
    node = f"dataset:{posts.namespace}:{posts.name}"
    params = {"nodeId": node, "direction": "downstream"}
    async with httpx.AsyncClient(timeout=60) as client:
        svg = await client.get(f"{stack.lineage}/api/v1/lineage/graph.svg", params=params)
        graph = await _json(client, f"{stack.lineage}/api/v1/lineage/graph", **params)
    report.mermaid = _mermaid(graph)
    if svg.status_code == 200:
        path = out_dir / "lineage.svg"
        path.write_bytes(svg.content)
        report.graph_svg = path
    else:
        report.graph_note = f"graph.svg answered {svg.status_code}: {svg.text[:300]}"


def _mermaid(graph: dict[str, Any]) -> str:
    nodes = graph.get("graph", [])
    ids = {n["id"]: f"n{i}" for i, n in enumerate(nodes)}
    lines = ["flowchart LR"]
    styles = []
    for n in nodes:
        data = n.get("data", {})
        if n["type"] == "RUN":
            label = (
                data.get("job", {}).get("name", "run")
                if isinstance(data.get("job"), dict)
                else "run"
            )
            lines.append(f'  {ids[n["id"]]}(["{label}"])')
            continue
        label = f"{data.get('name', n['id'])}#{data.get('version', '')}"
        flags = data.get("flags") or []
        if flags:
            worst = min((f["severity"] for f in flags), key=SEVERITY_ORDER.index)
            label += f" ⚑ {worst}"
            styles.append(
                f"  style {ids[n['id']]} fill:"
                + ("#d62728,color:#fff" if worst == "destroy_required" else "#ff9896")
            )
        shape = ('[("', '")]') if n["type"] == "DATASET" else ('["', '"]')
        lines.append(f"  {ids[n['id']]}{shape[0]}{label}{shape[1]}")
    for n in nodes:
        for edge in n.get("outEdges", []):
            if edge["destination"] in ids:
                lines.append(f"  {ids[edge['origin']]} --> {ids[edge['destination']]}")
    return "\n".join(lines + styles)


# --- one case to its end -----------------------------------------------------------------


async def execute_case(
    stack: Stack, report: Report, out_dir: Path, say: Say, *, within: float = 180.0
) -> CaseRun | None:
    """Scope the first model-destruction case (legal:ann), approve it (legal:bob: four
    eyes), follow it to completion, export its evidence bundle and verify it offline."""
    chosen = next((m for m in report.models if m.case and m.severity == "destroy_required"), None)
    if chosen is None or chosen.case is None:
        return None
    case_id = chosen.case["case_id"]
    base = f"{stack.deletion}/api/v1/cases/{case_id}"
    states: list[str] = []
    async with httpx.AsyncClient(timeout=60) as client:
        scoped = await client.post(
            f"{base}/scope", json={"actor": "legal:ann", "reason": "case study: scope"}
        )
        if scoped.status_code != 200:
            raise ReplayError(f"scoping {case_id}: {scoped.status_code} {scoped.text[:500]}")
        states.append(scoped.json()["state"])
        say(f"deletion  case {case_id} scoped by legal:ann -> {states[-1]}")
        approved = await client.post(
            f"{base}/actions",
            json={"command": "approve", "actor": "legal:bob", "reason": "case study: four eyes"},
        )
        if approved.status_code != 200:
            raise ReplayError(f"approving {case_id}: {approved.status_code} {approved.text[:500]}")
        states.append(approved.json()["state"])
        say(f"deletion  case {case_id} approved by legal:bob -> {states[-1]}")
        deadline = time.monotonic() + within
        final = approved.json()
        while final["state"] not in ("completed", "failed", "rejected", "canceled"):
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
            final = await _json(client, base)
            if final["state"] != states[-1]:
                states.append(final["state"])
                say(f"deletion  case {case_id} -> {final['state']}")
        bundle = await client.get(f"{base}/evidence/bundle")
    run = CaseRun(case_id, chosen.key, states, final)
    if bundle.status_code == 200:
        run.bundle = out_dir / f"case-{case_id}.evidence.json"
        run.bundle.write_bytes(bundle.content)
        verify = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, str(VERIFIER), str(run.bundle)],
            capture_output=True,
            text=True,
            check=False,
        )
        run.verified = verify.returncode == 0
        run.verifier_output = (verify.stdout + verify.stderr).strip()
    return run


# --- rendering ---------------------------------------------------------------------------


def _verdict(model: ModelReport) -> str:
    if model.status == "destroyed":
        return "DESTROYED"
    return {
        "destroy_required": "DESTROY",
        "retrain_required": "RETRAIN",
        "review": "REVIEW",
    }.get(model.severity or "", "clean")


def render_markdown(report: Report) -> str:
    out = [
        "# ConsentTrace case study: the 2024 generative-AI setting",
        "",
        f"Seed {report.seed}, {report.members:,} members. Every figure below is an answer of"
        " the services' APIs (registry findings, lineage model status and flags, deletion"
        " cases), not the generator's bookkeeping.",
        "",
        "## Models: what must happen to each, and why",
        "",
        "| model | verdict | status | case |",
        "|---|---|---|---|",
    ]
    for m in report.models:
        case = m.case["case_id"][:8] + " " + m.case["state"] if m.case else ""
        out.append(f"| `{m.key}` | **{_verdict(m)}** | {m.status} | {case} |")
    for m in report.models:
        if not m.causes:
            continue
        out += ["", f"### `{m.key}`: {_verdict(m)}", ""]
        out += [
            "| severity | cause | rule | findings | records | subjects | dataset | path |",
            "|---|---|---|---:|---:|---:|---|---|",
        ]
        for c in m.causes:
            out.append(
                f"| {c.severity} | {c.reason}: {c.detail} | `{c.rule_id}` ({c.policy}) |"
                f" {c.findings} | {c.records:,} | {c.subjects:,} | `{c.dataset}` |"
                f" {' → '.join(c.path)} |"
            )
    out += [
        "",
        "## Training snapshots",
        "",
        "| dataset version | records | findings (active) |",
        "|---|---:|---|",
    ]
    for d in report.datasets:
        found = ", ".join(
            f"{sev}: {n} ({r:,} records, {s:,} subjects)"
            for sev, (n, r, s) in sorted(
                d["findings"].items(), key=lambda kv: SEVERITY_ORDER.index(kv[0])
            )
        )
        out.append(f"| `{d['key']}` — {d['description']} | {d['records']:,} | {found or 'none'} |")
    out += [
        "",
        "## Deletion cases opened",
        "",
        "| case | model | kind | state | severity when opened | days left |",
        "|---|---|---|---|---|---:|",
    ]
    for row in report.cases:
        out.append(
            f"| {row['case_id']} | `{row['cause_key'].removeprefix('model:')}` | {row['kind']} |"
            f" {row['state']} | {row.get('scope', {}).get('severity', '')} |"
            f" {row.get('days_left', '')} |"
        )
    if report.executed:
        e = report.executed
        out += [
            "",
            "## One case carried out",
            "",
            f"Case {e.case_id} (`{e.model}`): scoped by legal:ann, approved by legal:bob;"
            f" states {' → '.join(e.states)}.",
            "",
            f"Evidence bundle: `{e.bundle}` — offline verification:"
            f" **{'verified' if e.verified else 'NOT verified'}**",
            "",
            "```",
            e.verifier_output,
            "```",
        ]
    out += ["", "## Lineage", ""]
    if report.graph_svg:
        out += [f"![lineage, flagged models marked]({report.graph_svg.name})", ""]
    elif report.graph_note:
        out += [f"(No SVG: {report.graph_note}.)", ""]
    if report.mermaid:
        out += ["```mermaid", report.mermaid, "```"]
    if report.timings:
        out += ["", "## Timings", ""]
        out += [f"- {k}: {v:.1f} s" for k, v in report.timings.items()]
    return "\n".join(out) + "\n"


def _short(key: str) -> str:
    """``model:models://ml:assistant-base#2024-08`` → ``assistant-base#2024-08``."""
    return key.rsplit(":", 1)[-1]


def render_terminal(report: Report) -> None:
    """Rich tables on stdout: the verdicts, then each flagged model's causes."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 140))
    colours = {"DESTROY": "bold red", "RETRAIN": "yellow", "DESTROYED": "bold magenta"}
    verdicts = Table(title="Models: what must happen to each")
    for column in ("model", "verdict", "status", "deletion case"):
        verdicts.add_column(column, overflow="fold")
    for m in report.models:
        verdict = _verdict(m)
        case = f"{m.case['case_id']} {m.case['state']}" if m.case else ""
        colour = colours.get(verdict, "green")
        verdicts.add_row(_short(m.key), f"[{colour}]{verdict}[/]", m.status, case)
    console.print(verdicts)
    causes = Table(title="Why: active findings upstream of each flagged model")
    for column in ("model", "severity", "cause", "rule (policy)", "dataset version"):
        causes.add_column(column, overflow="fold")
    for column in ("findings", "records", "subjects"):
        causes.add_column(column, justify="right")
    for m in report.models:
        for c in m.causes:
            causes.add_row(
                _short(m.key),
                c.severity,
                f"{c.reason}: {c.detail}",
                f"{c.rule_id} ({c.policy})",
                _short(c.dataset),
                str(c.findings),
                f"{c.records:,}",
                f"{c.subjects:,}",
            )
    console.print(causes)
    console.print(f"deletion cases opened: {len(report.cases)}")
    if report.executed:
        e = report.executed
        verdict = "[green]verified[/]" if e.verified else "[red]NOT verified[/]"
        console.print(f"case {e.case_id}: {' → '.join(e.states)}; evidence bundle {verdict}")
    if report.graph_svg is None and report.graph_note:
        console.print(f"lineage picture: {report.graph_note}")


def write(report: Report, out_dir: Path) -> Path:
    """``report.md`` and ``report.html`` (the same text; the SVG beside them)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(report)
    (out_dir / "report.md").write_text(markdown)
    from markdown_it import MarkdownIt  # rich's own dependency

    body = MarkdownIt("commonmark").enable("table").render(markdown)
    (out_dir / "report.html").write_text(
        "<!doctype html><meta charset=utf-8><title>ConsentTrace case study</title>"
        "<style>body{font-family:sans-serif;max-width:80em;margin:auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>"
        f"<body>{body}</body>"
    )
    (out_dir / "report.json").write_text(json.dumps(_jsonable(report), indent=1, default=str))
    return out_dir / "report.md"


def _jsonable(report: Report) -> dict[str, Any]:
    return {
        "seed": report.seed,
        "members": report.members,
        "models": [
            {
                "model": m.key,
                "status": m.status,
                "clean": m.clean,
                "severity": m.severity,
                "case": m.case["case_id"] if m.case else None,
                "causes": [c.__dict__ for c in m.causes],
            }
            for m in report.models
        ],
        "datasets": report.datasets,
        "cases": report.cases,
        "executed": report.executed.__dict__ if report.executed else None,
    }
