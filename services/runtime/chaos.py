"""Reliability under faults: a seeded scenario driven through the four services' APIs while
they are SIGKILLed and restarted, and Postgres is restarted under them; then the system's
findings, model flags and deletion cases are compared with an independent computation.

Shared by ``tests/integration/test_faults.py`` (small, bounded) and ``bench/faults.py``
(longer, reports kills and recovery times). Everything runs on a private broker and a
private Postgres cluster (``PrivatePostgres``): nothing of other tests on the machine can
reach the scenario, and restarting that Postgres disturbs nobody else.

The expected outcome (``expect``) is written from the scenario's own facts — which subject
withdrew or granted when, which versions hold which of their records and when each was
used, which models were trained on which versions and models, what the policy says — and
from the rules as DESIGN §3 and the registry, lineage and deletion READMEs state them. It
imports none of the services' domain code.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import statistics
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

from services.runtime import embedded
from services.runtime.privatepg import PrivatePostgres
from services.runtime.testing import ServiceProcess, migrate_service

__all__ = [
    "Expected",
    "Facts",
    "FaultReport",
    "ScenarioConfig",
    "expect",
    "run_scenario",
]

SERVICES = ("consent", "registry", "lineage", "deletion")
JURISDICTION = "US"
CONSENT_PURPOSE = "ai.training"
DATASET_PURPOSE = "ai.training.generative"
RULES = {
    # category → (rule id, what a later withdrawal requires of trained models)
    "user.content.public": ("posts", "retrain_required"),
    "user.content.private": ("messages", "destroy_required"),
    "user.contact": ("contacts", "exclude_from_future"),
}
_REQUIRES = {
    "retrain_required": "retrain",
    "destroy_required": "destroy",
    "exclude_from_future": "exclude_from_future",
}
FLAGGING = {"review", "retrain_required", "destroy_required"}
"""Severities that flag every model downstream (DESIGN §3)."""
CASE_OPENING = {"retrain_required", "destroy_required"}
"""Flag severities for which the deletion service opens one case per model."""
WITHDRAWAL_SCOPES = (
    ("user",),
    ("user.content",),
    ("user.content.private",),
    ("user.content.public",),
    ("user",),
)
OL_PRODUCER = "https://github.com/OpenLineage/OpenLineage/tree/1.0.0/client/python"


# --------------------------------------------------------------------------- the scenario


@dataclass(frozen=True)
class ScenarioConfig:
    seed: int = 7
    subjects: int = 30
    versions: int = 6
    models: int = 6
    consent_changes: int = 80
    kills_per_service: int = 2
    restart_postgres: bool = True
    pace_s: float = 0.25
    """Mean pause between two operations of the stream (exponentially distributed)."""
    kill_gap_s: tuple[float, float] = (1.0, 4.0)
    """Pause between a service's recovery and the next kill, drawn uniformly."""
    down_s: tuple[float, float] = (0.2, 2.0)
    """How long a killed service stays down, drawn uniformly."""
    settle_timeout_s: float = 120.0


@dataclass(frozen=True)
class Record:
    record_id: str
    subject_id: str
    category: str


@dataclass(frozen=True)
class Version:
    index: int
    namespace: str
    name: str
    records: tuple[Record, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}:{self.name}#v1"

    @property
    def ref(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "version": "v1"}


@dataclass(frozen=True)
class Model:
    index: int
    namespace: str
    name: str
    run_id: str
    versions: tuple[int, ...]
    parents: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"model:{self.namespace}:{self.name}#1"

    @property
    def ref(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "version": "1"}


@dataclass(frozen=True)
class Change:
    index: int
    subject_id: str
    state: str
    categories: tuple[str, ...]
    erasure: bool


Op = tuple[str, int]
"""("register", version index) | ("run", model index) | ("consent", change index)."""


@dataclass
class Plan:
    tag: str
    policy_id: str
    subjects: list[str]
    versions: list[Version]
    models: list[Model]
    changes: list[Change]
    ops: list[Op]


