"""Policy files load, bad ones fail with a message naming the file and the field, and the
committed JSON Schema accepts the files as written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from contracts.generate import SCHEMA_DIR
from contracts.policy import PolicyDocument
from contracts.taxonomy import is_known_category, is_known_purpose
from services.eligibility.documents import (
    PolicyDocumentError,
    load_policy,
    main,
    read_policy_data,
)

POLICIES = Path(__file__).resolve().parents[3] / "policies"
FILES = sorted(POLICIES.glob("*.yaml"))

MINIMAL = """\
policy_id: p
version: "1"
valid_from: "2024-01-01T00:00:00Z"
rules:
  - id: r1
    jurisdictions: [US]
    purposes: [ai.training]
    data_categories: [user]
"""


def test_the_example_files_are_there() -> None:
    assert {p.name for p in FILES} >= {"genai-training-2024.yaml", "gdpr-strict.yaml"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_policy_files_load(path: Path) -> None:
    policy = load_policy(path)
    assert isinstance(policy, PolicyDocument)
    assert load_policy(str(path)) == policy
    # The same document through JSON (what the consent API takes) is the same document.
    assert load_policy(policy.model_dump_json()) == policy


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_policy_files_use_known_terms(path: Path) -> None:
    policy = load_policy(path)
    purposes = {p for r in policy.rules for p in r.purposes} | {
        p for g in policy.gpc for p in g.purposes
    }
    categories = {c for r in policy.rules for c in r.data_categories} | {
        c for g in policy.gpc for c in g.data_categories
    }
    assert all(map(is_known_purpose, purposes)), purposes
    assert all(map(is_known_category, categories)), categories


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_committed_json_schema_accepts_the_files(path: Path) -> None:
    schema = json.loads((SCHEMA_DIR / "policy-document.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    _, data = read_policy_data(path)
    validator = Draft202012Validator(schema, format_checker=FormatChecker())
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


def test_json_file_by_suffix(tmp_path: Path) -> None:
    policy = load_policy(POLICIES / "genai-training-2024.yaml")
    target = tmp_path / "policy.json"
    target.write_text(policy.model_dump_json(indent=2))
    assert load_policy(target) == policy


def test_yaml_reads_like_json() -> None:
    """Norway stays ``NO`` (not YAML 1.1's false) and timestamps stay strings until the
    contract parses them."""
    text = MINIMAL.replace("[US]", "[NO, ON]")
    policy = load_policy(text)
    assert policy.rules[0].jurisdictions == ("NO", "ON")
    _, data = read_policy_data(text)
    assert data["valid_from"] == "2024-01-01T00:00:00Z"


def _error(source: Any) -> str:
    with pytest.raises(PolicyDocumentError) as caught:
        load_policy(source)
    return str(caught.value)


@pytest.mark.parametrize(
    ("change", "names"),
    [
        pytest.param(
            lambda t: t + "    colour: blue\n",
            ["rules[0] (id r1).colour", "Extra inputs are not permitted"],
            id="unknown field",
        ),
        pytest.param(
            lambda t: t + "owner: legal\n",
            ["owner", "Extra inputs are not permitted"],
            id="unknown top-level field",
        ),
        pytest.param(
            lambda t: t + t[t.index("  - id: r1") :],
            ["(document)", "rule ids must be unique: r1"],
            id="duplicate rule ids",
        ),
        pytest.param(
            lambda t: t.replace("[US]", "[EUROPE]"),
            ["(document)", "unknown jurisdiction groups: EUROPE"],
            id="unknown group",
        ),
        pytest.param(
            lambda t: (
                t
                + '    valid_from: "2025-01-01T00:00:00Z"\n'
                + '    valid_until: "2024-01-01T00:00:00Z"\n'
            ),
            ["rules[0] (id r1)", "valid_until must be after valid_from"],
            id="until before from",
        ),
        pytest.param(
            lambda t: (
                t
                + "    lawful_bases:\n      - mechanism: explicit_opt_in\n"
                + '        valid_from: "2025-01-01T00:00:00Z"\n'
                + '        valid_until: "2025-01-01T00:00:00Z"\n'
            ),
            ["rules[0] (id r1).lawful_bases[0]", "valid_until must be after valid_from"],
            id="basis until equals from",
        ),
        pytest.param(
            lambda t: t.replace("[US]", "[us-ca]"),
            ["rules[0] (id r1).jurisdictions[0]", "should match pattern"],
            id="bad jurisdiction",
        ),
        pytest.param(
            lambda t: t.replace("[US]", "[USA-CALIFORNIA]"),
            ["rules[0] (id r1).jurisdictions[0]", "should match pattern"],
            id="bad subdivision",
        ),
        pytest.param(
            lambda t: t.replace("[ai.training]", "[AI Training]"),
            ["rules[0] (id r1).purposes[0]"],
            id="bad purpose",
        ),
        pytest.param(
            lambda t: t.replace('"2024-01-01T00:00:00Z"', '"2024-01-01T00:00:00"'),
            ["valid_from", "UTC offset"],
            id="naive timestamp",
        ),
        pytest.param(
            lambda t: t + "    lawful_bases:\n      - mechanism: telepathy\n",
            ["rules[0] (id r1).lawful_bases[0].mechanism", "explicit_opt_in"],
            id="unknown mechanism",
        ),
        pytest.param(
            lambda t: t.replace("policy_id: p\n", ""),
            ["policy_id", "Field required"],
            id="missing field",
        ),
        pytest.param(
            lambda t: t + "version: '2'\n",
            ["cannot parse", "duplicate key 'version'"],
            id="duplicate yaml key",
        ),
        pytest.param(
            lambda t: t.replace("rules:", "rules: ["),
            ["cannot parse"],
            id="broken yaml",
        ),
    ],
)
def test_bad_documents_name_the_file_and_the_problem(
    tmp_path: Path, change: Any, names: list[str]
) -> None:
    assert load_policy(MINIMAL).rules[0].id == "r1"
    target = tmp_path / "bad-policy.yaml"
    target.write_text(change(MINIMAL))
    message = _error(target)
    assert str(target) in message
    for name in names:
        assert name in message, message


def test_bad_text_is_named_as_text() -> None:
    message = _error(MINIMAL.replace("[US]", "[EUROPE]"))
    assert message.startswith("<text>: invalid policy document")


def test_not_a_mapping(tmp_path: Path) -> None:
    target = tmp_path / "list.json"
    target.write_text("[1, 2]")
    assert "expected a mapping" in _error(target)


def test_missing_file_is_named(tmp_path: Path) -> None:
    target = tmp_path / "missing.yaml"
    message = _error(target)
    assert str(target) in message and "cannot read" in message


def test_cli_prints_the_json_the_api_takes(capsys: pytest.CaptureFixture[str]) -> None:
    path = POLICIES / "genai-training-2024.yaml"
    assert main([str(path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert PolicyDocument.model_validate(printed) == load_policy(path)


def test_cli_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "bad.yaml"
    target.write_text(MINIMAL.replace("[US]", "[EUROPE]"))
    assert main([str(target)]) == 1
    assert "unknown jurisdiction groups: EUROPE" in capsys.readouterr().err
    assert main([]) == 2
