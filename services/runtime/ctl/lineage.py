"""``consenttrace lineage …``: the lineage graph, model status and inputs, what-if, flags."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from services.runtime.ctl.client import CtlError, Ref, UsageProblem, parse_ref, stored_body
from services.runtime.ctl.options import JsonOpt, ModelArg, config_of
from services.runtime.ctl.output import cell, emit, emit_json, fields, say, table
from services.runtime.ctl.transfer import byte_progress, receive

__all__ = ["Direction", "app", "graph_tables", "node_info", "ref_text"]

app = typer.Typer(help="Lineage: the graph around a node, models' status and inputs, what-if.")


class Direction(StrEnum):
    BOTH = "both"
    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"


NodeArg = Annotated[
    str,
    typer.Argument(
        metavar="NODE",
        help="dataset:NS:NAME#VERSION, model:NS:NAME#VERSION, run:UUID or job:NS:NAME"
        " (dataset:NS:NAME without a version: every version).",
        show_default=False,
    ),
]
DepthOpt = Annotated[
    int | None,
    typer.Option(
        min=0, help="Runs away from the node (default: the service's).", show_default=False
    ),
]
AsOfOpt = Annotated[
    str | None,
    typer.Option(
        "--as-of", help="Only edges reported by then (ISO 8601 with offset).", show_default=False
    ),
]
PictureOpt = Annotated[
    Path | None,
    typer.Option(
        dir_okay=False, help="Write the picture (Graphviz) here instead.", show_default=False
    ),
]


def ref_text(ref: Mapping[str, Any] | None) -> str:
    if not ref:
        return "-"
    return f"{ref.get('namespace')}:{ref.get('name')}#{ref.get('version')}"


def node_info(node: Mapping[str, Any]) -> Text:
    data = node.get("data") or {}
    if node.get("type") in ("DATASET", "MODEL"):
        parts: list[tuple[str, str]] = []
        if data.get("flagged"):
            severities = sorted({str(f.get("severity")) for f in data.get("flags") or ()})
            parts.append((f"flagged {', '.join(severities)}", "bold red"))
        if data.get("findings"):
            parts.append((f"{len(data['findings'])} finding(s)", "red"))
        if data.get("status"):
            parts.append((f"status {data['status']}", ""))
        return Text("  ").join(Text(t, style=s) for t, s in parts) if parts else Text("clean")
    if node.get("type") == "RUN":
        job = data.get("job") or {}
        return Text(f"{job.get('name')} {data.get('state') or ''}".strip())
    return Text(f"{len(data.get('runs') or ())} run(s)")


def graph_tables(document: Mapping[str, Any]) -> tuple[Any, Any]:
    nodes = document.get("graph") or []
    node_table = table(
        ("NODE", "TYPE", "INFO"),
        ((n.get("id"), n.get("type"), node_info(n)) for n in nodes),
        title=f"{len(nodes)} node(s)",
    )
    edges = sorted(
        {(e["origin"], e["destination"]) for n in nodes for e in n.get("outEdges") or ()}
    )
    return node_table, table(("FROM", "TO"), edges, title=f"{len(edges)} edge(s)")


def _graph(
    ctx: typer.Context,
    node: str,
    direction: Direction,
    depth: int | None,
    as_of: str | None,
    svg: Path | None,
    png: Path | None,
    json_flag: bool,
) -> None:
    config = config_of(ctx, json_flag)
    params = {"nodeId": node, "direction": direction.value, "depth": depth, "asOf": as_of}
    if svg and png:
        raise UsageProblem("give --svg or --png, not both")
    picture = svg or png
    with config.api("lineage") as api:
        if picture is None:
            document = api.get("/api/v1/lineage/graph", params)
        else:
            suffix = "svg" if svg else "png"
            with (
                byte_progress(config.progress) as progress,
                api.stream("GET", f"/api/v1/lineage/graph.{suffix}", params=params) as response,
                picture.open("wb") as sink,
            ):
                size = receive(response, sink, progress, progress.add_task(suffix, total=None))
            say(f"wrote {picture} ({size} bytes)", "green")
            return
    if config.json:
        emit_json(document)
        return
    emit(*graph_tables(document))


@app.command("graph")
def graph(
    ctx: typer.Context,
    node: NodeArg,
    direction: Annotated[Direction, typer.Option(help="Which way to walk.")] = Direction.BOTH,
    depth: DepthOpt = None,
    as_of: AsOfOpt = None,
    svg: PictureOpt = None,
    png: PictureOpt = None,
    json_: JsonOpt = False,
) -> None:
    """The lineage graph around a node: flagged models, findings on datasets, runs."""
    _graph(ctx, node, direction, depth, as_of, svg, png, json_)


@app.command("upstream")
def upstream(
    ctx: typer.Context,
    node: NodeArg,
    depth: DepthOpt = None,
    as_of: AsOfOpt = None,
    svg: PictureOpt = None,
    png: PictureOpt = None,
    json_: JsonOpt = False,
) -> None:
    """What a node was built from (``graph --direction upstream``)."""
    _graph(ctx, node, Direction.UPSTREAM, depth, as_of, svg, png, json_)


@app.command("downstream")
def downstream(
    ctx: typer.Context,
    node: NodeArg,
    depth: DepthOpt = None,
    as_of: AsOfOpt = None,
    svg: PictureOpt = None,
    png: PictureOpt = None,
    json_: JsonOpt = False,
) -> None:
    """What was built from a node (``graph --direction downstream``)."""
    _graph(ctx, node, Direction.DOWNSTREAM, depth, as_of, svg, png, json_)


@app.command("status")
def status(
    ctx: typer.Context,
    model: ModelArg,
    require_clean: Annotated[
        bool,
        typer.Option("--require-clean", help="Exit 1 unless the model is clean (for pipelines)."),
    ] = False,
    json_: JsonOpt = False,
) -> None:
    """Is this model clean? Its status, the flags behind it, notes and history."""
    config = config_of(ctx, json_)
    with config.api("lineage") as api:
        answer = api.get("/api/v1/model-status", model.params())
    if config.json:
        emit_json(answer)
    else:
        clean = bool(answer.get("clean"))
        emit(
            fields(
                [
                    ("model", ref_text(answer.get("model"))),
                    ("status", answer.get("status")),
                    ("override", answer.get("explicit_status")),
                    ("clean", Text("yes", "green") if clean else Text("NO", "bold red")),
                ]
            )
        )
        if answer.get("causes"):
            emit(
                table(
                    ("SEVERITY", "REASON", "FINDING", "FLAGGED", "PATH"),
                    (
                        (
                            c.get("severity"),
                            c.get("reason"),
                            c.get("finding_id"),
                            c.get("flagged_at"),
                            " → ".join(c.get("evidence_path") or ()),
                        )
                        for c in answer["causes"]
                    ),
                    title="causes",
                )
            )
        if answer.get("notes"):
            emit(
                table(
                    ("SEVERITY", "DATASET", "FINDING"),
                    (
                        (n.get("severity"), ref_text(n.get("dataset")), n.get("finding_id"))
                        for n in answer["notes"]
                    ),
                    title="notes",
                )
            )
    if require_clean and not answer.get("clean"):
        raise CtlError(f"model {model.node_id('model')} is not clean: {answer.get('status')}")


@app.command("inputs")
def inputs(ctx: typer.Context, model: ModelArg, json_: JsonOpt = False) -> None:
    """The dataset versions a model was trained from (through parent models too), with
    what each holds (records and subjects, categories, jurisdictions)."""
    config = config_of(ctx, json_)
    with config.api("lineage") as api:
        answer = api.get("/api/v1/model-inputs", model.params())
    if config.json:
        emit_json(answer)
        return
    rows = []
    for d in answer.get("datasets") or ():
        comp = d.get("composition") or {}
        rows.append(
            (
                ref_text(d.get("dataset")),
                d.get("depth"),
                d.get("registered"),
                comp.get("records"),
                comp.get("subjects"),
            )
        )
    emit(
        table(("DATASET", "DEPTH", "REGISTERED", "RECORDS", "SUBJECTS"), rows, title="datasets"),
        fields(
            [
                (
                    "models upstream",
                    [ref_text(m.get("model")) for m in answer.get("models") or ()] or None,
                ),
                ("categories", answer.get("categories")),
                ("jurisdictions", answer.get("jurisdictions")),
            ]
        ),
    )


@app.command("what-if")
def what_if(
    ctx: typer.Context,
    subject: Annotated[str | None, typer.Option(show_default=False)] = None,
    category: Annotated[str | None, typer.Option(show_default=False)] = None,
    jurisdiction: Annotated[str | None, typer.Option(show_default=False)] = None,
    purpose: Annotated[str | None, typer.Option(show_default=False)] = None,
    at: Annotated[
        str | None, typer.Option(help="ISO 8601 with offset.", show_default=False)
    ] = None,
    max_subjects: Annotated[int | None, typer.Option(min=1, show_default=False)] = None,
    json_: JsonOpt = False,
) -> None:
    """Which models would a withdrawal flag (one of --subject, --category, --jurisdiction)?
    Nothing is changed."""
    scope = {"subject_id": subject, "category": category, "jurisdiction": jurisdiction}
    if sum(v is not None for v in scope.values()) != 1:
        raise UsageProblem("give exactly one of --subject, --category, --jurisdiction")
    config = config_of(ctx, json_)
    with config.api("lineage") as api:
        answer = api.get(
            "/api/v1/what-if",
            {**scope, "purpose": purpose, "at": at, "max_subjects": max_subjects},
        )
    if config.json:
        emit_json(answer)
        return
    models = answer.get("models") or []
    say(
        f"{len(models)} model(s) would be flagged; {len(answer.get('dataset_versions') or ())}"
        f" dataset version(s) affected"
        + ("  (subjects truncated)" if answer.get("truncated") else "")
    )
    if models:
        emit(
            table(
                ("MODEL", "SEVERITY", "NOW", "ESCALATES", "STATUS", "VIA"),
                (
                    (
                        ref_text(m.get("model")),
                        m.get("severity"),
                        m.get("current_severity"),
                        m.get("escalates"),
                        m.get("status"),
                        [ref_text(v.get("dataset")) for v in m.get("via") or ()],
                    )
                    for m in models
                ),
            )
        )


@app.command("flags")
def flags(
    ctx: typer.Context,
    model: Annotated[
        Ref | None,
        typer.Argument(parser=parse_ref, metavar="[MODEL]", show_default=False),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Model flags with their evidence paths (every model's, or one's)."""
    config = config_of(ctx, json_)
    with config.api("lineage") as api:
        rows = api.get("/api/v1/model-flags", model.params() if model else None)
    if config.json:
        emit_json(rows)
        return
    emit(
        table(
            ("MODEL", "SEVERITY", "STATUS", "REASON", "FLAGGED", "PATH"),
            (
                (
                    ref_text(f.get("model")),
                    f.get("severity"),
                    f.get("status"),
                    f.get("reason"),
                    f.get("flagged_at"),
                    " → ".join(f.get("evidence_path") or ()),
                )
                for f in (stored_body(r, "flag") for r in rows)
            ),
        )
        if rows
        else cell("no flags")
    )
