"""``python -m services.runtime.casestudy``: generate the case, replay it, report on it.

What ``make demo`` runs once the embedded stack is up (``make dev``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

from services.runtime.casestudy.replay import Stack, replay, settle
from services.runtime.casestudy.report import (
    Report,
    collect,
    execute_case,
    fetch_graph,
    render_terminal,
    write,
)
from services.runtime.casestudy.scenario import generate

REPO_ROOT = Path(__file__).resolve().parents[3]


def say(line: str) -> None:
    print(line, flush=True)


async def run(
    stack: Stack, *, seed: int, members: int, tag: str, out_dir: Path, execute: bool = True
) -> Report:
    """The whole demo; returns the report (also written to ``out_dir``)."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    case = generate(seed, members, tag)
    timings["generate"] = time.perf_counter() - started
    say(
        f"generated {len(case.members):,} members, {len(case.records):,} records,"
        f" {len(case.consent):,} consent changes, {len(case.snapshots)} snapshots,"
        f" {len(case.runs)} training runs (seed {seed})"
    )
    started = time.perf_counter()
    sent = await replay(stack, case, say)
    timings["replay"] = time.perf_counter() - started
    timings["settle"] = await settle(stack, case, sent, say)
    say(f"settled   in {timings['settle']:.1f}s")
    report = await collect(stack, case)
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    if execute:
        started = time.perf_counter()
        executed = await execute_case(stack, report, out_dir, say)
        timings["one case to completion"] = time.perf_counter() - started
        report = await collect(stack, case)  # statuses after the execution
        report.executed = executed
    await fetch_graph(stack, case, report, out_dir)
    report.timings = timings
    write(report, out_dir)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.runtime.casestudy", description=__doc__
    )
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--tag", default="", help="prefix of every name (to share a stack)")
    parser.add_argument("--out", type=Path, default=None, help="report directory")
    parser.add_argument("--no-execute", action="store_true", help="do not carry a case out")
    defaults = Stack()
    for name in ("consent", "registry", "lineage", "deletion"):
        parser.add_argument(f"--{name}", default=getattr(defaults, name))
    args = parser.parse_args(argv)
    stack = Stack(args.consent, args.registry, args.lineage, args.deletion)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out_dir = args.out or REPO_ROOT / ".dev" / "casestudy" / stamp
    report = asyncio.run(
        run(
            stack,
            seed=args.seed,
            members=args.members,
            tag=args.tag,
            out_dir=out_dir,
            execute=not args.no_execute,
        )
    )
    render_terminal(report)
    say(f"report    {out_dir / 'report.md'} (and report.html, lineage picture beside it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
