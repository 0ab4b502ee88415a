"""``consenttrace cases …``: legal's deletion cases (the deletion service's case API)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Annotated, Any
from uuid import UUID

import typer
from rich.text import Text

from contracts.events import CaseKind, CaseState
from services.deletion.domain.cases import LegalBasis, Regime
from services.deletion.domain.workflow import Command
from services.runtime.ctl import evidence, follow
from services.runtime.ctl.client import Ref, parse_ref
from services.runtime.ctl.options import JsonOpt, config_of
from services.runtime.ctl.output import cell, emit, emit_json, fields, say, table

__all__ = [
    "CLOSED",
    "app",
    "case_fields",
    "case_rows",
    "days_left",
    "due",
    "history_table",
]

app = typer.Typer(help="Deletion cases: open, list, show, act on them, follow, evidence.")
app.add_typer(evidence.app, name="evidence")
app.command("follow")(follow.follow_case)

CLOSED = frozenset({CaseState.COMPLETED, CaseState.REJECTED, CaseState.CANCELED})

CaseArg = Annotated[UUID, typer.Argument(metavar="CASE", help="The case id.", show_default=False)]
ActorOpt = Annotated[
    str | None,
    typer.Option(
        "--actor",
        help="Who acts. With API keys the key's principal is the actor (omit this); with"
        " AUTH_MODE=off it is required.",
        show_default=False,
    ),
]
VersionOpt = Annotated[
    int | None,
    typer.Option(
        "--expected-version",
        help="Refuse if the case changed since this version (see `cases show`).",
        show_default=False,
    ),
]
ReasonOpt = Annotated[str, typer.Option("--reason", help="Why (recorded in the evidence).")]
RequiredReason = Annotated[
    str, typer.Option("--reason", help="Why (required: recorded in the evidence).")
]
_REF = "NS:NAME#VERSION"
_TIME = "ISO 8601 with offset"


def _many(help_text: str) -> Any:
    return typer.Option(help=f"{help_text} (repeat for more).", show_default=False)


def _ref(help_text: str) -> Any:
    return typer.Option(parser=parse_ref, metavar=_REF, help=help_text, show_default=False)


@app.command("open")
def open_case(
    ctx: typer.Context,
    kind: Annotated[CaseKind, typer.Option(help="What the case erases.", show_default=False)],
    legal_basis: Annotated[
        LegalBasis, typer.Option("--legal-basis", help="Why.", show_default=False)
    ],
    regime: Annotated[Regime, typer.Option(help="Sets the deadline.", show_default=False)],
    subject: Annotated[list[str] | None, _many("A subject id")] = None,
    category: Annotated[list[str] | None, _many("A data category, e.g. user.content")] = None,
    jurisdiction: Annotated[list[str] | None, _many("Only records of a jurisdiction")] = None,
    dataset: Annotated[Ref | None, _ref("The dataset version to purge.")] = None,
    model: Annotated[Ref | None, _ref("The model version to destroy.")] = None,
    collected_from: Annotated[
        str | None, typer.Option(help=f"Records collected since ({_TIME}).", show_default=False)
    ] = None,
    collected_until: Annotated[
        str | None, typer.Option(help=f"Records collected before ({_TIME}).", show_default=False)
    ] = None,
    include_descendants: Annotated[
        bool,
        typer.Option("--include-descendants", help="Models trained from the target models too."),
    ] = False,
    received_at: Annotated[
        str | None,
        typer.Option(
            help="When the request arrived (ISO 8601 with offset; default now).", show_default=False
        ),
    ] = None,
    requester: Annotated[
        str | None,
        typer.Option(
            help="With AUTH_MODE=off: who opens it (else your key's principal).", show_default=False
        ),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(help="Sending the same key again opens nothing new.", show_default=False),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Open a case. Scope by kind: subject_erasure needs --subject, category_purge
    --category, dataset_purge --dataset, model_destruction --model."""
    config = config_of(ctx, json_)
    scope: dict[str, Any] = {
        "subject_ids": subject or None,
        "categories": category or None,
        "jurisdictions": jurisdiction or None,
        "dataset": dataset.params() if dataset else None,
        "model": model.params() if model else None,
        "collected_from": collected_from,
        "collected_until": collected_until,
        "include_descendants": include_descendants or None,
    }
    body = {
        "kind": kind.value,
        "legal_basis": legal_basis.value,
        "regime": regime.value,
        "requester": requester,
        "received_at": received_at,
        "scope": {k: v for k, v in scope.items() if v is not None},
    }
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
    with config.api("deletion") as api:
        status, case = api.post(
            "/api/v1/cases", {k: v for k, v in body.items() if v is not None}, headers=headers
        )
    if config.json:
        emit_json(case)
        return
    verb = "opened" if status == 201 else "already open (same idempotency key)"
    say(f"case {case['case_id']} {verb}", "green" if status == 201 else None)
    emit(case_fields(case))