def plan(config: ScenarioConfig) -> Plan:
    """The whole stream, a function of the seed: snapshots of overlapping subsets of the
    subjects' records, runs training models on earlier snapshots (some fine-tuned or
    distilled from earlier models), and consent changes — grants, withdrawals of several
    scopes, some asking for erasure, re-grants — interleaved with them."""
    rng = random.Random(config.seed)
    tag = f"chaos{config.seed}x{uuid.UUID(int=rng.getrandbits(128)).hex[:6]}"
    subjects = [f"{tag}-s{i:04}" for i in range(config.subjects)]
    owned: dict[str, list[Record]] = {}
    for s in subjects:
        records = [
            Record(f"{s}-post{j}", s, "user.content.public") for j in range(rng.randint(1, 3))
        ]
        if rng.random() < 0.6:
            records += [
                Record(f"{s}-msg{j}", s, "user.content.private") for j in range(rng.randint(1, 2))
            ]
        if rng.random() < 0.5:
            records.append(Record(f"{s}-contact", s, "user.contact"))
        owned[s] = records
    versions = []
    for v in range(config.versions):
        chosen = rng.sample(subjects, k=max(1, int(len(subjects) * rng.uniform(0.3, 0.7))))
        held = tuple(r for s in sorted(chosen) for r in owned[s])
        versions.append(Version(v, f"s3://{tag}", f"snapshot-{v:03}", held))
    changes: list[Change] = []
    withdrawn: dict[str, bool] = {}
    for i in range(config.consent_changes):
        s = rng.choice(subjects)
        if withdrawn.get(s) or (s not in withdrawn and rng.random() < 0.3):
            changes.append(
                Change(i, s, "granted", rng.choice((("user.content",), ("user",))), False)
            )
            withdrawn[s] = False
        else:
            scope = rng.choice(WITHDRAWAL_SCOPES)
            changes.append(Change(i, s, "withdrawn", scope, rng.random() < 0.15))
            withdrawn[s] = True
    # Interleave: registrations spread over the stream, each run after at least one
    # registration, consent changes everywhere.
    slots: list[str] = ["register"] * config.versions + ["run"] * config.models
    slots += ["consent"] * config.consent_changes
    rest = slots[1:]
    rng.shuffle(rest)
    order = ["register", *rest]
    ops: list[Op] = []
    counters: Counter[str] = Counter()
    registered = 0
    models: list[Model] = []
    pending_runs = 0
    for kind in order:
        if kind == "run" and registered == 0:
            pending_runs += 1
            continue
        if kind == "register":
            ops.append(("register", counters["register"]))
            counters["register"] += 1
            registered += 1
            kinds = ["run"] * pending_runs
            pending_runs = 0
        else:
            kinds = [kind]
        for k in kinds:
            if k == "run":
                m = len(models)
                inputs = tuple(
                    sorted(rng.sample(range(registered), k=min(registered, rng.randint(1, 2))))
                )
                parents: tuple[int, ...] = ()
                if models and rng.random() < 0.4:
                    parents = (rng.randrange(len(models)),)
                    if rng.random() < 0.3:
                        inputs = ()  # distilled from its parent only
                run_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                models.append(Model(m, f"models://{tag}", f"model-{m:03}", run_id, inputs, parents))
                ops.append(("run", m))
            elif k == "consent":
                ops.append(("consent", counters["consent"]))
                counters["consent"] += 1
    return Plan(tag, f"policy-{tag}", subjects, versions, models, changes, ops)


def policy_document(p: Plan) -> dict[str, Any]:
    bases = [{"mechanism": "explicit_opt_in"}, {"mechanism": "default_setting"}]
    return {
        "policy_id": p.policy_id,
        "version": "1",
        "valid_from": "2024-01-01T00:00:00Z",
        "rules": [
            {
                "id": rule_id,
                "jurisdictions": [JURISDICTION],
                "purposes": [CONSENT_PURPOSE],
                "data_categories": [category],
                "lawful_bases": bases,
                "default": {"mechanism": "default_setting"},
                "withdrawal": {"requires": _REQUIRES[severity]},
                "description": f"fault scenario {p.tag}: {category}",
            }
            for category, (rule_id, severity) in RULES.items()
        ],
    }


# ------------------------------------------------------------------------------- the facts


@dataclass(frozen=True)
class ConsentFact:
    event_id: str
    subject_id: str
    state: str
    categories: tuple[str, ...]
    effective_at: datetime
    recorded_at: datetime
    erasure: bool


@dataclass
class Facts:
    """What the scenario did, as the services acknowledged it."""

    used_at: dict[int, datetime] = field(default_factory=dict)
    consent: list[ConsentFact] = field(default_factory=list)
    runs: list[int] = field(default_factory=list)


def covers(parent: str, child: str) -> bool:
    return child == parent or child.startswith(parent + ".")


FindingKey = tuple[str, str, str, str, tuple[str, ...]]
"""(dataset key, reason, severity, rule id, cause events: the withdrawal, or none)."""


@dataclass
class Expected:
    findings: dict[FindingKey, tuple[int, int]]
    """Active findings → (affected subjects, affected records)."""
    subjects: dict[FindingKey, set[str]]
    downstream: dict[str, set[str]]
    """Dataset key → model keys reached from it through runs."""
    erasure_causes: set[str]


