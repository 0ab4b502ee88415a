"""Write the JSON Schema of every contract model under ``contracts/schemas/``.

Run ``python -m contracts.generate``; ``tests/unit/contracts`` fails when the files
drift from the models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from contracts.envelope import Envelope
from contracts.policy import PolicyDocument
from contracts.topics import INTAKE_TOPICS, TOPICS

SCHEMA_DIR = Path(__file__).parent / "schemas"


def schema_documents() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema, for every topic body (intake topics included) plus the
    envelope and policy."""
    models: dict[str, type[BaseModel]] = {
        f"{t.name}.schema.json": t.model for t in (*TOPICS, *INTAKE_TOPICS)
    }
    models["cloudevents-envelope.schema.json"] = Envelope
    models["policy-document.schema.json"] = PolicyDocument
    return {name: model.model_json_schema(by_alias=True) for name, model in models.items()}


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def main() -> int:
    SCHEMA_DIR.mkdir(exist_ok=True)
    documents = schema_documents()
    for stale in set(p.name for p in SCHEMA_DIR.glob("*.schema.json")) - documents.keys():
        (SCHEMA_DIR / stale).unlink()
    for name, document in documents.items():
        (SCHEMA_DIR / name).write_text(render(document))
    sys.stdout.write(f"wrote {len(documents)} schemas to {SCHEMA_DIR}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
