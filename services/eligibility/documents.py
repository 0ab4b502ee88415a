"""Policy documents as files: load a YAML or JSON policy (``policies/*.yaml``) and validate
it against :class:`contracts.policy.PolicyDocument`, with errors that name the file and
the failing field.

``python -m services.eligibility.documents policies/genai-training-2024.yaml`` prints the
document as the JSON the consent service's ``POST /api/v1/policies`` takes.

YAML is read the way JSON would be: timestamps stay strings (pydantic parses them and
insists on an offset), only ``true``/``false`` are booleans (so Norway's ``NO`` stays a
country code), and a key repeated in one mapping is an error rather than a silent
overwrite.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from contracts.policy import PolicyDocument

__all__ = ["PolicyDocumentError", "load_policy", "read_policy_data"]

_SUFFIXES_JSON = {".json"}
_SUFFIXES_YAML = {".yaml", ".yml"}


class PolicyDocumentError(ValueError):
    """A policy file or text that cannot be read or is not a valid policy document."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: invalid policy document:\n{lines}")


class _Loader(yaml.SafeLoader):
    """SafeLoader with JSON-like scalars and duplicate-key detection."""


# Drop YAML 1.1 timestamp and yes/no/on/off booleans; keep true/false.
_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool")
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return dict(loader.construct_pairs(node, deep=True))


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _is_path(source: str | os.PathLike[str]) -> bool:
    if isinstance(source, os.PathLike):
        return True
    text = source.strip()
    if not text or "\n" in text or text.startswith(("{", "[")):
        return False
    return text.endswith(tuple(_SUFFIXES_JSON | _SUFFIXES_YAML)) or Path(text).is_file()


def _parse(text: str, suffix: str, source: str) -> Any:
    try:
        if suffix in _SUFFIXES_JSON or (not suffix and text.lstrip().startswith("{")):
            return json.loads(text)
        return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise PolicyDocumentError(source, [f"cannot parse: {exc}"]) from exc


def read_policy_data(source: str | os.PathLike[str]) -> tuple[str, Any]:
    """(name of the source, parsed JSON-compatible data) of a policy file or text; the
    data is exactly what JSON Schema validation and the HTTP API see."""
    if _is_path(source):
        path = Path(source)
        name = str(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyDocumentError(name, [f"cannot read: {exc}"]) from exc
        return name, _parse(text, path.suffix.lower(), name)
    return "<text>", _parse(str(source), "", "<text>")


def _location(data: Any, loc: tuple[int | str, ...]) -> str:
    """``rules[2] (id us-default-on).lawful_bases[0].valid_from``; ``(document)`` for the
    document as a whole."""
    parts: list[str] = []
    node = data
    for step in loc:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        else:
            parts.append(f".{step}" if parts else step)
        try:
            node = node[step]
        except (KeyError, IndexError, TypeError):
            node = None
        if (
            isinstance(step, int)
            and isinstance(node, dict)
            and isinstance(node.get("id"), str)
            and loc[:1] == ("rules",)
            and len(parts) == 2
        ):
            parts.append(f" (id {node['id']})")
    return "".join(parts) or "(document)"


def load_policy(source: str | os.PathLike[str]) -> PolicyDocument:
    """A validated :class:`PolicyDocument` from a ``.yaml``/``.yml``/``.json`` file (by
    suffix; any other suffix is read as YAML, a superset of JSON) or from YAML/JSON text.

    Raises :class:`PolicyDocumentError` naming the file (or ``<text>``) and each failing
    field.
    """
    name, data = read_policy_data(source)
    if not isinstance(data, dict):
        raise PolicyDocumentError(name, ["(document): expected a mapping of fields"])
    try:
        return PolicyDocument.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        failing = [tuple(e["loc"]) for e in errors]
        problems = [
            f"{_location(data, loc)}: {error['msg']}"
            for error, loc in zip(errors, failing, strict=True)
            # "rules: at least 1 item, not 0" only echoes its failing items: say those.
            if not (
                error["type"] == "too_short"
                and any(len(o) > len(loc) and o[: len(loc)] == loc for o in failing)
            )
        ]
        raise PolicyDocumentError(name, problems) from exc


def main(argv: list[str] | None = None) -> int:
    """Print each policy file as JSON (one document: an object; several: an array)."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        sys.stderr.write("usage: python -m services.eligibility.documents POLICY.yaml...\n")
        return 2
    try:
        docs = [load_policy(Path(p)).model_dump(mode="json") for p in paths]
    except PolicyDocumentError as exc:
        sys.stderr.write(f"{exc}\n")
        return 1
    sys.stdout.write(json.dumps(docs[0] if len(docs) == 1 else docs, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