def downstream_models(p: Plan, runs: Sequence[int]) -> dict[str, set[str]]:
    reported = [p.models[m] for m in runs]
    children: dict[int, list[Model]] = defaultdict(list)
    for m in reported:
        for parent in m.parents:
            children[parent].append(m)
    out: dict[str, set[str]] = {}
    for v in p.versions:
        reached: set[str] = set()
        frontier = [m for m in reported if v.index in m.versions]
        while frontier:
            m = frontier.pop()
            if m.key in reached:
                continue
            reached.add(m.key)
            frontier += children[m.index]
        out[v.key] = reached
    return out


def expect(p: Plan, facts: Facts) -> Expected:
    """Active findings as the rules say, from the facts alone.

    A use is a subject's records of one category in one version, at the version's time of
    use U. The deciding consent event is the subject's latest (effective time, then
    recorded time, then id) event effective at or before U that covers the category; a
    withdrawal there makes the use improper (``destroy_required``, one finding per version
    and rule). Otherwise the use was eligible (an explicit opt-in, or the default setting)
    and each withdrawal of the subject effective after U that covers the category is a
    later withdrawal (one finding per version, rule and withdrawal, the rule's severity).
    """
    history: dict[str, list[ConsentFact]] = defaultdict(list)
    for c in facts.consent:
        history[c.subject_id].append(c)
    subjects: dict[FindingKey, set[str]] = defaultdict(set)
    records: Counter[FindingKey] = Counter()
    for v in p.versions:
        if v.index not in facts.used_at:
            continue
        used_at = facts.used_at[v.index]
        uses: Counter[tuple[str, str]] = Counter((r.subject_id, r.category) for r in v.records)
        for (subject, category), count in uses.items():
            rule_id, severity = RULES[category]
            events = [e for e in history[subject] if any(covers(c, category) for c in e.categories)]
            before = [e for e in events if e.effective_at <= used_at]
            deciding = max(
                before, key=lambda e: (e.effective_at, e.recorded_at, e.event_id), default=None
            )
            keys: list[FindingKey] = []
            if deciding is not None and deciding.state == "withdrawn":
                keys.append((v.key, "improper_use", "destroy_required", rule_id, ()))
            else:
                keys += [
                    (v.key, "later_withdrawal", severity, rule_id, (e.event_id,))
                    for e in events
                    if e.state == "withdrawn" and e.effective_at > used_at
                ]
            for key in keys:
                subjects[key].add(subject)
                records[key] += count
    findings = {key: (len(subjects[key]), records[key]) for key in subjects}
    erasure = {
        f"erasure:{c.subject_id}:{c.event_id}"
        for c in facts.consent
        if c.state == "withdrawn" and c.erasure
    }
    return Expected(findings, dict(subjects), downstream_models(p, facts.runs), erasure)


# ------------------------------------------------------------------------- the observation


@dataclass
class Observed:
    findings: list[dict[str, Any]]
    flags: list[dict[str, Any]]
    cases: list[dict[str, Any]]


def _finding_key(f: Mapping[str, Any]) -> FindingKey:
    d = f["dataset"]
    rule_id = str(f["rule"]).split(" ", 1)[0]
    causes = tuple(f["cause_event_ids"]) if f["reason"] == "later_withdrawal" else ()
    return (
        f"{d['namespace']}:{d['name']}#{d['version']}",
        f["reason"],
        f["severity"],
        rule_id,
        causes,
    )


