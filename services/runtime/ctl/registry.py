"""``consenttrace registry …``: findings, sealed dataset versions, the pre-flight filter."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import typer

from contracts.events import FindingStatus, Severity
from services.runtime.ctl.client import Ref, UsageProblem, parse_ref, stored_body
from services.runtime.ctl.lineage import ref_text
from services.runtime.ctl.options import JsonOpt, RefOpt, config_of
from services.runtime.ctl.output import cell, emit, emit_json, fields, say, table
from services.runtime.ctl.transfer import atomic_file, byte_progress, read_blocks, receive

__all__ = ["COUNT_HEADERS", "FILTER_TIMEOUT_S", "app", "filter_counts"]

app = typer.Typer(help="Registry: findings, sealed dataset versions, the eligibility filter.")

COUNT_HEADERS = {"records": "X-Records", "eligible": "X-Eligible", "excluded": "X-Excluded"}
FILTER_TIMEOUT_S = 600.0
"""The longest wait for one read or write while a big file is filtered."""
_Opt = Annotated[str | None, typer.Option(show_default=False)]


@app.command("findings")
def findings(
    ctx: typer.Context,
    dataset: RefOpt = None,
    subject: _Opt = None,
    severity: Annotated[Severity | None, typer.Option(show_default=False)] = None,
    status: Annotated[FindingStatus | None, typer.Option(show_default=False)] = None,
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of", help="As published by then (ISO 8601 with offset).", show_default=False
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 1000,
    json_: JsonOpt = False,
) -> None:
    """Findings: which dataset versions are affected, how severely, and why."""
    config = config_of(ctx, json_)
    params: dict[str, Any] = {
        **(dataset.params() if dataset else {}),
        "subject_id": subject,
        "severity": severity.value if severity else None,
        "status": status.value if status else None,
        "as_of": as_of,
        "limit": limit,
    }
    with config.api("registry") as api:
        rows = api.get("/api/v1/findings", params)
    if config.json:
        emit_json(rows)
        return
    if not rows:
        say("no findings")
        return
    emit(
        table(
            (
                "DATASET",
                "SEVERITY",
                "STATUS",
                "REASON",
                "RECORDS",
                "SUBJECTS",
                "POLICY",
                "DETECTED",
            ),
            (
                (
                    ref_text(f.get("dataset")),
                    f.get("severity"),
                    f.get("status"),
                    f.get("reason"),
                    f.get("affected_records"),
                    f.get("affected_subjects"),
                    f"{f.get('policy_id')} v{f.get('policy_version')}",
                    f.get("detected_at"),
                )
                for f in (stored_body(r, "finding") for r in rows)
            ),
        )
    )


@app.command("versions")
def versions(
    ctx: typer.Context,
    dataset: Annotated[
        Ref | None,
        typer.Argument(
            parser=parse_ref,
            metavar="[DATASET]",
            help="NAMESPACE:NAME#VERSION: that version.",
            show_default=False,
        ),
    ] = None,
    subject: Annotated[
        str | None,
        typer.Option(
            help="Every sealed version holding this subject's records.", show_default=False
        ),
    ] = None,
    category: _Opt = None,
    as_of: Annotated[str | None, typer.Option("--as-of", show_default=False)] = None,
    composition: Annotated[
        bool,
        typer.Option(
            "--composition", help="With DATASET: records and subjects per category/jurisdiction."
        ),
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Sealed dataset versions: one (DATASET) or a subject's (--subject)."""
    if (dataset is None) == (subject is None):
        raise UsageProblem("give a DATASET or --subject (one of them)")
    config = config_of(ctx, json_)
    with config.api("registry") as api:
        if subject is not None:
            answer = api.get(
                "/api/v1/dataset-versions",
                {"subject_id": subject, "category": category, "as_of": as_of},
            )
        else:
            assert dataset is not None
            answer = api.get("/api/v1/dataset-version", dataset.params())
            if composition:
                answer["composition"] = api.get(
                    "/api/v1/dataset-version/composition", dataset.params()
                )
    if config.json:
        emit_json(answer)
        return
    if subject is not None:
        emit(
            table(
                ("DATASET", "PURPOSE", "SEALED", "USED AT", "RECORDS", "SUBJECT'S", "CATEGORIES"),
                (
                    (
                        ref_text(v.get("dataset")),
                        v.get("purpose"),
                        v.get("sealed_at"),
                        v.get("used_at"),
                        v.get("record_count"),
                        v.get("subject_records"),
                        [c.get("category") for c in v.get("categories") or ()],
                    )
                    for v in answer
                ),
            )
            if answer
            else cell("no sealed version holds this subject's records")
        )
        return
    emit(_version_fields(answer))
    for part, key in (("categories", "category"), ("jurisdictions", "jurisdiction")):
        rows = (answer.get("composition") or {}).get(part)
        if rows:
            emit(
                table(
                    (key.upper(), "RECORDS", "SUBJECTS"),
                    ((r.get(key), r.get("records"), r.get("subjects")) for r in rows),
                    title=part,
                )
            )


