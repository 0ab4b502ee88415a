"""The whole benchmark set, one after the other, and a summary: a table and a plot.

    python bench/run_all.py [--quick] [--only NAME ...] [--collect-only]

Runs each benchmark script as its own process (each starts and stops its own broker,
databases and services, so one failing leaves the others measurable), then reads the JSON
each wrote to ``bench/results/`` and writes ``bench/results/summary-<UTC timestamp>.md``
(figure, target, measured, the machine's limit measured in the same script's run) and
``summary-<UTC timestamp>.svg`` (each rate beside its machine limit, log scale). ``--quick``
uses sizes that finish in a few minutes on an idle 2-core machine; the default sizes are
the issue's. ``--collect-only`` runs nothing and summarises the newest JSON of each script.
See ``bench/README.md``. Not a test: nothing here asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from math import log10
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, RESULTS_DIR, SERVICES, Row, load_average, log, utc_stamp

BENCH = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Step:
    """One script run: a name, the script, its arguments in quick and full mode."""

    name: str
    script: str
    quick: tuple[str, ...]
    full: tuple[str, ...]
    matches: Callable[[Row], bool] = lambda meta: True
    """Which of the script's JSON files (by their ``meta``) this step's figures come from."""


STEPS = (
    Step(
        "latency at 1000/s",
        "withdrawal_latency",
        ("-n", "1000", "-r", "1000", "-k", "1", "--kafka-messages", "20000"),
        ("-n", "5000", "-r", "1000", "-k", "3"),
        lambda meta: meta.get("rate", 0) >= 1000,
    ),
    Step(
        "latency below saturation",
        "withdrawal_latency",
        ("-n", "200", "-r", "20", "-k", "1", "--kafka-messages", "20000"),
        ("-n", "1000", "-r", "40", "-k", "3"),
        lambda meta: meta.get("rate", 0) < 1000,
    ),
    Step(
        "snapshot registration",
        "snapshot_registration",
        ("--records", "100000", "--chunk", "20000", "--memberships", "0", "--skip-reregister"),
        ("--records", "1000000", "--memberships", "0"),
    ),
    Step(
        "lineage queries",
        "lineage_graph",
        ("-n", "20000", "--width", "2000", "--window", "20", "-q", "60", "-k", "1"),
        ("-k", "3"),
    ),
    Step(
        "replay",
        "replay",
        ("--subjects", "2000", "--withdrawals", "500"),
        ("--subjects", "50000", "--withdrawals", "10000"),
    ),
)


# ------------------------------------------------------------------------------ running


def run_step(step: Step, quick: bool, logs: Path) -> Path | None:
    """Run one script; the JSON it wrote, or None if it failed (its output is kept)."""
    before = set(RESULTS_DIR.glob(f"{step.script}-*.json"))
    args = step.quick if quick else step.full
    command = [sys.executable, str(BENCH / f"{step.script}.py"), *args]
    out = logs / f"{step.name.replace(' ', '_').replace('/', '_')}.log"
    log(f"{step.name}: {' '.join(command[1:])} (output in {out})")
    started = time.perf_counter()
    with out.open("wb") as sink:
        code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, check=False)
    elapsed = time.perf_counter() - started
    new = sorted(set(RESULTS_DIR.glob(f"{step.script}-*.json")) - before)
    if code.returncode != 0 or not new:
        log(f"{step.name}: failed (exit {code.returncode}) after {elapsed:.0f} s; see {out}")
        return None
    log(f"{step.name}: done in {elapsed:.0f} s → {new[-1].name}")
    return new[-1]


def newest(step: Step) -> Path | None:
    """The newest JSON of the step's script that is the step's (``--collect-only``)."""
    for path in sorted(RESULTS_DIR.glob(f"{step.script}-*.json"), reverse=True):
        with contextlib.suppress(ValueError, OSError):
            if step.matches(json.loads(path.read_text()).get("meta", {})):
                return path
    return None


# ---------------------------------------------------------------------------- the figures


@dataclass
class Figure:
    """One row of the summary; ``rate``/``limit_rate`` (per second) also go into the plot."""

    figure: str
    target: str
    measured: str
    limit: str
    source: str
    rate: float | None = None
    limit_rate: float | None = None
    target_rate: float | None = None


def _get(data: Any, *path: str | int) -> Any:
    for key in path:
        try:
            data = data[key]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _f(value: Any, digits: int = 0, unit: str = "") -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:,.{digits}f}{unit}"


def latency_figures(step: str, data: Row, source: str, *, with_target: bool) -> list[Figure]:
    median, meta = data["median"], data["meta"]
    kafka, pg = data["limits"]["kafka"], data["limits"]["postgres"]
    rate = meta["rate"]
    lat = median["latency_ms"]
    hop = _get(kafka, "hop", "p50")
    latency = [
        Figure(
            f"withdrawal → model flag, p50 / p99 ({step}: offered {rate:g}/s,"
            f" sent {_f(median['sent_per_s'])}/s, N={meta['withdrawals']}, {meta['runs']} run(s))",
            "p99 ≤ 250 ms at 1,000/s" if with_target else "-",
            f"{_f(lat['p50'], 0, ' ms')} / {_f(lat['p99'], 0, ' ms')}",
            f"one Kafka hop p50 {_f(hop, 1, ' ms')}; Postgres INSERT+COMMIT"
            f" {_f(pg['insert_commit_mean_ms'], 2, ' ms')}",
            source,
        )
    ]
    if not with_target:
        return latency
    return [
        *latency,
        Figure(
            f"sustained throughput, flags/s ({step})",
            "1,000/s",
            _f(median["throughput_per_s"], 1, "/s"),
            f"Kafka produce {_f(kafka['produce_send_per_s'])} msg/s; Postgres INSERT+COMMIT"
            f" {_f(pg['insert_commit_per_s'])}/s",
            source,
            median["throughput_per_s"],
            pg["insert_commit_per_s"],
            1000,
        ),
    ]


def snapshot_figures(data: Row, source: str) -> list[Figure]:
    phases = _get(data, "runs", "chunked upload, new records") or []
    end = next((p for p in phases if p["phase"] == "end to end"), phases[-1] if phases else {})
    stream = _get(data, "runs", "stream, new records") or []
    copy = data.get("copy", {})
    return [
        Figure(
            f"snapshot registration, records/s (chunked upload end to end,"
            f" {_f(data['records'])} records)",
            "-",
            _f(end.get("records_per_s"), 0, "/s")
            + (f"; stream {_f(stream[-1]['records_per_s'], 0, '/s')}" if stream else ""),
            f"COPY alone {_f(copy.get('records_like_per_s'))} rows/s into `records`-like,"
            f" {_f(copy.get('staging_like_per_s'))} into staging-like",
            source,
            end.get("records_per_s"),
            copy.get("records_like_per_s"),
        )
    ]


def lineage_figures(data: Row, source: str) -> list[Figure]:
    out = []
    sizes = ("1-99", "100-999", "1,000-4,999", "5,000+")
    present = [b for b in sizes if _get(data, "http", "downstream", b)]
    large = "1,000-4,999" if "1,000-4,999" in present else present[-1] if present else None
    for bucket in dict.fromkeys([*present[:1], *([large] if large else [])]):
        http = _get(data, "http", "downstream", bucket)
        walk = _get(data, "sql", "downstream", "walk", bucket)
        if http is None:
            continue
        out.append(
            Figure(
                f"lineage downstream query, {bucket} descendants, HTTP p50 / p99"
                f" ({_f(_get(data, 'graph', 'versions'))} versions)",
                "walk ≤ 15 ms" if bucket.startswith("1,000") else "-",
                f"{_f(http['p50'], 1, ' ms')} / {_f(http['p99'], 1, ' ms')}",
                f"SQL walk alone p50 {_f(_get(walk, 'p50'), 1, ' ms')}"
                f" / p99 {_f(_get(walk, 'p99'), 1, ' ms')}",
                source,
            )
        )
    return out


def replay_figures(data: Row, source: str) -> list[Figure]:
    replay = data["replay"]
    consume, pg = data["limits"]["kafka_consume"], data["limits"]["postgres"]
    slowest = max(replay["by_group"].values(), key=lambda g: g["seconds"])
    same = data["comparison"]
    identical = "; ".join(
        f"{kind} {c['identical']:,} of {c['original']:,} identical"
        f" (+{c['only_in_replay']:,} only in replay)"
        for kind, c in same.items()
    )
    all_identical = all(c["identical"] == c["original"] == c["replayed"] for c in same.values())
    return [
        Figure(
            f"replay of every topic into empty databases, events/s ({replay['messages']:,}"
            f" messages; slowest: {slowest['service']} on {slowest['topic']})",
            "≥ 50,000/s",
            f"{_f(replay['events_per_s'])}/s to the end offsets"
            f" ({_f(replay.get('events_per_s_processing'))}/s first → last handled)",
            f"raw consume of the same topics {_f(consume['per_s'])} msg/s;"
            f" COPY {_f(pg['copy_rows_per_s'])} rows/s",
            source,
            replay["events_per_s"],
            consume["per_s"],
            50_000,
        ),
        Figure(
            "replay: the same findings, flags and cases",
            "identical",
            ("identical: " if all_identical else "NOT identical: ") + identical,
            "-",
            source,
        ),
    ]


def memory_figures(found: dict[str, tuple[Row, str]]) -> list[Figure]:
    out = []
    for name, (data, source) in found.items():
        memory = data.get("memory_peak_mib") or _get(data, "replay", "memory_peak_mib")
        if memory:
            out.append(
                Figure(
                    f"peak RSS per service ({name})",
                    "-",
                    ", ".join(f"{s} {_f(memory.get(s), 0, ' MiB')}" for s in SERVICES),
                    "-",
                    source,
                )
            )
    snapshot = found.get("snapshot registration")
    rss = _get(snapshot, 0, "rss_mb", "peak_at_end")
    if snapshot is not None and rss is not None:
        out.append(
            Figure(
                "peak RSS, registry (snapshot registration)",
                "-",
                _f(rss, 0, " MiB"),
                "-",
                snapshot[1],
            )
        )
    return out


FIGURES: dict[str, Callable[[Row, str], list[Figure]]] = {
    "latency at 1000/s": lambda d, s: latency_figures("at 1,000/s", d, s, with_target=True),
    "latency below saturation": lambda d, s: latency_figures(
        "below saturation", d, s, with_target=False
    ),
    "snapshot registration": snapshot_figures,
    "lineage queries": lineage_figures,
    "replay": replay_figures,
}


def figures_of(found: dict[str, tuple[Row, str]]) -> tuple[list[Figure], list[str]]:
    figures, problems = [], []
    for name, (data, source) in found.items():
        try:
            figures += FIGURES[name](data, source)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            problems.append(f"{name}: could not read {source}: {exc!r}")
    return figures + memory_figures(found), problems


# ------------------------------------------------------------------------------- output


def markdown(figures: Sequence[Figure], problems: Sequence[str], meta: Row) -> str:
    lines = [
        f"# ConsentTrace benchmarks, {meta['started_at']}",
        "",
        f"Mode: {meta['mode']}. Load average before / after: {meta['load_before']} /"
        f" {meta['load_after']} on {meta['cpus']} CPUs. Each limit was measured by the same"
        " script, in the same run, on the same broker and Postgres.",
        "",
        "| figure | target | measured | machine limit beside | source |",
        "|---|---|---|---|---|",
    ]
    for f in figures:
        cells = (f.figure, f.target, f.measured, f.limit, f"`{f.source}`" if f.source else "")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if meta.get("failed"):
        lines += ["", "Failed (see their logs): " + ", ".join(meta["failed"])]
    if problems:
        lines += ["", *(f"- {p}" for p in problems)]
    return "\n".join(lines) + "\n"


def svg(figures: Sequence[Figure], title: str) -> str:
    """Horizontal bars, log scale: each measured rate and its machine limit."""
    rows = [f for f in figures if f.rate and f.limit_rate]
    width, left, bar, gap = 900, 330, 16, 18
    height = 60 + len(rows) * (2 * bar + gap) + 30
    top = max((max(f.limit_rate or 1, f.target_rate or 1) for f in rows), default=10)
    decades = max(1, int(log10(top)) + 1)

    def x(value: float) -> float:
        return left + (width - left - 20) * max(0.0, log10(max(value, 1))) / decades

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        ' font-family="sans-serif" font-size="12">',
        f'<text x="10" y="20" font-size="14">{escape(title)}</text>',
        '<text x="10" y="38" fill="#555">per second, log scale; dark: measured,'
        " light: the machine's limit in the same run; red: the target</text>",
    ]
    for d in range(decades + 1):
        gx = x(10**d)
        parts.append(
            f'<line x1="{gx:.1f}" y1="48" x2="{gx:.1f}" y2="{height - 25}" stroke="#ddd"/>'
            f'<text x="{gx:.1f}" y="{height - 10}" text-anchor="middle"'
            f' fill="#555">{10**d:,}</text>'
        )
    y = 55
    for f in rows:
        label = escape(f.figure.split(" (")[0])
        parts.append(f'<text x="10" y="{y + bar + 4}">{label}</text>')
        if f.target_rate:
            tx = x(f.target_rate)
            parts.append(
                f'<line x1="{tx:.1f}" y1="{y - 3}" x2="{tx:.1f}" y2="{y + 2 * bar + 1}"'
                ' stroke="#c0392b" stroke-width="2"/>'
            )
        for value, colour in ((f.rate, "#1f5fa8"), (f.limit_rate, "#a9c4e6")):
            assert value is not None
            parts.append(
                f'<rect x="{left}" y="{y}" width="{x(value) - left:.1f}" height="{bar - 2}"'
                f' fill="{colour}"/><text x="{x(value) + 4:.1f}" y="{y + bar - 5}">'
                f"{value:,.0f}</text>"
            )
            y += bar
        y += gap
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    parser.add_argument(
        "--only", action="append", choices=[s.name for s in STEPS], help="(repeatable)"
    )
    parser.add_argument(
        "--collect-only", action="store_true", help="summarise the newest JSON, run nothing"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    steps = [s for s in STEPS if not args.only or s.name in args.only]
    meta: Row = {
        "started_at": utc_stamp(),
        "mode": "collect only" if args.collect_only else "quick" if args.quick else "full",
        "load_before": load_average(),
        "cpus": os.cpu_count(),
        "failed": [],
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = meta["started_at"].replace(":", "")
    logs = RESULTS_DIR / f"logs-{stamp}"
    found: dict[str, tuple[Row, str]] = {}
    for step in steps:
        if args.collect_only:
            path = newest(step)
        else:
            logs.mkdir(exist_ok=True)
            path = run_step(step, args.quick, logs)
        if path is None:
            meta["failed"].append(step.name)
            continue
        found[step.name] = (json.loads(path.read_text()), path.name)
    meta["load_after"] = load_average()
    figures, problems = figures_of(found)
    summary = RESULTS_DIR / f"summary-{stamp}.md"
    summary.write_text(markdown(figures, problems, meta))
    plot = summary.with_suffix(".svg")
    plot.write_text(svg(figures, f"ConsentTrace benchmarks {meta['started_at']} ({meta['mode']})"))
    print(summary.read_text())
    print(f"summary: {summary.relative_to(REPO_ROOT)}\nplot:    {plot.relative_to(REPO_ROOT)}")
    return 1 if meta["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