def compare(p: Plan, expected: Expected, seen: Observed) -> tuple[list[str], dict[str, int]]:
    """Every difference between what the system holds and what the facts require; and counts."""
    problems: list[str] = []
    mine_ds = {v.key for v in p.versions}
    findings = [f for f in seen.findings if _finding_key(f)[0] in mine_ds]
    active = [f for f in findings if f["status"] == "active"]
    ids = Counter(f["finding_id"] for f in findings)
    problems += [f"finding {fid} listed {n} times" for fid, n in ids.items() if n > 1]
    by_key: dict[FindingKey, list[dict[str, Any]]] = defaultdict(list)
    for f in active:
        by_key[_finding_key(f)].append(f)
    for key, fs in by_key.items():
        if len(fs) > 1:
            problems.append(f"doubled: {len(fs)} active findings for one cause {key}")
        if key not in expected.findings:
            problems.append(
                f"unexpected active finding {key} ({fs[0]['affected_subjects']} subjects)"
            )
        else:
            want = expected.findings[key]
            got = (fs[0]["affected_subjects"], fs[0]["affected_records"])
            if got != want:
                problems.append(f"finding {key}: subjects/records {got}, expected {want}")
    problems += [
        f"lost: no active finding for {key}" for key in expected.findings if key not in by_key
    ]
    # Flags: one active flag per (active flagging finding, model downstream of its version).
    finding_of = {f["finding_id"]: f for f in active}
    want_flags = {
        (model, f["finding_id"])
        for f in active
        if f["severity"] in FLAGGING
        for model in expected.downstream.get(_finding_key(f)[0], ())
    }
    mine_models = {m.key for m in p.models}
    flags = [fl for fl in seen.flags if _model_key(fl["model"]) in mine_models]
    flag_ids = Counter(fl["flag_id"] for fl in flags)
    problems += [f"flag {fid} listed {n} times" for fid, n in flag_ids.items() if n > 1]
    active_flags = Counter(
        (_model_key(fl["model"]), fl["finding_id"]) for fl in flags if fl["status"] == "active"
    )
    problems += [f"doubled: {n} active flags for {k}" for k, n in active_flags.items() if n > 1]
    problems += [f"lost: no active flag for {k}" for k in sorted(want_flags - set(active_flags))]
    problems += [f"unexpected active flag {k}" for k in sorted(set(active_flags) - want_flags)]
    # Cases: one per model with an active destroy/retrain flag; one per erasure request.
    cases = Counter(c["cause_key"] for c in seen.cases)
    problems += [f"doubled: {n} cases for {cause}" for cause, n in cases.items() if n > 1]
    want_cases = {
        f"model:{model}" for model, fid in want_flags if finding_of[fid]["severity"] in CASE_OPENING
    }
    ever_flagged = {
        f"model:{_model_key(fl['model'])}" for fl in flags if fl["severity"] in CASE_OPENING
    }
    model_cases = {c for c in cases if c.startswith("model:") and c[len("model:") :] in mine_models}
    problems += [f"lost: no case for {c}" for c in sorted(want_cases - model_cases)]
    problems += [
        f"unexpected case {c}: its model never had a destroy/retrain flag"
        for c in sorted(model_cases - ever_flagged)
    ]
    erasure_cases = {c for c in cases if c.startswith(f"erasure:{p.tag}-")}
    problems += [
        f"lost: no erasure case {c}" for c in sorted(expected.erasure_causes - erasure_cases)
    ]
    problems += [
        f"unexpected erasure case {c}" for c in sorted(erasure_cases - expected.erasure_causes)
    ]
    counts = {
        "findings_active": len(active),
        "findings_retracted": len(findings) - len(active),
        "flags_active": sum(active_flags.values()),
        "flags_retracted": len(flags) - sum(active_flags.values()),
        "model_cases": len(model_cases),
        "model_cases_from_retracted_flags": len(model_cases - want_cases),
        "erasure_cases": len(erasure_cases),
    }
    for f in active:
        kind = "improper_use" if f["reason"] == "improper_use" else f"{f['reason']}/{f['severity']}"
        counts[kind] = counts.get(kind, 0) + 1
    return problems, counts


async def diagnose(p: Plan, facts: Facts, seen: Observed, registry_dsn: str) -> list[str]:
    """For each finding whose subjects differ from the expected ones: those subjects, their
    history as the scenario recorded it and as the registry projected it, and the time of use."""
    expected = expect(p, facts)
    lines: list[str] = []
    conn = await asyncpg.connect(registry_dsn)
    try:
        keys = {_finding_key(f): f for f in seen.findings if f["status"] == "active"}
        for key in sorted(set(keys) | set(expected.subjects)):
            if key[0] not in {v.key for v in p.versions}:
                continue
            rows = []
            if key in keys:
                rows = await conn.fetch(
                    "SELECT DISTINCT subject_id FROM finding_contributions WHERE finding_id = $1",
                    uuid.UUID(keys[key]["finding_id"]),
                )
            got = {r["subject_id"] for r in rows}
            want = expected.subjects.get(key, set())
            if got == want:
                continue
            version = next(v for v in p.versions if v.key == key[0])
            lines.append(
                f"diagnosis {key}: used_at {facts.used_at.get(version.index)}; registry has"
                f" {sorted(got - want)} more, {sorted(want - got)} fewer"
            )
            for subject in sorted(got ^ want):
                for c in facts.consent:
                    if c.subject_id == subject:
                        lines.append(
                            f"    scenario {c.event_id} {c.state} {c.categories}"
                            f" eff {c.effective_at.isoformat()} rec {c.recorded_at.isoformat()}"
                        )
                for r in await conn.fetch(
                    "SELECT * FROM consent_projection WHERE subject_id = $1 ORDER BY effective_at",
                    subject,
                ):
                    lines.append(
                        f"    registry {r['consent_event_id']} {r['state']} {r['data_categories']}"
                        f" eff {r['effective_at'].isoformat()} rec {r['recorded_at'].isoformat()}"
                    )
    finally:
        await conn.close()
    return lines


