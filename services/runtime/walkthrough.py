"""The walking skeleton as a client: one withdrawal travels consent → registry → lineage → deletion.

``python -m services.runtime.walkthrough`` runs it against a running stack (``make dev``)
and prints the path; the end-to-end test and the benchmark drive the same functions.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx

__all__ = ["Stack", "Walk", "poll", "prepare", "withdraw"]

T = TypeVar("T")
POLICY_ID = "ai-training"


@dataclass(frozen=True)
class Stack:
    consent: str = "http://127.0.0.1:8001"
    registry: str = "http://127.0.0.1:8002"
    lineage: str = "http://127.0.0.1:8003"
    deletion: str = "http://127.0.0.1:8004"


@dataclass(frozen=True)
class Walk:
    """A subject, the dataset version holding their record, and the model trained on it."""

    subject_id: str
    dataset: dict[str, str]
    model: dict[str, str]
    run_id: str


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def policy_document(version: str = "1") -> dict[str, Any]:
    """US members: a withdrawal requires destroying models trained on their private messages."""
    return {
        "policy_id": POLICY_ID,
        "version": version,
        "valid_from": "2024-01-01T00:00:00Z",
        "rules": [
            {
                "id": "us-content",
                "jurisdictions": ["US"],
                "purposes": ["ai.training"],
                "data_categories": ["user.content"],
                "lawful_bases": [
                    {"mechanism": "explicit_opt_in"},
                    {"mechanism": "default_setting"},
                ],
                "default": {"mechanism": "default_setting"},
                "withdrawal": {"requires": "retrain"},
                "description": "US content: a later withdrawal requires retraining",
            },
            {
                "id": "us-private-messages",
                "jurisdictions": ["US"],
                "purposes": ["ai.training"],
                "data_categories": ["user.content.private"],
                "lawful_bases": [
                    {"mechanism": "explicit_opt_in"},
                    {"mechanism": "default_setting"},
                ],
                "default": {"mechanism": "default_setting"},
                "withdrawal": {"requires": "destroy"},
                "description": "US private messages: a later withdrawal requires destruction",
            },
        ],
    }


async def publish_policy(client: httpx.AsyncClient, stack: Stack) -> None:
    response = await client.post(f"{stack.consent}/api/v1/policies", json=policy_document())
    if response.status_code not in (200, 201):
        raise RuntimeError(f"policy publication failed: {response.status_code} {response.text}")


async def prepare(client: httpx.AsyncClient, stack: Stack, subject_id: str) -> Walk:
    """Register a one-record dataset version and a training run whose model used it."""
    tag = uuid.uuid4().hex[:12]
    dataset = {"namespace": "s3://training", "name": f"messages-{tag}", "version": "v1"}
    collected = datetime.now(UTC) - timedelta(days=30)
    registration = {
        "dataset": dataset,
        "purpose": "ai.training.generative",
        "created_at": (collected + timedelta(days=1)).isoformat(),
        "records": [
            {
                "record_id": f"msg-{tag}",
                "source_system": "inbox",
                "subject_id": subject_id,
                "category": "user.content.private",
                "jurisdiction": "US",
                "collected_at": collected.isoformat(),
                "content_digest": _digest(tag),
            }
        ],
    }
    response = await client.post(f"{stack.registry}/api/v1/dataset-versions", json=registration)
    response.raise_for_status()
    run_id = str(uuid.uuid4())
    model = {"namespace": "models://ml", "name": f"assistant-{tag}", "version": "1"}
    run_event = {
        "eventType": "COMPLETE",
        "eventTime": datetime.now(UTC).isoformat(),
        "producer": "https://github.com/OpenLineage/OpenLineage/tree/1.0.0/client/python",
        "schemaURL": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent",
        "run": {"runId": run_id},
        "job": {"namespace": "ml-pipelines", "name": "train-assistant"},
        "inputs": [_ol_dataset(dataset, "DATASET")],
        "outputs": [_ol_dataset(model, "MODEL")],
    }
    response = await client.post(f"{stack.lineage}/api/v1/lineage", json=run_event)
    response.raise_for_status()
    return Walk(subject_id, dataset, model, run_id)


def _ol_dataset(ref: dict[str, str], kind: str) -> dict[str, Any]:
    producer = "https://github.com/OpenLineage/OpenLineage/tree/1.0.0/client/python"
    return {
        "namespace": ref["namespace"],
        "name": ref["name"],
        "facets": {
            "version": {
                "_producer": producer,
                "_schemaURL": "https://openlineage.io/spec/facets/1-0-1/DatasetVersionDatasetFacet.json",
                "datasetVersion": ref["version"],
            },
            "datasetType": {
                "_producer": producer,
                "_schemaURL": "https://openlineage.io/spec/facets/1-0-0/DatasetTypeDatasetFacet.json",
                "datasetType": kind,
            },
        },
    }


WITHDRAWAL_PATH = "/api/v1/consent-events"


def withdrawal(subject_id: str) -> dict[str, Any]:
    """The consent API's body for the subject's opt-out from AI training, effective now."""
    return {
        "subject_id": subject_id,
        "jurisdiction": "US",
        "purpose": "ai.training",
        "data_categories": ["user.content"],
        "state": "withdrawn",
        "mechanism": "opt_out",
        "policy_version": "1",
        "effective_at": datetime.now(UTC).isoformat(),
        "source_system": "settings",
        "evidence": {"collection_point": "settings/data-for-generative-ai", "channel": "web"},
    }


async def withdraw(client: httpx.AsyncClient, stack: Stack, subject_id: str) -> str:
    """Withdraw the subject's consent; returns the request's trace id."""
    response = await client.post(f"{stack.consent}{WITHDRAWAL_PATH}", json=withdrawal(subject_id))
    response.raise_for_status()
    return response.headers["traceparent"].split("-")[1]


async def poll(probe: Callable[[], Awaitable[T | None]], within: float = 30.0) -> T:
    """Call ``probe`` until it returns something, or fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await probe()
        if result is not None:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing after {within}s")
        await asyncio.sleep(0.05)


