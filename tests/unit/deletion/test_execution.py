"""Executing a deletion case (services.deletion.domain.execution and the webhook
executor's pure parts): tasks of a frozen scope, when a case moves on, what verification
checks and concludes, what is shown as missing, backoff, and signed webhooks."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.base import DatasetRef
from contracts.events import CaseState, DeletionTask, TaskOutcome
from services.deletion.domain.execution import (
    ACK_PATH,
    Check,
    CheckKind,
    CheckResult,
    TaskState,
    TaskView,
    delivery_delay,
    fit_target,
    judge_acknowledged,
    judge_category,
    judge_manifest,
    judge_model,
    judge_subject,
    missing,
    next_move,
    plan_tasks,
    progress,
    task_id_for,
    verdict,
    verification_checks,
    verification_delay,
)
from services.deletion.domain.scoping import FoundVersion, freeze, parse_request, resolve_models
from services.deletion.domain.workflow import Command
from services.deletion.service import execution
from services.deletion.service.cases import AFTER_STEP
from services.deletion.service.webhooks import SignatureInvalid, post, sign, verify_signature

D = {"namespace": "s3://lake", "name": "posts", "version": "1"}
D_KEY = "dataset:s3://lake:posts#1"
M = {"namespace": "models://ml", "name": "chat", "version": "1"}
M_KEY = "model:models://ml:chat#1"
GRAPH = {
    "graph": [
        {
            "id": D_KEY,
            "type": "DATASET",
            "data": {},
            "outEdges": [{"destination": "run:1"}],
        },
        {"id": "run:1", "type": "RUN", "data": {}, "outEdges": [{"destination": M_KEY}]},
        {
            "id": M_KEY,
            "type": "MODEL",
            "data": {**M, "flags": [{"severity": "destroy_required"}]},
            "outEdges": [],
        },
    ]
}


def erasure_targets(systems: tuple[str, ...] = ("crm",), **scope: Any) -> dict[str, Any]:
    request = parse_request("subject_erasure", {"subject_ids": ["s1", "s2"], **scope})
    versions = [FoundVersion(DatasetRef.model_validate(D), records=2)]
    return freeze(
        request,
        versions=versions,
        models=resolve_models(request, {D_KEY: GRAPH}),
        systems=list(systems),
    )


# --- tasks ------------------------------------------------------------------------------


def test_an_erasure_becomes_one_task_per_system() -> None:
    tasks = {t.system: t for t in plan_tasks(erasure_targets(data_categories=["user.a"]))}
    assert set(tasks) == {"registry", "lineage", "crm"}
    registry, lineage, crm = tasks["registry"], tasks["lineage"], tasks["crm"]
    assert (registry.action, registry.executor) == ("purge_records", "builtin")
    assert registry.targets == ("subject:s1", "subject:s2")
    assert registry.parameters["subjects"] == ["s1", "s2"]
    assert registry.parameters["categories"] == ["user.a"]
    assert lineage.action == "mark_models" and lineage.targets == (M_KEY,)
    assert lineage.parameters == {"models": [{"model": M, "status": "destroyed"}]}
    assert (crm.action, crm.executor) == ("erase_subject_data", "webhook")
    assert crm.targets == ("subject:s1", "subject:s2", M_KEY)
    assert crm.parameters["acknowledge"] == ACK_PATH
    for task in tasks.values():  # every task fits the contract
        DeletionTask(
            task_id=uuid4(),
            case_id=uuid4(),
            target_system=task.system,
            action=task.action,
            targets=task.targets,
            issued_at=datetime.now(UTC),
            parameters=task.parameters,
        )


def test_a_model_destruction_sends_nothing_to_the_registry() -> None:
    request = parse_request("model_destruction", {"model": M})
    targets = freeze(
        request,
        versions=[],
        models=resolve_models(request, {M_KEY: None}),
        systems=["store"],
    )
    tasks = plan_tasks(targets)
    assert [(t.system, t.action) for t in tasks] == [
        ("lineage", "mark_models"),
        ("store", "destroy_model_artifacts"),
    ]
    assert tasks[1].parameters["selector"] is None


def test_long_keys_fit_the_contract_and_stay_distinct() -> None:
    long_a = "dataset:s3://lake:" + "a" * 400 + "#1"
    long_b = "dataset:s3://lake:" + "a" * 400 + "#2"
    assert fit_target("subject:s1") == "subject:s1"
    assert len(fit_target(long_a)) == 256 and fit_target(long_a) != fit_target(long_b)
    assert fit_target(long_a).startswith("dataset:s3://lake:aaa")
    request = parse_request("dataset_purge", {"dataset": {**D, "name": "n" * 1000}})
    (task,) = plan_tasks(freeze(request, versions=[], models=[], systems=[]))
    assert len(task.targets[0]) == 256
    assert task.parameters["dataset_versions"][0]["name"] == "n" * 1000


def test_task_ids_are_derived_and_new_for_each_attempt() -> None:
    case = UUID("00000000-0000-0000-0000-000000000001")
    first = task_id_for(case, "crm", "erase_subject_data", 1)
    assert first == task_id_for(case, "crm", "erase_subject_data", 1)
    assert first != task_id_for(case, "crm", "erase_subject_data", 2)
    assert first != task_id_for(case, "registry", "erase_subject_data", 1)


# --- moving on --------------------------------------------------------------------------


def view(system: str, state: str, reason: str = "") -> TaskView:
    return TaskView(system, "act", TaskState(state), reason)


def test_a_failed_task_fails_the_case_with_its_reason() -> None:
    move = next_move(
        CaseState.EXECUTING, [view("registry", "done"), view("crm", "failed", "locked")]
    )
    assert move is not None and move.command is Command.FAIL
    assert move.reason == "task crm/act (attempt 1) failed: locked"


def test_every_task_acknowledged_starts_verification() -> None:
    tasks = [view("registry", "done"), view("crm", "not_applicable")]
    move = next_move(CaseState.EXECUTING, tasks)
    assert move is not None and move.command is Command.START_VERIFICATION
    assert next_move(CaseState.EXECUTING, [*tasks, view("lineage", "pending")]) is None
    empty = next_move(CaseState.EXECUTING, [])
    assert empty is not None and empty.command is Command.START_VERIFICATION


@pytest.mark.parametrize("state", [s for s in CaseState if s is not CaseState.EXECUTING])
def test_nothing_moves_a_case_that_is_not_executing(state: CaseState) -> None:
    assert next_move(state, [view("crm", "failed", "x"), view("r", "done")]) is None


@given(st.lists(st.sampled_from(list(TaskState)), max_size=6))
def test_the_move_follows_the_worst_task(states: list[TaskState]) -> None:
    tasks = [TaskView(f"s{i}", "a", s, "why") for i, s in enumerate(states)]
    move = next_move(CaseState.EXECUTING, tasks)
    if TaskState.FAILED in states:
        assert move is not None and move.command is Command.FAIL
    elif TaskState.PENDING in states:
        assert move is None
    else:
        assert move is not None and move.command is Command.START_VERIFICATION


# --- verification -----------------------------------------------------------------------


def test_verification_checks_every_target() -> None:
    targets = erasure_targets(categories=["user.a", "user.b"])
    checks = verification_checks(targets, [view("registry", "done"), view("crm", "done")])
    assert [(c.kind, c.target) for c in checks] == [
        (CheckKind.SUBJECT_RECORDS, "subject:s1/user.a"),
        (CheckKind.SUBJECT_RECORDS, "subject:s1/user.b"),
        (CheckKind.SUBJECT_RECORDS, "subject:s2/user.a"),
        (CheckKind.SUBJECT_RECORDS, "subject:s2/user.b"),
        (CheckKind.MODEL_STATUS, M_KEY),
        (CheckKind.ACKNOWLEDGED, "system:crm"),
    ]
    assert checks[0].params == {"subject_id": "s1", "category": "user.a"}
    plain = verification_checks(erasure_targets())
    assert plain[0].params == {"subject_id": "s1", "category": None}
    dataset_case = parse_request("dataset_purge", {"dataset": D})
    dataset = freeze(dataset_case, versions=[], models=[], systems=[])
    assert [(c.kind, c.target) for c in verification_checks(dataset)] == [
        (CheckKind.DATASET_MANIFEST, D_KEY)
    ]
    category = freeze(
        parse_request("category_purge", {"categories": ["user.a"], "jurisdictions": ["DE"]}),
        versions=[],
        models=[],
        systems=[],
    )
    (check,) = verification_checks(category)
    assert check.kind is CheckKind.CATEGORY_RECORDS and check.params["jurisdictions"] == ["DE"]


def check(kind: CheckKind, **params: Any) -> Check:
    return Check(kind, "t", params)


def test_each_check_judges_what_the_service_answered() -> None:
    subject = check(CheckKind.SUBJECT_RECORDS)
    assert judge_subject(subject, []).confirmed is True
    still = judge_subject(subject, [{"dataset": D, "subject_records": 2}])
    assert still.confirmed is False and D_KEY in still.detail
    manifest = check(CheckKind.DATASET_MANIFEST)
    assert judge_manifest(manifest, None).confirmed is True
    assert judge_manifest(manifest, {"record_count": 0}).confirmed is True
    assert judge_manifest(manifest, {"record_count": 3}).confirmed is False
    category = check(CheckKind.CATEGORY_RECORDS)
    assert judge_category(category, []).confirmed is True
    assert judge_category(category, [{"records": 4}]).confirmed is False
    destroyed = check(CheckKind.MODEL_STATUS, status="destroyed")
    superseded = check(CheckKind.MODEL_STATUS, status="superseded")
    assert judge_model(destroyed, {"explicit_status": "destroyed"}).confirmed is True
    assert judge_model(superseded, {"explicit_status": "destroyed"}).confirmed is True
    assert judge_model(destroyed, {"explicit_status": "superseded"}).confirmed is False
    assert judge_model(destroyed, {"status": "flagged", "explicit_status": None}).confirmed is False
    assert judge_model(destroyed, None).confirmed is True
    acked = Check(CheckKind.ACKNOWLEDGED, "system:crm")
    assert judge_acknowledged(acked, [view("crm", "done")]).confirmed is True
    assert judge_acknowledged(acked, [view("crm", "pending")]).confirmed is False
    assert judge_acknowledged(acked, []).confirmed is False


def test_the_verdict_lists_what_is_not_confirmed() -> None:
    a = CheckResult(Check(CheckKind.SUBJECT_RECORDS, "subject:s1"), True, "gone")
    b = CheckResult(Check(CheckKind.MODEL_STATUS, M_KEY), False, "status flagged")
    c = CheckResult(Check(CheckKind.SUBJECT_RECORDS, "subject:s2"), None, "registry: down")
    assert verdict([a]) == (True, [])
    confirmed, lines = verdict([a, b, c])
    assert not confirmed
    assert lines == [
        f"model_status {M_KEY}: status flagged",
        "subject_records subject:s2: could not be checked: registry: down",
    ]
    assert b.as_json()["confirmed"] is False


def test_what_is_missing_is_spelled_out() -> None:
    tasks = [view("registry", "done"), view("crm", "pending"), view("x", "failed", "boom")]
    assert missing(CaseState.EXECUTING, tasks, None) == [
        "task crm/act: not acknowledged yet",
        "task x/act: failed: boom",
    ]
    settled = [view("registry", "done")]
    assert missing(CaseState.VERIFYING, settled, None) == ["verification: not run yet"]
    assert missing(CaseState.VERIFYING, settled, {"missing": ["model_status m: flagged"]}) == [
        "verification: model_status m: flagged"
    ]
    assert missing(CaseState.COMPLETED, tasks, None) == []
    shown = progress(
        CaseState.EXECUTING,
        [{"system": "crm", "action": "act", "state": "pending", "reason": ""}],
        None,
    )
    assert shown["missing"] == ["task crm/act: not acknowledged yet"]
    assert shown["tasks"][0]["state"] == "pending" and shown["verification"] is None


def test_backoff_grows_to_its_cap() -> None:
    assert 1.6 <= delivery_delay(1) <= 2.4
    assert 6.4 <= delivery_delay(3) <= 9.6
    assert delivery_delay(40) <= 900 * 1.2
    assert delivery_delay(2, jitter=0) == 4.0
    assert [verification_delay(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert verification_delay(100) == 600.0


def test_the_hook_is_registered_once() -> None:
    execution.install()
    execution.install()
    assert AFTER_STEP.count(execution.after_step) == 1


# --- signatures ---------------------------------------------------------------------------

SECRET = "s" * 32


def test_a_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    body = b'{"task_id":"x"}'
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1700000000, body) == f"v1={expected}"
    verify_signature(SECRET, "1700000000", f"v1={expected}", body, now=1700000100)


@pytest.mark.parametrize(
    ("secret", "timestamp", "body", "now", "why"),
    [
        ("t" * 32, "1700000000", b"{}", 1700000000, "does not match"),
        (SECRET, "1700000000", b"{ }", 1700000000, "does not match"),
        (SECRET, "1700000000", b"{}", 1700000301, "more than 300 s"),
        (SECRET, "1700000000", b"{}", 1699999000, "more than 300 s"),
        (SECRET, "yesterday", b"{}", 1700000000, "Unix seconds"),
        (SECRET, None, b"{}", 1700000000, "required"),
    ],
)
def test_a_bad_signature_is_refused_saying_why(
    secret: str, timestamp: str | None, body: bytes, now: float, why: str
) -> None:
    signature = sign(SECRET, 1700000000, b"{}")
    with pytest.raises(SignatureInvalid, match=why):
        verify_signature(secret, timestamp, signature, body, now=now)


async def test_a_delivery_is_signed_and_its_answer_read() -> None:
    task = DeletionTask(
        task_id=uuid4(),
        case_id=uuid4(),
        target_system="crm",
        action="erase_subject_data",
        targets=("subject:s1",),
        issued_at=datetime.now(UTC),
    )
    seen: list[httpx.Request] = []
    answers = iter(
        [
            httpx.Response(202),
            httpx.Response(200, json={"outcome": "failed"}),
            httpx.Response(200, json={"outcome": "done", "reason": "erased"}),
            httpx.Response(503, text="maintenance"),
            httpx.Response(200, json={"outcome": "maybe"}),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return next(answers)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        results = [await post(client, "http://crm/hook", SECRET, "crm", task, n) for n in range(5)]
    accepted = results[0]
    assert accepted.accepted and accepted.outcome is None and accepted.status_code == 202
    assert results[1].outcome is TaskOutcome.FAILED and "without a reason" in results[1].reason
    assert (results[2].outcome, results[2].reason) == (TaskOutcome.DONE, "erased")
    assert not results[3].accepted and results[3].error == "HTTP 503: maintenance"
    assert not results[4].accepted and "unknown outcome" in (results[4].error or "")
    request = seen[0]
    assert json.loads(request.content)["task_id"] == str(task.task_id)
    verify_signature(
        SECRET,
        request.headers["X-ConsentTrace-Timestamp"],
        request.headers["X-ConsentTrace-Signature"],
        request.content,
        now=time.time(),
    )
    assert request.headers["X-ConsentTrace-Task"] == str(task.task_id)
    assert request.headers["X-ConsentTrace-System"] == "crm"
