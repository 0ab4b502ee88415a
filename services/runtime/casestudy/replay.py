"""Replay a generated case on a running stack through its public HTTP APIs, in story order.

What a real platform would send, as it would send it: the policy (consent API), the
settings system's consent changes (batches), the ML pipeline's snapshots (the registry's
NDJSON stream, declared as a **backfill** since they were taken in 2024-2025, before the
registry knew of them) and its OpenLineage run events (lineage API); at the end the
re-reading of the policy. Then it waits until every service has consumed what the others
published (their ``/metrics``) and the registry has no evaluation left to do.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from services.runtime.casestudy.scenario import (
    PURPOSE,
    ConsentChange,
    Scenario,
    Snapshot,
    TrainingRun,
)

__all__ = ["Sent", "Stack", "replay", "settle"]

BATCH = 1000
"""Consent changes per batch request (the consent API's limit)."""


@dataclass(frozen=True)
class Stack:
    consent: str = "http://127.0.0.1:8001"
    registry: str = "http://127.0.0.1:8002"
    lineage: str = "http://127.0.0.1:8003"
    deletion: str = "http://127.0.0.1:8004"

    def urls(self) -> dict[str, str]:
        return {
            "consent": self.consent,
            "registry": self.registry,
            "lineage": self.lineage,
            "deletion": self.deletion,
        }


Say = Callable[[str], None]


class ReplayError(RuntimeError):
    """A service refused what the replay sent; the message has its answer."""


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code >= 300:
        raise ReplayError(f"{what}: {response.status_code} {response.text[:2000]}")


async def wait_ready(client: httpx.AsyncClient, stack: Stack, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    for name, url in stack.urls().items():
        while True:
            try:
                if (await client.get(f"{url}/health/ready")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ReplayError(f"{name} at {url} is not ready after {within:.0f}s (make dev?)")
            await asyncio.sleep(0.5)


async def publish_policy(client: httpx.AsyncClient, stack: Stack, document: dict[str, Any]) -> int:
    """Publish a version; returns 1 when it is new (201), 0 when it was there (200)."""
    response = await client.post(f"{stack.consent}/api/v1/policies", json=document)
    _check(response, f"policy {document['policy_id']} {document['version']}")
    return 1 if response.status_code == 201 else 0


async def record_consent(
    client: httpx.AsyncClient, stack: Stack, changes: list[ConsentChange], key: str
) -> int:
    """Record a batch; returns how many events it recorded now (none on a replayed key)."""
    body = {"changes": [c.intake("2024.1") for c in changes]}
    response = await client.post(
        f"{stack.consent}/api/v1/consent-events/batch",
        json=body,
        headers={"Idempotency-Key": key},
    )
    _check(response, f"consent batch {key}")
    return 0 if response.json().get("replayed") else len(changes)


async def register_snapshot(
    client: httpx.AsyncClient, stack: Stack, case: Scenario, snapshot: Snapshot
) -> dict[str, Any]:
    """One NDJSON stream: the header (a backfill used at ``used_at``), then the records."""
    header = {
        "dataset": snapshot.ref(),
        "purpose": PURPOSE,
        "created_at": snapshot.used_at.isoformat(),
        "training_started_at": snapshot.used_at.isoformat(),
        "backfill": True,
    }

    async def body() -> AsyncIterator[bytes]:
        yield json.dumps(header).encode() + b"\n"
        lines: list[str] = []
        for record in case.snapshot_records(snapshot):
            lines.append(json.dumps(record.registration()))
            if len(lines) == 2000:
                yield ("\n".join(lines) + "\n").encode()
                lines = []
        if lines:
            yield ("\n".join(lines) + "\n").encode()

    response = await client.post(
        f"{stack.registry}/api/v1/dataset-versions/stream",
        content=body(),
        headers={"Content-Type": "application/x-ndjson"},
    )
    _check(response, f"snapshot {snapshot.key}")
    sealed: dict[str, Any] = response.json()
    return sealed


async def report_run(client: httpx.AsyncClient, stack: Stack, run: TrainingRun) -> None:
    response = await client.post(f"{stack.lineage}/api/v1/lineage", json=run.openlineage())
    _check(response, f"run {run.run_id} ({run.job})")


def _timeline(case: Scenario) -> Iterator[tuple[datetime, int, object]]:
    """Everything in story order (consent before a snapshot or run at the same instant)."""
    items: list[tuple[datetime, int, object]] = []
    items += [(c.effective_at, 0, c) for c in case.consent]
    items += [(s.used_at, 1, s) for s in case.snapshots]
    items += [(r.event_time, 2, r) for r in case.runs]
    return iter(sorted(items, key=lambda item: (item[0], item[1])))


@dataclass
class Sent:
    """What the registry must have consumed once the replay's events reached it: its
    counters before the replay plus what the replay made the consent service publish."""

    consent_events: float
    policies: float


async def replay(stack: Stack, case: Scenario, say: Say) -> Sent:
    """Send the whole case, in story order; the re-reading of the policy last."""
    async with httpx.AsyncClient(timeout=httpx.Timeout(300, connect=10)) as client:
        await wait_ready(client, stack)
        before = _metrics((await client.get(f"{stack.registry}/metrics")).text)
        sent = Sent(
            before.get((_CONSUMED, "consent.events.v1"), 0.0),
            before.get((_CONSUMED, "consent.policies.v1"), 0.0),
        )
        reading, rereading = case.policies
        sent.policies += await publish_policy(client, stack, reading)
        say(f"policy    {reading['policy_id']} {reading['version']} published (the platform's)")
        pending: list[ConsentChange] = []
        batches = 0

        async def flush() -> None:
            nonlocal pending, batches
            for start in range(0, len(pending), BATCH):
                key = f"casestudy:{case.tag or '-'}:{case.seed}:{len(case.members)}:{batches}"
                sent.consent_events += await record_consent(
                    client, stack, pending[start : start + BATCH], key
                )
                batches += 1
            if pending:
                say(
                    f"consent   {len(pending):>6} changes effective up to"
                    f" {pending[-1].effective_at:%Y-%m-%d}"
                )
            pending = []

        for _, _, item in _timeline(case):
            if isinstance(item, ConsentChange):
                pending.append(item)
                continue
            await flush()
            if isinstance(item, Snapshot):
                if not item.record_ids:
                    say(f"snapshot  {item.key}: empty, not registered")
                    continue
                # As in the story, the registry knows the choices made before the snapshot
                # (else it judges with a partial history, and retracts later).
                await _registry_caught_up(client, stack, sent)
                started = time.perf_counter()
                await register_snapshot(client, stack, case, item)
                say(
                    f"snapshot  {item.key}: {len(item.record_ids):,} records"
                    f" ({time.perf_counter() - started:.1f}s) - {item.description}"
                )
            elif isinstance(item, TrainingRun):
                await report_run(client, stack, item)
                inputs = [d.key for d in item.datasets] + [p.key for p in item.parents]
                say(f"run       {item.kind:<9} {' + '.join(inputs)} -> {item.output.key}")
        await flush()
        await _registry_caught_up(client, stack, sent)
        sent.policies += await publish_policy(client, stack, rereading)
        say(
            f"policy    {rereading['policy_id']} {rereading['version']} published: private"
            " messages of premium members were never a lawful basis"
        )
        return sent


async def _registry_caught_up(
    client: httpx.AsyncClient, stack: Stack, sent: Sent, within: float = 300.0
) -> None:
    deadline = time.monotonic() + within
    while True:
        metrics = _metrics((await client.get(f"{stack.registry}/metrics")).text)
        if metrics.get((_CONSUMED, "consent.events.v1"), 0.0) >= sent.consent_events:
            return
        if time.monotonic() > deadline:
            raise ReplayError(f"the registry did not receive the consent events in {within:.0f}s")
        await asyncio.sleep(0.2)


# --- settling --------------------------------------------------------------------------

_CONSUMED = "consenttrace_messages_consumed_total"
_SAMPLE = re.compile(r"^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+)$")


def _metrics(text: str) -> dict[tuple[str, str], float]:
    """Per (metric, topic): the sum over the other labels."""
    totals: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        name, labels, value = match.groups()
        topic = re.search(r'topic="([^"]*)"', labels)
        if topic is None:
            continue
        key = (name, topic.group(1))
        totals[key] = totals.get(key, 0.0) + float(value)
    return totals


_FLOWS = (
    ("consent", "consent.events.v1", "registry"),
    ("consent", "consent.policies.v1", "registry"),
    ("registry", "registry.findings.v1", "lineage"),
    ("lineage", "lineage.model-flags.v1", "deletion"),
)
"""(producer, topic, consumer): a flow has settled when the consumer has consumed at least
what the producer published."""


async def settle(
    stack: Stack,
    case: Scenario,
    sent: Sent,
    say: Say,
    *,
    within: float = 900.0,
    quiet_for: float = 3.0,
) -> float:
    """Wait until the system has settled, judged from its APIs only; returns the seconds
    waited. Settled: the registry consumed every consent event and policy version the
    replay recorded (the consent service relays them through its outbox, so its own
    counter of what it published can lag behind what it accepted), every flow consumed
    what its producer published (``/metrics``), the
    registry has no evaluation job left, lineage holds exactly the registry's active
    findings on the scenario's dataset versions (the registry relays findings through its
    outbox, in batches), every flagged model has its deletion case, and all of that has
    held for ``quiet_for`` seconds."""
    started = time.monotonic()
    last: tuple[Any, ...] | None = None
    quiet_since = time.monotonic()
    shown = 0.0
    async with httpx.AsyncClient(timeout=60) as client:
        while True:
            waiting, state = await _unsettled(client, stack, case, sent)
            now = time.monotonic()
            if state != last:
                last, quiet_since = state, now
            if not waiting and now - quiet_since >= quiet_for:
                return now - started
            if now - shown > 10:
                shown = now
                say(f"settling  {now - started:.0f}s: " + (", ".join(waiting) or "quiet"))
            if now - started > within:
                raise ReplayError(f"the stack did not settle within {within:.0f}s: {waiting}")
            await asyncio.sleep(0.5)


async def _unsettled(
    client: httpx.AsyncClient, stack: Stack, case: Scenario, sent: Sent
) -> tuple[list[str], tuple[Any, ...]]:
    """What is still moving, and a fingerprint of the state."""
    urls = stack.urls()
    metrics = {n: _metrics((await client.get(f"{u}/metrics")).text) for n, u in urls.items()}
    waiting: list[str] = []
    state: list[Any] = []
    for topic, target in (
        ("consent.events.v1", sent.consent_events),
        ("consent.policies.v1", sent.policies),
    ):
        consumed = metrics["registry"].get((_CONSUMED, topic), 0.0)
        if consumed < target:
            waiting.append(f"registry has {consumed:.0f}/{target:.0f} of {topic}")
    for producer, topic, consumer in _FLOWS:
        published = metrics[producer].get(("consenttrace_outbox_published_total", topic), 0.0)
        consumed = metrics[consumer].get(("consenttrace_messages_consumed_total", topic), 0.0)
        state += [published, consumed]
        if consumed < published:
            waiting.append(f"{topic} {consumed:.0f}/{published:.0f}")
    jobs = (await client.get(f"{stack.registry}/api/v1/evaluation-jobs")).json()
    if parked := [j for j in jobs if j.get("attempts", 0) >= 5]:
        raise ReplayError(f"the registry parked evaluation jobs: {parked}")
    if jobs:
        waiting.append(f"{len(jobs)} evaluation job(s)")
    behind = 0
    for snapshot in case.snapshots:
        if not snapshot.record_ids:
            continue
        found = await client.get(
            f"{stack.registry}/api/v1/findings",
            params={**snapshot.ref(), "status": "active", "limit": "10000"},
        )
        active = (
            sorted(f["finding"]["finding_id"] for f in found.json()) if found.is_success else []
        )
        graph = await client.get(
            f"{stack.lineage}/api/v1/lineage/graph",
            params={"nodeId": snapshot.key, "depth": "0"},
        )
        nodes = graph.json().get("graph", []) if graph.is_success else []
        known = sorted(
            m["findingId"] for n in nodes if n["id"] == snapshot.key for m in n["data"]["findings"]
        )
        state.append(tuple(active))
        behind += active != known
    if behind:
        waiting.append(f"lineage behind the registry on {behind} dataset version(s)")
    cases = (await client.get(f"{stack.deletion}/api/v1/cases")).json()
    opened = {c["cause_key"] for c in cases}
    missing = 0
    for model in case.models():
        status = await client.get(f"{stack.lineage}/api/v1/model-status", params=model.ref())
        causes = status.json().get("causes", []) if status.is_success else []
        severities = {c["severity"] for c in causes}
        state.append((model.key, tuple(sorted(c["flag_id"] for c in causes))))
        if (
            severities & {"destroy_required", "retrain_required"}
            and f"model:{model.key}" not in opened
        ):
            missing += 1
    if missing:
        waiting.append(f"{missing} flagged model(s) without a deletion case yet")
    state.append(len(cases))
    return waiting, tuple(state)
