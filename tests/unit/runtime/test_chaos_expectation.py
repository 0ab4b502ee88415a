"""The fault scenario's independent expectation, on facts small enough to work out by hand,
and its comparison: it must see a lost, a doubled and an unexpected finding, flag or case."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from services.runtime.chaos import (
    ConsentFact,
    Facts,
    Model,
    Observed,
    Plan,
    Record,
    Version,
    compare,
    expect,
)

T = datetime(2026, 1, 1, tzinfo=UTC)
NS = "s3://t"


def at(minutes: int) -> datetime:
    return T + timedelta(minutes=minutes)


def event(
    n: int, subject: str, state: str, categories: tuple[str, ...], minute: int
) -> ConsentFact:
    return ConsentFact(f"e{n}", subject, state, categories, at(minute), at(minute), erasure=False)


def scenario() -> tuple[Plan, Facts]:
    records = (
        Record("a-post", "a", "user.content.public"),
        Record("a-msg", "a", "user.content.private"),
        Record("b-post", "b", "user.content.public"),
        Record("b-post2", "b", "user.content.public"),
        Record("c-msg", "c", "user.content.private"),
        Record("c-contact", "c", "user.contact"),
    )
    version = Version(0, NS, "v0", records)
    base = Model(0, "models://t", "base", "r0", (0,), ())
    tuned = Model(1, "models://t", "tuned", "r1", (), (0,))
    p = Plan("t", "policy-t", ["a", "b", "c"], [version], [base, tuned], [], [])
    facts = Facts(used_at={0: at(10)}, runs=[0, 1])
    facts.consent = [
        event(1, "a", "granted", ("user",), 1),
        event(2, "a", "withdrawn", ("user.content",), 20),  # later: posts and messages
        event(3, "b", "withdrawn", ("user.content.public",), 2),  # before: improper
        event(4, "c", "withdrawn", ("user",), 3),
        event(5, "c", "granted", ("user",), 4),  # re-granted before the use: eligible
        event(6, "c", "withdrawn", ("user.content.private",), 30),  # later: messages only
        event(7, "b", "granted", ("user.content",), 40),  # too late to make b's use proper
    ]
    return p, facts


def test_the_expectation_follows_the_rules() -> None:
    p, facts = scenario()
    expected = expect(p, facts)
    v = p.versions[0].key
    assert expected.findings == {
        (v, "later_withdrawal", "retrain_required", "posts", ("e2",)): (1, 1),
        (v, "later_withdrawal", "destroy_required", "messages", ("e2",)): (1, 1),
        (v, "improper_use", "destroy_required", "posts", ()): (1, 2),
        (v, "later_withdrawal", "destroy_required", "messages", ("e6",)): (1, 1),
    }
    assert expected.downstream == {v: {"model:models://t:base#1", "model:models://t:tuned#1"}}


def finding(fid: str, key: tuple[Any, ...], subjects: int, records: int) -> dict[str, Any]:
    return {
        "finding_id": fid,
        "status": "active",
        "dataset": {"namespace": NS, "name": "v0", "version": "v1"},
        "reason": key[1],
        "severity": key[2],
        "rule": f"{key[3]} (something)",
        "cause_event_ids": list(key[4]),
        "affected_subjects": subjects,
        "affected_records": records,
    }


def flag(fid: str, model: str, severity: str) -> dict[str, Any]:
    return {
        "flag_id": f"{fid}-{model}",
        "finding_id": fid,
        "status": "active",
        "severity": severity,
        "model": {"namespace": "models://t", "name": model, "version": "1"},
    }


def observed_as_expected(p: Plan) -> Observed:
    v = p.versions[0].key
    findings = [
        finding("f1", (v, "later_withdrawal", "retrain_required", "posts", ("e2",)), 1, 1),
        finding("f2", (v, "later_withdrawal", "destroy_required", "messages", ("e2",)), 1, 1),
        finding("f3", (v, "improper_use", "destroy_required", "posts", ()), 1, 2),
        finding("f4", (v, "later_withdrawal", "destroy_required", "messages", ("e6",)), 1, 1),
    ]
    flags = [flag(f["finding_id"], m, f["severity"]) for f in findings for m in ("base", "tuned")]
    cases = [{"cause_key": "model:model:models://t:base#1"}]
    cases.append({"cause_key": "model:model:models://t:tuned#1"})
    return Observed(findings, flags, cases)


def test_the_comparison_sees_lost_doubled_and_unexpected() -> None:
    p, facts = scenario()
    expected = expect(p, facts)
    good = observed_as_expected(p)
    assert compare(p, expected, good)[0] == []

    lost = observed_as_expected(p)
    lost.findings.pop(0)
    lost.flags = [f for f in lost.flags if f["finding_id"] != "f1"]
    problems = compare(p, expected, lost)[0]
    assert any(x.startswith("lost: no active finding") for x in problems)

    doubled = observed_as_expected(p)
    doubled.findings.append({**doubled.findings[0], "finding_id": "f9"})
    doubled.cases.append(doubled.cases[0])
    problems = compare(p, expected, doubled)[0]
    assert any(x.startswith("doubled: 2 active findings") for x in problems)
    assert any(x.startswith("doubled: 2 cases") for x in problems)

    miscounted = observed_as_expected(p)
    miscounted.findings[2]["affected_records"] = 3
    assert any("expected (1, 2)" in x for x in compare(p, expected, miscounted)[0])

    unflagged = observed_as_expected(p)
    unflagged.flags.pop()
    assert any(x.startswith("lost: no active flag") for x in compare(p, expected, unflagged)[0])

    no_case = observed_as_expected(p)
    no_case.cases.pop()
    assert any(x.startswith("lost: no case") for x in compare(p, expected, no_case)[0])