@app.command("list")
def list_cases(
    ctx: typer.Context,
    state: Annotated[
        list[CaseState] | None, typer.Option(help="Only these states.", show_default=False)
    ] = None,
    kind: Annotated[CaseKind | None, typer.Option(show_default=False)] = None,
    open_only: Annotated[bool, typer.Option("--open", help="Only open cases.")] = False,
    json_: JsonOpt = False,
) -> None:
    """Every case, most urgent first: overdue, due within 7 days, the rest; closed last."""
    config = config_of(ctx, json_)
    with config.api("deletion") as api:
        found: list[dict[str, Any]] = api.get("/api/v1/cases")
    states = {s.value for s in state or ()}
    shown = [
        c
        for c in found
        if (not states or c.get("state") in states)
        and (kind is None or c.get("kind") == kind.value)
        and not (open_only and c.get("state") in CLOSED)
    ]
    if config.json:
        emit_json(shown)
        return
    if not shown:
        say("no cases" + (" match" if len(found) else ""))
        return
    emit(case_rows(shown))


@app.command("show")
def show_case(ctx: typer.Context, case_id: CaseArg, json_: JsonOpt = False) -> None:
    """One case: its scope, deadline, history, evidence head and (once executing) tasks."""
    config = config_of(ctx, json_)
    with config.api("deletion") as api:
        case = api.get(f"/api/v1/cases/{case_id}")
    if config.json:
        emit_json(case)
        return
    emit(case_fields(case))
    if case.get("history"):
        emit(Text(""), history_table(case["history"]))
    tasks = (case.get("execution") or {}).get("tasks") or []
    if tasks:
        emit(Text(""), follow.task_table(tasks))


def _act(
    ctx: typer.Context,
    case_id: UUID,
    command: str,
    reason: str,
    actor: str | None,
    expected_version: int | None,
    json_flag: bool,
) -> None:
    config = config_of(ctx, json_flag)
    body: dict[str, Any] = {"command": command, "actor": actor, "reason": reason}
    if expected_version is not None:
        body["expected_version"] = expected_version
    with config.api("deletion") as api:
        _, case = api.post(
            f"/api/v1/cases/{case_id}/actions", {k: v for k, v in body.items() if v is not None}
        )
    if config.json:
        emit_json(case)
        return
    step = (case.get("history") or [{}])[-1]
    say(
        f"case {case['case_id']}: {step.get('from_state') or '-'} → {case['state']}"
        f" by {step.get('actor', '?')} (version {case.get('version')})",
        "green",
    )


