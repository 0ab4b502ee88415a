"""The ``consenttrace`` command line (services.runtime.ctl) against ``httpx.MockTransport``:
argument parsing, what is sent (bearer key, URLs, bodies), tables and ``--json``, the API's
refusals as messages and exit codes (0 ok, 1 refused / not verified, 2 usage, 3 unreachable),
following a case, streaming a file through the filter, and evidence export and verification."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.main import get_command

from services.deletion.domain.evidence import build_bundle, new_entry
from services.runtime import devstack
from services.runtime.ctl import follow
from services.runtime.ctl.app import app, main
from services.runtime.ctl.client import (
    DEFAULT_URLS,
    Config,
    Ref,
    Unreachable,
    parse_ref,
    refusal_message,
)

CASE_ID = "0c8f15af-5d2a-4d5e-9f0e-3b8a4f1f2c11"
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "CONSENTTRACE_API_KEY",
        "CONSENTTRACE_DELETION_URL",
        "CONSENTTRACE_LINEAGE_URL",
        "CONSENTTRACE_REGISTRY_URL",
        "CONSENTTRACE_TIMEOUT",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "200")


class Recorder:
    """A MockTransport that answers with ``handler`` and keeps every request (body read)."""

    def __init__(self, handler: Handler) -> None:
        self.requests: list[httpx.Request] = []
        self._handler = handler
        self.transport = httpx.MockTransport(self._handle)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        return self._handler(request)


def run(
    capsys: pytest.CaptureFixture[str], handler: Handler | None, *argv: str, progress: bool = False
) -> tuple[int, str, str, Recorder]:
    recorder = Recorder(handler or (lambda r: httpx.Response(500)))
    code = main([*(() if progress else ("--no-progress",)), *argv], transport=recorder.transport)
    captured = capsys.readouterr()
    return code, captured.out, captured.err, recorder


def case(state: str = "received", days_left: int = 29, **extra: Any) -> dict[str, Any]:
    return {
        "case_id": CASE_ID,
        "kind": "subject_erasure",
        "state": state,
        "legal_basis": "GDPR Art. 17",
        "regime": "gdpr",
        "requester": "legal:ann",
        "received_at": "2026-01-01T00:00:00Z",
        "deadline": "2026-02-01T00:00:00Z",
        "original_deadline": "2026-02-01T00:00:00Z",
        "days_left": days_left,
        "scope": {"subject_ids": ["member-1"]},
        "version": 3,
        "history": [
            {"from_state": None, "to_state": "received", "actor": "legal:ann", "reason": "x"},
            {"from_state": "received", "to_state": state, "actor": "legal:bob", "reason": "y"},
        ],
        "evidence": {"entries": 2, "head": "ab" * 32},
        **extra,
    }


# --- parsing ----------------------------------------------------------------------------


def test_refs_parse_with_colons_in_the_namespace_and_an_optional_prefix() -> None:
    assert parse_ref("s3://lake:messages#v1") == Ref("s3://lake", "messages", "v1")
    assert parse_ref("model:models://ml:assistant#7") == Ref("models://ml", "assistant", "7")
    assert parse_ref("dataset:ns:a/b/c#2024-01") == Ref("ns", "a/b/c", "2024-01")
    assert Ref("ns", "m", "1").node_id("model") == "model:ns:m#1"
    for bad in ("messages#v1", "ns:messages", "s3://lake#v1", ":m#1", "ns:m#"):
        with pytest.raises(ValueError, match="NAMESPACE:NAME#VERSION"):
            parse_ref(bad)


@pytest.mark.parametrize(
    "argv",
    [
        ["cases", "show", "not-a-uuid"],
        ["cases", "hold", CASE_ID],  # hold needs --reason
        ["cases", "open", "--kind", "subject_erasure", "--regime", "gdpr"],  # no legal basis
        ["cases", "open", "--kind", "nope", "--legal-basis", "contract", "--regime", "gdpr"],
        ["cases", "act", CASE_ID, "explode"],
        ["lineage", "status", "no-version-here"],
        ["lineage", "what-if", "--subject", "a", "--category", "user.content"],
        ["lineage", "what-if"],
        ["lineage", "graph", "model:n:m#1", "--svg", "a.svg", "--png", "b.png"],
        ["registry", "versions"],
        ["registry", "versions", "ns:d#1", "--subject", "s"],
        ["registry", "filter", "/no/such/file.ndjson", "--purpose", "ai.training"],
        ["cases", "evidence", "verify", "/no/such/bundle.json"],
        ["--timeout", "0", "cases", "list"],
        ["nonsense"],
    ],
)
def test_usage_errors_exit_2_before_any_request(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    code, out, err, recorder = run(capsys, None, *argv)
    assert code == 2, err
    assert recorder.requests == []
    assert out == ""


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    def paths(command: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
        yield prefix
        for name, sub in getattr(command, "commands", {}).items():
            yield from paths(sub, (*prefix, name))

    found = list(paths(get_command(app)))
    assert {("cases", "follow"), ("cases", "evidence", "export"), ("registry", "filter")} <= set(
        found
    )
    for path in found:
        assert main([*path, "--help"]) == 0, path
        assert "Usage: consenttrace" in capsys.readouterr().out


def test_default_urls_are_the_dev_stacks_ports() -> None:
    assert {s: int(u.rsplit(":", 1)[1]) for s, u in DEFAULT_URLS.items()} == {
        s: devstack.DEFAULT_PORTS[s] for s in DEFAULT_URLS
    }


# --- what is sent -----------------------------------------------------------------------


def test_the_key_goes_as_a_bearer_token_to_the_configured_url(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSENTTRACE_API_KEY", "ct_secret")
    monkeypatch.setenv("CONSENTTRACE_DELETION_URL", "https://deletion.example:9443/")
    code, out, err, recorder = run(capsys, lambda r: httpx.Response(200, json=[]), "cases", "list")
    assert code == 0
    (request,) = recorder.requests
    assert str(request.url) == "https://deletion.example:9443/api/v1/cases"
    assert request.headers["authorization"] == "Bearer ct_secret"
    assert "ct_secret" not in out + err
    code, *_, recorder = run(
        capsys,
        lambda r: httpx.Response(200, json=[]),
        "--deletion-url",
        "http://other:1",
        "--api-key",
        "ct_flag",
        "cases",
        "list",
    )
    assert recorder.requests[0].url.host == "other"
    assert recorder.requests[0].headers["authorization"] == "Bearer ct_flag"


def test_no_key_sends_no_authorization(capsys: pytest.CaptureFixture[str]) -> None:
    _, _, _, recorder = run(capsys, lambda r: httpx.Response(200, json=[]), "cases", "list")
    assert "authorization" not in recorder.requests[0].headers


def test_open_sends_the_scope_and_the_idempotency_key(capsys: pytest.CaptureFixture[str]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json=case())

    code, out, err, recorder = run(
        capsys,
        handler,
        "cases",
        "open",
        "--kind",
        "model_destruction",
        "--legal-basis",
        "GDPR Art. 17",
        "--regime",
        "gdpr",
        "--model",
        "models://ml:assistant#1",
        "--include-descendants",
        "--idempotency-key",
        "req-42",
    )
    assert code == 0, err
    (request,) = recorder.requests
    assert request.method == "POST" and request.url.path == "/api/v1/cases"
    assert request.headers["idempotency-key"] == "req-42"
    assert json.loads(request.content) == {
        "kind": "model_destruction",
        "legal_basis": "GDPR Art. 17",
        "regime": "gdpr",
        "scope": {
            "model": {"namespace": "models://ml", "name": "assistant", "version": "1"},
            "include_descendants": True,
        },
    }
    assert f"case {CASE_ID} opened" in err
    assert "GDPR Art. 17" in out

    code, _, err, _ = run(
        capsys,
        lambda r: httpx.Response(200, json=case()),
        "cases",
        "open",
        "--kind",
        "subject_erasure",
        "--legal-basis",
        "contract",
        "--regime",
        "custom",
        "--subject",
        "a",
        "--subject",
        "b",
    )
    assert code == 0 and "already open" in err


@pytest.mark.parametrize(
    ("argv", "body"),
    [
        (["approve", CASE_ID], {"command": "approve", "reason": ""}),
        (
            ["hold", CASE_ID, "--reason", "litigation #12", "--expected-version", "3"],
            {"command": "hold", "reason": "litigation #12", "expected_version": 3},
        ),
        (
            ["act", CASE_ID, "start_scoping", "--actor", "legal:ann"],
            {"command": "start_scoping", "reason": "", "actor": "legal:ann"},
        ),
        (
            ["cancel", CASE_ID, "--reason", "withdrawn"],
            {"command": "cancel", "reason": "withdrawn"},
        ),
    ],
)
def test_actions_send_their_command(
    capsys: pytest.CaptureFixture[str], argv: list[str], body: dict[str, Any]
) -> None:
    code, _, err, recorder = run(
        capsys, lambda r: httpx.Response(200, json=case("on_hold")), "cases", *argv
    )
    assert code == 0, err
    (request,) = recorder.requests
    assert request.url.path == f"/api/v1/cases/{CASE_ID}/actions"
    assert json.loads(request.content) == body
    assert "received → on_hold by legal:bob (version 3)" in err


# --- output -----------------------------------------------------------------------------


def test_list_is_a_table_and_json_is_the_api_answer(capsys: pytest.CaptureFixture[str]) -> None:
    answer = [
        case("executing", days_left=-3),
        {**case("completed", days_left=-40), "case_id": "11111111-1111-1111-1111-111111111111"},
    ]
    code, out, _, _ = run(capsys, lambda r: httpx.Response(200, json=answer), "cases", "list")
    assert code == 0
    assert "CASE" in out and "DAYS LEFT" in out
    assert CASE_ID in out and "3 overdue" in out
    assert "40 overdue" not in out  # a closed case is not overdue

    code, out, _, _ = run(
        capsys, lambda r: httpx.Response(200, json=answer), "cases", "list", "--json"
    )
    assert json.loads(out) == answer
    _, out, _, _ = run(
        capsys, lambda r: httpx.Response(200, json=answer), "--json", "cases", "list"
    )
    assert json.loads(out) == answer
    _, out, _, _ = run(
        capsys, lambda r: httpx.Response(200, json=answer), "cases", "list", "--open", "--json"
    )
    assert [c["state"] for c in json.loads(out)] == ["executing"]


def test_show_renders_fields_history_and_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    tasks = [
        {"system": "registry", "action": "delete_records", "state": "done", "attempt": 1},
        {"system": "crm", "action": "erase_subject", "state": "failed", "reason": "timeout"},
    ]
    answer = case("executing", execution={"tasks": tasks, "missing": ["crm"]})
    code, out, _, recorder = run(
        capsys, lambda r: httpx.Response(200, json=answer), "cases", "show", CASE_ID
    )
    assert code == 0
    assert recorder.requests[0].url.path == f"/api/v1/cases/{CASE_ID}"
    for text in ("executing", "29 days left", "history", "legal:bob", "crm", "erase_subject"):
        assert text in out
    assert "head " + "ab" * 32 in out


# --- errors -----------------------------------------------------------------------------


def test_refusals_say_what_the_api_said() -> None:
    validation = {
        "detail": [
            {"loc": ["body", "scope", "subject_ids"], "msg": "too short", "type": "x"},
            {"loc": ["query", "purpose"], "msg": "Field required", "type": "missing"},
        ]
    }
    message = refusal_message("deletion", 422, validation)
    assert message.startswith("deletion answered 422 Unprocessable")
    assert "scope → subject_ids: too short" in message and "purpose: Field required" in message
    forbidden = {"detail": "legal:ann may not", "roles_allowed": ["legal_approver"]}
    assert "roles allowed: legal_approver" in refusal_message("deletion", 403, forbidden)
    assert "CONSENTTRACE_API_KEY" in refusal_message("lineage", 401, {"detail": "no key"})
    records = {"detail": "line 3 is not a record", "line": 3, "field": "subject_id"}
    assert "line: 3" in refusal_message("registry", 422, records)
    assert refusal_message("x", 500, None) == "x answered 500 Internal Server Error"


@pytest.mark.parametrize(
    ("status", "body", "code", "text"),
    [
        (409, {"detail": "cannot approve a case as its requester (legal:ann)"}, 1, "four eyes"),
        (404, {"detail": f"no case {CASE_ID}"}, 1, "no case"),
        (403, {"detail": "forbidden", "roles_allowed": ["legal_approver"]}, 1, "legal_approver"),
        (401, {"detail": "no API key"}, 1, "--api-key"),
        (503, {"detail": "service is starting"}, 3, "starting"),
        (502, "<html>bad gateway</html>", 3, "bad gateway"),
        (500, "boom", 1, "boom"),
    ],
)
def test_error_statuses_map_to_exit_codes(
    capsys: pytest.CaptureFixture[str], status: int, body: Any, code: int, text: str
) -> None:
    if status == 409:
        body = {"detail": body["detail"] + ": approval needs someone else (four eyes)"}

    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    got, out, err, _ = run(capsys, handler, "cases", "approve", CASE_ID)
    assert got == code
    assert out == ""
    assert err.startswith(f"error: deletion answered {status}") and text in err


def test_unreachable_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    code, _, err, _ = run(capsys, refuse, "lineage", "flags")
    assert code == 3
    assert "cannot reach lineage at http://127.0.0.1:8003" in err
    assert "CONSENTTRACE_LINEAGE_URL" in err

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    code, _, err, _ = run(capsys, slow, "registry", "findings")
    assert code == 3 and "did not answer in time" in err


# --- follow -----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_watch_stops_at_an_end_state_and_reports_each_change() -> None:
    states = iter(["approved", "executing", "executing", "verifying", "completed"])
    clock = FakeClock()
    seen: list[str] = []
    final = follow.watch(
        lambda: case(next(states)),
        timeout=60,
        interval=2,
        on_change=lambda c: seen.append(c["state"]),
        clock=clock,
        sleep=clock.sleep,
    )
    assert final["state"] == "completed"
    assert seen == ["approved", "executing", "verifying", "completed"]
    assert clock.now == 8


def test_watch_times_out_and_rides_out_an_outage() -> None:
    clock = FakeClock()
    with pytest.raises(follow.CaseNotDone, match="still on_hold after 10s"):
        follow.watch(
            lambda: case("on_hold"),
            timeout=10,
            interval=3,
            on_change=lambda c: None,
            clock=clock,
            sleep=clock.sleep,
        )
    assert clock.now == 10

    answers: list[Any] = [Unreachable("down"), Unreachable("down"), case("completed")]

    def poll() -> dict[str, Any]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)

    clock = FakeClock()
    final = follow.watch(
        poll, timeout=60, interval=1, on_change=lambda c: None, clock=clock, sleep=clock.sleep
    )
    assert final["state"] == "completed" and clock.now == 2

    clock = FakeClock()

    def down() -> dict[str, Any]:
        raise Unreachable("down")

    with pytest.raises(Unreachable):
        follow.watch(down, timeout=3, interval=1, on_change=print, clock=clock, sleep=clock.sleep)


def test_snapshot_counts_tasks() -> None:
    tasks = [{"state": "done"}, {"state": "pending"}, {"state": "done"}]
    line = follow.snapshot(case("executing", execution={"tasks": tasks, "missing": ["crm ack"]}))
    assert line == "executing  tasks 2/3 done, 1 pending  missing: crm ack"
    assert follow.snapshot(case("on_hold", held_from="approved")) == "on_hold (held from approved)"


@pytest.mark.parametrize(("end", "code"), [("completed", 0), ("failed", 1), ("canceled", 1)])
def test_follow_exits_by_how_the_case_ended(
    capsys: pytest.CaptureFixture[str], end: str, code: int
) -> None:
    states = iter(["executing", end])
    got, out, err, recorder = run(
        capsys,
        lambda r: httpx.Response(200, json=case(next(states))),
        "cases",
        "follow",
        CASE_ID,
        "--interval",
        "0.1",
    )
    assert got == code, err
    assert len(recorder.requests) == 2
    assert "executing" in err and end in err
    assert out == ""


# --- evidence ---------------------------------------------------------------------------


def bundle_bytes(case_id: str = CASE_ID) -> bytes:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    first = new_entry(None, case_id=case_id, at=at, kind="opened", actor="legal:ann", data={})
    second = new_entry(
        first, case_id=case_id, at=at + timedelta(hours=1), kind="hold", actor="b", data={"r": 1}
    )
    return build_bundle({"case_id": case_id, "state": "on_hold"}, [first, second], exported_at=at)


def test_export_downloads_verifies_and_writes_the_report(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = bundle_bytes()
    target, report = tmp_path / "case.json", tmp_path / "report.html"
    code, out, err, recorder = run(
        capsys,
        lambda r: httpx.Response(200, content=data, headers={"content-type": "application/json"}),
        "cases",
        "evidence",
        "export",
        CASE_ID,
        "-o",
        str(target),
        "--report",
        str(report),
    )
    assert code == 0, err
    assert recorder.requests[0].url.path == f"/api/v1/cases/{CASE_ID}/evidence/bundle"
    assert target.read_bytes() == data
    assert "<html" in report.read_text().lower()
    assert f"VERIFIED: {target}: case {CASE_ID} (on_hold), 2 entries" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.json", "report.html"]

    code, out, _, _ = run(capsys, None, "cases", "evidence", "verify", str(target), "--json")
    assert code == 0
    assert json.loads(out)["verified"] is True and json.loads(out)["entries"] == 2


def test_a_tampered_bundle_is_not_verified(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    tampered = bundle_bytes().replace(b'"actor":"b"', b'"actor":"c"')
    target = tmp_path / "case.json"
    code, _, err, _ = run(
        capsys,
        lambda r: httpx.Response(200, content=tampered),
        "cases",
        "evidence",
        "export",
        CASE_ID,
        "-o",
        str(target),
    )
    assert code == 1
    assert "NOT VERIFIED" in err and "entry 2 was changed" in err
    assert not target.exists()
    kept = tmp_path / "case.json.unverified"
    assert kept.read_bytes() == tampered
    assert [p.name for p in tmp_path.iterdir()] == [kept.name]

    code, _, err, _ = run(capsys, None, "cases", "evidence", "verify", str(kept))
    assert code == 1 and "entry 2 was changed" in err

    other = tmp_path / "other.json"
    other.write_bytes(bundle_bytes(str(uuid.uuid4())))
    code, _, err, _ = run(
        capsys,
        lambda r: httpx.Response(200, content=other.read_bytes()),
        "cases",
        "evidence",
        "export",
        CASE_ID,
        "-o",
        str(tmp_path / "x.json"),
    )
    assert code == 1 and "the bundle is of case" in err


# --- registry filter --------------------------------------------------------------------


def test_filter_streams_the_file_and_writes_the_eligible_lines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("services.runtime.ctl.transfer.BLOCK", 1000)
    lines = [json.dumps({"record_id": f"r{i}", "pad": "x" * 50}) + "\n" for i in range(100)]
    source = tmp_path / "records.ndjson"
    source.write_text("".join(lines))
    eligible = "".join(lines[::2]).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.content == source.read_bytes()
        headers = {"X-Records": "100", "X-Eligible": "50", "X-Excluded": "50"}
        return httpx.Response(200, content=eligible, headers=headers)

    target = tmp_path / "eligible.ndjson"
    code, out, err, recorder = run(
        capsys,
        handler,
        "registry",
        "filter",
        str(source),
        "--purpose",
        "ai.training",
        "--at",
        "2026-01-01T00:00:00+01:00",
        "-o",
        str(target),
    )
    assert code == 0, err
    (request,) = recorder.requests
    assert request.url.params["purpose"] == "ai.training"
    assert request.url.params["at"] == "2026-01-01T00:00:00+01:00"
    assert request.url.params["report"] == "lines"
    assert request.headers["content-type"] == "application/x-ndjson"
    assert request.headers.get("transfer-encoding") == "chunked"  # streamed, not buffered
    assert target.read_bytes() == eligible
    assert "100 records: 50 eligible, 50 excluded" in err

    code, out, err, _ = run(capsys, handler, "registry", "filter", str(source), "--purpose", "p")
    assert code == 0 and out.encode() == eligible  # no -o: the lines on stdout


def test_filter_summary_and_a_bad_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    source = tmp_path / "r.ndjson"
    source.write_text('{"record_id": "a"}\n')
    summary = {
        "purpose": "ai.training",
        "records": 1,
        "eligible": 0,
        "excluded": 1,
        "excluded_by_reason": {"no_policy": 1},
        "sample_excluded": [{"record_id": "a", "reason": "no_policy"}],
    }
    code, out, _, recorder = run(
        capsys,
        lambda r: httpx.Response(200, json=summary),
        "registry",
        "filter",
        str(source),
        "--purpose",
        "ai.training",
        "--summary",
    )
    assert code == 0 and recorder.requests[0].url.params["report"] == "summary"
    assert "no_policy" in out and "excluded by reason" in out

    refused = {"detail": "line 1: subject_id: Field required", "line": 1}
    code, out, err, _ = run(
        capsys,
        lambda r: httpx.Response(422, json=refused),
        "registry",
        "filter",
        str(source),
        "--purpose",
        "ai.training",
        "-o",
        str(tmp_path / "out.ndjson"),
    )
    assert code == 1 and "subject_id: Field required" in err
    assert not (tmp_path / "out.ndjson").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.ndjson"]


# --- lineage and registry views ---------------------------------------------------------


def test_graph_table_picture_and_status(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    document = {
        "graph": [
            {
                "id": "dataset:s3://lake:messages#v1",
                "type": "DATASET",
                "data": {"findings": [{"severity": "destroy_required"}], "status": None},
                "inEdges": [],
                "outEdges": [{"origin": "dataset:s3://lake:messages#v1", "destination": "run:1"}],
            },
            {
                "id": "model:ml:assistant#1",
                "type": "MODEL",
                "data": {"flagged": True, "flags": [{"severity": "destroy_required"}]},
                "inEdges": [{"origin": "run:1", "destination": "model:ml:assistant#1"}],
                "outEdges": [],
            },
        ]
    }
    code, out, _, recorder = run(
        capsys,
        lambda r: httpx.Response(200, json=document),
        "lineage",
        "downstream",
        "dataset:s3://lake:messages#v1",
        "--depth",
        "3",
    )
    assert code == 0
    assert dict(recorder.requests[0].url.params) == {
        "nodeId": "dataset:s3://lake:messages#v1",
        "direction": "downstream",
        "depth": "3",
    }
    assert "flagged destroy_required" in out and "1 finding(s)" in out and "1 edge(s)" in out

    svg = tmp_path / "g.svg"
    code, _, err, recorder = run(
        capsys,
        lambda r: httpx.Response(200, content=b"<svg/>"),
        "lineage",
        "graph",
        "model:ml:assistant#1",
        "--svg",
        str(svg),
    )
    assert code == 0 and svg.read_bytes() == b"<svg/>"
    assert recorder.requests[0].url.path == "/api/v1/lineage/graph.svg"

    status = {
        "model": {"namespace": "ml", "name": "assistant", "version": "1"},
        "status": "flagged",
        "clean": False,
        "causes": [{"severity": "destroy_required", "evidence_path": ["a", "b"]}],
        "notes": [],
    }
    code, out, err, recorder = run(
        capsys,
        lambda r: httpx.Response(200, json=status),
        "lineage",
        "status",
        "ml:assistant#1",
        "--require-clean",
    )
    assert code == 1 and "NO" in out and "a → b" in out and "is not clean" in err
    assert dict(recorder.requests[0].url.params) == {
        "namespace": "ml",
        "name": "assistant",
        "version": "1",
    }


def test_findings_accept_stored_bodies_as_text_or_objects(
    capsys: pytest.CaptureFixture[str],
) -> None:
    finding = {
        "dataset": {"namespace": "s3://lake", "name": "messages", "version": "v1"},
        "severity": "destroy_required",
        "status": "active",
        "affected_records": 12,
    }
    rows = [{"finding": finding}, {"finding": json.dumps(finding)}]
    code, out, _, recorder = run(
        capsys,
        lambda r: httpx.Response(200, json=rows),
        "registry",
        "findings",
        "--dataset",
        "s3://lake:messages#v1",
        "--severity",
        "destroy_required",
    )
    assert code == 0
    assert out.count("s3://lake:messages#v1") == 2
    params = recorder.requests[0].url.params
    assert params["namespace"] == "s3://lake" and params["severity"] == "destroy_required"


def test_config_defaults() -> None:
    config = Config()
    assert config.urls == dict(DEFAULT_URLS) and config.api_key is None and not config.json


def test_progress_renders_on_a_terminal(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spinner and byte bars (on stderr) leave the data alone."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")
    monkeypatch.setenv("TTY_INTERACTIVE", "1")
    monkeypatch.setattr("services.runtime.ctl.transfer.BLOCK", 64)
    source = tmp_path / "r.ndjson"
    source.write_text('{"record_id": "a"}\n' * 200)
    target = tmp_path / "out.ndjson"
    code, _, err, _ = run(
        capsys,
        lambda r: httpx.Response(200, content=r.content[:190], headers={"X-Records": "200"}),
        *("registry", "filter", str(source), "--purpose", "p", "-o", str(target)),
        progress=True,
    )
    assert code == 0, err
    assert target.read_bytes() == source.read_bytes()[:190]

    data = bundle_bytes()
    code, _, err, _ = run(
        capsys,
        lambda r: httpx.Response(200, content=data),
        *("cases", "evidence", "export", CASE_ID, "-o", str(tmp_path / "b.json")),
        progress=True,
    )
    assert code == 0 and "VERIFIED" in err

    states = iter(["executing", "completed"])
    code, out, err, _ = run(
        capsys,
        lambda r: httpx.Response(200, json=case(next(states))),
        *("cases", "follow", CASE_ID, "--interval", "0.1"),
        progress=True,
    )
    assert code == 0 and out == "" and f"case {CASE_ID} completed" in err


def test_filter_reads_stdin(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "r.ndjson"
    source.write_bytes(b'{"record_id": "a"}\n')

    class Stdin:
        buffer = source.open("rb")

    monkeypatch.setattr("sys.stdin", Stdin)
    target = tmp_path / "out.ndjson"
    code, out, err, recorder = run(
        capsys,
        lambda r: httpx.Response(200, content=r.content, headers={"X-Records": "1"}),
        *("registry", "filter", "-", "--purpose", "p", "-o", str(target), "--json"),
    )
    Stdin.buffer.close()
    assert code == 0, err
    assert recorder.requests[0].content == source.read_bytes() == target.read_bytes()
    assert json.loads(out) == {
        "records": 1,
        "eligible": None,
        "excluded": None,
        "output": str(target),
    }
