"""``consenttrace cases evidence …``: a case's evidence log, its bundle downloaded and
verified, and offline verification (the same checks as ``verify_evidence.py``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import typer

from services.deletion.verify_evidence import BundleInvalid, verify_bundle
from services.runtime.ctl.client import NotVerified
from services.runtime.ctl.options import JsonOpt, config_of
from services.runtime.ctl.output import emit, emit_json, say, table
from services.runtime.ctl.transfer import byte_progress, receive

__all__ = ["app", "check", "summary"]

app = typer.Typer(help="Evidence: the log, the bundle (export and verify it).")

CaseArg = Annotated[UUID, typer.Argument(metavar="CASE", show_default=False)]


def summary(path: Path, bundle: dict[str, Any]) -> dict[str, Any]:
    entries = bundle["entries"]
    return {
        "file": str(path),
        "verified": True,
        "case_id": bundle["case"]["case_id"],
        "state": bundle["case"].get("state"),
        "entries": len(entries),
        "first_at": entries[0].get("at"),
        "last_at": entries[-1].get("at"),
        "head": bundle["head"],
        "digest": bundle["digest"],
    }


def check(path: Path, data: bytes, case_id: UUID | None = None) -> dict[str, Any]:
    """The verified bundle; ``NotVerified`` naming the first failure otherwise."""
    try:
        bundle = verify_bundle(data)
    except BundleInvalid as exc:
        raise NotVerified(f"NOT VERIFIED: {path}: {exc}") from None
    if case_id is not None and bundle["case"]["case_id"] != str(case_id):
        raise NotVerified(
            f"NOT VERIFIED: {path}: the bundle is of case {bundle['case']['case_id']}"
        )
    return bundle


def _report(path: Path, bundle: dict[str, Any], json_output: bool) -> None:
    shown = summary(path, bundle)
    if json_output:
        emit_json(shown)
        return
    say(
        f"VERIFIED: {path}: case {shown['case_id']} ({shown['state']}), {shown['entries']}"
        f" entries, {shown['first_at']} .. {shown['last_at']}, head {shown['head']}",
        "green",
    )


@app.command("export")
def export(
    ctx: typer.Context,
    case_id: CaseArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write it (default case-<id>.evidence.json).",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Also write the bundle's human-readable report (HTML) here.",
            dir_okay=False,
            show_default=False,
        ),
    ] = None,
    json_: JsonOpt = False,
) -> None:
    """Download the case's evidence bundle and verify it. A bundle that fails verification
    is kept as <file>.unverified, for inspection, and the exit code is 1."""
    config = config_of(ctx, json_)
    path = output or Path(f"case-{case_id}.evidence.json")
    part = path.with_name(f".{path.name}.part")
    try:
        with (
            config.api("deletion") as api,
            byte_progress(config.progress) as progress,
            api.stream(
                "GET", f"/api/v1/cases/{case_id}/evidence/bundle", params={"download": "1"}
            ) as response,
            part.open("wb") as sink,
        ):
            length = response.headers.get("content-length")
            task = progress.add_task(
                "evidence bundle", total=int(length) if length and length.isdigit() else None
            )
            receive(response, sink, progress, task)
        data = part.read_bytes()
        try:
            bundle = check(path, data, case_id)
        except NotVerified:
            os.replace(part, path.with_name(path.name + ".unverified"))
            raise
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
    if report is not None:
        report.write_text(str(bundle.get("report", {}).get("content", "")), encoding="utf-8")
    _report(path, bundle, config.json)


@app.command("verify")
def verify(
    ctx: typer.Context,
    bundle_file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE", exists=True, dir_okay=False, readable=True, show_default=False
        ),
    ],
    json_: JsonOpt = False,
) -> None:
    """Verify a bundle offline (no service needed): canonical bytes, every entry's hash and
    link, the head and the digest. Exit 0 verified, 1 not."""
    config = config_of(ctx, json_)
    bundle = check(bundle_file, bundle_file.read_bytes())
    _report(bundle_file, bundle, config.json)


@app.command("log")
def log(ctx: typer.Context, case_id: CaseArg, json_: JsonOpt = False) -> None:
    """The case's evidence log, oldest first (each entry links to the one before)."""
    config = config_of(ctx, json_)
    with config.api("deletion") as api:
        entries = api.get(f"/api/v1/cases/{case_id}/evidence")
    if config.json:
        emit_json(entries)
        return
    emit(
        table(
            ("SEQ", "AT", "KIND", "ACTOR", "HASH"),
            (
                (e.get("seq"), e.get("at"), e.get("kind"), e.get("actor"), e.get("hash"))
                for e in entries
            ),
        )
    )