async def _rows(client: httpx.AsyncClient, url: str, **params: str) -> list[Any]:
    """JSON rows, or none while the service is still starting."""
    response = await client.get(url, params=params)
    rows: list[Any] = response.json() if response.status_code == 200 else []
    return rows


async def finding_of(client: httpx.AsyncClient, stack: Stack, walk: Walk) -> dict[str, Any] | None:
    rows = await _rows(client, f"{stack.registry}/api/v1/findings", **walk.dataset)
    return rows[0] if rows else None


async def flag_of(client: httpx.AsyncClient, stack: Stack, walk: Walk) -> dict[str, Any] | None:
    rows = await _rows(client, f"{stack.lineage}/api/v1/model-flags", **walk.model)
    return rows[0] if rows else None


async def case_of(client: httpx.AsyncClient, stack: Stack, walk: Walk) -> dict[str, Any] | None:
    cases = await _rows(client, f"{stack.deletion}/api/v1/cases")
    model_key = f"model:{walk.model['namespace']}:{walk.model['name']}#{walk.model['version']}"
    return next((c for c in cases if c["cause_key"] == f"model:{model_key}"), None)


async def policy_known_to_registry(client: httpx.AsyncClient, stack: Stack) -> bool | None:
    versions = await _rows(client, f"{stack.registry}/api/v1/policy-versions")
    return True if any(v["policy_id"] == POLICY_ID for v in versions) else None


async def run(stack: Stack, out: Callable[[str], None]) -> dict[str, Any]:
    """The whole walk; returns what each service reported."""
    async with httpx.AsyncClient(timeout=10) as client:
        await publish_policy(client, stack)
        await poll(lambda: policy_known_to_registry(client, stack))
        walk = await prepare(client, stack, f"member-{uuid.uuid4().hex[:10]}")
        out(f"registered {walk.dataset['name']} (1 private message of {walk.subject_id})")
        out(f"training run {walk.run_id} produced model {walk.model['name']}")
        started = time.perf_counter()
        trace_id = await withdraw(client, stack, walk.subject_id)
        out(f"consent   withdrawn by {walk.subject_id}            trace {trace_id}")
        finding = await poll(lambda: finding_of(client, stack, walk))
        out(
            f"registry  finding {finding['finding']['severity']:<17} {finding['finding']['reason']}"
            f"  trace {finding['trace_id']}"
        )
        flag = await poll(lambda: flag_of(client, stack, walk))
        out(f"lineage   model flagged via {' → '.join(flag['flag']['evidence_path'])}")
        out(f"                                                   trace {flag['trace_id']}")
        case = await poll(lambda: case_of(client, stack, walk))
        elapsed = time.perf_counter() - started
        out(
            f"deletion  case {case['case_id']} {case['kind']} {case['state']},"
            f" {case['days_left']} days left  trace {case['trace_id']}"
        )
        same = {trace_id, finding["trace_id"], flag["trace_id"], case["trace_id"]} == {trace_id}
        out(f"one trace across the four services: {same}; withdrawal → case in {elapsed:.2f}s")
        return {"trace_id": trace_id, "finding": finding, "flag": flag, "case": case}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    defaults = Stack()
    for name in ("consent", "registry", "lineage", "deletion"):
        parser.add_argument(f"--{name}", default=getattr(defaults, name))
    args = parser.parse_args(argv)
    stack = Stack(args.consent, args.registry, args.lineage, args.deletion)
    asyncio.run(run(stack, lambda line: print(line, flush=True)))  # noqa: T201
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
