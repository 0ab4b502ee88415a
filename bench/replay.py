"""Replay every topic from the beginning into empty databases: events/s, and the same results?

    python bench/replay.py [--subjects S] [--versions V] [--withdrawals W]

1. **Original run.** Starts a broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` is set) and the four
   services on fresh databases (group prefix ``bench-<tag>``). Feeds a stream in which every
   fact travels on a topic, so that a replay can see it: the walkthrough policy (consent API →
   ``consent.policies.v1``), ``S`` grants (consent batch API → ``consent.events.v1``), ``V``
   dataset versions of one private message per subject (``registry.registrations.v1``), one
   training run per version and a fine-tune of the first model (``lineage.openlineage.v1``),
   then ``W`` withdrawals (consent batch API). Each withdrawal yields ``V`` findings, model
   flags downstream and destruction cases. Waits until everything settled (every group at the
   end of its topics, every outbox published, no evaluation job left), records the findings
   (registry), model flags (lineage) and cases (deletion), and stops the four services.
2. **Replay.** Starts a second set of the four services on **empty** databases with a new
   group prefix (``bench-<tag>r``): new groups start at the earliest offset
   (``services/runtime/consumer.py``). Measured: the time until each group's committed offsets
   reach the end offsets the topics had when the replay started, per (service, topic) and in
   all; then the time until everything settled again (the replayed services publish their own
   findings, flags and tasks, which their peers consume too).
3. **Comparison.** Findings, flags and cases of the replay against the original: the same ids?
   For the same id, the same body? Differences are counted per field and a few are printed.

Beside: peak RSS (``VmHWM``) of each service in both sets, the raw consume rate of the same
topics with aiokafka (no group, no processing) and the Postgres COPY and INSERT+COMMIT rates,
measured in the same run. JSON to ``bench/results/replay-<UTC timestamp>.json``. Not a test:
nothing here asserts. See ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from importlib import import_module
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from _common import (
    REPO_ROOT,
    SERVICES,
    Bench,
    Row,
    bench_run,
    load_average,
    log,
    peak_rss_mib,
    postgres_limits,
    postgres_server_url,
    process_cpu_s,
    utc_stamp,
    write_result,
)
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from contracts.registration import RegistrationOpened, registration_messages
from contracts.topics import OPENLINEAGE, REGISTRATIONS
from services.runtime.walkthrough import (
    Stack,
    _ol_dataset,
    policy_known_to_registry,
    poll,
    publish_policy,
)

BATCH = 1000
"""Consent changes per ``POST /consent-events/batch`` (the API's limit)."""
REPLAY_LABEL = "r"

Offsets = dict[TopicPartition, int]


# ---------------------------------------------------------------------------- the stream


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def _change(subject: str, state: str, mechanism: str, effective: datetime) -> Row:
    return {
        "subject_id": subject,
        "jurisdiction": "US",
        "purpose": "ai.training",
        "data_categories": ["user.content"],
        "state": state,
        "mechanism": mechanism,
        "policy_version": "1",
        "effective_at": effective.isoformat(),
        "source_system": "settings",
        "evidence": {"collection_point": "settings/data-for-generative-ai", "channel": "web"},
    }


async def post_changes(client: httpx.AsyncClient, stack: Stack, changes: Sequence[Row]) -> None:
    for first in range(0, len(changes), BATCH):
        response = await client.post(
            f"{stack.consent}/api/v1/consent-events/batch",
            json={"changes": list(changes[first : first + BATCH])},
            timeout=120,
        )
        response.raise_for_status()


def _dataset(tag: str, number: int) -> dict[str, str]:
    return {"namespace": "s3://training", "name": f"replay-{tag}-{number}", "version": "v1"}


def _model(tag: str, name: str) -> dict[str, str]:
    return {"namespace": "models://ml", "name": f"{name}-{tag}", "version": "1"}


def _run_event(job: str, inputs: list[Row], outputs: list[Row]) -> bytes:
    producer = "https://github.com/OpenLineage/OpenLineage/tree/1.0.0/client/python"
    event = {
        "eventType": "COMPLETE",
        "eventTime": datetime.now(UTC).isoformat(),
        "producer": producer,
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": str(uuid.uuid4())},
        "job": {"namespace": "ml-pipelines", "name": job},
        "inputs": inputs,
        "outputs": outputs,
    }
    return json.dumps(event, separators=(",", ":")).encode()


async def produce_snapshots_and_runs(
    bootstrap: str, tag: str, subjects: Sequence[str], versions: int
) -> int:
    """``versions`` registrations over Kafka, a run per version, a fine-tune; messages sent."""
    collected = datetime.now(UTC) - timedelta(days=30)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    sent = 0
    try:
        futures = []
        for number in range(versions):
            dataset = _dataset(tag, number)
            opened = RegistrationOpened.model_validate(
                {
                    "dataset": dataset,
                    "purpose": "ai.training.generative",
                    "created_at": (collected + timedelta(days=1)).isoformat(),
                }
            )
            records = (
                {
                    "record_id": f"msg-{number}-{subject}",
                    "source_system": "inbox",
                    "subject_id": subject,
                    "category": "user.content.private",
                    "jurisdiction": "US",
                    "collected_at": collected.isoformat(),
                    "content_digest": _digest(f"{number}-{subject}"),
                }
                for subject in subjects
            )
            for message in registration_messages(opened, records, source="bench/replay"):
                futures.append(
                    await producer.send(
                        REGISTRATIONS.name,
                        value=message.value,
                        key=message.key,
                        headers=list(message.headers),
                    )
                )
        for number in range(versions):
            body = _run_event(
                f"train-{tag}-{number}",
                [_ol_dataset(_dataset(tag, number), "DATASET")],
                [_ol_dataset(_model(tag, f"assistant-{number}"), "MODEL")],
            )
            futures.append(
                await producer.send(OPENLINEAGE.name, body, key=f"train-{number}".encode())
            )
        fine_tune = _run_event(
            f"fine-tune-{tag}",
            [_ol_dataset(_model(tag, "assistant-0"), "MODEL")],
            [_ol_dataset(_model(tag, "assistant-0-ft"), "MODEL")],
        )
        futures.append(await producer.send(OPENLINEAGE.name, fine_tune, key=b"fine-tune"))
        await asyncio.gather(*futures)
        sent = len(futures)
    finally:
        await producer.stop()
    return sent


# ------------------------------------------------------------------------ offsets, settling


def consumer_groups(prefix: str) -> dict[str, tuple[str, str]]:
    """Every consumer group of a service set: group id → (service, topic)."""
    groups = {}
    for name in SERVICES:
        spec = import_module(f"services.{name}.app").SPEC
        for subscription in spec.subscriptions:
            topic = subscription.topic.name
            groups[f"{prefix}.{name}.{topic}"] = (name, topic)
    return groups


class OffsetReader:
    """End offsets of topics and committed offsets of groups (one client, no group joined)."""

    def __init__(self, bootstrap: str) -> None:
        self._bootstrap = bootstrap
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self._committers: dict[str, AIOKafkaConsumer] = {}

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        for consumer in [self._consumer, *self._committers.values()]:
            await consumer.stop()

    async def partitions(self, topic: str) -> list[TopicPartition]:
        await self._consumer._client.force_metadata_update()
        return [
            TopicPartition(topic, p)
            for p in sorted(self._consumer.partitions_for_topic(topic) or ())
        ]

    async def ends(self, topics: Sequence[str]) -> Offsets:
        tps = [tp for topic in topics for tp in await self.partitions(topic)]
        return dict(await self._consumer.end_offsets(tps)) if tps else {}

    async def committed(self, group: str, tps: Sequence[TopicPartition]) -> Offsets:
        if group not in self._committers:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap, group_id=group, enable_auto_commit=False
            )
            await consumer.start()
            self._committers[group] = consumer
        consumer = self._committers[group]
        return {tp: (await consumer.committed(tp)) or 0 for tp in tps}


