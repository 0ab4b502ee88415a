"""The evidence log of a case and its export bundle. Pure.

Each entry records one thing that happened (scope frozen, approval, task sent,
acknowledgement, verification, …) and links to the entry before by its hash, so changing,
removing or reordering any entry breaks every later link. The export is one canonical JSON
document that ``services/deletion/verify_evidence.py`` (standard library only) checks offline.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from services.deletion.verify_evidence import (
    FORMAT,
    bundle_digest,
    canonical,
    entry_hash,
    genesis,
)

__all__ = ["build_bundle", "iso", "new_entry", "render_report"]


def iso(moment: datetime) -> str:
    """A timestamp as the log writes it: UTC, microseconds, ``Z``."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_entry(
    previous: Mapping[str, Any] | None,
    *,
    case_id: str,
    at: datetime,
    kind: str,
    actor: str,
    data: Mapping[str, Any],
) -> dict[str, Any]:
    """The entry after ``previous`` (None for a case's first), hashed and linked."""
    entry: dict[str, Any] = {
        "seq": 1 if previous is None else int(previous["seq"]) + 1,
        "case_id": case_id,
        "at": iso(at),
        "kind": kind,
        "actor": actor,
        "data": dict(data),
        "prev": genesis(case_id) if previous is None else previous["hash"],
    }
    canonical(entry)  # refuses what JSON cannot say exactly (NaN, non-string keys)
    entry["hash"] = entry_hash(entry)
    return entry


def build_bundle(
    case: Mapping[str, Any], entries: Sequence[Mapping[str, Any]], *, exported_at: datetime
) -> bytes:
    """The export: case, log, report, head and digest, in canonical form."""
    bundle: dict[str, Any] = {
        "format": FORMAT,
        "exported_at": iso(exported_at),
        "case": dict(case),
        "entries": [dict(e) for e in entries],
        "head": entries[-1]["hash"],
        "report": {"media_type": "text/html", "content": render_report(case, entries)},
    }
    bundle["digest"] = bundle_digest(bundle)
    return canonical(bundle) + b"\n"


def render_report(case: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]) -> str:
    """A page a person reads: what the case was, and every entry in order with its hash."""
    e = html.escape
    rows = "\n".join(
        f"<tr><td>{entry['seq']}</td><td>{e(str(entry['at']))}</td><td>{e(str(entry['kind']))}"
        f"</td><td>{e(str(entry['actor']))}</td><td><pre>"
        f"{e(canonical(entry['data']).decode('utf-8'))}</pre></td>"
        f"<td><code>{e(str(entry['hash']))[:16]}…</code></td></tr>"
        for entry in entries
    )
    facts = "\n".join(
        f"<tr><th>{e(str(k))}</th><td>{e(canonical(v).decode('utf-8'))}</td></tr>"
        for k, v in sorted(case.items())
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>Evidence — deletion case {e(str(case.get("case_id", "")))}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}
pre{{margin:0;white-space:pre-wrap}}</style></head><body>
<h1>Deletion case {e(str(case.get("case_id", "")))}</h1>
<table>{facts}</table>
<h2>Evidence log ({len(entries)} entries, hash-chained)</h2>
<table><tr><th>#</th><th>at</th><th>what</th><th>who</th><th>details</th><th>hash</th></tr>
{rows}
</table>
<p>Verify this bundle offline: <code>python verify_evidence.py FILE</code>.</p>
</body></html>
"""