@app.command("act")
def act(
    ctx: typer.Context,
    case_id: CaseArg,
    command: Annotated[Command, typer.Argument(help="The workflow command.", show_default=False)],
    reason: ReasonOpt = "",
    actor: ActorOpt = None,
    expected_version: VersionOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Give any workflow command (start_scoping, submit_scope, rescope, start_execution,
    start_verification, complete, fail, …); the commands below are shortcuts."""
    _act(ctx, case_id, command.value, reason, actor, expected_version, json_)


def _shortcut(command: Command, summary: str, *, reason_required: bool) -> None:
    def with_reason(
        ctx: typer.Context,
        case_id: CaseArg,
        reason: RequiredReason,
        actor: ActorOpt = None,
        expected_version: VersionOpt = None,
        json_: JsonOpt = False,
    ) -> None:
        _act(ctx, case_id, command.value, reason, actor, expected_version, json_)

    def optional_reason(
        ctx: typer.Context,
        case_id: CaseArg,
        reason: ReasonOpt = "",
        actor: ActorOpt = None,
        expected_version: VersionOpt = None,
        json_: JsonOpt = False,
    ) -> None:
        _act(ctx, case_id, command.value, reason, actor, expected_version, json_)

    run: Callable[..., None] = with_reason if reason_required else optional_reason
    app.command(command.value, help=summary)(run)


for _command, _summary, _required in (
    (
        Command.APPROVE,
        "Approve a case awaiting approval (a legal approver, never its requester).",
        False,
    ),
    (Command.REJECT, "Reject a case before its approval.", True),
    (Command.HOLD, "Put a case on legal hold (name the matter in --reason).", True),
    (Command.RELEASE, "Release a held case back to where it was.", False),
    (Command.CANCEL, "Cancel a case before irreversible work started.", True),
    (Command.RESUME, "Resume a failed case at the step that failed.", False),
):
    _shortcut(_command, _summary, reason_required=_required)


@app.command("extend")
def extend(
    ctx: typer.Context,
    case_id: CaseArg,
    reason: RequiredReason,
    actor: ActorOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Extend the deadline once, as the regime allows (GDPR two months, CCPA 45 days)."""
    config = config_of(ctx, json_)
    with config.api("deletion") as api:
        _, case = api.post(
            f"/api/v1/cases/{case_id}/extension",
            {k: v for k, v in {"actor": actor, "reason": reason}.items() if v is not None},
        )
    if config.json:
        emit_json(case)
        return
    say(
        f"case {case['case_id']}: deadline {case.get('original_deadline')} →"
        f" {case.get('deadline')} ({due(case)})",
        "green",
    )


# --- rendering --------------------------------------------------------------------------


def days_left(case: Mapping[str, Any]) -> Text:
    days = case.get("days_left")
    if not isinstance(days, int):
        return cell(days)
    if case.get("state") in CLOSED:
        return Text(f"{days}", style="dim")
    if days < 0:
        return Text(f"{-days} overdue", style="bold red")
    return Text(f"{days}", style="yellow" if days <= 7 else "")


def due(case: Mapping[str, Any]) -> str:
    days = case.get("days_left")
    if not isinstance(days, int):
        return "no deadline"
    if case.get("state") in CLOSED:
        return "closed"
    return f"{-days} days overdue" if days < 0 else f"{days} days left"


def case_rows(cases: list[dict[str, Any]]) -> Any:
    return table(
        ("CASE", "KIND", "STATE", "REGIME", "DEADLINE", "DAYS LEFT", "REQUESTER"),
        (
            (
                c.get("case_id"),
                c.get("kind"),
                c.get("state"),
                c.get("regime"),
                str(c.get("deadline", ""))[:10],
                days_left(c),
                c.get("requester"),
            )
            for c in cases
        ),
    )


def case_fields(case: Mapping[str, Any]) -> Any:
    state = str(case.get("state"))
    if case.get("held_from"):
        state += f" (held from {case['held_from']})"
    if case.get("failed_step"):
        state += f" (failed at {case['failed_step']})"
    deadline = f"{case.get('deadline')}  ({due(case)})"
    if case.get("extension_reason"):
        deadline += f", extended from {case.get('original_deadline')}"
    evidence_head = case.get("evidence") or {}
    return fields(
        [
            ("case", case.get("case_id")),
            ("kind", case.get("kind")),
            ("state", state),
            ("legal basis", case.get("legal_basis")),
            ("regime", case.get("regime")),
            ("requester", case.get("requester")),
            ("approved by", case.get("approved_by")),
            ("received", case.get("received_at")),
            ("deadline", deadline),
            ("extension", case.get("extension_reason")),
            ("scope", case.get("scope")),
            ("version", case.get("version")),
            ("trace", case.get("trace_id")),
            (
                "evidence",
                f"{evidence_head['entries']} entries, head {evidence_head['head']}"
                if evidence_head
                else None,
            ),
        ]
    )


def history_table(history: list[dict[str, Any]]) -> Any:
    return table(
        ("AT", "FROM", "TO", "ACTOR", "REASON"),
        (
            (h.get("at"), h.get("from_state"), h.get("to_state"), h.get("actor"), h.get("reason"))
            for h in history
        ),
        title="history",
    )