async def lag(
    offsets: OffsetReader, groups: dict[str, tuple[str, str]], ends: Offsets
) -> dict[str, int]:
    """Messages each group still has to commit to reach ``ends``."""
    out = {}
    for group, (_, topic) in groups.items():
        tps = [tp for tp in ends if tp.topic == topic]
        committed = await offsets.committed(group, tps)
        out[group] = sum(max(0, ends[tp] - committed[tp]) for tp in tps)
    return out


async def unsettled(
    pools: dict[str, asyncpg.Pool], offsets: OffsetReader, groups: dict[str, tuple[str, str]]
) -> dict[str, int]:
    """What is still in flight: unpublished outbox rows, evaluation jobs, group lag."""
    out = {}
    for name, pool in pools.items():
        out[f"{name} outbox"] = int(
            await pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        )
    out["registry evaluation jobs"] = int(
        await pools["registry"].fetchval("SELECT count(*) FROM evaluation_jobs")
    )
    topics = sorted({topic for _, topic in groups.values()})
    for group, behind in (await lag(offsets, groups, await offsets.ends(topics))).items():
        out[group] = behind
    return {k: v for k, v in out.items() if v}


async def settle(
    pools: dict[str, asyncpg.Pool],
    offsets: OffsetReader,
    groups: dict[str, tuple[str, str]],
    within: float,
    what: str,
) -> float:
    """Wait until nothing is in flight twice in a row, 1 s apart; seconds it took."""
    started = time.perf_counter()
    quiet, shown = 0, 0.0
    while quiet < 2:
        left = await unsettled(pools, offsets, groups)
        quiet = quiet + 1 if not left else 0
        if left and time.perf_counter() - shown > 15:
            shown = time.perf_counter()
            log(f"  {what}: in flight after {shown - started:.0f} s: {left}")
        if time.perf_counter() - started > within:
            raise RuntimeError(f"{what}: not settled after {within:.0f} s: {left}")
        await asyncio.sleep(1.0)
    return time.perf_counter() - started


