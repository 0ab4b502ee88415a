"""Decisions per second of the pure eligibility engine (``services.eligibility``).

Loads ``policies/genai-training-2024.yaml``, generates subjects with realistic consent
histories (a seed makes it repeatable) and times ``evaluate`` and
``withdrawal_requirement`` over many uses, as the registry runs them when it re-evaluates
a snapshot. Prints medians of several runs; no services, no database.

    python bench/eligibility_engine.py [--uses 200000] [--events-per-subject 4] [--runs 5]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from contracts.events import ConsentEvent, ConsentEvidence
from contracts.vocabulary import ConsentMechanism, ConsentState
from services.eligibility import Use, evaluate, withdrawal_requirement
from services.eligibility.documents import load_policy

ROOT = Path(__file__).resolve().parents[1]
START = datetime(2024, 6, 1, tzinfo=UTC)
JURISDICTIONS = ["US", "US", "US", "US-CA", "DE", "FR", "GB", "CH", "HK", "CA"]
CATEGORIES = ["user.content.public", "user.content.private", "user.account", "user.behavior"]


def history(rng: random.Random, subject: str, jurisdiction: str, n: int) -> list[ConsentEvent]:
    events = []
    for _ in range(n):
        at = START + timedelta(days=rng.uniform(0, 600))
        state = rng.choice([ConsentState.GRANTED, ConsentState.WITHDRAWN])
        mechanism = (
            ConsentMechanism.EXPLICIT_OPT_IN
            if state is ConsentState.GRANTED
            else ConsentMechanism.OPT_OUT
        )
        events.append(
            ConsentEvent(
                consent_event_id=uuid.UUID(int=rng.getrandbits(128)),
                subject_id=subject,
                jurisdiction=jurisdiction,
                purpose=rng.choice(["ai.training", "ai.training.generative"]),
                data_categories=(rng.choice(["user", "user.content", "user.content.private"]),),
                state=state,
                mechanism=mechanism,
                policy_version="2024.1",
                effective_at=at,
                recorded_at=at + timedelta(minutes=rng.uniform(0, 60)),
                source_system="bench",
                evidence=ConsentEvidence(collection_point="bench"),
            )
        )
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uses", type=int, default=200_000)
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--events-per-subject", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    policy = load_policy(ROOT / "policies" / "genai-training-2024.yaml")
    subjects = []
    for i in range(args.subjects):
        jurisdiction = rng.choice(JURISDICTIONS)
        subjects.append(
            (f"m{i}", jurisdiction, history(rng, f"m{i}", jurisdiction, args.events_per_subject))
        )
    uses = []
    for _ in range(args.uses):
        subject, jurisdiction, events = rng.choice(subjects)
        use = Use(
            subject_id=subject,
            jurisdiction=jurisdiction,
            purpose="ai.training.generative",
            category=rng.choice(CATEGORIES),
            used_at=START + timedelta(days=rng.uniform(0, 600)),
        )
        uses.append((use, events))
    withdrawals = [
        (use, next((e for e in events if e.state is ConsentState.WITHDRAWN), None))
        for use, events in uses
    ]

    evaluate_rates, withdrawal_rates, eligible = [], [], 0
    for _ in range(args.runs):
        started = time.perf_counter()
        eligible = sum(evaluate(events, policy, use).eligible for use, events in uses)
        evaluate_rates.append(len(uses) / (time.perf_counter() - started))
        started = time.perf_counter()
        for use, withdrawal in withdrawals:
            if withdrawal is not None:
                withdrawal_requirement(policy, use, withdrawal)
        withdrawal_rates.append(len(withdrawals) / (time.perf_counter() - started))

    print(f"policy {policy.policy_id} {policy.version}: {len(policy.rules)} rules")
    print(
        f"{args.uses:,} uses over {args.subjects:,} subjects,"
        f" {args.events_per_subject} consent events each; {eligible:,} eligible"
    )
    print(f"{'':32}{'median':>12}{'min':>12}{'max':>12}   (decisions/s, {args.runs} runs)")
    for name, rates in (
        ("evaluate", evaluate_rates),
        ("withdrawal_requirement", withdrawal_rates),
    ):
        print(
            f"{name:32}{statistics.median(rates):>12,.0f}{min(rates):>12,.0f}{max(rates):>12,.0f}"
        )


if __name__ == "__main__":
    main()
