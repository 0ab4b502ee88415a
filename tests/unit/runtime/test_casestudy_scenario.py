"""The case-study generator: deterministic from its seed, and the case it claims to be."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.policy import PolicyDocument
from services.runtime.casestudy.scenario import CATEGORY, DATES, generate, region

SMALL = 600


def test_the_same_seed_gives_the_same_case_and_another_seed_another() -> None:
    a, b, c = generate(3, SMALL), generate(3, SMALL), generate(4, SMALL)
    assert a.members == b.members and a.records == b.records and a.consent == b.consent
    assert a.snapshots == b.snapshots and a.runs == b.runs and a.policies == b.policies
    assert a.records != c.records


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32), st.integers(1, 120), st.sampled_from(["", "t1"]))
def test_every_snapshot_holds_only_records_collected_before_it_of_its_regions(
    seed: int, members: int, tag: str
) -> None:
    case = generate(seed, members, tag)
    assert case == generate(seed, members, tag)
    ids = [r.record_id for r in case.records]
    assert len(ids) == len(set(ids))
    assert all(m.subject_id.startswith(f"m-{tag}-" if tag else "m-") for m in case.members)
    for snapshot in case.snapshots:
        for record in case.snapshot_records(snapshot):
            assert record.collected_at <= snapshot.used_at
            assert region(record.jurisdiction) != "HK"
    # The pipeline drops members whose opt-out it knew of (no lag before Nov 2025).
    optouts = {
        (c.subject_id, c.effective_at)
        for c in case.consent
        if c.state == "withdrawn" and c.data_categories == ("user",)
    }
    for snapshot in case.snapshots[:-1]:
        held = {r.subject_id for r in case.snapshot_records(snapshot)}
        assert not any(s in held and at <= snapshot.used_at for s, at in optouts)


def test_the_case_has_its_dates_regions_premium_members_and_models() -> None:
    case = generate(11, 4_000)
    regions = Counter(region(m.jurisdiction) for m in case.members)
    assert set(regions) == {"US", "CA", "GB", "EU", "CH", "HK"}
    assert 0.05 < sum(m.premium for m in case.members) / len(case.members) < 0.2
    used = [s.used_at for s in case.snapshots]
    assert used == sorted(used)
    assert any(t < DATES["disclosure"] for t in used)
    assert any(DATES["disclosure"] <= t < DATES["uk_suspension"] for t in used)
    assert any(t > DATES["eu_training"] for t in used)
    messages = next(s for s in case.snapshots if s.name == "member-messages")
    categories = {r.category for r in case.snapshot_records(messages)}
    assert categories == {CATEGORY["message"], CATEGORY["premium_message"]}
    kinds = Counter(run.kind for run in case.runs)
    assert kinds == {"pretrain": 5, "fine-tune": 1, "distill": 1, "merge": 1}
    produced = {run.output.key for run in case.runs}
    assert all(p.key in produced for run in case.runs for p in run.parents)
    opt_outs_after_use = [
        c for c in case.consent if c.state == "withdrawn" and c.effective_at > used[0]
    ]
    assert opt_outs_after_use


def test_both_readings_of_the_policy_are_valid_documents_with_one_valid_time() -> None:
    reading, rereading = (PolicyDocument.model_validate(p) for p in generate(1, 10).policies)
    assert reading.valid_from == rereading.valid_from
    assert {r.id for r in rereading.rules} - {r.id for r in reading.rules} == {
        "premium-private-messages"
    }