def _model_key(ref: Mapping[str, str]) -> str:
    return f"model:{ref['namespace']}:{ref['name']}#{ref['version']}"


# --------------------------------------------------------------------------- the services


@dataclass
class KillRecord:
    service: str
    at_s: float
    down_s: float
    recovery_s: float | None
    """From the restart to ``/health/ready`` answering 200."""


@dataclass
class FaultReport:
    tag: str
    config: ScenarioConfig
    problems: list[str]
    counts: dict[str, int]
    kills: list[KillRecord]
    postgres_restarts: list[tuple[float, float, float | None]]
    """(at, restart duration, time until every service was ready again)."""
    stream_s: float
    settle_s: float
    dead_letters: dict[str, int]
    census: TopicCensus
    outbox_pending: dict[str, int]
    http_retries: int
    log_dir: Path

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        per_service = Counter(k.service for k in self.kills)
        recoveries = [k.recovery_s for k in self.kills if k.recovery_s is not None]
        lines = [
            f"scenario {self.tag}: seed {self.config.seed}, {self.config.subjects} subjects, "
            f"{self.config.versions} versions, {self.config.models} models, "
            f"{self.config.consent_changes} consent changes",
            f"stream {self.stream_s:.1f} s, settled {self.settle_s:.1f} s after it;"
            f" HTTP calls retried {self.http_retries} times",
            "kills: " + ", ".join(f"{s} {per_service[s]}" for s in SERVICES),
        ]
        if recoveries:
            lines.append(
                "recovery after a restart (to ready): median"
                f" {statistics.median(recoveries):.1f} s, max {max(recoveries):.1f} s"
            )
        for at, took, ready in self.postgres_restarts:
            back = f"{ready:.1f} s" if ready is not None else "never"
            lines.append(
                f"postgres restarted at {at:.1f} s (took {took:.1f} s);"
                f" all services ready after {back}"
            )
        lines.append("counts: " + ", ".join(f"{k} {v}" for k, v in self.counts.items()))
        lines.append(f"dead letters: {sum(self.dead_letters.values())} {self.dead_letters or ''}")
        lines.append(
            f"records on the topics: {sum(self.census.records.values())}; redelivered"
            f" duplicates (same ce_id, dropped by the consumers' inboxes):"
            f" {sum(self.census.duplicates.values())} {self.census.duplicates or ''}"
        )
        lines.append(f"outbox rows pending: {self.outbox_pending}")
        lines.append(
            "comparison: " + ("identical" if self.ok else f"{len(self.problems)} problems")
        )
        lines += [f"  {problem}" for problem in self.problems[:40]]
        return "\n".join(lines)