# ------------------------------------------------------------------------------- results

RESULT_QUERIES = {
    "findings": (
        "registry",
        "SELECT finding_id::text AS id, body FROM findings ORDER BY finding_id",
    ),
    "flags": ("lineage", "SELECT flag_id::text AS id, body FROM model_flags ORDER BY flag_id"),
    "cases": (
        "deletion",
        """SELECT case_id::text AS id,
                  jsonb_build_object('kind', kind, 'state', state, 'cause_key', cause_key,
                    'legal_basis', legal_basis, 'regime', regime, 'requester', requester,
                    'received_at', received_at, 'deadline', deadline, 'scope', scope) AS body
           FROM cases ORDER BY case_id""",
    ),
}


async def results_of(pools: dict[str, asyncpg.Pool]) -> dict[str, dict[str, Any]]:
    """Findings, flags and cases by id, each body as stored (JSON decoded)."""
    out: dict[str, dict[str, Any]] = {}
    for kind, (service, query) in RESULT_QUERIES.items():
        rows = await pools[service].fetch(query)
        out[kind] = {r["id"]: json.loads(r["body"]) for r in rows}
    return out


def _diff_fields(a: Any, b: Any, path: str = "") -> list[str]:
    """Paths (``a.b[]``) where two JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _diff_fields(a.get(key), b.get(key), f"{path}.{key}" if path else key)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for x, y in zip(a, b, strict=True):
            out += _diff_fields(x, y, f"{path}[]")
        return sorted(set(out))
    return [] if a == b else [path or "(value)"]


def compare(original: dict[str, Any], replayed: dict[str, Any], examples: int = 3) -> Row:
    """Same ids? Same bodies for the same id? Which fields differ, how often?"""
    only_original = sorted(set(original) - set(replayed))
    only_replay = sorted(set(replayed) - set(original))
    fields: Counter[str] = Counter()
    differing = []
    for key in sorted(set(original) & set(replayed)):
        paths = _diff_fields(original[key], replayed[key])
        if paths:
            differing.append(key)
            fields.update(paths)
    sample = [
        {
            "id": key,
            "fields": {
                p: [_at(original[key], p), _at(replayed[key], p)]
                for p in _diff_fields(original[key], replayed[key])[:4]
            },
        }
        for key in differing[:examples]
    ]
    return {
        "original": len(original),
        "replayed": len(replayed),
        "same_id": len(set(original) & set(replayed)),
        "identical": len(set(original) & set(replayed)) - len(differing),
        "only_in_original": len(only_original),
        "only_in_replay": len(only_replay),
        "examples_only_in_original": [
            _brief(original[k]) | {"id": k} for k in only_original[:examples]
        ],
        "examples_only_in_replay": [
            _brief(replayed[k]) | {"id": k} for k in only_replay[:examples]
        ],
        "differing_fields": dict(fields.most_common()),
        "examples_differing": sample,
    }


def _at(value: Any, path: str) -> Any:
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part.removesuffix("[]"))
    return value


def _brief(body: Any) -> Row:
    keys = ("reason", "severity", "status", "kind", "state", "dataset", "model", "detected_at")
    return {k: body[k] for k in keys if isinstance(body, dict) and k in body}


# ------------------------------------------------------------------------------- limits


async def raw_consume(bootstrap: str, topics: Sequence[str]) -> tuple[Row, Offsets]:
    """Read every message of ``topics`` from the beginning, no group, no processing.

    Also the topics' true ends: Tansu's ``end_offsets()`` answers the last batch's base
    offset + 1 (``/work/shared/BROKER.md``), the fetch's high watermark is right. Returns the
    figures and the high watermark of each partition.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=4 << 20
    )
    await consumer.start()
    try:
        await consumer._client.force_metadata_update()
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        listed = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        started, seen, size = time.perf_counter(), Counter[str](), 0
        idle = 0
        while idle < 2 and time.perf_counter() - started < 600:
            batches = await consumer.getmany(timeout_ms=500)
            idle = 0 if batches else idle + 1
            for tp, records in batches.items():
                seen[tp.topic] += len(records)
                size += sum(len(r.value or b"") for r in records)
        elapsed = time.perf_counter() - started - 0.5 * idle  # the empty polls that ended it
        highwater = {tp: consumer.highwater(tp) or 0 for tp in tps}
        total = sum(seen.values())
        return {
            "messages": total,
            "per_topic": dict(seen),
            "end_offsets_listed_total": sum(listed.values()),
            "high_watermarks_total": sum(highwater.values()),
            "bytes": size,
            "seconds": elapsed,
            "per_s": total / elapsed if elapsed > 0 else None,
        }, highwater
    finally:
        await consumer.stop()


