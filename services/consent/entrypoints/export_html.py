"""A subject's ledger export as one self-contained HTML page, for legal. Everything escaped."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from html import escape

from contracts.events import ConsentEvent
from services.consent.service.views import SubjectExport

__all__ = ["render_export"]

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem; color: #1b1b1b; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; width: 100%; margin-top: .5rem; }
th, td { border: 1px solid #c9c9c9; padding: .3rem .45rem; text-align: left;
         vertical-align: top; }
th { background: #f2f2f2; } td.t { white-space: nowrap; font-variant-numeric: tabular-nums; }
.granted { color: #0b6b2f; font-weight: 600; } .withdrawn { color: #a1141b; font-weight: 600; }
code, .id { font-family: ui-monospace, monospace; font-size: 12px; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }
dt { font-weight: 600; } footer { margin-top: 2rem; color: #666; font-size: 12px; }
@media print { body { margin: 0; } }
"""


def render_export(export: SubjectExport) -> str:
    """The export as HTML: summary, the consent in force now, every event, the policies."""
    e = escape
    subject = e(export.subject_id)
    jurisdictions = sorted({ev.jurisdiction for ev in export.events})
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>Consent record of {subject}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Consent record of <code>{subject}</code></h1>",
        "<dl>",
        f"<dt>Subject</dt><dd><code>{subject}</code></dd>",
        f"<dt>Jurisdictions</dt><dd>{e(', '.join(jurisdictions))}</dd>",
        f"<dt>Ledger events</dt><dd>{len(export.events)}</dd>",
        f"<dt>Generated at</dt><dd>{_time(export.generated_at)}</dd>",
        "</dl>",
        "<h2>Consent in force now</h2>",
        _table(
            ("Purpose", "Data category", "State", "Since (valid time)", "Explanation"),
            (
                (
                    f"<code>{e(s.purpose)}</code>",
                    f"<code>{e(s.data_category)}</code>",
                    _state(s.state.value),
                    _time(s.decided_by.effective_at),
                    e(s.explanation),
                )
                for s in export.state
            ),
            time_columns=(3,),
        ),
        "<h2>Every ledger event, in valid-time order</h2>",
        "<p>Valid time is when the choice took effect; recorded time is when this ledger"
        " learnt it. The ledger is append-only: corrections are later events.</p>",
        _table(
            (
                "Valid time",
                "Recorded time",
                "State",
                "Mechanism",
                "Purpose",
                "Categories",
                "Policy version",
                "Source",
                "Evidence",
                "Event id",
            ),
            (_event_row(ev) for ev in export.events),
            time_columns=(0, 1),
        ),
        "<h2>Policy versions the events name</h2>",
    ]
    if export.policies:
        parts.append(
            _table(
                ("Policy", "Version", "Valid from", "Published", "Description"),
                (
                    (
                        f"<code>{e(p.policy_id)}</code>",
                        e(p.version),
                        _time(p.valid_from),
                        _time(published),
                        e(p.description),
                    )
                    for p, published in export.policies
                ),
                time_columns=(2, 3),
            )
        )
        parts += [
            f"<details><summary>Document of {e(p.policy_id)} {e(p.version)}</summary>"
            f"<pre>{e(json.dumps(p.model_dump(mode='json'), indent=2))}</pre></details>"
            for p, _ in export.policies
        ]
    else:
        parts.append("<p>None of the named policy versions is stored here.</p>")
    if export.unresolved_policy_versions:
        parts.append(
            "<p>Named by events but not stored in this service: "
            + ", ".join(f"<code>{e(v)}</code>" for v in export.unresolved_policy_versions)
            + "</p>"
        )
    parts += [
        f"<footer>ConsentTrace consent ledger export, generated {_time(export.generated_at)}."
        " Also available as JSON without <code>?format=html</code>.</footer>",
        "</body></html>",
    ]
    return "\n".join(parts)


def _event_row(event: ConsentEvent) -> tuple[str, ...]:
    e = escape
    ev = event.evidence
    evidence = [f"collection point: {e(ev.collection_point)}"]
    if ev.channel:
        evidence.append(f"channel: {e(ev.channel)}")
    if ev.user_agent:
        evidence.append(f"user agent: {e(ev.user_agent)}")
    if ev.notice_text_hash:
        evidence.append(f"notice text: <code>{e(ev.notice_text_hash)}</code>")
    if event.erasure_requested:
        evidence.append("<strong>erasure requested</strong>")
    return (
        _time(event.effective_at),
        _time(event.recorded_at),
        _state(event.state.value),
        e(event.mechanism.value),
        f"<code>{e(event.purpose)}</code>",
        "<br>".join(f"<code>{e(c)}</code>" for c in event.data_categories),
        e(event.policy_version),
        e(event.source_system),
        "<br>".join(evidence),
        f'<span class="id">{e(str(event.consent_event_id))}</span>',
    )


def _table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], *, time_columns: Sequence[int] = ()
) -> str:
    """Headers are literals; cells arrive escaped."""
    head = "".join(f"<th>{h}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="t">{c}</td>' if i in time_columns else f"<td>{c}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _state(value: str) -> str:
    return f'<span class="{escape(value)}">{escape(value)}</span>'


def _time(at: datetime) -> str:
    return f'<time datetime="{escape(at.isoformat())}">{escape(at.isoformat())}</time>'
