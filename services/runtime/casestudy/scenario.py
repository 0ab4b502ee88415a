"""The 2024 case of DESIGN §1 as data: a generator, pure and deterministic from its seed.

``generate(seed, members)`` builds a professional network's members (US, Canada, UK, the
EU, Switzerland, Hong Kong; some premium), their records (profile, posts, private
messages collected over 2023-2025), their consent changes (opt-outs arriving over time,
explicit opt-ins for private messages and some withdrawals of them), the two readings of
the policy (the platform's, then the re-reading "private messages of premium members were
never a lawful basis"), the training snapshots an ML pipeline took before and after each
key date, and the OpenLineage runs that trained, fine-tuned, distilled and merged models
from them. Nothing here does I/O; the replay (``replay.py``) sends it to a running stack.

The pipeline is realistic, not perfect: it drops members whose opt-out it knows of, but it
started before the privacy policy disclosed the default (18 Sept 2024), and the opt-out
list it used on 10 Nov 2025 was a week stale. What the system makes of that is the point
of the demo; the generator never computes findings itself.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "CATEGORY",
    "DATES",
    "POLICY_ID",
    "PURPOSE",
    "ConsentChange",
    "Member",
    "ModelVersion",
    "Record",
    "Scenario",
    "Snapshot",
    "TrainingRun",
    "generate",
    "policy_documents",
]

PURPOSE = "ai.training.generative"
POLICY_ID = "genai-case"
CATEGORY = {
    "profile": "user.workplace",
    "post": "user.content.public",
    "message": "user.content.private",
    "premium_message": "user.content.private.premium",
}
"""Record kinds and their data categories. A premium member's private messages get the
narrower ``user.content.private.premium``: every rule about ``user.content.private``
still covers them, and a re-reading can single them out (the engine judges a use by
jurisdiction, purpose, category and time: a category is where "premium" fits)."""


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


DATES: dict[str, datetime] = {
    "setting_on": _at("2024-08-01T00:00:00"),
    "disclosure": _at("2024-09-18T00:00:00"),
    "uk_suspension": _at("2024-09-20T00:00:00"),
    "eu_notice": _at("2025-09-15T00:00:00"),
    "eu_training": _at("2025-11-03T00:00:00"),
    "end": _at("2025-12-31T00:00:00"),
}
"""The case's key dates (DESIGN §1). The setting's day in August is an assumption."""

EU_COUNTRIES = ("DE", "FR", "IE", "NL", "ES", "IT")
JURISDICTION_MIX: tuple[tuple[str, float], ...] = (
    ("US", 0.42),
    ("CA", 0.08),
    ("GB", 0.12),
    ("EU", 0.22),  # spread over EU_COUNTRIES
    ("CH", 0.06),
    ("HK", 0.10),
)
DEFAULT_ON = ("US", "CA", "GB")


@dataclass(frozen=True, slots=True)
class Member:
    subject_id: str
    jurisdiction: str
    premium: bool


@dataclass(frozen=True, slots=True)
class Record:
    record_id: str
    source_system: str
    subject_id: str
    category: str
    jurisdiction: str
    collected_at: datetime

    def registration(self) -> dict[str, Any]:
        """The record as the registry's ``RecordRegistration`` (digest of its id: the
        generator has no content, and the registry never stores any)."""
        return {
            "record_id": self.record_id,
            "source_system": self.source_system,
            "subject_id": self.subject_id,
            "category": self.category,
            "jurisdiction": self.jurisdiction,
            "collected_at": _iso(self.collected_at),
            "content_digest": "sha256:" + hashlib.sha256(self.record_id.encode()).hexdigest(),
        }


@dataclass(frozen=True, slots=True)
class ConsentChange:
    """One change on the settings page, as the settings system reports it."""

    subject_id: str
    jurisdiction: str
    data_categories: tuple[str, ...]
    state: str  # "granted" | "withdrawn"
    mechanism: str  # "explicit_opt_in" | "opt_out"
    effective_at: datetime

    def intake(self, policy_version: str) -> dict[str, Any]:
        """The body of ``POST /api/v1/consent-events`` (and of a batch's change)."""
        return {
            "subject_id": self.subject_id,
            "jurisdiction": self.jurisdiction,
            "purpose": PURPOSE,
            "data_categories": list(self.data_categories),
            "state": self.state,
            "mechanism": self.mechanism,
            "policy_version": f"{POLICY_ID}:{policy_version}",
            "effective_at": _iso(self.effective_at),
            "source_system": "settings",
            "evidence": {"collection_point": "settings/data-for-generative-ai", "channel": "web"},
        }


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A training snapshot: a dataset version used for training at ``used_at``."""

    namespace: str
    name: str
    version: str
    used_at: datetime
    record_ids: tuple[str, ...]
    description: str

    @property
    def key(self) -> str:
        return f"dataset:{self.namespace}:{self.name}#{self.version}"

    def ref(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "version": self.version}


@dataclass(frozen=True, slots=True)
class ModelVersion:
    namespace: str
    name: str
    version: str

    @property
    def key(self) -> str:
        return f"model:{self.namespace}:{self.name}#{self.version}"

    def ref(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "version": self.version}


@dataclass(frozen=True, slots=True)
class TrainingRun:
    """An OpenLineage run: datasets and parent models in, one model out."""

    run_id: str
    job: str
    kind: str  # "pretrain" | "fine-tune" | "distill" | "merge"
    event_time: datetime
    datasets: tuple[Snapshot, ...]
    parents: tuple[ModelVersion, ...]
    output: ModelVersion

    def openlineage(self) -> dict[str, Any]:
        """The run's COMPLETE event, as the openlineage-python client would send it."""
        return {
            "eventType": "COMPLETE",
            "eventTime": _iso(self.event_time),
            "producer": _PRODUCER,
            "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
            "run": {"runId": self.run_id},
            "job": {"namespace": "ml-pipelines", "name": self.job},
            "inputs": [_ol(d.ref(), "DATASET") for d in self.datasets]
            + [_ol(m.ref(), "MODEL") for m in self.parents],
            "outputs": [_ol(self.output.ref(), "MODEL")],
        }


@dataclass(frozen=True)
class Scenario:
    seed: int
    tag: str
    members: tuple[Member, ...]
    records: tuple[Record, ...]
    consent: tuple[ConsentChange, ...]
    policies: tuple[dict[str, Any], ...]
    """The platform's reading, then the re-reading (same ``valid_from``, published later)."""
    snapshots: tuple[Snapshot, ...]
    runs: tuple[TrainingRun, ...]
    records_by_id: dict[str, Record] = field(repr=False, compare=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.records_by_id.update({r.record_id: r for r in self.records})

    def snapshot_records(self, snapshot: Snapshot) -> Iterator[Record]:
        return (self.records_by_id[i] for i in snapshot.record_ids)

    def models(self) -> tuple[ModelVersion, ...]:
        return tuple(r.output for r in self.runs)


_PRODUCER = "https://github.com/OpenLineage/OpenLineage/tree/1.0.0/client/python"


def _ol(ref: dict[str, str], kind: str) -> dict[str, Any]:
    return {
        **ref,
        "facets": {
            "version": {
                "_producer": _PRODUCER,
                "_schemaURL": "https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json",
                "datasetVersion": ref["version"],
            },
            "datasetType": {
                "_producer": _PRODUCER,
                "_schemaURL": "https://openlineage.io/spec/facets/1-0-0/DatasetTypeDatasetFacet.json",
                "datasetType": kind,
            },
        },
    }


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _between(rng: random.Random, start: datetime, end: datetime) -> datetime:
    """A whole second uniformly in [start, end)."""
    return start + timedelta(seconds=rng.randrange(int((end - start).total_seconds())))


# --- the policy ------------------------------------------------------------------------


def policy_documents() -> tuple[dict[str, Any], dict[str, Any]]:
    """The platform's reading (``2024.1``) and the re-reading (``2024.2``), both valid
    from 1 Aug 2024 (the same rules as ``policies/genai-training-2024.yaml``, with Canada
    default-on as well; the re-reading adds one rule on premium private messages)."""
    reading: dict[str, Any] = {
        "policy_id": POLICY_ID,
        "version": "2024.1",
        "valid_from": "2024-08-01T00:00:00Z",
        "description": (
            "Data for Generative AI Improvement: default-on in the US, Canada and the UK"
            " (disclosed 18 Sept 2024; UK suspended from 20 Sept 2024), exempt in Europe"
            " until opt-out training from 3 Nov 2025, exempt in HK; private messages only"
            " with an explicit opt-in."
        ),
        "jurisdiction_groups": {"DEFAULT_ON": list(DEFAULT_ON)},
        "rules": [
            {
                "id": "default-on",
                "description": "Default-on, lawful once disclosed on 18 Sept 2024; opting"
                " out does not affect training that already took place.",
                "jurisdictions": ["DEFAULT_ON"],
                "purposes": ["ai.training.generative"],
                "data_categories": ["user"],
                "lawful_bases": [
                    {"mechanism": "explicit_opt_in"},
                    {"mechanism": "default_setting", "valid_from": "2024-09-18T00:00:00Z"},
                ],
                "default": {"mechanism": "default_setting", "valid_from": "2024-08-01T00:00:00Z"},
                "withdrawal": {"requires": "exclude_from_future"},
            },
            {
                "id": "private-messages",
                "description": "Private messages only with an explicit opt-in naming them;"
                " withdrawing it requires retraining the models trained on them.",
                "jurisdictions": ["DEFAULT_ON"],
                "purposes": ["ai.training.generative"],
                "data_categories": ["user.content.private"],
                "lawful_bases": [{"mechanism": "explicit_opt_in"}],
                "opt_in_scope": "exact",
                "withdrawal": {"requires": "retrain"},
            },
            {
                "id": "gb-suspended",
                "description": "UK training suspended from 20 Sept 2024 (the regulator objected).",
                "jurisdictions": ["GB"],
                "purposes": ["ai.training.generative"],
                "data_categories": ["user"],
                "valid_from": "2024-09-20T00:00:00Z",
                "lawful_bases": [],
            },
            {
                "id": "eea-ch-exempt",
                "description": "EU/EEA and Swiss members exempt until 3 Nov 2025.",
                "jurisdictions": ["EEA", "CH"],
                "purposes": ["ai.training.generative"],
                "data_categories": ["user"],
                "valid_until": "2025-11-03T00:00:00Z",
                "lawful_bases": [],
            },
            {
                "id": "eea-ch-legitimate-interest",
                "description": "From 3 Nov 2025: legitimate interest, with the right to object.",
                "jurisdictions": ["EEA", "CH"],
                "purposes": ["ai.training.generative"],
                "data_categories": ["user"],
                "valid_from": "2025-11-03T00:00:00Z",
                "lawful_bases": [
                    {"mechanism": "explicit_opt_in"},
                    {"mechanism": "default_setting"},
                ],
                "default": {"mechanism": "default_setting"},
                "withdrawal": {"requires": "exclude_from_future"},
            },
            {
                "id": "eea-ch-private-messages",
                "description": "Private messages stay out of EU/EEA/Swiss training.",
                "jurisdictions": ["EEA", "CH"],
                "purposes": ["ai.training.generative"],
                "data_categories": ["user.content.private"],
                "lawful_bases": [],
            },
            {
                "id": "hk-exempt",
                "description": "Hong Kong members are exempt.",
                "jurisdictions": ["HK", "CN"],
                "purposes": ["ai.training.generative"],
                "data_categories": ["user"],
                "lawful_bases": [],
            },
            {
                "id": "rest-of-world",
                "description": "Elsewhere, only an explicit opt-in.",
                "jurisdictions": ["*"],
                "purposes": ["ai.training.generative"],
                "data_categories": ["user"],
                "lawful_bases": [{"mechanism": "explicit_opt_in"}],
            },
        ],
    }
    rereading = {
        **reading,
        "version": "2024.2",
        "description": reading["description"]
        + " Re-read: private messages of premium members were never a lawful basis.",
        "rules": [
            {
                "id": "premium-private-messages",
                "description": "Re-reading: premium members' private messages were"
                " confidential by contract; no consent could make their use lawful.",
                # Named country by country (and EEA) so that it outranks every other rule's
                # jurisdiction selector; its deeper category then decides.
                "jurisdictions": ["US", "CA", "GB", "CH", "HK", "CN", "EEA", "*"],
                "purposes": ["ai.training.generative"],
                "data_categories": [CATEGORY["premium_message"]],
                "lawful_bases": [],
            },
            *reading["rules"],
        ],
    }
    return reading, rereading


# --- the generator ---------------------------------------------------------------------


def _jurisdiction(rng: random.Random) -> str:
    pick = rng.random()
    for code, share in JURISDICTION_MIX:
        if pick < share:
            return rng.choice(EU_COUNTRIES) if code == "EU" else code
        pick -= share
    return "US"


def region(jurisdiction: str) -> str:
    """``EU`` for the EU countries, else the jurisdiction."""
    return "EU" if jurisdiction in EU_COUNTRIES else jurisdiction


def generate(seed: int, members: int = 20_000, tag: str = "") -> Scenario:
    """The whole case for ``members`` members; the same (seed, members, tag), the same data.

    ``tag`` goes into every name (subjects, records, datasets, models) so that several
    scenarios can share one stack."""
    if members < 1:
        raise ValueError("members must be at least 1")
    rng = random.Random(seed)
    prefix = f"{tag}-" if tag else ""
    people: list[Member] = []
    records: list[Record] = []
    consent: list[ConsentChange] = []
    join_from, join_until = _at("2023-01-01T00:00:00"), _at("2024-06-30T00:00:00")
    for n in range(members):
        jurisdiction = _jurisdiction(rng)
        member = Member(f"m-{prefix}{n:06d}", jurisdiction, rng.random() < 0.12)
        people.append(member)
        joined = _between(rng, join_from, join_until)
        kinds = ["profile"] + ["post"] * rng.randint(0, 6)
        kinds += ["premium_message" if member.premium else "message"] * rng.choice((0, 0, 1, 2, 3))
        for k, kind in enumerate(kinds):
            collected = joined if kind == "profile" else _between(rng, joined, DATES["end"])
            records.append(
                Record(
                    record_id=f"{prefix}{kind}-{n:06d}-{k}",
                    source_system={"profile": "profile", "post": "feed"}.get(kind, "inbox"),
                    subject_id=member.subject_id,
                    category=CATEGORY[kind],
                    jurisdiction=jurisdiction,
                    collected_at=collected,
                )
            )
        consent.extend(_choices(rng, member))
    consent.sort(key=lambda c: (c.effective_at, c.subject_id))
    snapshots = _snapshots(prefix, people, records, consent)
    runs = _runs(rng, prefix, snapshots)
    return Scenario(
        seed=seed,
        tag=tag,
        members=tuple(people),
        records=tuple(records),
        consent=tuple(consent),
        policies=policy_documents(),
        snapshots=snapshots,
        runs=runs,
    )


def _choices(rng: random.Random, member: Member) -> list[ConsentChange]:
    """What one member did on the settings page: at most one withdrawal each."""
    where = region(member.jurisdiction)

    def change(
        categories: tuple[str, ...], state: str, mechanism: str, at: datetime
    ) -> ConsentChange:
        return ConsentChange(
            member.subject_id, member.jurisdiction, categories, state, mechanism, at
        )

    if where in ("US", "CA") and rng.random() < (0.35 if member.premium else 0.05):
        # Opted in to "use my messages too" (premium members were asked more often).
        granted = _between(rng, _at("2024-08-10T00:00:00"), _at("2024-11-25T00:00:00"))
        out = [change(("user.content.private",), "granted", "explicit_opt_in", granted)]
        if rng.random() < 0.25:
            withdrawn = _between(rng, _at("2025-01-15T00:00:00"), DATES["end"])
            out.append(change(("user.content.private",), "withdrawn", "opt_out", withdrawn))
        return out
    if where in DEFAULT_ON and rng.random() < 0.06:
        at = _between(rng, _at("2024-08-05T00:00:00"), DATES["end"])
        return [change(("user",), "withdrawn", "opt_out", at)]
    if where in ("EU", "CH") and rng.random() < 0.10:
        # Objections from the notice of EU training on: many before it starts, some after.
        at = _between(rng, DATES["eu_notice"], DATES["end"])
        return [change(("user",), "withdrawn", "opt_out", at)]
    if where == "HK" and rng.random() < 0.03:
        at = _between(rng, _at("2024-08-05T00:00:00"), DATES["end"])
        return [change(("user",), "withdrawn", "opt_out", at)]
    return []


@dataclass(frozen=True, slots=True)
class _Take:
    """One snapshot the pipeline takes."""

    name: str
    day: str
    regions: tuple[str, ...]
    kinds: tuple[str, ...]
    description: str
    optout_lag: timedelta = timedelta(0)


POSTS = ("profile", "post")
TAKES: tuple[_Take, ...] = (
    _Take(
        "member-posts",
        "2024-08-20",
        ("US", "CA", "GB"),
        POSTS,
        "first corpus: the setting is on, the privacy policy does not say so yet",
    ),
    _Take(
        "member-posts",
        "2024-09-19",
        ("US", "CA", "GB"),
        POSTS,
        "the day after the disclosure; the UK not yet suspended",
    ),
    _Take("member-posts", "2024-10-01", ("US", "CA"), POSTS, "after the UK suspension"),
    _Take(
        "member-messages",
        "2024-12-01",
        ("US", "CA"),
        ("message", "premium_message"),
        "private messages of members who opted in to them",
    ),
    _Take("member-posts", "2025-10-27", ("US", "CA"), POSTS, "a week before EU training starts"),
    _Take(
        "member-posts",
        "2025-11-10",
        ("US", "CA", "EU", "CH"),
        POSTS,
        "first corpus with EU and Swiss members (opt-out list a week stale)",
        timedelta(days=7),
    ),
)


def _snapshots(
    prefix: str,
    people: Sequence[Member],
    records: Sequence[Record],
    consent: Sequence[ConsentChange],
) -> tuple[Snapshot, ...]:
    """The ML pipeline's snapshots. It keeps a member's records unless it knew of their
    opt-out (effective before the snapshot, minus its opt-out list's lag); private messages
    only of members whose opt-in for them it knew of and who had not withdrawn it."""
    region_of = {m.subject_id: region(m.jurisdiction) for m in people}
    by_subject: dict[str, list[ConsentChange]] = {}
    for c in consent:
        by_subject.setdefault(c.subject_id, []).append(c)
    out = []
    for take in TAKES:
        used_at = _at(f"{take.day}T06:00:00")
        known = used_at - take.optout_lag
        kinds = {CATEGORY[k] for k in take.kinds}
        chosen = []
        for r in records:
            if r.category not in kinds or r.collected_at > used_at:
                continue
            if region_of[r.subject_id] not in take.regions:
                continue
            changes = [c for c in by_subject.get(r.subject_id, ()) if c.effective_at <= known]
            if any(c.data_categories == ("user",) and c.state == "withdrawn" for c in changes):
                continue
            if r.source_system == "inbox":
                latest = [c for c in changes if c.data_categories == ("user.content.private",)]
                if not latest or latest[-1].state != "granted":
                    continue
            chosen.append(r.record_id)
        out.append(
            Snapshot(
                namespace=f"s3://{prefix}lake",
                name=take.name,
                version=take.day,
                used_at=used_at,
                record_ids=tuple(chosen),
                description=take.description,
            )
        )
    return tuple(out)


def _runs(
    rng: random.Random, prefix: str, snapshots: Sequence[Snapshot]
) -> tuple[TrainingRun, ...]:
    by_version = {(s.name, s.version): s for s in snapshots}
    ns = f"models://{prefix}ml"

    def model(name: str, version: str) -> ModelVersion:
        return ModelVersion(ns, name, version)

    def run(
        kind: str,
        job: str,
        day: str,
        datasets: tuple[Snapshot, ...],
        parents: tuple[ModelVersion, ...],
        output: ModelVersion,
    ) -> TrainingRun:
        run_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        return TrainingRun(run_id, job, kind, _at(f"{day}T18:00:00"), datasets, parents, output)

    posts = {v: by_version[("member-posts", v)] for n, v in by_version if n == "member-posts"}
    messages = by_version[("member-messages", "2024-12-01")]
    base_aug = model("assistant-base", "2024-08")
    base_sep = model("assistant-base", "2024-09")
    base_oct = model("assistant-base", "2024-10")
    inmail = model("inmail-assist", "2024-12")
    small = model("assistant-small", "2025-03")
    base_oct25 = model("assistant-base", "2025-10")
    base_nov25 = model("assistant-base", "2025-11")
    merged = model("assistant-merged", "2025-12")
    return (
        run("pretrain", "train-assistant-base", "2024-08-22", (posts["2024-08-20"],), (), base_aug),
        run("pretrain", "train-assistant-base", "2024-09-21", (posts["2024-09-19"],), (), base_sep),
        run("pretrain", "train-assistant-base", "2024-10-05", (posts["2024-10-01"],), (), base_oct),
        run("fine-tune", "finetune-inmail-assist", "2024-12-05", (messages,), (base_oct,), inmail),
        run("distill", "distill-assistant-small", "2025-03-01", (), (inmail,), small),
        run(
            "pretrain", "train-assistant-base", "2025-10-30", (posts["2025-10-27"],), (), base_oct25
        ),
        run(
            "pretrain", "train-assistant-base", "2025-11-14", (posts["2025-11-10"],), (), base_nov25
        ),
        run("merge", "merge-assistant", "2025-12-01", (), (base_nov25, small), merged),
    )