class Client:
    """HTTP with the patience of a real client: transport errors and 5xx are retried."""

    def __init__(self, http: httpx.AsyncClient, within: float = 120.0) -> None:
        self.http = http
        self.within = within
        self.retries = 0

    async def call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        deadline = time.monotonic() + self.within
        delay = 0.1
        while True:
            try:
                response = await self.http.request(method, url, **kwargs)
                if response.status_code < 500:
                    return response
                problem = f"{response.status_code} {response.text[:200]}"
            except httpx.HTTPError as exc:
                problem = repr(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{method} {url}: still failing after {self.within}s: {problem}")
            self.retries += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


class Driver:
    """Executes the plan's operations through the APIs and records the acknowledged facts."""

    def __init__(self, p: Plan, services: Mapping[str, ServiceProcess], client: Client) -> None:
        self.plan = p
        self.svc = services
        self.client = client
        self.facts = Facts()

    def url(self, service: str, path: str) -> str:
        return f"{self.svc[service].url}{path}"

    async def publish_policy(self) -> None:
        r = await self.client.call(
            "POST", self.url("consent", "/api/v1/policies"), json=policy_document(self.plan)
        )
        if r.status_code not in (200, 201, 409):
            raise RuntimeError(f"policy: {r.status_code} {r.text}")

        async def known() -> bool:
            r = await self.client.call("GET", self.url("registry", "/api/v1/policy-versions"))
            return any(v["policy_id"] == self.plan.policy_id for v in r.json())

        await wait_until(known, 120, "the registry to know the policy")

    async def register(self, v: Version) -> None:
        collected = datetime(2024, 6, 1, tzinfo=UTC)
        body = {
            "dataset": v.ref,
            "purpose": DATASET_PURPOSE,
            "created_at": datetime.now(UTC).isoformat(),
            "records": [
                {
                    "record_id": r.record_id,
                    "source_system": "chaos",
                    "subject_id": r.subject_id,
                    "category": r.category,
                    "jurisdiction": JURISDICTION,
                    "collected_at": collected.isoformat(),
                    "content_digest": "sha256:" + hashlib.sha256(r.record_id.encode()).hexdigest(),
                }
                for r in v.records
            ],
        }
        r = await self.client.call(
            "POST", self.url("registry", "/api/v1/dataset-versions"), json=body
        )
        if r.status_code not in (200, 201, 409):  # 409: sealed by an attempt whose answer was lost
            raise RuntimeError(f"registration {v.key}: {r.status_code} {r.text}")
        got = await self.client.call(
            "GET", self.url("registry", "/api/v1/dataset-version"), params=v.ref
        )
        if got.status_code != 200:
            raise RuntimeError(
                f"registration {v.key} not sealed: {r.status_code} {r.text} / {got.text}"
            )
        self.facts.used_at[v.index] = datetime.fromisoformat(got.json()["used_at"])

    async def run(self, m: Model) -> None:
        inputs = [_ol_dataset(self.plan.versions[v].ref, "DATASET") for v in m.versions]
        inputs += [_ol_dataset(self.plan.models[parent].ref, "MODEL") for parent in m.parents]
        event = {
            "eventType": "COMPLETE",
            "eventTime": datetime.now(UTC).isoformat(),
            "producer": OL_PRODUCER,
            "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
            "run": {"runId": m.run_id},
            "job": {"namespace": f"ml-{self.plan.tag}", "name": f"train-{m.name}"},
            "inputs": inputs,
            "outputs": [_ol_dataset(m.ref, "MODEL")],
        }
        r = await self.client.call("POST", self.url("lineage", "/api/v1/lineage"), json=event)
        if r.status_code not in (200, 201):
            raise RuntimeError(f"run {m.key}: {r.status_code} {r.text}")
        self.facts.runs.append(m.index)

    async def consent(self, c: Change) -> None:
        body = {
            "subject_id": c.subject_id,
            "jurisdiction": JURISDICTION,
            "purpose": CONSENT_PURPOSE,
            "data_categories": list(c.categories),
            "state": c.state,
            "mechanism": "explicit_opt_in" if c.state == "granted" else "opt_out",
            "policy_version": f"{self.plan.policy_id}:1",
            "effective_at": datetime.now(UTC).isoformat(),
            "source_system": "chaos",
            "evidence": {"collection_point": "settings/chaos"},
            "erasure_requested": c.erasure,
        }
        headers = {"Idempotency-Key": f"{self.plan.tag}-{c.index}"}
        r = await self.client.call(
            "POST", self.url("consent", "/api/v1/consent-events"), json=body, headers=headers
        )
        if r.status_code not in (200, 201):
            raise RuntimeError(f"consent change {c.index}: {r.status_code} {r.text}")
        e = r.json()
        self.facts.consent.append(
            ConsentFact(
                str(e["consent_event_id"]),
                c.subject_id,
                c.state,
                c.categories,
                datetime.fromisoformat(e["effective_at"]),
                datetime.fromisoformat(e["recorded_at"]),
                c.erasure,
            )
        )

    async def execute(self, op: Op) -> None:
        kind, index = op
        if kind == "register":
            await self.register(self.plan.versions[index])
        elif kind == "run":
            await self.run(self.plan.models[index])
        else:
            await self.consent(self.plan.changes[index])

    async def observe(self) -> Observed:
        findings = await self.client.call(
            "GET", self.url("registry", "/api/v1/findings"), params={"limit": "10000"}
        )
        flags = await self.client.call("GET", self.url("lineage", "/api/v1/model-flags"))
        cases = await self.client.call("GET", self.url("deletion", "/api/v1/cases"))
        for r in (findings, flags, cases):
            if r.status_code != 200:
                raise RuntimeError(f"{r.request.url}: {r.status_code} {r.text[:300]}")
        return Observed(
            [row["finding"] for row in findings.json()],
            [row["flag"] for row in flags.json()],
            cases.json(),
        )


def _ol_dataset(ref: Mapping[str, str], kind: str) -> dict[str, Any]:
    return {
        "namespace": ref["namespace"],
        "name": ref["name"],
        "facets": {
            "version": {
                "_producer": OL_PRODUCER,
                "_schemaURL": "https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json",
                "datasetVersion": ref["version"],
            },
            "datasetType": {
                "_producer": OL_PRODUCER,
                "_schemaURL": "https://openlineage.io/spec/facets/1-0-0/DatasetTypeDatasetFacet.json",
                "datasetType": kind,
            },
        },
    }


async def wait_until(probe: Callable[[], Awaitable[bool]], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(0.2)


class Chaos:
    """SIGKILLs each service ``kills_per_service`` times at seeded random moments and
    restarts it after a short random pause. One lane per service, all running at once, so
    two services may be down together; a lane waits for its service to be ready before the
    next kill (a kill during start-up would measure nothing new)."""

    def __init__(
        self, services: Mapping[str, ServiceProcess], config: ScenarioConfig, started: float
    ) -> None:
        self.services = services
        self.config = config
        self.started = started
        self.kills: list[KillRecord] = []

    async def run(self) -> None:
        await asyncio.gather(
            *(self.lane(name, random.Random(f"{self.config.seed}/{name}")) for name in SERVICES)
        )

    async def lane(self, name: str, rng: random.Random) -> None:
        for _ in range(self.config.kills_per_service):
            await asyncio.sleep(rng.uniform(*self.config.kill_gap_s))
            await self.kill_and_restart(name, rng)

    async def kill_and_restart(self, name: str, rng: random.Random) -> None:
        service = self.services[name]
        at = time.monotonic() - self.started
        await asyncio.to_thread(service.kill)
        down = rng.uniform(*self.config.down_s)
        await asyncio.sleep(down)
        service.start()
        restarted = time.monotonic()
        try:
            await asyncio.to_thread(service.wait_ready, 120.0)
            recovery: float | None = time.monotonic() - restarted
        except Exception:
            recovery = None
        self.kills.append(KillRecord(name, at, down, recovery))


async def _all_ready(services: Mapping[str, ServiceProcess], within: float) -> float | None:
    """Seconds until every service answers ``/health/ready`` with 200 (whatever process it
    is by then: a chaos lane may kill and restart one meanwhile), or None after ``within``."""
    started = time.monotonic()
    waiting = dict(services)
    async with httpx.AsyncClient(timeout=2) as http:
        while waiting:
            for name, service in list(waiting.items()):
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(f"{service.url}/health/ready")).status_code == 200:
                        del waiting[name]
            if not waiting:
                break
            if time.monotonic() - started > within:
                return None
            await asyncio.sleep(0.1)
    return time.monotonic() - started


@dataclass
class TopicCensus:
    records: dict[str, int]
    """Records per topic (dead-letter topics included)."""
    duplicates: dict[str, int]
    """Records per topic whose ``ce_id`` an earlier record of the topic had: at-least-once
    redeliveries (a relay killed between publishing and marking), which consumers drop."""


async def _census(bootstrap: str, quiet_s: float = 3.0) -> TopicCensus:
    """Every record of every topic on the (private) broker, read from the start until
    nothing more arrives for ``quiet_s`` (Tansu's end offsets cannot say where the end is)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        topics = sorted(await consumer.topics())
        partitions = [
            TopicPartition(topic, p)
            for topic in topics
            for p in consumer.partitions_for_topic(topic) or ()
        ]
        census = TopicCensus({}, {})
        if not partitions:
            return census
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ids: dict[str, Counter[bytes]] = defaultdict(Counter)
        last = time.monotonic()
        while time.monotonic() - last < quiet_s:
            batches = await consumer.getmany(timeout_ms=500, max_records=5000)
            for tp, records in batches.items():
                if records:
                    last = time.monotonic()
                census.records[tp.topic] = census.records.get(tp.topic, 0) + len(records)
                for record in records:
                    ce_id = dict(record.headers or ()).get("ce_id")
                    if ce_id is not None:
                        ids[tp.topic][ce_id] += 1
        for topic, counter in ids.items():
            if doubled := sum(c - 1 for c in counter.values() if c > 1):
                census.duplicates[topic] = doubled
        census.records = {t: n for t, n in census.records.items() if n}
        return census
    finally:
        await consumer.stop()


async def _pending(dsns: Mapping[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, dsn in dsns.items():
        conn = await asyncpg.connect(dsn)
        try:
            out[name] = int(
                await conn.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            )
            if name == "registry":
                out["registry evaluation jobs"] = int(
                    await conn.fetchval("SELECT count(*) FROM evaluation_jobs")
                )
        finally:
            await conn.close()
    return out


@contextlib.asynccontextmanager
async def private_stack(
    log_dir: Path,
) -> AsyncIterator[tuple[PrivatePostgres, str, dict[str, ServiceProcess]]]:
    """A private Postgres cluster, a private Tansu broker, and the four services on them."""
    pg = await asyncio.to_thread(PrivatePostgres().start)
    broker = embedded.TansuBroker(log_path=log_dir / "tansu.log")
    services: dict[str, ServiceProcess] = {}
    try:
        await asyncio.to_thread(broker.start)
        names = [f"ct_chaos_{name}" for name in SERVICES]
        urls = await embedded.create_databases(pg.url, names)
        for name, url in zip(SERVICES, urls, strict=True):
            await asyncio.to_thread(migrate_service, name, url)
            services[name] = ServiceProcess(name, url, broker.bootstrap_servers, log_dir)
        for service in services.values():
            service.start()
        ready = await _all_ready(services, 180)
        if ready is None:
            raise RuntimeError(f"the services did not become ready; logs in {log_dir}")
        yield pg, broker.bootstrap_servers, services
    finally:
        for service in services.values():
            await asyncio.to_thread(service.stop)
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(pg.stop)


async def run_scenario(config: ScenarioConfig, log_dir: Path | None = None) -> FaultReport:
    """Stream the seeded scenario through the stack under faults, settle, compare."""
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="ct-chaos-"))
    p = plan(config)
    async with (
        private_stack(log_dir) as (pg, bootstrap, services),
        httpx.AsyncClient(timeout=30) as http,
    ):
        client = Client(http)
        driver = Driver(p, services, client)
        await driver.publish_policy()
        chaos, pg_restarts, stream_s = await _stream(p, config, pg, services, driver)
        settle_started = time.monotonic()
        problems, counts, pending = await _settle(p, config, services, driver)
        settle_s = time.monotonic() - settle_started
        census = await _census(bootstrap)
        dead = {t: n for t, n in census.records.items() if t.endswith(".dlq")}
        problems += [f"dead-lettered: {n} on {t}" for t, n in dead.items()]
        problems += [
            f"{k.service} did not become ready after its restart at {k.at_s:.1f}s"
            for k in chaos.kills
            if k.recovery_s is None
        ]
        problems += [
            f"services not all ready after the postgres restart at {at:.1f}s"
            for at, _, back in pg_restarts
            if back is None
        ]
        return FaultReport(
            p.tag,
            config,
            problems,
            counts,
            chaos.kills,
            pg_restarts,
            stream_s,
            settle_s,
            dead,
            census,
            pending,
            client.retries,
            log_dir,
        )


async def _stream(
    p: Plan,
    config: ScenarioConfig,
    pg: PrivatePostgres,
    services: Mapping[str, ServiceProcess],
    driver: Driver,
) -> tuple[Chaos, list[tuple[float, float, float | None]], float]:
    """The operations, paced at random, while the chaos lanes kill and restart services and
    Postgres is restarted halfway; returns once every kill has been made."""
    started = time.monotonic()
    chaos = Chaos(services, config, started)
    pg_restarts: list[tuple[float, float, float | None]] = []
    rng = random.Random(config.seed * 31 + 3)
    halfway = len(p.ops) // 2

    async def restart_postgres() -> None:
        at = time.monotonic() - started
        t0 = time.monotonic()
        await asyncio.to_thread(pg.restart)
        took = time.monotonic() - t0
        pg_restarts.append((at, took, await _all_ready(services, 120)))

    background = [asyncio.create_task(chaos.run())]
    try:
        for i, op in enumerate(p.ops):
            if i == halfway and config.restart_postgres:
                # The stream goes on while Postgres is down: the driver's calls fail and are
                # retried, the services' consumers and workers wait it out.
                background.append(asyncio.create_task(restart_postgres()))
            await driver.execute(op)
            await asyncio.sleep(rng.expovariate(1 / config.pace_s))
        stream_s = time.monotonic() - started
        await asyncio.gather(*background)  # kills not made yet are made after the stream
    finally:
        for task in background:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return chaos, pg_restarts, stream_s


async def _settle(
    p: Plan, config: ScenarioConfig, services: Mapping[str, ServiceProcess], driver: Driver
) -> tuple[list[str], dict[str, int], dict[str, int]]:
    """Poll until the outboxes and evaluation jobs are drained and the observation equals
    the expectation and stays the same over two polls; then the differences left, if any."""
    await _all_ready(services, 120)
    dsns = {name: s.database_url for name, s in services.items()}
    problems: list[str] = ["never compared"]
    counts: dict[str, int] = {}
    pending: dict[str, int] = {}
    seen: Observed | None = None
    previous: Observed | None = None
    deadline = time.monotonic() + config.settle_timeout_s
    while time.monotonic() < deadline:
        pending = await _pending(dsns)
        seen = await driver.observe()
        problems, counts = compare(p, expect(p, driver.facts), seen)
        if not problems and previous == seen and not any(pending.values()):
            break
        previous = seen
        await asyncio.sleep(2.0)
    if problems and seen is not None:
        problems += await diagnose(p, driver.facts, seen, services["registry"].database_url)
    problems += [f"outbox/jobs not drained: {k} {v}" for k, v in pending.items() if v]
    return problems, counts, pending