# ---------------------------------------------------------------------------------- run


async def pools_of(bench: Bench, label: str) -> dict[str, asyncpg.Pool]:
    return {
        name: await asyncpg.create_pool(bench.url(name, label), min_size=1, max_size=2)
        for name in SERVICES
    }


def memory_of(bench: Bench, label: str) -> dict[str, float | None]:
    services = [s for s in bench.services if s.log_dir.name == (label or "main")]
    return {s.name: peak_rss_mib(s.proc.pid) if s.proc else None for s in services}


async def cpu_of(bench: Bench, label: str, pools: dict[str, asyncpg.Pool]) -> Row:
    """CPU seconds each service process and its Postgres backends used since they started."""
    services = [s for s in bench.services if s.log_dir.name == (label or "main")]
    out: Row = {s.name: process_cpu_s(s.proc.pid) if s.proc else None for s in services}
    for name, pool in pools.items():
        pids = await pool.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        )
        out[f"postgres ({name})"] = sum(process_cpu_s(r["pid"]) or 0.0 for r in pids)
    return out


async def inbox_spans(pools: dict[str, asyncpg.Pool]) -> list[Row]:
    """Per service and topic: events handled (inbox rows), first and last handling time."""
    rows = []
    for name, pool in pools.items():
        for r in await pool.fetch(
            "SELECT topic, count(*) AS events, min(processed_at) AS first,"
            " max(processed_at) AS last FROM inbox GROUP BY topic ORDER BY topic"
        ):
            rows.append({"service": name, **dict(r)})
    return rows


