#!/usr/bin/env python3
"""Verify a ConsentTrace evidence bundle offline. Standalone: Python 3.11+, standard library only.

    python verify_evidence.py case-<id>.evidence.json      # exit 0: verified, 1: not

A bundle is one JSON document in canonical form (keys sorted, no insignificant
whitespace, UTF-8): the case, its evidence log, the human-readable report, and a digest.
The log is a hash chain: each entry holds the SHA-256 of the one before (the first, a hash
of the case id), and its own hash over everything else it says. Verification checks that
the file is exactly the canonical form of its content (so no byte can change unnoticed,
whitespace included), every entry's hash and link, the head, and the bundle's digest.

The service builds bundles with the functions below (``canonical``, ``entry_hash``,
``genesis``, ``bundle_digest``): one definition, so what is written is what is checked.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "FORMAT",
    "BundleInvalid",
    "bundle_digest",
    "canonical",
    "entry_hash",
    "genesis",
    "verify_bundle",
]

FORMAT = "consenttrace.evidence/1"


class BundleInvalid(ValueError):
    """What is wrong with a bundle, precisely enough to find it."""


def canonical(value: Any) -> bytes:
    """The one byte form of a JSON value: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def genesis(case_id: str) -> str:
    """The ``prev`` of a case's first entry."""
    return _sha256(f"consenttrace:evidence:{case_id}".encode())


def entry_hash(entry: Mapping[str, Any]) -> str:
    """An entry's hash: over every field but ``hash`` itself (``prev`` included)."""
    return _sha256(canonical({k: v for k, v in entry.items() if k != "hash"}))


def bundle_digest(bundle: Mapping[str, Any]) -> str:
    return _sha256(canonical({k: v for k, v in bundle.items() if k != "digest"}))


def verify_bundle(data: bytes) -> dict[str, Any]:
    """The bundle, if every check passes; raises ``BundleInvalid`` naming the first failure."""
    try:
        bundle = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleInvalid(f"not a JSON document: {exc}") from None
    if not isinstance(bundle, dict):
        raise BundleInvalid("not a JSON object")
    if canonical(bundle) != data.rstrip(b"\n"):
        raise BundleInvalid("the file is not in canonical form: bytes were changed or reformatted")
    if bundle.get("format") != FORMAT:
        raise BundleInvalid(f"unknown format {bundle.get('format')!r}, expected {FORMAT!r}")
    case = bundle.get("case")
    entries = bundle.get("entries")
    if not isinstance(case, dict) or not isinstance(case.get("case_id"), str):
        raise BundleInvalid("the bundle names no case")
    if not isinstance(entries, list) or not entries:
        raise BundleInvalid("the evidence log is empty")
    _verify_chain(case["case_id"], entries)
    if bundle.get("head") != entries[-1]["hash"]:
        raise BundleInvalid("the head is not the last entry's hash: entries were added or cut")
    if bundle.get("digest") != bundle_digest(bundle):
        raise BundleInvalid("the digest does not match the bundle's content")
    return bundle


def _verify_chain(case_id: str, entries: Sequence[Any]) -> None:
    previous = genesis(case_id)
    for position, entry in enumerate(entries, start=1):
        if not isinstance(entry, dict):
            raise BundleInvalid(f"entry {position} is not an object")
        if entry.get("seq") != position:
            raise BundleInvalid(f"entry {position} has seq {entry.get('seq')!r}")
        if entry.get("case_id") != case_id:
            raise BundleInvalid(f"entry {position} belongs to another case")
        if entry.get("prev") != previous:
            raise BundleInvalid(f"entry {position} does not link to entry {position - 1}")
        if entry.get("hash") != entry_hash(entry):
            raise BundleInvalid(f"entry {position} was changed: its hash does not match")
        previous = entry["hash"]


def main(argv: Sequence[str]) -> int:
    if len(argv) != 1:
        print("usage: verify_evidence.py BUNDLE.json", file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        bundle = verify_bundle(path.read_bytes())
    except BundleInvalid as exc:
        print(f"NOT VERIFIED: {path}: {exc}")
        return 1
    except OSError as exc:
        print(f"cannot read {path}: {exc}", file=sys.stderr)
        return 2
    entries = bundle["entries"]
    print(
        f"VERIFIED: case {bundle['case']['case_id']}: {len(entries)} entries,"
        f" {entries[0]['at']} .. {entries[-1]['at']}, head {bundle['head']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