def _version_fields(v: dict[str, Any]) -> Any:
    comp = v.get("composition") or {}
    return fields(
        [
            ("dataset", ref_text(v.get("dataset"))),
            ("purpose", v.get("purpose")),
            ("sealed", v.get("sealed_at")),
            ("used at", v.get("used_at")),
            ("training started", v.get("training_started_at")),
            ("records", v.get("record_count")),
            ("subjects", comp.get("subjects")),
            ("upload", v.get("upload_id")),
        ]
    )


def filter_counts(headers: Any) -> dict[str, int | None]:
    counts: dict[str, int | None] = {}
    for key, header in COUNT_HEADERS.items():
        value = headers.get(header)
        counts[key] = int(value) if value is not None and value.isdigit() else None
    return counts


@app.command("filter")
def filter_file(
    ctx: typer.Context,
    source: Annotated[
        Path,
        typer.Argument(
            metavar="FILE",
            help="NDJSON records, one per line as in a registration upload ('-': stdin).",
            exists=True,
            dir_okay=False,
            readable=True,
            allow_dash=True,
            show_default=False,
        ),
    ],
    purpose: Annotated[
        str, typer.Option(help="The intended use, e.g. ai.training.", show_default=False)
    ],
    at: Annotated[
        str | None,
        typer.Option(
            help="Time of the use (ISO 8601 with offset; default now).", show_default=False
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            dir_okay=False,
            help="Write the eligible lines here (default stdout).",
            show_default=False,
        ),
    ] = None,
    summary: Annotated[
        bool, typer.Option("--summary", help="Only the counts and why records were excluded.")
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Stream a (big) NDJSON file through the pre-flight eligibility filter: the eligible
    lines come back byte for byte, in order, ready to register."""
    config = config_of(ctx, json_)
    from_stdin = str(source) == "-"
    size = None if from_stdin else source.stat().st_size
    params = {"purpose": purpose, "at": at, "report": "summary" if summary else "lines"}
    opened: Any = nullcontext(sys.stdin.buffer) if from_stdin else source.open("rb")
    with (
        opened as fh,
        config.api("registry") as api,
        byte_progress(config.progress) as progress,
    ):
        sending = progress.add_task(
            f"filtering {'stdin' if from_stdin else source.name}", total=size
        )
        body = read_blocks(fh, lambda n: progress.advance(sending, n))
        with api.stream(
            "POST",
            "/api/v1/eligibility/filter",
            params=params,
            content=body,
            headers={"Content-Type": "application/x-ndjson"},
            transfer_timeout=FILTER_TIMEOUT_S,
        ) as response:
            counts = filter_counts(response.headers)
            if summary:
                response.read()
                answer = response.json()
            else:
                receiving = progress.add_task("eligible lines", total=None)
                sink_cm: Any = atomic_file(output) if output else nullcontext(_stdout_bytes())
                with sink_cm as sink:
                    receive(response, sink, progress, receiving)
    if summary:
        _show_summary(answer, config.json)
        return
    line = (
        f"{counts['records']} records: {counts['eligible']} eligible,"
        f" {counts['excluded']} excluded" + (f" → {output}" if output else "")
    )
    if config.json and output:
        emit_json({**counts, "output": str(output)})
    else:
        say(line, "green")


def _stdout_bytes() -> BinaryIO:
    return sys.stdout.buffer


def _show_summary(answer: dict[str, Any], json_output: bool) -> None:
    if json_output:
        emit_json(answer)
        return
    emit(
        fields(
            [
                ("purpose", answer.get("purpose")),
                ("at", answer.get("at")),
                (
                    "policies",
                    [
                        f"{p.get('policy_id')} v{p.get('version')}"
                        for p in answer.get("policies") or ()
                    ]
                    or None,
                ),
                ("records", answer.get("records")),
                ("eligible", answer.get("eligible")),
                ("excluded", answer.get("excluded")),
            ]
        )
    )
    by_reason = answer.get("excluded_by_reason") or {}
    if by_reason:
        emit(table(("REASON", "EXCLUDED"), sorted(by_reason.items()), title="excluded by reason"))
    sample = answer.get("sample_excluded") or []
    if sample:
        emit(
            table(
                ("SOURCE", "RECORD", "SUBJECT", "CATEGORY", "REASON", "POLICY", "RULE"),
                (
                    (
                        s.get("source_system"),
                        s.get("record_id"),
                        s.get("subject_id"),
                        s.get("category"),
                        s.get("reason"),
                        s.get("policy_id"),
                        s.get("rule_id"),
                    )
                    for s in sample
                ),
                title="sample of excluded records",
            )
        )