async def original_run(bench: Bench, args: argparse.Namespace) -> Row:
    stack = await asyncio.to_thread(bench.start_services)
    pools = await pools_of(bench, "")
    offsets = OffsetReader(bench.bootstrap)
    await offsets.start()
    groups = consumer_groups(bench.group_prefix())
    subjects = [f"replay-{bench.tag}-{i:07d}" for i in range(args.subjects)]
    phases: Row = {}
    try:
        async with httpx.AsyncClient(timeout=120) as client:
            started = time.perf_counter()
            log("original: policy …")
            await publish_policy(client, stack)
            await poll(lambda: policy_known_to_registry(client, stack), 120)
            log(f"original: {len(subjects)} grants …")
            granted = datetime.now(UTC) - timedelta(days=60)
            await post_changes(
                client, stack, [_change(s, "granted", "explicit_opt_in", granted) for s in subjects]
            )
            log(f"original: {args.versions} snapshots and {args.versions + 1} runs over Kafka …")
            phases["snapshot_and_run_messages"] = await produce_snapshots_and_runs(
                bench.bootstrap, bench.tag, subjects, args.versions
            )
            phases["settle_after_snapshots_s"] = await settle(
                pools, offsets, groups, args.settle_timeout, "snapshots"
            )
            withdrawn = subjects[: args.withdrawals]
            log(f"original: {len(withdrawn)} withdrawals …")
            now = datetime.now(UTC)
            await post_changes(
                client, stack, [_change(s, "withdrawn", "opt_out", now) for s in withdrawn]
            )
            phases["settle_after_withdrawals_s"] = await settle(
                pools, offsets, groups, args.settle_timeout, "withdrawals"
            )
            phases["total_s"] = time.perf_counter() - started
        results = await results_of(pools)
        memory = memory_of(bench, "")
    finally:
        await offsets.stop()
        for pool in pools.values():
            await pool.close()
    bench.stop_services()
    return {"phases": phases, "results": results, "memory_peak_mib": memory, "groups": groups}


async def replay_run(bench: Bench, args: argparse.Namespace) -> Row:
    groups = consumer_groups(bench.group_prefix(REPLAY_LABEL))
    topics = sorted({topic for _, topic in groups.values()})
    offsets = OffsetReader(bench.bootstrap)
    await offsets.start()
    try:
        log("replay: raw consume of the topics first (the machine's limit, and their ends) …")
        consume, ends = await raw_consume(bench.bootstrap, topics)
        per_topic = {t: consume["per_topic"].get(t, 0) for t in topics}
        log(f"replay: {sum(per_topic.values())} messages on {len(topics)} topics; starting …")
        await asyncio.to_thread(bench.create_databases, SERVICES, REPLAY_LABEL)
        # Offsets are watched from the moment the processes are spawned: a service consumes
        # as soon as it is up, while the others may still be starting.
        started = time.perf_counter()
        starting = asyncio.create_task(asyncio.to_thread(bench.start_services, REPLAY_LABEL))
        ready: float | None = None
        caught_up: dict[str, float] = {}
        while len(caught_up) < len(groups) or ready is None:
            if time.perf_counter() - started > args.settle_timeout:
                starting.cancel()
                raise RuntimeError(f"replay: groups behind after {args.settle_timeout} s")
            if ready is None and starting.done():
                starting.result()  # a service that failed to start ends the run here
                ready = time.perf_counter() - started
            for group, behind in (await lag(offsets, groups, ends)).items():
                if behind == 0 and group not in caught_up:
                    caught_up[group] = time.perf_counter() - started
            await asyncio.sleep(0.25)
        all_caught_up = max(caught_up.values())
        pools = await pools_of(bench, REPLAY_LABEL)
        try:
            memory_at_end = memory_of(bench, REPLAY_LABEL)
            cpu = await cpu_of(bench, REPLAY_LABEL, pools)
            inbox = await inbox_spans(pools)
            settled = await settle(pools, offsets, groups, args.settle_timeout, "replay")
            results = await results_of(pools)
            memory = memory_of(bench, REPLAY_LABEL)
        finally:
            for pool in pools.values():
                await pool.close()
    finally:
        await offsets.stop()
    consumed = {
        group: per_topic[topic] for group, (_, topic) in groups.items()
    }  # each group reads its topic whole
    by_group = {
        group: {
            "service": groups[group][0],
            "topic": groups[group][1],
            "messages": consumed[group],
            "seconds": caught_up[group],
            "per_s": consumed[group] / caught_up[group] if caught_up[group] else None,
        }
        for group in groups
    }
    total_consumed = sum(consumed.values())
    first = min((row["first"] for row in inbox), default=None)
    last = max((row["last"] for row in inbox), default=None)
    span = (last - first).total_seconds() if first and last else None
    return {
        "topics": per_topic,
        "messages": sum(per_topic.values()),
        "consumed_by_all_groups": total_consumed,
        "startup_s": ready,
        "caught_up_s": all_caught_up,
        "events_per_s": sum(per_topic.values()) / all_caught_up,
        "consumed_per_s": total_consumed / all_caught_up,
        "settled_after_s": all_caught_up + settled,
        "processing_span_s": span,
        "events_per_s_processing": sum(per_topic.values()) / span if span else None,
        "inbox": inbox,
        "cpu_s_at_catch_up": cpu,
        "by_group": by_group,
        "results": results,
        "memory_peak_mib": memory,
        "memory_peak_mib_at_catch_up": memory_at_end,
        "raw_consume": consume,
    }


