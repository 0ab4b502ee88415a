"""The findings store against real Postgres: whatever sequence of re-judgements it is given,
the findings it keeps are the pure ``aggregate`` of the latest contributions, and what
dropped out is retracted with the counts it had."""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID

import asyncpg
import pytest

from contracts.base import DatasetRef
from contracts.events import DatasetFinding, FindingReason, FindingStatus, Severity
from services.registry.adapters.findings import FindingStore
from services.registry.domain.findings import (
    Contribution,
    FindingCause,
    aggregate,
    withdrawal_totals,
)
from services.runtime.testing import migrate_service

pytestmark = pytest.mark.integration

SUBJECTS = [f"s{i}" for i in range(8)]
CATEGORIES = ["user.content.public", "user.content.private", "user.contact"]


def causes() -> list[FindingCause]:
    made = []
    for version_id in (1, 2):
        dataset = DatasetRef(namespace="s3://store", name="chat", version=str(version_id))
        for rule, reason, severity in (
            ("content", FindingReason.IMPROPER_USE, Severity.DESTROY_REQUIRED),
            ("private", FindingReason.IMPROPER_USE, Severity.DESTROY_REQUIRED),
            ("content", FindingReason.LATER_WITHDRAWAL, Severity.RETRAIN_REQUIRED),
        ):
            event = UUID(int=version_id * 100 + len(made))
            made.append(
                FindingCause(
                    dataset_version_id=version_id,
                    dataset=dataset,
                    policy_id="p",
                    policy_version="1",
                    reason=reason,
                    severity=severity,
                    rule_id=rule,
                    detail="withdrawn" if reason is FindingReason.IMPROPER_USE else str(event),
                    rule=f"{rule} rule",
                    detected_at=datetime(2025, 1, 1, tzinfo=UTC) + timedelta(days=version_id),
                    cause_event_ids=(event,) if reason is FindingReason.LATER_WITHDRAWAL else (),
                )
            )
    return made


def random_contributions(rng: random.Random, pool: list[FindingCause]) -> list[Contribution]:
    chosen: dict[tuple[str, int, UUID, str], Contribution] = {}
    for _ in range(rng.randint(0, 25)):
        cause = rng.choice(pool)
        subject, category = rng.choice(SUBJECTS), rng.choice(CATEGORIES)
        ids = sorted(rng.sample(range(200), rng.randint(1, 30)))
        record_ids = tuple(f"{subject}-{category[-4:]}-{i:03d}" for i in ids)
        events = tuple(sorted(UUID(int=rng.randint(1, 10**6)) for _ in range(rng.randint(0, 2))))
        contribution = Contribution(
            cause, subject, category, len(record_ids), record_ids[:20], events
        )
        chosen[contribution.key] = contribution
    return list(chosen.values())


@pytest.fixture
def conn(registry_conn: asyncpg.Connection) -> asyncpg.Connection:
    return registry_conn


async def stored_findings(conn: asyncpg.Connection) -> dict[UUID, DatasetFinding]:
    rows = await conn.fetch("SELECT body::text AS body FROM findings WHERE status <> 'new'")
    bodies = (DatasetFinding.model_validate_json(r["body"]) for r in rows)
    return {f.finding_id: f for f in bodies}


@pytest.mark.parametrize("summed_by_caller", [False, True], ids=["sql", "withdrawal_totals"])
async def test_stored_findings_are_the_aggregate_of_the_latest_contributions(
    conn: asyncpg.Connection, summed_by_caller: bool
) -> None:
    """``summed_by_caller``: each round hands ``refresh`` the later-withdrawal findings'
    totals from its contributions (as a consent batch does); the rest add up in SQL."""
    rng = random.Random(20261126)
    pool = causes()
    store = FindingStore(conn)
    ever_active: dict[UUID, DatasetFinding] = {}
    published: list[DatasetFinding] = []
    for _round in range(30):
        desired = random_contributions(rng, pool)
        async with conn.transaction():
            stored = await store.contributions_of_subjects(SUBJECTS)
            touched = await store.reconcile(desired, stored)
            known = withdrawal_totals(desired, touched) if summed_by_caller else None
            published.extend(f for f, _ in await store.refresh(touched, totals=known))

        expected = aggregate(desired)
        findings = await stored_findings(conn)
        active = {k: v for k, v in findings.items() if v.status is FindingStatus.ACTIVE}
        assert active == expected
        for finding_id, finding in findings.items():
            if finding.status is FindingStatus.RETRACTED:
                assert finding_id not in expected
                last = ever_active[finding_id]
                assert finding == last.model_copy(update={"status": FindingStatus.RETRACTED})
        ever_active.update(active)

    # Re-judging with the same contributions publishes nothing.
    async with conn.transaction():
        stored = await store.contributions_of_subjects(SUBJECTS)
        assert await store.refresh(await store.reconcile(desired, stored)) == []
    states = await conn.fetchval("SELECT count(*) FROM finding_events")
    assert states == len(published)
    # Every finding added up again in SQL: the same state, nothing to publish.
    every = [r["finding_id"] for r in await conn.fetch("SELECT finding_id FROM findings")]
    async with conn.transaction():
        assert await store.refresh(every) == []


