"""``consenttrace`` against real services: the deletion and registry services as processes
with API keys on. A legal requester opens a case, holds and releases it, scopes it; the
approver approves (the requester's key may not); the bundle is exported, verifies offline
and fails tampered; a canceled case ends ``follow`` with exit 1; an ML reader streams a
file through the eligibility filter. One call runs as its own process, configured only by
the environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.runtime import embedded
from services.runtime.auth import DEV_PRINCIPALS, Role
from services.runtime.ctl.app import main
from services.runtime.testing import DevKeys, ServiceProcess, StartStack, role_keys

pytestmark = pytest.mark.integration

SERVICES = ("deletion", "registry")


@dataclass
class Stack:
    keys: DevKeys
    services: dict[str, ServiceProcess]

    def argv(self, role: Role | None, *args: str) -> list[str]:
        urls = [f"--{name}-url={s.url}" for name, s in self.services.items()]
        key = [f"--api-key={self.keys.keys[role.value]}"] if role else []
        return ["--no-progress", *urls, *key, *args]


@pytest.fixture(scope="module")
def stack(start_stack: StartStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    keys, auth_env = role_keys(Path(tmp_path_factory.mktemp("ctl-keys")))
    with start_stack(SERVICES, "ctl", auth_env) as services:
        yield Stack(keys, services)


class Cli:
    def __init__(self, stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
        self.stack, self.capsys = stack, capsys

    def __call__(self, role: Role | None, *args: str) -> tuple[int, str, str]:
        code = main(self.stack.argv(role, *args))
        captured = self.capsys.readouterr()
        return code, captured.out, captured.err

    def json(self, role: Role | None, *args: str) -> Any:
        code, out, err = self(role, *args, "--json")
        assert code == 0, err
        return json.loads(out)


REQUESTER, APPROVER = Role.LEGAL_REQUESTER, Role.LEGAL_APPROVER


def test_a_case_from_opening_to_a_verified_bundle(
    stack: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cli = Cli(stack, capsys)
    opened = cli.json(
        REQUESTER,
        "cases",
        "open",
        "--kind",
        "subject_erasure",
        "--legal-basis",
        "GDPR Art. 17",
        "--regime",
        "gdpr",
        "--subject",
        "member-ctl-1",
    )
    case_id = opened["case_id"]
    assert opened["state"] == "received"
    assert opened["requester"] == DEV_PRINCIPALS[REQUESTER]  # the key's principal

    code, _, err = cli(None, "cases", "show", case_id)
    assert code == 1 and "401" in err and "CONSENTTRACE_API_KEY" in err

    code, _, err = cli(REQUESTER, "cases", "hold", case_id, "--reason", "matter #12")
    assert code == 0 and "received → on_hold" in err, err
    code, out, _ = cli(APPROVER, "cases", "show", case_id)
    assert code == 0 and "on_hold (held from received)" in out and "matter #12" in out
    code, _, err = cli(APPROVER, "cases", "release", case_id)
    assert code == 0 and "on_hold → received" in err, err
    for command in ("start_scoping", "submit_scope"):
        code, _, err = cli(REQUESTER, "cases", "act", case_id, command)
        assert code == 0, err

    code, _, err = cli(REQUESTER, "cases", "approve", case_id)
    assert code == 1 and "403 Forbidden" in err and "roles legal_approver" in err
    code, _, err = cli(APPROVER, "cases", "approve", case_id, "--expected-version", "1")
    assert code == 1 and "409" in err, err  # stale version: the case moved on
    approved = cli.json(APPROVER, "cases", "approve", case_id)
    assert approved["approved_by"] == DEV_PRINCIPALS[APPROVER]

    bundle = tmp_path / "bundle.json"
    code, _, err = cli(APPROVER, "cases", "evidence", "export", case_id, "-o", str(bundle))
    assert code == 0 and f"VERIFIED: {bundle}: case {case_id}" in err, err
    log = cli.json(APPROVER, "cases", "evidence", "log", case_id)
    assert len(log) == len(json.loads(bundle.read_bytes())["entries"]) >= 5
    assert cli(None, "cases", "evidence", "verify", str(bundle))[0] == 0  # offline: no key

    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(bundle.read_bytes().replace(b"matter #12", b"matter #13"))
    code, _, err = cli(None, "cases", "evidence", "verify", str(tampered))
    assert code == 1 and "NOT VERIFIED" in err

    # A process of its own, configured by the environment only.
    env = {
        **os.environ,
        "CONSENTTRACE_DELETION_URL": stack.services["deletion"].url,
        "CONSENTTRACE_API_KEY": stack.keys.keys[APPROVER.value],
    }
    listed = subprocess.run(
        [sys.executable, "-m", "services.runtime.ctl", "cases", "list", "--open", "--json"],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0, listed.stderr
    assert case_id in {c["case_id"] for c in json.loads(listed.stdout)}


def test_follow_ends_with_the_case_and_the_filter_streams(
    stack: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cli = Cli(stack, capsys)
    case_id = cli.json(
        REQUESTER,
        "cases",
        "open",
        "--kind",
        "category_purge",
        "--legal-basis",
        "internal policy",
        "--regime",
        "custom",
        "--category",
        "user.content",
    )["case_id"]
    code, _, err = cli(REQUESTER, "cases", "cancel", case_id, "--reason", "opened by mistake")
    assert code == 0, err
    code, _, err = cli(REQUESTER, "cases", "follow", case_id, "--timeout", "5")
    assert code == 1 and f"case {case_id} ended canceled: opened by mistake" in err

    records = tmp_path / "records.ndjson"
    records.write_text(
        "".join(
            json.dumps(
                {
                    "record_id": f"msg-{i}",
                    "source_system": "inbox",
                    "subject_id": f"member-ctl-{i % 7}",
                    "category": "user.content.private",
                    "jurisdiction": "US",
                    "collected_at": "2024-08-01T12:00:00Z",
                    "content_digest": "sha256:" + "0" * 64,
                }
            )
            + "\n"
            for i in range(500)
        )
    )
    eligible = tmp_path / "eligible.ndjson"
    # A purpose of this test's own: the registry reads every policy on the shared broker,
    # and none of them speaks to it, so nothing is eligible (no policy judges the use).
    purpose = f"test.ctl{uuid.uuid4().hex[:8]}"
    counts = cli.json(
        Role.ML_READER,
        "registry",
        "filter",
        str(records),
        "--purpose",
        purpose,
        "-o",
        str(eligible),
    )
    assert counts == {"records": 500, "eligible": 0, "excluded": 500, "output": str(eligible)}
    assert eligible.read_bytes() == b""
    summary = cli.json(
        Role.ML_READER,
        "registry",
        "filter",
        str(records),
        "--purpose",
        purpose,
        "--summary",
    )
    assert summary["excluded_by_reason"] == {"no_policy": 500}
    assert cli.json(Role.ML_READER, "registry", "findings") == []

    code, _, err = cli(Role.ML_READER, "cases", "list")
    assert code == 1 and "403" in err  # ML teams do not read cases

    port = embedded.free_port()
    code, _, err = cli(
        Role.ML_READER, f"--registry-url=http://127.0.0.1:{port}", "registry", "findings"
    )
    assert code == 3 and "cannot reach registry" in err