async def measure(bench: Bench, args: argparse.Namespace) -> Row:
    original = await original_run(bench, args)
    replay = await replay_run(bench, args)
    log("limits: Postgres …")
    consume = replay.pop("raw_consume")
    postgres = await postgres_limits(bench.url("scratch"))
    comparison = {
        kind: compare(original["results"][kind], replay["results"][kind]) for kind in RESULT_QUERIES
    }
    for run in (original, replay):
        run["results"] = {kind: len(items) for kind, items in run["results"].items()}
    return {
        "original": original,
        "replay": replay,
        "comparison": comparison,
        "limits": {"kafka_consume": consume, "postgres": postgres},
    }


# --------------------------------------------------------------------------------- output


def _f(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _time(value: datetime | str) -> float:
    """Seconds since the epoch of a timestamp as stored, or as written to the JSON."""
    return (value if isinstance(value, datetime) else datetime.fromisoformat(value)).timestamp()


def report(result: Row, meta: Row) -> str:
    replay, original = result["replay"], result["original"]
    limits = result["limits"]
    lines = [
        "",
        f"ConsentTrace replay of every topic into empty databases   {meta['started_at']}",
        f"{meta['subjects']} subjects, {meta['versions']} snapshots, {meta['withdrawals']}"
        f" withdrawals; {meta['cpus']} CPUs, load {meta['load_before']} → {meta['load_after']}",
        "",
        f"original run: {_f(original['phases']['total_s'], 1)} s to feed and settle;"
        f" {original['results']['findings']} findings, {original['results']['flags']} flags,"
        f" {original['results']['cases']} cases",
        f"replay: {replay['messages']:,} messages on {len(replay['topics'])} topics"
        f" ({replay['consumed_by_all_groups']:,} reads by {len(replay['by_group'])} groups);"
        f" all four ready (HTTP) {_f(replay['startup_s'], 1)} s after spawning",
        f"  every group at the end {_f(replay['caught_up_s'], 1)} s after the processes were"
        " spawned:"
        f" {_f(replay['events_per_s'])} events/s ({_f(replay['consumed_per_s'])} group reads/s)"
        f"   target ≥ 50,000 events/s",
        f"  first → last event handled (inbox): {_f(replay['processing_span_s'], 1)} s:"
        f" {_f(replay['events_per_s_processing'])} events/s",
        f"  settled (own outputs consumed too) after {_f(replay['settled_after_s'], 1)} s",
        "",
        f"  {'service':<9} {'topic':<28} {'messages':>9} {'at end, s':>10} {'msg/s':>9}",
    ]
    for g in sorted(replay["by_group"].values(), key=lambda g: -g["seconds"]):
        lines.append(
            f"  {g['service']:<9} {g['topic']:<28} {g['messages']:>9,}"
            f" {_f(g['seconds'], 1):>10} {_f(g['per_s']):>9}"
        )
    inbox = replay.get("inbox", [])
    if inbox:
        zero = min(_time(r["first"]) for r in inbox)
        lines += [
            "",
            "  handled (inbox rows; s after the first event any replay service handled)",
            f"  {'service':<9} {'topic':<28} {'events':>9} {'first':>7} {'last':>7}",
        ]
        for r in sorted(inbox, key=lambda r: _time(r["last"]), reverse=True):
            lines.append(
                f"  {r['service']:<9} {r['topic']:<28} {r['events']:>9,}"
                f" {_time(r['first']) - zero:>7.1f} {_time(r['last']) - zero:>7.1f}"
            )
    lines += ["", "  CPU s used by the time every group was at the end (since process start)"]
    for name, seconds in replay["cpu_s_at_catch_up"].items():
        lines.append(f"  {name:<22} {_f(seconds, 1):>7}")
    lines += ["", "same results? (replay against original)"]
    for kind, c in result["comparison"].items():
        lines.append(
            f"  {kind:<9} original {c['original']:>6,}  replay {c['replayed']:>6,}"
            f"  same id {c['same_id']:>6,}  identical {c['identical']:>6,}"
            f"  only original {c['only_in_original']:>6,}  only replay {c['only_in_replay']:>6,}"
        )
        if c["differing_fields"]:
            fields = ", ".join(f"{k} x{v}" for k, v in list(c["differing_fields"].items())[:6])
            lines.append(f"  {'':<9} differing fields: {fields}")
    lines += ["", "peak RSS (VmHWM, MiB)   original / replay"]
    for name in SERVICES:
        lines.append(
            f"  {name:<10} {_f(original['memory_peak_mib'].get(name)):>6}"
            f" / {_f(replay['memory_peak_mib'].get(name))}"
        )
    consume, pg = limits["kafka_consume"], limits["postgres"]
    lines += [
        "",
        "machine limits (same broker, same Postgres, this run)",
        f"  Kafka consume of the same topics, no group  {_f(consume['per_s']):>10} msg/s"
        f" ({consume['messages']:,} messages, {consume['bytes'] / 1e6:,.1f} MB)",
        f"  Postgres COPY                               {_f(pg['copy_rows_per_s']):>10} rows/s",
        f"  Postgres INSERT + COMMIT, 1 row per txn     {_f(pg['insert_commit_per_s']):>10} /s",
    ]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--subjects", "-s", type=int, default=5000, help="(5000)")
    parser.add_argument("--versions", "-v", type=int, default=2, help="snapshots (2)")
    parser.add_argument("--withdrawals", "-w", type=int, default=1000, help="(1000)")
    parser.add_argument("--settle-timeout", type=float, default=900, help="seconds per wait (900)")
    parser.add_argument(
        "--service-env", action="append", default=[], metavar="NAME=VALUE", help="(repeatable)"
    )
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)
    if not 0 < args.withdrawals <= args.subjects or args.versions < 1:
        parser.error("need 0 < --withdrawals ≤ --subjects and --versions ≥ 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tag = uuid.uuid4().hex[:8]
    work_dir = Path(tempfile.mkdtemp(prefix=f"ct-replay-{tag}-"))
    service_env = dict(item.split("=", 1) for item in args.service_env)
    bench = Bench(tag, work_dir, postgres_server_url(), service_env=service_env)
    meta: Row = {
        "started_at": utc_stamp(),
        "subjects": args.subjects,
        "versions": args.versions,
        "withdrawals": args.withdrawals,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_before": load_average(),
        "service_env": service_env,
    }
    with bench_run(bench.stop, work_dir, keep_logs=args.keep_logs) as run:
        log(f"infrastructure (logs in {work_dir}) …")
        bench.start_infrastructure()
        result = asyncio.run(measure(bench, args))
        meta["load_after"] = load_average()
        print(report(result, meta))
        print(f"\nJSON: {write_result('replay', result, meta).relative_to(REPO_ROOT)}")
        run.failed = False
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