async def test_a_versions_uses_come_in_slices_that_never_split_a_subject(
    conn: asyncpg.Connection,
) -> None:
    version_id = await conn.fetchval(
        """
        INSERT INTO dataset_versions (namespace, name, version, purpose, created_at, sealed_at,
                                      used_at, record_count)
        VALUES ('s3://store', 'sliced', '1', 'ai.training', now(), now(), now(), 40)
        RETURNING dataset_version_id
        """
    )
    await conn.execute(
        """
        WITH r AS (
            INSERT INTO records (source_system, record_id, subject_id, category, jurisdiction,
                                 collected_at, content_digest)
            SELECT 'src', 'r' || g, 's' || (g % 7), (ARRAY['a.b', 'a.c'])[1 + g % 2], 'DE',
                   now(), 'sha256:' || md5(g::text) || md5(g::text)
            FROM generate_series(1, 40) g
            RETURNING record_pk
        )
        INSERT INTO memberships (dataset_version_id, record_pk) SELECT $1, record_pk FROM r
        """,
        version_id,
    )
    store = FindingStore(conn)
    version = await store.version(version_id)
    assert version is not None
    async with conn.transaction():
        slices = [s async for s in store.uses_of_version(version, slice_subjects=3)]
    subjects_per_slice = [[u.subject_id for u in s] for s in slices]
    flat = [subject for s in subjects_per_slice for subject in s]
    assert flat == sorted(flat), "in subject order"
    assert len(slices) == 3 and all(1 <= len(set(s)) <= 3 for s in subjects_per_slice)
    for earlier, later in itertools.pairwise(subjects_per_slice):
        assert not set(earlier) & set(later), "a subject is never split across slices"
    uses = [u for s in slices for u in s]
    assert sum(u.records for u in uses) == 40
    assert len({(u.subject_id, u.category) for u in uses}) == len(uses) == 14
    assert all(list(u.sample) == sorted(u.sample) for u in uses)


async def test_consent_transactions_share_a_version_and_wait_only_on_a_finding_they_both_change(
    make_database: Callable[[str], str],
) -> None:
    """Two consumers: each holds the version shared and locks the findings it changes that
    gather subjects (improper use). Different findings of one version do not wait on each
    other; the same finding does, and so does a whole-version evaluation (it holds the
    version exclusively). A later withdrawal's finding, one subject's, takes no lock."""
    database = make_database("findings_locks")
    migrate_service("registry", database)
    first, second, third = [await asyncpg.connect(database) for _ in range(3)]
    improper_a, improper_b = [
        c for c in causes() if c.dataset_version_id == 1 and c.reason is FindingReason.IMPROPER_USE
    ]
    withdrawal = next(
        c
        for c in causes()
        if c.dataset_version_id == 1 and c.reason is FindingReason.LATER_WITHDRAWAL
    )
    withdrawals = [
        dataclasses.replace(withdrawal, detail=f"withdrawal {n}", cause_event_ids=(UUID(int=n),))
        for n in range(1, 1001)
    ]
    try:
        a, b = FindingStore(first), FindingStore(second)
        async with first.transaction(), second.transaction():
            await second.execute("SET LOCAL lock_timeout = '2s'")
            await a.share_versions([1])
            await b.share_versions([1])
            mine = Contribution(improper_a, "s0", CATEGORIES[0], 1, ("s0-r1",))
            await a.refresh(await a.reconcile([mine], {}, lock=True))
            theirs = Contribution(improper_b, "s1", CATEGORIES[0], 2, ("s1-r1", "s1-r2"))
            await b.refresh(await b.reconcile([theirs], {}, lock=True))  # no wait

            for blocked in (
                lambda s: s.lock_versions([1]),  # an evaluation of the version
                lambda s: s.reconcile(  # the same finding, from another consumer
                    [Contribution(improper_a, "s2", CATEGORIES[0], 1, ("s2-r1",))], {}, lock=True
                ),
            ):
                async with third.transaction():
                    await third.execute("SET LOCAL lock_timeout = '200ms'")
                    with pytest.raises(asyncpg.LockNotAvailableError):
                        await blocked(FindingStore(third))

            # A batch of 1,000 withdrawals' findings: no lock each (ten per withdrawal, two
            # such batches at once filled Postgres's lock table: "out of shared memory").
            held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1"
            before = await second.fetchval(held, second.get_server_pid())
            solitary = [
                Contribution(w, f"s{n}", CATEGORIES[0], 1, (f"s{n}-r1",))
                for n, w in enumerate(withdrawals)
            ]
            touched = await b.reconcile(solitary, {}, lock=True)
            await b.refresh(touched, totals=withdrawal_totals(solitary, touched))
            assert await second.fetchval(held, second.get_server_pid()) == before
        findings = await stored_findings(first)
        assert {f.finding_id: f.affected_records for f in findings.values()} == {
            improper_a.finding_id: 1,
            improper_b.finding_id: 2,
            **{w.finding_id: 1 for w in withdrawals},
        }
    finally:
        for connection in (first, second, third):
            await connection.close()
