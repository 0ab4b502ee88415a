"""``consenttrace cases follow``: poll a case, show its state and tasks as they change,
until it completes (exit 0), ends otherwise or fails (exit 1), or the timeout passes (1)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import typer
from rich.console import Console
from rich.text import Text

from services.runtime.ctl.client import CtlError, Unreachable
from services.runtime.ctl.options import JsonOpt, config_of
from services.runtime.ctl.output import emit_json, err, say, table, warn

__all__ = ["ENDS", "CaseNotDone", "follow_case", "snapshot", "task_table", "watch"]

ENDS: Mapping[str, bool] = {
    "completed": True,
    "failed": False,
    "rejected": False,
    "canceled": False,
}
"""The states ``follow`` stops at, and whether each is a success."""

Poll = Callable[[], dict[str, Any]]


class CaseNotDone(CtlError):
    """The case ended without completing, or did not end in time."""


def _tasks(case: Mapping[str, Any]) -> list[dict[str, Any]]:
    execution = case.get("execution")
    return list(execution.get("tasks") or []) if isinstance(execution, dict) else []


def snapshot(case: Mapping[str, Any]) -> str:
    """One line: the state and how its tasks stand (what ``follow`` prints on a change)."""
    line = str(case.get("state"))
    for key, label in (("held_from", "held from"), ("failed_step", "failed at")):
        if case.get(key):
            line += f" ({label} {case[key]})"
    tasks = _tasks(case)
    if tasks:
        counts = Counter(str(t.get("state")) for t in tasks)
        line += f"  tasks {counts.get('done', 0)}/{len(tasks)} done"
        line += "".join(f", {n} {s}" for s, n in sorted(counts.items()) if s != "done")
    execution = case.get("execution")
    missing = execution.get("missing") if isinstance(execution, dict) else None
    if missing:
        line += f"  missing: {'; '.join(map(str, missing[:3]))}"
    return line


def watch(
    poll: Poll,
    *,
    timeout: float,
    interval: float,
    on_change: Callable[[dict[str, Any]], None],
    on_wait: Callable[[str], None] = lambda _: None,
    on_outage: Callable[[str], None] = warn,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Poll until the case reaches one of ``ENDS``; the case. A poll that cannot reach the
    service is retried until the timeout (then ``Unreachable``); a refusal ends it."""
    deadline = clock() + timeout
    last: str | None = None
    case: dict[str, Any] | None = None
    outage: Unreachable | None = None
    while True:
        try:
            case = poll()
        except Unreachable as exc:
            if outage is None:
                on_outage(f"{exc.message}; retrying")
            outage = exc
        else:
            outage = None
            now = snapshot(case)
            if now != last:
                on_change(case)
                last = now
            if case.get("state") in ENDS:
                return case
        left = deadline - clock()
        if left <= 0:
            if outage is not None:
                raise outage
            assert case is not None
            raise CaseNotDone(
                f"case {case.get('case_id')} is still {case.get('state')} after {timeout:g}s"
            )
        on_wait(f"{last or 'waiting'}  ({left:.0f}s left)")
        sleep(min(interval, left))


@contextmanager
def _spinner(console: Console, enabled: bool, text: str) -> Iterator[Callable[[str], None]]:
    """A spinner with the latest state (lines printed on ``console`` go above it)."""
    if not enabled:
        yield lambda _: None
        return
    with console.status(text) as status:
        yield lambda message: status.update(f"{text}: {message}")


def follow_case(
    ctx: typer.Context,
    case_id: Annotated[UUID, typer.Argument(metavar="CASE", show_default=False)],
    timeout: Annotated[
        float, typer.Option(min=0, help="Give up after this many seconds (exit 1).")
    ] = 600.0,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between polls.")] = 2.0,
    json_: JsonOpt = False,
) -> None:
    """Show a case's state and tasks as they change until it completes (exit 0) or ends
    failed, rejected or canceled (exit 1)."""
    config = config_of(ctx, json_)
    quiet = config.json
    console = err()

    def changed(case: dict[str, Any]) -> None:
        if not quiet:
            console.print(Text(f"{datetime.now(UTC):%H:%M:%S}  {snapshot(case)}"))

    with (
        config.api("deletion") as api,
        _spinner(console, config.progress, f"case {str(case_id)[:8]}") as on_wait,
    ):
        case = watch(
            lambda: api.get(f"/api/v1/cases/{case_id}"),
            timeout=timeout,
            interval=interval,
            on_change=changed,
            on_wait=on_wait,
            on_outage=lambda message: console.print(Text(message, style="yellow")),
        )
    if config.json:
        emit_json(case)
    state = str(case.get("state"))
    if not ENDS.get(state, False):
        history = case.get("history") or [{}]
        why = history[-1].get("reason") or ""
        raise CaseNotDone(f"case {case_id} ended {state}" + (f": {why}" if why else ""))
    if not quiet:
        say(f"case {case_id} completed", "green")


def task_table(tasks: Sequence[Mapping[str, Any]]) -> Any:
    return table(
        ("SYSTEM", "ACTION", "STATE", "ATTEMPT", "REASON"),
        (
            (
                t.get("system") or t.get("target_system"),
                t.get("action"),
                t.get("state"),
                t.get("attempt"),
                t.get("reason") or None,
            )
            for t in tasks
        ),
        title="tasks",
    )
