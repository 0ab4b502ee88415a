"""Evidence bundles (services.deletion.domain.evidence) and their offline verifier
(services/deletion/verify_evidence.py): a bundle verifies, and changing any byte of it,
or rebuilding the log with an entry changed, removed or reordered, makes verification fail."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.deletion import verify_evidence
from services.deletion.domain.evidence import build_bundle, new_entry
from services.deletion.verify_evidence import BundleInvalid, bundle_digest, verify_bundle

CASE_ID = "0b7e7c52-3f4e-4a7f-9d1e-5c2a8b9d0e1f"
T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
CASE = {"case_id": CASE_ID, "kind": "subject_erasure", "legal_basis": "GDPR Art. 17"}
SCRIPT = Path(verify_evidence.__file__)


def log(n: int = 5) -> list[dict[str, object]]:
    entries: list[dict[str, object]] = []
    kinds = ["opened", "scope_frozen", "approved", "task_sent", "acknowledged", "verified"]
    for i in range(n):
        entries.append(
            new_entry(
                entries[-1] if entries else None,
                case_id=CASE_ID,
                at=T0 + timedelta(minutes=i),
                kind=kinds[i % len(kinds)],
                actor="legal:bob" if i == 2 else "system",
                data={"i": i, "note": "ünïcødé <b>&</b>", "targets": ["registry", "lineage"]},
            )
        )
    return entries


def bundle(n: int = 5) -> bytes:
    return build_bundle(CASE, log(n), exported_at=T0 + timedelta(days=1))


def test_a_bundle_verifies_and_carries_a_readable_report() -> None:
    verified = verify_bundle(bundle())
    assert verified["head"] == verified["entries"][-1]["hash"]
    report = verified["report"]["content"]
    assert "Deletion case" in report and "legal:bob" in report
    assert "<b>&</b>" not in report and "&lt;b&gt;&amp;&lt;/b&gt;" in report


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_changing_any_byte_makes_verification_fail(data: st.DataObject) -> None:
    original = bundle(3)
    position = data.draw(st.integers(0, len(original) - 1))
    replacement = data.draw(st.integers(0, 255).filter(lambda b: b != original[position]))
    tampered = original[:position] + bytes([replacement]) + original[position + 1 :]
    with pytest.raises(BundleInvalid):
        verify_bundle(tampered)


def rebuilt(entries: list[dict[str, object]]) -> bytes:
    """A forger's bundle: content changed, then every digest the bundle holds recomputed."""
    document = json.loads(bundle().decode())
    document["entries"] = entries
    document["head"] = entries[-1]["hash"]
    document["digest"] = bundle_digest(document)
    return verify_evidence.canonical(document) + b"\n"


def test_a_rewritten_entry_breaks_its_hash_even_with_the_digest_recomputed() -> None:
    entries = log()
    entries[1] = {**entries[1], "actor": "legal:mallory"}
    with pytest.raises(BundleInvalid, match="entry 2 was changed"):
        verify_bundle(rebuilt(entries))


def test_removed_or_reordered_entries_break_the_chain() -> None:
    entries = log()
    with pytest.raises(BundleInvalid, match="seq"):
        verify_bundle(rebuilt(entries[:2] + entries[3:]))
    with pytest.raises(BundleInvalid):
        verify_bundle(rebuilt([entries[1], entries[0], *entries[2:]]))
    with pytest.raises(BundleInvalid, match="head"):
        document = json.loads(bundle().decode())
        document["entries"] = entries[:-1]
        document["digest"] = bundle_digest(document)
        verify_bundle(verify_evidence.canonical(document) + b"\n")


def test_the_standalone_script_verifies_and_refuses(tmp_path: Path) -> None:
    good = tmp_path / "case.evidence.json"
    good.write_bytes(bundle())
    ok = subprocess.run(
        [sys.executable, "-I", str(SCRIPT), str(good)], capture_output=True, text=True, check=False
    )
    assert ok.returncode == 0 and ok.stdout.startswith("VERIFIED"), ok.stdout + ok.stderr
    bad = tmp_path / "tampered.json"
    bad.write_bytes(bundle().replace(b"legal:bob", b"legal:bib"))
    refused = subprocess.run(
        [sys.executable, "-I", str(SCRIPT), str(bad)], capture_output=True, text=True, check=False
    )
    assert refused.returncode == 1 and "NOT VERIFIED" in refused.stdout


def test_the_script_needs_nothing_but_the_standard_library() -> None:
    source = SCRIPT.read_text(encoding="utf-8")
    imports = {
        line.split()[1].split(".")[0]
        for line in source.splitlines()
        if line.startswith(("import ", "from "))
    }
    assert imports <= {"__future__", "hashlib", "json", "sys", "collections", "pathlib", "typing"}
